"""Two spire-servers on one PostgreSQL datastore, one HTTP allowlist, agents through either.

The configuration is examples/ha/server.conf (paths, ports and addresses changed):
a shared datastore, one upstream CA for both servers, and the same nginx-served
allowlist document for both. PostgreSQL is the distribution's, started by the test on a
loopback port with its own data directory.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server_plugin.allowlist import AllowlistEntry
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.http_servers import Nginx, TLSFiles, document, publish
from tests.spire.harness import (
    EXAMPLES,
    Daemon,
    Plugin,
    SpireServer,
    attested,
    free_port,
    set_plugin,
    start_daemon,
    substitute,
    wait_until,
    write_agent_config,
)

pytestmark = pytest.mark.spire
REFRESH = 1.0  # the allowlist's refresh_interval in this test, seconds
EXAMPLE_DB = "user=spire host=db.example.org port=5432 sslmode=verify-full"


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[int]:
    """A PostgreSQL cluster of its own on a loopback port; yields the port."""
    directory = postgres_bin()
    if directory is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; `make install`)")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (the Debian package creates it)")
    # Not under pytest's tmp (0700 root): the postgres user must reach its directory.
    base = Path(tempfile.mkdtemp(prefix="spire-ha-pg-", dir="/tmp"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    for path in (base, sockets):
        os.chown(path, owner.pw_uid, owner.pw_gid)

    def as_postgres(*argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv]

    initdb = subprocess.run(
        as_postgres(str(directory / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert initdb.returncode == 0, initdb.stdout + initdb.stderr
    port = free_port()
    log = base / "postgres.log"
    with open(log, "wb") as out:
        os.chown(log, owner.pw_uid, owner.pw_gid)
        server = subprocess.Popen(
            as_postgres(
                str(directory / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                str(sockets),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            [str(directory / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
            capture_output=True,
            check=False,
        ).returncode:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        subprocess.run(
            [
                str(directory / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "spire",
            ],
            check=True,
            capture_output=True,
        )
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def upstream_ca(directory: Path) -> tuple[Path, Path]:
    """The CA both servers' signing keys chain to (UpstreamAuthority "disk")."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HA upstream CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class FrontDoor:
    """The one address agents know: a TCP relay to the first server that accepts."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.used: list[int] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        for port in self.backends:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            self.used.append(port)
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
            return
        client.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def ha_server_config(
    workdir: Path,
    name: str,
    db_port: int,
    ca: tuple[Path, Path],
    allowlist_url: str,
    tls: TLSFiles,
) -> tuple[Path, int]:
    port = free_port()
    data = workdir / name
    data.mkdir()
    config = substitute(
        (EXAMPLES / "ha" / "server.conf").read_text(),
        {
            'bind_address = "0.0.0.0"': 'bind_address = "127.0.0.1"',
            'bind_port = "8081"': f'bind_port = "{port}"',
            '"/tmp/spire-server/private/api.sock"': f'"{workdir}/{name}.sock"',
            'data_dir = "/var/lib/spire/server"': f'data_dir = "{data}"',
            '"/var/lib/spire/server/keys.json"': f'"{data}/keys.json"',
            EXAMPLE_DB: f"user=postgres host=127.0.0.1 port={db_port} sslmode=disable",
            '"/etc/spire/upstream/ca.pem"': f'"{ca[0]}"',
            '"/etc/spire/upstream/ca.key"': f'"{ca[1]}"',
            '"https://inventory.example.org:8443/tpm-allowlist.json"': f'"{allowlist_url}"',
            '"/etc/spire/tpm/inventory-ca.pem"': f'"{tls.ca}"',
            'refresh_interval = "30s"': f'refresh_interval = "{REFRESH}s"',
            'log_level = "INFO"': 'log_level = "DEBUG"',
        },
    )
    config = set_plugin(
        config, "/opt/spire-tpm-attestor/bin/spire-tpm-attestor-server", Plugin.venv("server")
    )
    path = workdir / f"{name}.conf"
    path.write_text(config)
    return path, port


@pytest.fixture
def ha(
    spire_bin: Path, postgres: int, workdir: Path
) -> Iterator[tuple[list[SpireServer], Path, FrontDoor]]:
    tls = TLSFiles.create(workdir / "tls")
    served = workdir / "www"
    served.mkdir()
    publish(served / "tpm-allowlist.json", document())
    nginx = Nginx(workdir / "nginx", served, tls).start()
    ca = upstream_ca(workdir / "upstream")
    servers: list[SpireServer] = []
    door: FrontDoor | None = None
    try:
        for name in ("server-a", "server-b"):
            config, port = ha_server_config(
                workdir, name, postgres, ca, f"{nginx.url}/tpm-allowlist.json", tls
            )
            daemon = start_daemon(
                [str(spire_bin / "spire-server"), "run", "-config", str(config)],
                workdir / f"{name}.log",
            )
            server = SpireServer(spire_bin, config, workdir / f"{name}.sock", port, daemon, workdir)
            wait_until(server.healthy, daemon, 90, f"{name} health")
            servers.append(server)
        door = FrontDoor([s.port for s in servers])
        yield servers, served / "tpm-allowlist.json", door
    finally:
        if door:
            door.close()
        for server in servers:
            server.daemon.stop()
        nginx.stop()
        # The next test gets an empty datastore.
        directory = postgres_bin()
        assert directory is not None
        subprocess.run(
            [
                str(directory / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(postgres),
                "-U",
                "postgres",
                "-c",
                "DROP SCHEMA public CASCADE; CREATE SCHEMA public;",
                "spire",
            ],
            capture_output=True,
            check=False,
        )


def run_agent(spire_bin: Path, workdir: Path, server_port: int, tcti: str, name: str) -> Daemon:
    """A fresh agent (its own data directory) attesting to the server at `server_port`."""
    home = workdir / name
    home.mkdir(exist_ok=True)
    shutil.copy(workdir / "bundle.pem", home / "bundle.pem")
    config = write_agent_config(home, server_port, tcti)
    return start_daemon(
        [str(spire_bin / "spire-agent"), "run", "-config", str(config)], home / "agent.log"
    )


def outcome(agent: Daemon, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = agent.log()
        if "Node attestation was successful" in log:
            return "admitted"
        if agent.process.poll() is not None:
            return "refused" if "PermissionDenied" in log else f"exited: {log[-2000:]}"
        time.sleep(0.2)
    return f"timed out: {agent.log()[-2000:]}"


def test_ha_servers_share_the_allowlist_and_survive_one_stopping(
    spire_bin: Path,
    workdir: Path,
    bare_swtpm: SWTPM,
    ek_certificate: x509.Certificate,
    ha: tuple[list[SpireServer], Path, FrontDoor],
) -> None:
    (server_a, server_b), allowlist, door = ha
    pub_hash = ek_hash(ek_certificate.public_key())
    bundle = server_a.cli("bundle", "show")
    assert bundle.returncode == 0, bundle.stderr
    (workdir / "bundle.pem").write_text(bundle.stdout)
    # One trust bundle for both: the shared upstream CA.
    assert server_b.cli("bundle", "show").stdout == bundle.stdout

    # Added to the allowlist: both servers admit the EK within the refresh interval.
    publish(allowlist, document(AllowlistEntry(pub_hash, name="node-1")))
    time.sleep(REFRESH * 3)
    runs = 0
    for server in (server_a, server_b):
        runs += 1
        agent = run_agent(spire_bin, workdir, server.port, bare_swtpm.tcti, f"agent-{runs}")
        try:
            assert outcome(agent) == "admitted", server.daemon.log()[-3000:]
        finally:
            agent.stop()
        assert server.decisions() >= 1
    # The agent is in the shared datastore: both servers know it.
    for server in (server_a, server_b):
        listed = server.cli("agent", "list")
        assert pub_hash in listed.stdout, listed.stdout

    # Removed from the allowlist: both refuse it.
    publish(allowlist, document())
    time.sleep(REFRESH * 3)
    for server in (server_a, server_b):
        runs += 1
        agent = run_agent(spire_bin, workdir, server.port, bare_swtpm.tcti, f"agent-{runs}")
        try:
            assert outcome(agent) == "refused"
        finally:
            agent.stop()
        assert "is not in the allowlist" in agent.log()
        assert server.decisions("rejected") >= 1

    # Listed again; one server stops: agents at the shared address attest through the other.
    publish(allowlist, document(AllowlistEntry(pub_hash, name="node-1")))
    time.sleep(REFRESH * 3)
    server_a.daemon.stop()
    admitted_by_b = server_b.decisions()
    runs += 1
    agent = run_agent(spire_bin, workdir, door.port, bare_swtpm.tcti, f"agent-{runs}")
    try:
        assert outcome(agent) == "admitted", server_b.daemon.log()[-3000:]
        assert attested(agent)()
    finally:
        agent.stop()
    assert server_b.decisions() > admitted_by_b
    assert set(door.used) == {server_b.port}

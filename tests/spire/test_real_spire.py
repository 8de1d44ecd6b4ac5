"""Real SPIRE loads both plugins and attests a swtpm node through them.

spire-server and spire-agent are built from the Go module proxy by `make spire`
(SPIRE_BIN points at them). The configurations are the ones in examples/, with only
paths, ports and the TPM address changed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates
from tests.integration.platform_setup import provision_devid
from tests.integration.plugins import hcl

EXAMPLES = Path(__file__).parents[2] / "examples"
VENV_BIN = Path(sys.executable).parent
DEFAULT_SPIRE_BIN = Path.home() / ".cache" / "spire-tpm-attestor" / "spire" / "v1.14.5" / "bin"

pytestmark = pytest.mark.spire


@pytest.fixture(scope="module")
def spire_bin() -> Path:
    if shutil.which("go") is None:
        pytest.skip("Go is not installed, so `make spire` cannot build SPIRE")
    directory = Path(os.environ.get("SPIRE_BIN", DEFAULT_SPIRE_BIN))
    assert (directory / "spire-server").exists(), (
        f"no spire-server in {directory}: run `make spire` (Go is installed, so it must build)"
    )
    return directory


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"examples changed: {old!r} is gone"
        text = text.replace(old, new)
    return text


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(argv: list[str], log_path: Path) -> Daemon:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Daemon(process, log_path)


def wait_until(condition: object, daemon: Daemon, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if daemon.process.poll() is not None:
            raise AssertionError(f"{what}: process exited\n{daemon.log()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: timed out\n{daemon.log()[-4000:]}")
        time.sleep(0.2)


@dataclass
class SpireServer:
    bin: Path
    config: Path
    socket_path: Path
    port: int
    daemon: Daemon

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "spire-server"), *args, "-socketPath", str(self.socket_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def healthy(self) -> bool:
        return self.cli("healthcheck").returncode == 0


@pytest.fixture
def workdir() -> Iterator[Path]:
    # unix socket paths must stay short (spire-server hangs past ~107 characters)
    path = Path(tempfile.mkdtemp(prefix="sps", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def server_config(workdir: Path, port: int, ek_ca: TestCA, hashes: Path, policy: str) -> str:
    return substitute(
        (EXAMPLES / "server.conf").read_text(),
        {
            'bind_address = "0.0.0.0"': 'bind_address = "127.0.0.1"',
            'bind_port = "8081"': f'bind_port = "{port}"',
            '"/tmp/spire-server/private/api.sock"': f'"{workdir}/server.sock"',
            '"/var/lib/spire/server"': f'"{workdir}/server"',
            '"/var/lib/spire/server/datastore.sqlite3"': f'"{workdir}/server/datastore.sqlite3"',
            "/opt/spire-tpm-attestor/bin/spire-tpm-attestor-server": str(
                VENV_BIN / "spire-tpm-attestor-server"
            ),
            'ek_policy = "cert_or_allowlist"': f'ek_policy = "{policy}"',
            '"/etc/spire/tpm/ek-ca"': f'"{ek_ca.bundle_path}"',
            '"/var/lib/spire/tpm/hashes"': f'"{hashes}"',
            'log_level = "INFO"': 'log_level = "DEBUG"',
        },
    )


def start_server(
    spire_bin: Path,
    workdir: Path,
    ek_ca: TestCA,
    policy: str = "cert_or_allowlist",
    extra_plugin_data: str = "",
) -> SpireServer:
    hashes = workdir / "hashes"
    hashes.mkdir(exist_ok=True)
    port = free_port()
    config = workdir / "server.conf"
    text = server_config(workdir, port, ek_ca, hashes, policy)
    config.write_text(add_plugin_data(text, extra_plugin_data))
    daemon = start_daemon(
        [str(spire_bin / "spire-server"), "run", "-config", str(config)], workdir / "server.log"
    )
    server = SpireServer(spire_bin, config, workdir / "server.sock", port, daemon)
    wait_until(server.healthy, daemon, 60, "spire-server health")
    return server


def test_spire_server_loads_and_configures_the_server_plugin(
    spire_bin: Path, workdir: Path, ek_ca: TestCA
) -> None:
    server = start_server(spire_bin, workdir, ek_ca)
    try:
        log = server.daemon.log()
        assert re.search(r'msg="Plugin loaded".*plugin_name=tpm', log), log[-3000:]
        # Our hclog JSON line reached SPIRE's log as a structured entry.
        assert re.search(r"msg=configured.*plugin_name=tpm", log), log[-3000:]
        assert "Unsupported plugin service" not in log
    finally:
        server.daemon.stop()
    log = server.daemon.log()
    assert "plugin failed to exit gracefully" not in log
    assert server.daemon.process.returncode == 0


def test_spire_server_validate_calls_the_plugin(
    spire_bin: Path, workdir: Path, ek_ca: TestCA
) -> None:
    hashes = workdir / "hashes"
    hashes.mkdir()
    config = workdir / "server.conf"
    config.write_text(server_config(workdir, free_port(), ek_ca, hashes, "cert"))
    validate = [str(spire_bin / "spire-server"), "validate", "-config", str(config)]
    good = subprocess.run(validate, capture_output=True, text=True, timeout=120, check=False)
    assert good.returncode == 0, good.stdout + good.stderr
    config.write_text(config.read_text().replace("can_reattest = true", "can_reattest = 3"))
    bad = subprocess.run(validate, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode != 0
    assert "can_reattest: expected a boolean" in bad.stdout + bad.stderr


def add_plugin_data(config: str, extra: str) -> str:
    """The NodeAttestor's plugin_data with more options (HCL) at its start."""
    marker = "plugin_data {"
    start = config.index(marker, config.index('NodeAttestor "tpm"')) + len(marker)
    return config[:start] + "\n" + extra + config[start:]


def start_agent(
    spire_bin: Path, workdir: Path, server: SpireServer, tcti: str, extra_plugin_data: str = ""
) -> Daemon:
    bundle = server.cli("bundle", "show")
    assert bundle.returncode == 0, bundle.stderr
    (workdir / "bundle.pem").write_text(bundle.stdout)
    config = workdir / "agent.conf"
    config.write_text(
        add_plugin_data(
            substitute(
                (EXAMPLES / "agent.conf").read_text(),
                {
                    '"/var/lib/spire/agent"': f'"{workdir}/agent"',
                    'server_address = "spire-server.example.org"': 'server_address = "127.0.0.1"',
                    'server_port = "8081"': f'server_port = "{server.port}"',
                    '"/tmp/spire-agent/public/api.sock"': f'"{workdir}/agent.sock"',
                    '"/etc/spire/agent/bootstrap.crt"': f'"{workdir}/bundle.pem"',
                    "/opt/spire-tpm-attestor/bin/spire-tpm-attestor-agent": str(
                        VENV_BIN / "spire-tpm-attestor-agent"
                    ),
                    '# tcti = "device:/dev/tpmrm0"': f'tcti = "{tcti}"',
                    'log_level = "INFO"': 'log_level = "DEBUG"',
                },
            ),
            extra_plugin_data,
        )
    )
    (workdir / "agent").mkdir(exist_ok=True)
    return start_daemon(
        [str(spire_bin / "spire-agent"), "run", "-config", str(config)], workdir / "agent.log"
    )


def test_spire_agent_attests_through_both_plugins(
    spire_bin: Path,
    workdir: Path,
    ek_ca: TestCA,
    bare_swtpm: SWTPM,
    ek_certificate: x509.Certificate,
) -> None:
    pub_hash = ek_hash(ek_certificate.public_key())
    server = start_server(spire_bin, workdir, ek_ca, policy="cert")
    agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
    agent_id = f"spiffe://example.org/spire/agent/tpm/{pub_hash}"
    try:
        wait_until(
            lambda: "Node attestation was successful" in agent.log(), agent, 90, "agent attestation"
        )
        listed = server.cli("agent", "show", "-spiffeID", agent_id)
        assert listed.returncode == 0, listed.stderr
        assert f"tpm:pub_hash:{pub_hash}" in listed.stdout
        assert "tpm:ek:model:swtpm" in listed.stdout
        assert re.search(r"tpm:pcr:sha256:7:[0-9a-f]{64}", listed.stdout), listed.stdout
        assert re.search(r"Attestation type\s*: tpm", listed.stdout), listed.stdout
    finally:
        agent.stop()
        server.daemon.stop()
    for daemon in (agent, server.daemon):
        assert "plugin failed to exit gracefully" not in daemon.log()


def test_spire_agent_stops_when_the_server_plugin_denies(
    spire_bin: Path,
    workdir: Path,
    ek_ca: TestCA,
    bare_swtpm: SWTPM,
    tmp_path: Path,
) -> None:
    rogue = TestCA.create(tmp_path / "rogue", name="Rogue TPM")
    provision_ek_certificates(bare_swtpm.tcti, rogue, algorithms=("rsa2048",))
    server = start_server(spire_bin, workdir, ek_ca, policy="cert")
    agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
    try:
        agent.process.wait(timeout=90)  # PERMISSION_DENIED: the agent gives up at once
    finally:
        agent.stop()
        server.daemon.stop()
    log = agent.log()
    assert "PermissionDenied" in log, log[-3000:]
    assert "does not chain to ek_ca_path" in log


def test_spire_agent_attests_with_a_devid(
    spire_bin: Path, workdir: Path, ek_ca: TestCA, swtpm: SWTPM, tmp_path: Path
) -> None:
    devid_ca = TestCA.create(tmp_path / "devid-ca", name="Test DevID")
    devid = provision_devid(swtpm.tcti, devid_ca, tmp_path / "devid", subject="node-7")
    server = start_server(
        spire_bin,
        workdir,
        ek_ca,
        policy="cert",
        extra_plugin_data=hcl(devid_ca_path=str(devid_ca.root_path), require_devid=True),
    )
    agent = start_agent(
        spire_bin, workdir, server, swtpm.tcti, extra_plugin_data=hcl(**devid.agent_options())
    )
    try:
        wait_until(
            lambda: "Node attestation was successful" in agent.log(),
            agent,
            90,
            "agent attestation with a DevID",
        )
        listed = server.cli("agent", "list")
        assert listed.returncode == 0, listed.stderr
        agent_id = re.search(r"spiffe://example.org/spire/agent/tpm/[0-9a-f]{64}", listed.stdout)
        assert agent_id, listed.stdout
        shown = server.cli("agent", "show", "-spiffeID", agent_id.group(0))
        assert "tpm:devid:subject:cn:node-7" in shown.stdout, shown.stdout
    finally:
        agent.stop()
        server.daemon.stop()


def test_spire_relays_a_2_mib_event_log_and_the_selectors_it_proves(
    spire_bin: Path, workdir: Path, ek_ca: TestCA, swtpm: SWTPM
) -> None:
    """The largest log an agent may send crosses every hop: agent plugin -> spire-agent
    (go-plugin) -> spire-server's gRPC endpoint (4 MiB default) -> server plugin."""
    from spire_tpm_attestor import wire
    from tests.eventlog_builder import bench_log
    from tests.integration.platform_setup import measure_boot

    log = bench_log(events=150, size=wire.MAX_EVENT_LOG - 64 * 1024)
    assert wire.MAX_EVENT_LOG - 128 * 1024 < len(log.data) <= wire.MAX_EVENT_LOG
    measure_boot(swtpm.tcti, log)
    (workdir / "binary_bios_measurements").write_bytes(log.data)
    server = start_server(
        spire_bin, workdir, ek_ca, policy="cert", extra_plugin_data=hcl(event_log=True)
    )
    agent = start_agent(
        spire_bin,
        workdir,
        server,
        swtpm.tcti,
        extra_plugin_data=hcl(
            event_log_path=str(workdir / "binary_bios_measurements"),
            max_event_log_size=wire.MAX_EVENT_LOG,
        ),
    )
    try:
        wait_until(
            lambda: "Node attestation was successful" in agent.log(),
            agent,
            90,
            "agent attestation with an event log",
        )
        listed = server.cli("agent", "list")
        agent_id = re.search(r"spiffe://example.org/spire/agent/tpm/[0-9a-f]{64}", listed.stdout)
        assert agent_id, listed.stdout
        shown = server.cli("agent", "show", "-spiffeID", agent_id.group(0))
        assert "tpm:secureboot:enabled" in shown.stdout, shown.stdout
        assert re.search(r"tpm:boot:app:[0-9a-f]{64}", shown.stdout), shown.stdout
    finally:
        agent.stop()
        server.daemon.stop()

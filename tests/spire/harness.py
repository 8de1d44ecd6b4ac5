"""Running real spire-server / spire-agent processes with the configurations in examples/.

spire-server and spire-agent are built from the Go module proxy by `make spire`
(SPIRE_BIN points at them; `make test-spire-matrix` runs the tests once per release).
The configurations are the ones in examples/, with only paths, ports, the TPM address and
the plugin executables changed.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spire_tpm_attestor.testing.ca import TestCA

EXAMPLES = Path(__file__).parents[2] / "examples"
VENV_BIN = Path(sys.executable).parent
TRUST_DOMAIN = "example.org"
CHECKSUM_PLACEHOLDER = '# plugin_checksum = "<sha256 of the file above, from SHA256SUMS>"'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spire_version(spire_bin: Path) -> tuple[int, int, int]:
    """The release of these binaries (`make spire` sets the version string)."""
    out = subprocess.run(
        [str(spire_bin / "spire-server"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    assert found, f"cannot read the SPIRE version: {out.stdout!r} {out.stderr!r}"
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


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
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Daemon(process, log_path)


def wait_until(
    condition: Callable[[], object],
    daemon: Daemon,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if daemon.process.poll() is not None:
            raise AssertionError(f"{what}: process exited\n{daemon.log()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: timed out\n{daemon.log()[-4000:]}")
        time.sleep(interval)


@dataclass
class Plugin:
    """Which executable SPIRE runs for the NodeAttestor, and the checksum it checks."""

    command: Path
    checksum: str | None = None

    @classmethod
    def venv(cls, side: str) -> Plugin:
        return cls(VENV_BIN / f"spire-tpm-attestor-{side}")

    @classmethod
    def pinned(cls, command: Path, checksum: str | None = None) -> Plugin:
        return cls(command, checksum or sha256_file(command))


def set_plugin(config: str, example_cmd: str, plugin: Plugin) -> str:
    config = substitute(config, {example_cmd: str(plugin.command)})
    if plugin.checksum is not None:
        config = substitute(
            config, {CHECKSUM_PLACEHOLDER: f'plugin_checksum = "{plugin.checksum}"'}
        )
    return config


def add_plugin_data(config: str, extra: str) -> str:
    """The NodeAttestor's plugin_data with more options (HCL) at its start."""
    marker = "plugin_data {"
    start = config.index(marker, config.index('NodeAttestor "tpm"')) + len(marker)
    return config[:start] + "\n" + extra + config[start:]


def block_end(config: str, start: int) -> int:
    """The index of the `}` that closes the first `{` at or after `start`."""
    depth = 0
    for end in range(config.index("{", start), len(config)):
        depth += {"{": 1, "}": -1}.get(config[end], 0)
        if depth == 0:
            return end
    raise ValueError("unbalanced braces")


JOIN_TOKEN_ATTESTOR = 'NodeAttestor "join_token" {\n        plugin_data {}\n    }'


def add_join_token(server_config_text: str) -> str:
    """The server also offers SPIRE's built-in join_token attestor, beside "tpm"."""
    marker = "plugins {"
    at = server_config_text.index(marker) + len(marker)
    return server_config_text[:at] + "\n    " + JOIN_TOKEN_ATTESTOR + server_config_text[at:]


def use_join_token(agent_config_text: str) -> str:
    """The agent attests with join_token instead of "tpm" (run it with -joinToken)."""
    start = agent_config_text.index('NodeAttestor "tpm"')
    end = block_end(agent_config_text, start)
    return agent_config_text[:start] + JOIN_TOKEN_ATTESTOR + agent_config_text[end + 1 :]


def plugin_data_to_file(config: str, path: Path) -> str:
    """Move the NodeAttestor's plugin_data block into `path` (plugin_data_file)."""
    node = config.index('NodeAttestor "tpm"')
    start = config.index("plugin_data {", node)
    depth, end = 0, start
    for end in range(start, len(config)):
        depth += {"{": 1, "}": -1}.get(config[end], 0)
        if config[end] == "}" and depth == 0:
            break
    body = config[start + len("plugin_data {") : end]
    path.write_text(body)
    return config[:start] + f'plugin_data_file = "{path}"' + config[end + 1 :]


@dataclass
class SpireServer:
    bin: Path
    config: Path
    socket_path: Path
    port: int
    daemon: Daemon
    workdir: Path = field(default=Path("/nonexistent"))

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

    def decisions(self, decision: str = "admitted") -> int:
        """How many attestations the server plugin decided so (its audit lines)."""
        return len(re.findall(rf"decision={decision}\b", self.daemon.log()))


def server_config(
    workdir: Path,
    port: int,
    ek_ca: TestCA,
    hashes: Path,
    policy: str,
    plugin: Plugin | None = None,
) -> str:
    config = substitute(
        (EXAMPLES / "server.conf").read_text(),
        {
            'bind_address = "0.0.0.0"': 'bind_address = "127.0.0.1"',
            'bind_port = "8081"': f'bind_port = "{port}"',
            '"/tmp/spire-server/private/api.sock"': f'"{workdir}/server.sock"',
            '"/var/lib/spire/server"': f'"{workdir}/server"',
            '"/var/lib/spire/server/datastore.sqlite3"': f'"{workdir}/server/datastore.sqlite3"',
            'ek_policy = "cert_or_allowlist"': f'ek_policy = "{policy}"',
            '"/etc/spire/tpm/ek-ca"': f'"{ek_ca.bundle_path}"',
            '"/var/lib/spire/tpm/hashes"': f'"{hashes}"',
            'log_level = "INFO"': 'log_level = "DEBUG"',
        },
    )
    return set_plugin(
        config,
        "/opt/spire-tpm-attestor/bin/spire-tpm-attestor-server",
        plugin or Plugin.venv("server"),
    )


def write_server_config(
    workdir: Path,
    ek_ca: TestCA,
    policy: str = "cert_or_allowlist",
    extra_plugin_data: str = "",
    plugin: Plugin | None = None,
    server_options: str = "",
    data_file: bool = False,
    join_token: bool = False,
) -> tuple[Path, int]:
    hashes = workdir / "hashes"
    hashes.mkdir(exist_ok=True)
    port = free_port()
    text = add_plugin_data(
        server_config(workdir, port, ek_ca, hashes, policy, plugin), extra_plugin_data
    )
    if server_options:
        text = text.replace("server {", "server {\n" + server_options, 1)
    if data_file:
        text = plugin_data_to_file(text, workdir / "server-plugin-data.hcl")
    if join_token:
        text = add_join_token(text)
    config = workdir / "server.conf"
    config.write_text(text)
    return config, port


def start_server(
    spire_bin: Path,
    workdir: Path,
    ek_ca: TestCA,
    policy: str = "cert_or_allowlist",
    extra_plugin_data: str = "",
    plugin: Plugin | None = None,
    server_options: str = "",
    data_file: bool = False,
    join_token: bool = False,
) -> SpireServer:
    config, port = write_server_config(
        workdir, ek_ca, policy, extra_plugin_data, plugin, server_options, data_file, join_token
    )
    daemon = start_daemon(
        [str(spire_bin / "spire-server"), "run", "-config", str(config)], workdir / "server.log"
    )
    server = SpireServer(spire_bin, config, workdir / "server.sock", port, daemon, workdir)
    wait_until(server.healthy, daemon, 60, "spire-server health")
    return server


def write_agent_config(
    workdir: Path,
    server_port: int,
    tcti: str,
    extra_plugin_data: str = "",
    plugin: Plugin | None = None,
) -> Path:
    config = workdir / "agent.conf"
    text = substitute(
        (EXAMPLES / "agent.conf").read_text(),
        {
            '"/var/lib/spire/agent"': f'"{workdir}/agent"',
            'server_address = "spire-server.example.org"': 'server_address = "127.0.0.1"',
            'server_port = "8081"': f'server_port = "{server_port}"',
            '"/tmp/spire-agent/public/api.sock"': f'"{workdir}/agent.sock"',
            '"/etc/spire/agent/bootstrap.crt"': f'"{workdir}/bundle.pem"',
            '# tcti = "device:/dev/tpmrm0"': f'tcti = "{tcti}"',
            'log_level = "INFO"': 'log_level = "DEBUG"',
        },
    )
    text = set_plugin(
        text,
        "/opt/spire-tpm-attestor/bin/spire-tpm-attestor-agent",
        plugin or Plugin.venv("agent"),
    )
    config.write_text(add_plugin_data(text, extra_plugin_data))
    (workdir / "agent").mkdir(exist_ok=True)
    return config


def start_agent(
    spire_bin: Path,
    workdir: Path,
    server: SpireServer,
    tcti: str,
    extra_plugin_data: str = "",
    plugin: Plugin | None = None,
) -> Daemon:
    bundle = server.cli("bundle", "show")
    assert bundle.returncode == 0, bundle.stderr
    (workdir / "bundle.pem").write_text(bundle.stdout)
    config = write_agent_config(workdir, server.port, tcti, extra_plugin_data, plugin)
    return start_daemon(
        [str(spire_bin / "spire-agent"), "run", "-config", str(config)], workdir / "agent.log"
    )


def attested(agent: Daemon, times: int = 1) -> Callable[[], bool]:
    return lambda: agent.log().count("Node attestation was successful") >= times


def agent_id(pub_hash: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/spire/agent/tpm/{pub_hash}"

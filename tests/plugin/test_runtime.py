"""Each plugin executable, loaded through runtime.host exactly as SPIRE loads it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.runtime.host import (
    AGENT_HOST_SERVICES,
    AGENT_SERVICE,
    CONFIG_SERVICE,
    SERVER_HOST_SERVICES,
    SERVER_SERVICE,
    PluginProcess,
    RequestQueue,
)

BIN = Path(sys.executable).parent
PLUGINS = {
    "agent": (BIN / "spire-tpm-attestor-agent", AGENT_SERVICE, AGENT_HOST_SERVICES),
    "server": (BIN / "spire-tpm-attestor-server", SERVER_SERVICE, SERVER_HOST_SERVICES),
}
GOOD_CONFIG = {
    "agent": 'tcti = "swtpm:host=127.0.0.1,port=2321"\nak_algorithm = "ecc"\n',
    "server": 'hash_path = "{hashes}"\ncan_reattest = false\n',
}
HCLOG_LEVELS = {"trace", "debug", "info", "warn", "error"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


@pytest.fixture(params=sorted(PLUGINS))
def side(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def good_config(side: str, tmp_path: Path) -> str:
    (tmp_path / "hashes").mkdir()
    return GOOD_CONFIG[side].replace("{hashes}", str(tmp_path / "hashes"))


@pytest.fixture
def plugin(side: str) -> Iterator[PluginProcess]:
    executable, _, host_services = PLUGINS[side]
    process = PluginProcess.start([str(executable)], host_service_names=host_services)
    yield process
    if process.process.poll() is None:
        process.stop()


def test_handshake_line_has_the_go_plugin_format(plugin: PluginProcess) -> None:
    line = plugin.handshake.raw
    assert line.endswith("\n")
    fields = line.strip().split("|")
    assert fields[:3] == ["1", "1", "unix"]
    assert fields[4] == "grpc"
    assert len(fields) == 5, "no server certificate field: SPIRE runs without AutoMTLS"
    assert os.path.isabs(fields[3])
    assert oct(os.stat(os.path.dirname(fields[3])).st_mode & 0o777) == "0o700"


def test_init_advertises_exactly_the_spire_service_names(plugin: PluginProcess, side: str) -> None:
    assert plugin.plugin_service_names == [PLUGINS[side][1], CONFIG_SERVICE]


def test_configure_accepts_good_hcl(plugin: PluginProcess, good_config: str) -> None:
    plugin.configure(good_config)
    plugin.configure(good_config)  # SPIRE may reconfigure at any time


def test_configure_accepts_plugin_data_file_content(
    plugin: PluginProcess, side: str, tmp_path: Path, good_config: str
) -> None:
    # plugin_data_file content reaches Configure unchanged, comments and all.
    data_file = tmp_path / "plugin.hcl"
    data_file.write_text(f"# {side} plugin\n{good_config}\n// trailing comment\n")
    plugin.configure(data_file.read_text())


def test_configure_rejects_bad_hcl(plugin: PluginProcess) -> None:
    with pytest.raises(grpc.RpcError) as error:
        plugin.configure("tcti = ")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not valid HCL" in (error.value.details() or "")


def test_configure_rejects_unknown_keys_naming_them(
    plugin: PluginProcess, good_config: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        plugin.configure(good_config + 'tpm_devcie = "/dev/tpm0"\n')
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tpm_devcie: unknown option" in (error.value.details() or "")


def test_configure_names_the_expected_type(plugin: PluginProcess, side: str) -> None:
    option = {"agent": "tcti = 5", "server": 'can_reattest = "yes"'}[side]
    with pytest.raises(grpc.RpcError) as error:
        plugin.configure(option)
    expected = {"agent": "expected a string, got integer", "server": "expected a boolean"}[side]
    assert expected in (error.value.details() or "")


def test_configure_without_trust_domain_is_rejected(
    plugin: PluginProcess, good_config: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        plugin.configure(good_config, trust_domain="")
    assert "trust domain" in (error.value.details() or "")


def test_validate_returns_no_notes_for_a_good_config(
    plugin: PluginProcess, good_config: str
) -> None:
    assert plugin.validate(good_config) == []


def test_validate_returns_one_note_per_problem(plugin: PluginProcess, side: str) -> None:
    bad = {
        "agent": 'ek_algorithm = "dsa"\nak_handle = "0x01"\nextra = 1\n',
        "server": 'ek_policy = "cert"\ncan_reattest = 3\nextra = 1\n',
    }[side]
    notes = plugin.validate(bad)
    assert len(notes) == 3, notes
    assert any("extra: unknown option" in note for note in notes)


def test_validate_does_not_change_the_configuration(
    plugin: PluginProcess, side: str, good_config: str
) -> None:
    plugin.validate(good_config)
    _assert_not_configured(plugin, side)


def _assert_not_configured(plugin: PluginProcess, side: str) -> None:
    requests: RequestQueue[object] = RequestQueue()
    if side == "agent":
        stream = plugin.agent_stub().AidAttestation(iter(requests), timeout=10)
    else:
        requests.put(server_pb2.AttestRequest(payload=b"x"))
        stream = plugin.server_stub().Attest(iter(requests), timeout=10)
    requests.close()
    with pytest.raises(grpc.RpcError) as error:
        next(stream)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not configured" in (error.value.details() or "")


def test_attestation_before_configure_is_failed_precondition(
    plugin: PluginProcess, side: str
) -> None:
    _assert_not_configured(plugin, side)


def test_shutdown_exits_within_two_seconds(plugin: PluginProcess, good_config: str) -> None:
    plugin.configure(good_config)
    elapsed = plugin.stop()
    assert plugin.process.returncode == 0, "exited by itself, not killed"
    assert elapsed < 2.0


def test_shutdown_removes_the_socket_and_its_directory(
    plugin: PluginProcess, good_config: str
) -> None:
    socket = Path(plugin.handshake.raw.strip().split("|")[3])
    assert socket.exists()
    plugin.configure(good_config)
    plugin.stop()
    assert not socket.parent.exists()


def test_the_socket_directory_follows_tmpdir(side: str, tmp_path: Path) -> None:
    executable, _, host_services = PLUGINS[side]
    environ = {**os.environ, "TMPDIR": str(tmp_path)}
    process = PluginProcess.start([str(executable)], host_service_names=host_services, env=environ)
    try:
        socket = Path(process.handshake.raw.strip().split("|")[3])
        assert socket.parent.parent == tmp_path
        assert oct(socket.parent.stat().st_mode & 0o777) == "0o700"
    finally:
        process.stop()


def test_stdout_carries_only_the_handshake(plugin: PluginProcess, good_config: str) -> None:
    plugin.configure(good_config)
    plugin.validate("bogus = 1")
    plugin.stop()
    assert plugin.stdout_after_handshake == []


def test_every_stderr_line_is_hclog_json(plugin: PluginProcess, good_config: str) -> None:
    plugin.configure(good_config)
    with pytest.raises(grpc.RpcError):
        plugin.configure("unknown_option = true")
    plugin.stop()
    lines = [line.decode() for line in plugin.stderr_lines]
    assert lines, "the plugin logs its life cycle"
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict)
        assert entry["@level"] in HCLOG_LEVELS
        assert isinstance(entry["@message"], str)
        assert TIMESTAMP.match(entry["@timestamp"]), entry["@timestamp"]
        assert all(isinstance(value, str) for value in entry.values()), entry
    levels = {json.loads(line)["@level"] for line in lines}
    assert {"info", "error"} <= levels


def test_sigint_does_not_kill_the_plugin(plugin: PluginProcess, good_config: str) -> None:
    plugin.process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert plugin.process.poll() is None
    plugin.configure(good_config)


def test_open_streams_do_not_starve_configure(tmp_path: Path) -> None:
    config = GOOD_CONFIG["server"].replace("{hashes}", str(tmp_path))
    executable, _, host_services = PLUGINS["server"]
    with PluginProcess.start([str(executable)], host_service_names=host_services) as plugin:
        plugin.configure(config)
        queues: list[RequestQueue[server_pb2.AttestRequest]] = []
        streams = []
        for _ in range(64):
            requests: RequestQueue[server_pb2.AttestRequest] = RequestQueue()
            queues.append(requests)
            streams.append(plugin.server_stub().Attest(iter(requests), timeout=60))
        time.sleep(0.5)  # let every stream reach the plugin and park a worker
        done = threading.Event()

        def configure() -> None:
            plugin.configure(config)
            done.set()

        threading.Thread(target=configure, daemon=True).start()
        assert done.wait(timeout=20), "Configure blocked behind 64 open streams"
        for requests, stream in zip(queues, streams, strict=True):
            requests.close()
            stream.cancel()


def test_run_by_hand_explains_what_it_is(side: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NodeAttestor"}
    result = subprocess.run(
        [str(PLUGINS[side][0])], env=env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"This binary is a SPIRE plugin" in result.stderr


def test_unsupported_protocol_version_is_refused(side: str) -> None:
    env = dict(os.environ, NodeAttestor="NodeAttestor", PLUGIN_PROTOCOL_VERSIONS="2,3")
    result = subprocess.run(
        [str(PLUGINS[side][0])], env=env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"protocol versions" in result.stderr

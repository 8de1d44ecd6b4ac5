"""Real SPIRE loads both plugins and attests a swtpm node through them.

spire-server and spire-agent are built from the Go module proxy by `make spire`
(SPIRE_BIN points at them). The configurations are the ones in examples/, with only
paths, ports and the TPM address changed (tests/spire/harness.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates
from tests.integration.platform_setup import provision_devid
from tests.integration.plugins import hcl
from tests.spire.conftest import needs_release
from tests.spire.harness import (
    free_port,
    server_config,
    start_agent,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.spire


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
    spire_bin: Path, spire_release: tuple[int, int, int], workdir: Path, ek_ca: TestCA
) -> None:
    needs_release(spire_release, (1, 14), "`spire-server validate` that calls plugins")
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


def plugin_lines(log: str) -> list[str]:
    """The lines of a SPIRE log that our plugin wrote: SPIRE relays them with their
    `@module` and the plugin's name; its own lines about the plugin have no `@module`."""
    return [line for line in log.splitlines() if "@module=" in line and "plugin_name=tpm" in line]


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
    # The refusal ends the agent plugin's stream: a normal end, no error of the plugin's.
    agent_plugin_lines = plugin_lines(log)
    assert agent_plugin_lines, log[-3000:]
    assert [line for line in agent_plugin_lines if "level=error" in line] == []
    assert any('msg="stream ended by the peer"' in line for line in agent_plugin_lines)
    # The server plugin wrote the decision once.
    audit = [line for line in plugin_lines(server.daemon.log()) if "decision=" in line]
    assert len(audit) == 1, audit
    assert 'msg="attestation rejected"' in audit[0] and "check=ek_cert_chain" in audit[0]


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

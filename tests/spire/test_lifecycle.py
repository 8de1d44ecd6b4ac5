"""What an operator does with TPM-attested agents, in real SPIRE, for each supported release.

`make test-spire-matrix` runs these against every release the README lists: a workload
SVID through a node entry chosen by a `tpm:` selector, agent restart, a removed data
directory, SVID rotation by re-attestation, an unknown EK refused with the plugin's
reason, and the server plugin reconfigured from plugin_data_file on SIGUSR1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.spire.conftest import needs_release
from tests.spire.harness import (
    TRUST_DOMAIN,
    Daemon,
    SpireServer,
    agent_id,
    attested,
    start_agent,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.spire
NODE_SET = f"spiffe://{TRUST_DOMAIN}/node/tpm-nodes"
WORKLOAD = f"spiffe://{TRUST_DOMAIN}/workload/tpm-test"


def fetch_x509(spire_bin: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(spire_bin / "spire-agent"),
            "api",
            "fetch",
            "x509",
            "-socketPath",
            str(workdir / "agent.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_for_workload_svid(spire_bin: Path, workdir: Path, agent: Daemon) -> str:
    last = ""

    def issued() -> bool:
        nonlocal last
        fetched = fetch_x509(spire_bin, workdir)
        last = fetched.stdout + fetched.stderr
        return fetched.returncode == 0 and WORKLOAD in fetched.stdout

    try:
        wait_until(issued, agent, 90, "workload SVID")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast fetch: {last}") from None
    return last


def create_entries(server: SpireServer, pub_hash: str) -> None:
    """A node entry that selects this TPM by its EK hash, and a workload entry under it."""
    node = server.cli(
        "entry", "create", "-node", "-spiffeID", NODE_SET, "-selector", f"tpm:pub_hash:{pub_hash}"
    )
    assert node.returncode == 0, node.stdout + node.stderr
    workload = server.cli(
        "entry",
        "create",
        "-parentID",
        NODE_SET,
        "-spiffeID",
        WORKLOAD,
        "-selector",
        f"unix:uid:{os.getuid()}",
    )
    assert workload.returncode == 0, workload.stdout + workload.stderr


def test_workload_svid_through_a_tpm_selector_across_restart_and_lost_data_dir(
    spire_bin: Path,
    workdir: Path,
    ek_ca: TestCA,
    bare_swtpm: SWTPM,
    ek_certificate: x509.Certificate,
) -> None:
    pub_hash = ek_hash(ek_certificate.public_key())
    server = start_server(spire_bin, workdir, ek_ca, policy="cert")
    try:
        create_entries(server, pub_hash)
        agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
        try:
            wait_until(attested(agent), agent, 90, "agent attestation")
            fetched = wait_for_workload_svid(spire_bin, workdir, agent)
            assert f"SPIFFE ID:\t\t{WORKLOAD}" in fetched or WORKLOAD in fetched
        finally:
            agent.stop()
        assert agent.process.returncode == 0, agent.log()[-3000:]

        # Restart with the data directory intact: the agent comes back with its identity.
        agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
        try:
            wait_for_workload_svid(spire_bin, workdir, agent)
        finally:
            agent.stop()

        # Data directory lost (a re-imaged node with the same TPM): the node attests again
        # and gets the same agent ID, because the plugin lets agents re-attest.
        admitted = server.decisions()
        shutil.rmtree(workdir / "agent")
        before = agent.log().count("Node attestation was successful")
        agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
        try:
            wait_until(attested(agent, before + 1), agent, 90, "attestation after data loss")
            wait_for_workload_svid(spire_bin, workdir, agent)
        finally:
            agent.stop()
        assert server.decisions() > admitted
        shown = server.cli("agent", "show", "-spiffeID", agent_id(pub_hash))
        assert shown.returncode == 0, shown.stderr
        listed = server.cli("agent", "list")
        assert listed.stdout.count("/spire/agent/tpm/") == 1, listed.stdout
    finally:
        server.daemon.stop()
    assert "plugin failed to exit gracefully" not in server.daemon.log()


def test_agent_svid_rotation_re_attests_through_the_plugins(
    spire_bin: Path,
    workdir: Path,
    ek_ca: TestCA,
    bare_swtpm: SWTPM,
    ek_certificate: x509.Certificate,
) -> None:
    server = start_server(
        spire_bin, workdir, ek_ca, policy="cert", server_options='    agent_ttl = "30s"\n'
    )
    agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
    try:
        wait_until(attested(agent), agent, 90, "agent attestation")
        # SPIRE rotates at half the SVID's life; a re-attestable agent rotates by attesting
        # again (a fresh challenge), not by renewing.
        wait_until(
            lambda: "Successfully reattested node" in agent.log(), agent, 90, "re-attestation"
        )
        assert server.decisions() >= 2
        assert "Successfully rotated agent SVID" not in agent.log()
    finally:
        agent.stop()
        server.daemon.stop()


def test_unknown_ek_is_refused_with_the_plugins_reason_in_the_agent_log(
    spire_bin: Path, workdir: Path, ek_ca: TestCA, bare_swtpm: SWTPM
) -> None:
    # No EK certificate in this TPM and nothing in the allowlist (examples' default policy).
    server = start_server(spire_bin, workdir, ek_ca)
    agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
    try:
        agent.process.wait(timeout=90)  # PERMISSION_DENIED: the agent gives up at once
    finally:
        agent.stop()
        server.daemon.stop()
    log = agent.log()
    assert agent.process.returncode != 0
    assert "PermissionDenied" in log, log[-3000:]
    assert re.search(r"EK is neither certified \(.*\) nor in the allowlist", log), log[-3000:]
    assert "Node attestation was successful" not in log
    assert server.decisions("rejected") >= 1


def test_plugin_data_file_is_reloaded_on_sigusr1(
    spire_bin: Path,
    spire_release: tuple[int, int, int],
    workdir: Path,
    ek_ca: TestCA,
    bare_swtpm: SWTPM,
    ek_certificate: x509.Certificate,
) -> None:
    needs_release(spire_release, (1, 10), "plugin_data_file (nor its reload on SIGUSR1)")
    server = start_server(spire_bin, workdir, ek_ca, policy="allowlist", data_file=True)
    data_file = workdir / "server-plugin-data.hcl"
    try:
        agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
        agent.process.wait(timeout=90)
        assert "is not in the allowlist" in agent.log(), agent.log()[-3000:]

        configured = server.daemon.log().count("msg=configured")
        data_file.write_text(
            data_file.read_text().replace('ek_policy = "allowlist"', 'ek_policy = "cert"')
        )
        server.daemon.process.send_signal(signal.SIGUSR1)
        wait_until(
            lambda: server.daemon.log().count("msg=configured") > configured,
            server.daemon,
            30,
            "reconfiguration on SIGUSR1",
        )
        time.sleep(0.5)
        (workdir / "agent.log").rename(workdir / "agent-refused.log")
        agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti)
        try:
            wait_until(attested(agent), agent, 90, "attestation under the reloaded policy")
        finally:
            agent.stop()
    finally:
        server.daemon.stop()

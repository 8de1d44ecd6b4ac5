"""The server plugin runs where tpm2-pytss and libtss2 are absent (docs/architecture.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spire_tpm_attestor.runtime.host import SERVER_HOST_SERVICES, PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.plugins import hcl, start_plugin

BLOCKER = 'raise ImportError("tpm2-pytss is not installed on this server")\n'


@pytest.mark.swtpm
def test_server_plugin_attests_with_tpm2_pytss_unimportable(
    swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> None:
    # A package that shadows tpm2_pytss and refuses to import, first on the path.
    (tmp_path / "tpm2_pytss").mkdir()
    (tmp_path / "tpm2_pytss" / "__init__.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    server_executable = str(Path(sys.executable).parent / "spire-tpm-attestor-server")
    with (
        PluginProcess.start(
            [server_executable], env=env, host_service_names=SERVER_HOST_SERVICES
        ) as server,
        start_plugin("agent") as agent,
    ):
        server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
        agent.configure(hcl(tcti=swtpm.tcti))
        assert relay_attestation(agent, server).spiffe_id.startswith(
            "spiffe://example.org/spire/agent/tpm/"
        )
    # The same blocker does stop the agent plugin, so the test would notice an import.
    agent_executable = str(Path(sys.executable).parent / "spire-tpm-attestor-agent")
    result = subprocess.run(
        [agent_executable],
        env=dict(env, NodeAttestor="NodeAttestor"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"[ERROR] the TPM agent plugin cannot start: tpm2-pytss is not installed" in (
        result.stderr
    )

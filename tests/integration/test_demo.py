"""`make demo` (python -m spire_tpm_attestor.testing.demo) attests end to end and cleans up."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.swtpm
def test_demo_prints_the_agent_id_and_selectors() -> None:
    pytest.importorskip("tpm2_pytss")
    result = subprocess.run(
        [sys.executable, "-m", "spire_tpm_attestor.testing.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"spiffe_id: spiffe://example.org/spire/agent/tpm/([0-9a-f]{64})\n", result.stdout
    )
    assert match, result.stdout
    assert f"  tpm:pub_hash:{match.group(1)}\n" in result.stdout
    assert "  tpm:ek:model:swtpm\n" in result.stdout
    assert "  tpm:name:demo-node\n" in result.stdout
    assert re.search(r"  tpm:pcr:sha256:7:[0-9a-f]{64}\n", result.stdout)

"""EK CA bundles reload on change inside the running server plugin, with no Configure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest

from spire_tpm_attestor.harness import PluginProcess, relay_attestation
from spire_tpm_attestor.swtpm import SWTPM, TestCA
from tests.integration.plugins import expect_rejection, hcl, log_entries, wait_for_log

pytestmark = pytest.mark.swtpm


def wait_for_reload(server: PluginProcess, seen: int, message: str = "reloaded") -> dict[str, str]:
    return wait_for_log(
        server,
        lambda e: e.get("what") == "ek_ca_path" and e["@message"].startswith(message),
        after=seen,
    )


@pytest.fixture
def rogue(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "rogue", name="Rogue TPM")


def test_a_ca_added_to_the_directory_admits_without_a_restart(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    rogue: TestCA,
    tmp_path: Path,
) -> None:
    cas = tmp_path / "ek-ca"
    cas.mkdir()
    shutil.copy(rogue.root_path, cas / "rogue.pem")
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(cas)))
    audit = expect_rejection(
        agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain to ek_ca_path"
    )
    assert audit["check"] == "ek_cert_chain"

    seen = len(log_entries(server))
    shutil.copy(ek_ca.bundle_path, cas / ".incoming")
    os.replace(cas / ".incoming", cas / "vendor.pem")
    wait_for_reload(server, seen)
    assert relay_attestation(agent, server).spiffe_id.startswith("spiffe://example.org/")

    # Removing it again takes the trust away again.
    seen = len(log_entries(server))
    (cas / "vendor.pem").unlink()
    wait_for_reload(server, seen)
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain")


def test_a_bad_bundle_file_keeps_the_last_good_bundle(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    rogue: TestCA,
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "ek-ca.pem"
    shutil.copy(ek_ca.bundle_path, bundle)
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(bundle)))
    assert relay_attestation(agent, server).spiffe_id

    seen = len(log_entries(server))
    bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    failure = wait_for_reload(server, seen, "reload failed")
    assert str(bundle) in failure["reason"], failure
    assert failure["@level"] == "warn"
    assert relay_attestation(agent, server).spiffe_id  # still the last good bundle

    # A good file again, now the wrong CA: the new bundle is in force.
    seen = len(log_entries(server))
    shutil.copy(rogue.bundle_path, bundle)
    wait_for_reload(server, seen)
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain")

"""EK CA bundles reload on change inside the running server plugin, with no Configure;
removing a CA or deleting a `file` list takes its trust away at once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest

from server_plugin.allowlist import AllowlistEntry
from spire_tpm_attestor.runtime.host import PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.http_servers import document
from tests.integration.platform_setup import provision_devid
from tests.integration.plugins import (
    expect_rejection,
    hcl,
    hcl_block,
    log_entries,
    provisioned_hash,
    wait_for_log,
)

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


# --- removing trust material takes it away, without a restart ------------------------


def test_a_removed_ca_file_of_a_list_is_no_longer_trusted(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    rogue: TestCA,
    tmp_path: Path,
) -> None:
    vendor = tmp_path / "vendor.pem"
    shutil.copy(ek_ca.bundle_path, vendor)
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=[str(rogue.root_path), str(vendor)]))
    assert relay_attestation(agent, server).spiffe_id

    seen = len(log_entries(server))
    vendor.unlink()
    removed = wait_for_reload(server, seen, "ek_ca_path: ")
    assert str(vendor) in removed["@message"] and removed["@level"] == "warn", removed
    wait_for_reload(server, seen)
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain")
    assert audit["check"] == "ek_cert_chain"


def test_an_emptied_ca_directory_trusts_nothing(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> None:
    cas = tmp_path / "ek-ca"
    cas.mkdir()
    shutil.copy(ek_ca.bundle_path, cas / "vendor.pem")
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(cas)))
    assert relay_attestation(agent, server).spiffe_id

    seen = len(log_entries(server))
    (cas / "vendor.pem").unlink()
    error = wait_for_reload(server, seen, "ek_ca_path: no certificates remain")
    assert error["@level"] == "error", error
    wait_for_reload(server, seen)
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "no EK CA")
    assert audit["check"] == "ek_cert_chain"


def test_a_removed_devid_ca_is_no_longer_trusted(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    rogue: TestCA,
    tmp_path: Path,
) -> None:
    devid_ca = TestCA.create(tmp_path / "devid-ca", name="Test DevID")
    devid = provision_devid(swtpm.tcti, devid_ca, tmp_path / "devid")
    trusted = tmp_path / "devid-ca.pem"
    shutil.copy(devid_ca.root_path, trusted)
    agent.configure(hcl(tcti=swtpm.tcti, **devid.agent_options()))
    server.configure(
        hcl(
            ek_ca_path=str(ek_ca.bundle_path),
            devid_ca_path=[str(rogue.root_path), str(trusted)],
            require_devid=True,
        )
    )
    assert relay_attestation(agent, server).spiffe_id

    seen = len(log_entries(server))
    trusted.unlink()
    wait_for_log(
        server,
        lambda e: e.get("what") == "devid_ca_path" and e["@message"] == "reloaded",
        after=seen,
    )
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "DevID")
    assert audit["check"].startswith("devid"), audit


@pytest.mark.parametrize("kind", ["allowlist", "denylist"])
def test_a_deleted_file_list_fails_closed(
    agent: PluginProcess,
    server: PluginProcess,
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    tmp_path: Path,
    kind: str,
) -> None:
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, "rsa2048")
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    listed = tmp_path / "list.json"
    if kind == "allowlist":  # the EK is admitted by this list alone
        listed.write_bytes(document(AllowlistEntry(pub_hash, name="node7")))
        options = hcl(ek_policy="allowlist")
    else:  # the EK is certified, and this deny list does not list it
        listed.write_bytes(document())
        options = hcl(ek_ca_path=str(ek_ca.bundle_path))
    server.configure(
        "\n".join([options, hcl_block(kind, "inventory", type="file", path=str(listed))])
    )
    assert relay_attestation(agent, server).spiffe_id

    listed.unlink()
    words = "allowlist lookup failed" if kind == "allowlist" else "deny list lookup failed"
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, words)
    assert audit["check"] == f"{kind}_lookup"
    assert str(listed) in audit["reason"] and "was removed" in audit["reason"]

"""EK certificates, templates and chains as manufacturers provision them in NV, through the
real plugin processes and swtpm: the high range, a provisioned template or nonce, and the
chain certificates of indices 0x01C00100-0x01C001FF."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from spire_tpm_attestor import wire
from spire_tpm_attestor.runtime.host import PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import (
    SWTPM,
    provision_ek_certificates,
    provision_ek_chain,
    write_ek_certificate_nv,
)
from spire_tpm_attestor.tpm.constants import EK_CHAIN_FIRST_INDEX, EK_TEMPLATES
from tests.integration.plugins import expect_rejection, hcl, log_entries, provisioned_hash

tss = pytest.importorskip("tpm2_pytss")
tss_utils = pytest.importorskip("tpm2_pytss.utils")

from agent_plugin.tpm import (  # noqa: E402 - needs tpm2-pytss, checked just above
    EndorsementKey,
    TPMSession,
)

pytestmark = pytest.mark.swtpm

TEMPLATES = {t.tcg_name: t for t in EK_TEMPLATES}


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def read_ek(tcti: str, algorithm: str | None = None) -> EndorsementKey:
    with TPMSession(tcti) as tpm:
        return tpm.read_ek(algorithm)


# -- the high range -------------------------------------------------------------------


@pytest.mark.parametrize(("tcg_name", "algorithm"), [("H-2", "ecc256"), ("H-6", "rsa3072")])
def test_high_range_certificate_attests(
    agent: PluginProcess,
    server: PluginProcess,
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    tcg_name: str,
    algorithm: str,
) -> None:
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, tcg_name)
    agent.configure(hcl(tcti=bare_swtpm.tcti, ek_algorithm=algorithm))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    result = relay_attestation(agent, server)
    assert result.spiffe_id.endswith(f"/tpm/{pub_hash}")
    # Without ek_algorithm the agent finds the certificate in the high range by itself.
    ek = read_ek(bare_swtpm.tcti)
    assert (ek.algorithm, ek.high_range) == (algorithm, True)


# -- a provisioned template or nonce --------------------------------------------------


def default_template(tcg_name: str) -> Any:
    def nothing_in_nv(index: int) -> bytes:
        raise tss_utils.NoSuchIndex(index)

    def placeholder_certificate(index: int) -> bytes:
        if index == TEMPLATES[tcg_name].cert_index:
            return b""
        raise tss_utils.NoSuchIndex(index)

    reader = placeholder_certificate if TEMPLATES[tcg_name].high_range else nothing_in_nv
    _, template = tss_utils.create_ek_template(TEMPLATES[tcg_name].template, reader)
    return template.publicArea


def rsa_template_with_unique(tcg_name: str, unique: bytes) -> bytes:
    """The TCG default template of `tcg_name` (an RSA one) with its own `unique`."""
    area = default_template(tcg_name)
    area.unique.rsa = unique
    return bytes(area.marshal())


PROVISIONING = {
    # name: (TCG template, what goes where, what the agent reports)
    "low range nonce (RSA)": ("L-1", {"nonce": b"manufacturer nonce"}, ("nonce",)),
    "low range nonce (P-256)": ("L-2", {"nonce": b"manufacturer nonce"}, ("nonce",)),
    "low range template": ("L-1", {"template": b"\x42" * 256}, ("template",)),
    "low range template and nonce": (
        "L-1",
        {"template": b"\x42" * 256, "nonce": b"\x07" * 16},
        ("template", "nonce"),
    ),
    "high range template": ("H-1", {"template": b"\x42" * 256}, ("template",)),
}


@pytest.mark.parametrize("case", sorted(PROVISIONING))
def test_ek_from_a_provisioned_template_or_nonce(
    agent: PluginProcess, server: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA, case: str
) -> None:
    tcg_name, contents, reported = PROVISIONING[case]
    ek_type = TEMPLATES[tcg_name]
    default_hash = provisioned_hash(bare_swtpm, ek_ca, tcg_name)
    for what, value in contents.items():
        if what == "template":
            assert ek_type.template_index is not None
            write_ek_certificate_nv(
                bare_swtpm.tcti, ek_type.template_index, rsa_template_with_unique(tcg_name, value)
            )
        else:
            assert ek_type.nonce_index is not None
            write_ek_certificate_nv(bare_swtpm.tcti, ek_type.nonce_index, value)
    # The manufacturer certifies the EK its template and nonce make.
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, tcg_name)
    assert pub_hash != default_hash

    ek = read_ek(bare_swtpm.tcti, ek_type.algorithm)
    assert ek.provisioned == reported
    agent.configure(hcl(tcti=bare_swtpm.tcti, ek_algorithm=ek_type.algorithm))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    assert relay_attestation(agent, server).spiffe_id.endswith(f"/tpm/{pub_hash}")


# -- chain certificates ---------------------------------------------------------------


def test_intermediate_from_nv_completes_the_chain(
    agent: PluginProcess, server: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA
) -> None:
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, "rsa2048")
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.root_path)))  # the root alone
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain")

    provision_ek_chain(bare_swtpm.tcti, [der(ek_ca.intermediate_certificate)])
    result = relay_attestation(agent, server)
    assert result.spiffe_id.endswith(f"/tpm/{pub_hash}")
    # The anchor is the configured root, not a certificate the agent sent.
    root_fingerprint = hashlib.sha256(der(ek_ca.root_certificate)).hexdigest()
    assert f"ek:ca:fingerprint:{root_fingerprint}" in result.selectors


def test_chain_index_with_several_certificates_and_padding(
    bare_swtpm: SWTPM, ek_ca: TestCA
) -> None:
    intermediate, root = der(ek_ca.intermediate_certificate), der(ek_ca.root_certificate)
    provision_ek_chain(bare_swtpm.tcti, [intermediate + root + b"\xff" * 40, root])
    ek = read_ek(bare_swtpm.tcti)
    assert ek.intermediates == (intermediate, root, root)


def test_unreadable_chain_index_is_skipped(
    agent: PluginProcess, server: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA
) -> None:
    provisioned_hash(bare_swtpm, ek_ca, "rsa2048")
    provision_ek_chain(
        bare_swtpm.tcti, [b"\x04\x03abc", b"\x30\x03abc", der(ek_ca.intermediate_certificate)]
    )
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.root_path)))
    seen = len(log_entries(agent))
    relay_attestation(agent, server)
    skipped = [
        entry["nv_index"]
        for entry in log_entries(agent)[seen:]
        if entry["@message"] == "skipping an EK chain NV index"
    ]
    assert skipped == [f"{EK_CHAIN_FIRST_INDEX:#010x}", f"{EK_CHAIN_FIRST_INDEX + 1:#010x}"]


def test_no_more_chain_certificates_than_a_payload_carries(
    bare_swtpm: SWTPM, ek_ca: TestCA
) -> None:
    intermediate = der(ek_ca.intermediate_certificate)
    provision_ek_chain(bare_swtpm.tcti, [intermediate] * (wire.MAX_CHAIN_CERTIFICATES + 2))
    ek = read_ek(bare_swtpm.tcti)
    assert len(ek.intermediates) == wire.MAX_CHAIN_CERTIFICATES


def test_self_signed_certificate_from_the_agent_is_no_trust_anchor(
    agent: PluginProcess, server: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> None:
    # A forger's CA: its self-signed root sent by the agent would complete the chain,
    # if anything the agent sends could be an anchor.
    rogue = TestCA.create(tmp_path / "rogue", name="Rogue TPM")
    provision_ek_certificates(bare_swtpm.tcti, rogue, algorithms=("rsa2048",))
    provision_ek_chain(
        bare_swtpm.tcti, [der(rogue.intermediate_certificate), der(rogue.root_certificate)]
    )
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    audit = expect_rejection(
        agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain to ek_ca_path"
    )
    assert audit["check"] == "ek_cert_chain"

"""Certificates as manufacturers ship them, end to end: each deviation class written to
swtpm NV, read by the real agent plugin and verified by the real server plugin; the same
certificate altered by one byte refused; CA bundles with bad certificates configured."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.runtime.host import AttestationFailed, PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import (
    SWTPM,
    provision_ek_certificates,
    write_ek_certificate_nv,
)
from spire_tpm_attestor.tpm.constants import EK_TEMPLATES
from spire_tpm_attestor.x509.certificate import to_pem
from tests.integration.plugins import audit_line_after, audit_lines, hcl, rejection_line
from tests.unit.x509_builders import CA_DEVIATIONS, EK_DEVIATIONS, Deviation, der

pytestmark = pytest.mark.swtpm

RSA_EK_INDEX = next(t.cert_index for t in EK_TEMPLATES if t.tcg_name == "L-1")
CLI = str(Path(sys.executable).parent / "spire-tpm-attestor")


class Node:
    """One swtpm for the module, its RSA EK certified by `ek_ca`; NV rewritten per test."""

    def __init__(self, swtpm: SWTPM, ek_ca: TestCA) -> None:
        self.swtpm = swtpm
        certificate = provision_ek_certificates(swtpm.tcti, ek_ca, ("rsa2048",))["rsa2048"]
        self.clean = der(certificate)
        self.pub_hash = ek_hash(certificate.public_key())

    def holds(self, nv_content: bytes) -> None:
        write_ek_certificate_nv(self.swtpm.tcti, RSA_EK_INDEX, nv_content)


@pytest.fixture(scope="module")
def node(ek_ca: TestCA) -> Iterator[Node]:
    pytest.importorskip("tpm2_pytss")
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed")
    with SWTPM() as swtpm:
        yield Node(swtpm, ek_ca)


def attest(agent: PluginProcess, server: PluginProcess, node: Node) -> list[str]:
    agent.configure(hcl(tcti=node.swtpm.tcti, ek_algorithm="rsa2048"))
    return relay_attestation(agent, server).selectors


def refused(agent: PluginProcess, server: PluginProcess, node: Node) -> AttestationFailed:
    agent.configure(hcl(tcti=node.swtpm.tcti, ek_algorithm="rsa2048"))
    with pytest.raises(AttestationFailed) as failure:
        relay_attestation(agent, server)
    assert failure.value.side == "server"
    return failure.value


@pytest.mark.parametrize("deviation", EK_DEVIATIONS, ids=lambda d: d.label)
def test_each_deviation_from_nv_is_admitted_and_its_forgery_refused(
    agent: PluginProcess, server: PluginProcess, node: Node, ek_ca: TestCA, deviation: Deviation
) -> None:
    server.configure(hcl(ek_policy="cert", ek_ca_path=str(ek_ca.bundle_path)))
    deviant, _ = deviation.make(node.clean, ek_ca.intermediate)
    node.holds(deviant)
    selectors = attest(agent, server, node)
    assert f"pub_hash:{node.pub_hash}" in selectors
    assert {"ek:manufacturer:id:53575450", "ek:model:swtpm"} <= set(selectors)
    node.holds(deviation.forge(node.clean, ek_ca.intermediate))
    seen = len(audit_lines(server))
    failure = refused(agent, server, node)
    assert failure.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    audit = rejection_line(server, failure, seen)
    assert audit["check"] in ("ek_cert_chain", "ek_certificate")


@pytest.mark.parametrize("deviation", CA_DEVIATIONS, ids=lambda d: d.label)
def test_a_deviant_intermediate_in_ek_ca_path_verifies(
    agent: PluginProcess,
    server: PluginProcess,
    node: Node,
    ek_ca: TestCA,
    deviation: Deviation,
    tmp_path: Path,
) -> None:
    deviant, _ = deviation.make(ek_ca.intermediate.der, ek_ca.root)
    (tmp_path / "bundle.pem").write_bytes(to_pem(deviant) + ek_ca.root.pem)
    server.configure(hcl(ek_ca_path=str(tmp_path / "bundle.pem")))
    node.holds(node.clean)
    assert f"pub_hash:{node.pub_hash}" in attest(agent, server, node)


def test_a_bundle_with_bad_certificates_configures_and_validate_notes_them(
    agent: PluginProcess, server: PluginProcess, node: Node, ek_ca: TestCA, tmp_path: Path
) -> None:
    cas = tmp_path / "cas"
    (cas / "vendor" / "roots").mkdir(parents=True)
    (cas / "vendor" / "roots" / "bundle.pem").write_bytes(
        ek_ca.root.pem + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    (cas / "vendor" / "ek-ca.der").write_bytes(ek_ca.intermediate.der)
    (cas / "README").write_bytes(b"CA certificates of our TPM vendors")
    config = hcl(ek_ca_path=str(cas))
    notes = server.validate(config)
    assert notes == [
        f"ek_ca_path: skipped {cas / 'README'}: certificate is neither PEM nor a DER SEQUENCE",
        f"ek_ca_path: skipped {cas / 'vendor' / 'roots' / 'bundle.pem'}: "
        "certificate 2 of 2: certificate: not a SEQUENCE of three elements",
    ]
    server.configure(config)
    node.holds(node.clean)
    assert f"pub_hash:{node.pub_hash}" in attest(agent, server, node)
    (cas / "vendor" / "ek-ca.der").unlink()
    (cas / "vendor" / "roots" / "bundle.pem").unlink()
    with pytest.raises(grpc.RpcError, match="no usable CA certificate"):
        server.configure(config)


def test_an_unreadable_certificate_is_ignored_when_the_allowlist_admits(
    agent: PluginProcess, server: PluginProcess, node: Node, ek_ca: TestCA, tmp_path: Path
) -> None:
    (tmp_path / node.pub_hash).write_text("{}")
    node.holds(b"\x30\x03\x02\x01\x01")  # a SEQUENCE the agent sends, but no certificate
    for policy in ("allowlist", "cert_or_allowlist"):
        server.configure(
            hcl(ek_policy=policy, ek_ca_path=str(ek_ca.bundle_path), hash_path=str(tmp_path))
        )
        seen = len(audit_lines(server))
        attest(agent, server, node)
        audit = audit_line_after(server, seen)
        assert audit["decision"] == "admitted"
        assert audit["ek_certificate"] == (
            "ignored: EK certificate cannot be parsed: "
            "certificate: not a SEQUENCE of three elements"
        )
    server.configure(hcl(ek_policy="cert", ek_ca_path=str(ek_ca.bundle_path)))
    assert refused(agent, server, node).code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_cli_reads_what_the_agent_reads(node: Node, ek_ca: TestCA, tmp_path: Path) -> None:
    """A raw NV read, the TPM 1.2-era structure and padding included, through the CLI."""
    stored = next(d for d in EK_DEVIATIONS if d.label == "tcg-stored-certificate")
    nv_read = stored.make(node.clean, ek_ca.intermediate)[0] + b"\xff" * 64
    (tmp_path / "nv.bin").write_bytes(nv_read)
    result = subprocess.run(
        [CLI, "ek", "verify", str(tmp_path / "nv.bin"), "--ca-path", str(ek_ca.directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"ek_hash: {node.pub_hash}" in result.stdout
    assert "quirks: nv-padding, tcg-stored-certificate" in result.stdout
    (tmp_path / "nv.bin").write_bytes(b"\x10\x01\x00\x00")
    result = subprocess.run(
        [CLI, "ek", "inspect", str(tmp_path / "nv.bin")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr

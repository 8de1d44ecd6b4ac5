"""ek_ca_path as operators lay it out: recursive directories, odd certificates skipped
with a reason, every certificate a trust anchor."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from server_plugin.ca_bundle import load_ca_paths
from server_plugin.config import build_server_config
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.x509 import Certificate, load_certificate, verify_chain
from spire_tpm_attestor.x509.certificate import to_pem
from tests.unit.x509_builders import Node, add_extension, der, make_ca, resign

NOW = datetime.datetime.now(datetime.UTC)
CORE = CoreConfig("example.org")
UNKNOWN_CRITICAL = "1.3.6.1.4.1.99999.7"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("bundle-ca"))


def new_ek() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def names(certificates: list[Certificate]) -> list[str]:
    return sorted(cert.subject_common_name or "" for cert in certificates)


def loaded(paths: list[Path]) -> tuple[list[Certificate], list[tuple[str, str]]]:
    by_file, skipped = load_ca_paths([str(path) for path in paths])
    certificates = [cert for certs in by_file.values() for cert in certs]
    return certificates, [(s.path, s.reason) for s in skipped]


def with_unknown_critical_extension(ca: TestCA) -> bytes:
    def edit(fields: list[Node]) -> None:
        add_extension(fields, UNKNOWN_CRITICAL, Node(0x05, b""), critical=True)

    return resign(ca.intermediate_certificate, ca.root, edit)


def test_directories_are_read_recursively_and_hidden_entries_skipped(
    tmp_path: Path, ca: TestCA
) -> None:
    vendor = tmp_path / "cas" / "vendor-a"
    (vendor / "roots").mkdir(parents=True)
    (vendor / "intermediates").mkdir()
    (vendor / "roots" / "root.pem").write_bytes(ca.root.pem)
    (vendor / "intermediates" / "ek-ca.der").write_bytes(ca.intermediate.der)
    # Kubernetes: the data lives in a hidden directory, the visible names link into it.
    hidden = tmp_path / "cas" / "..2024_01_01"
    hidden.mkdir()
    (hidden / "other.pem").write_bytes(make_ca("Mounted CA").pem)
    (tmp_path / "cas" / "..data").symlink_to(hidden.name)
    (tmp_path / "cas" / "other.pem").symlink_to(Path("..data") / "other.pem")
    (tmp_path / "cas" / ".notes.txt").write_bytes(b"not a certificate")
    certificates, skipped = loaded([tmp_path / "cas"])
    assert skipped == []
    assert names(certificates) == [
        "Mounted CA",
        "Test TPM EK Intermediate CA",
        "Test TPM Root CA",
    ]
    leaf = load_certificate(der(ca.issue_ek_certificate(new_ek())))
    assert verify_chain(leaf, [], certificates, NOW)[-1].der == ca.root.der


def test_a_symlink_loop_ends(tmp_path: Path, ca: TestCA) -> None:
    (tmp_path / "cas").mkdir()
    (tmp_path / "cas" / "root.pem").write_bytes(ca.root.pem)
    (tmp_path / "cas" / "loop").symlink_to(tmp_path / "cas")
    certificates, _ = loaded([tmp_path / "cas"])
    assert names(certificates) == ["Test TPM Root CA"]


def test_certificates_that_cannot_be_used_are_skipped_with_a_reason(
    tmp_path: Path, ca: TestCA
) -> None:
    not_a_ca = make_ca("Leafy", ca=False).pem
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        b"a public bundle of manufacturer CAs\n"
        + ca.root.pem
        + b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
        + not_a_ca
        + to_pem(with_unknown_critical_extension(ca))
    )
    (tmp_path / "garbage.der").write_bytes(b"\x30\x03\x02\x01")
    certificates, skipped = loaded([bundle, tmp_path / "garbage.der", tmp_path / "missing"])
    assert names(certificates) == ["Test TPM Root CA"]
    reasons = dict(skipped)
    assert [path for path, _ in skipped].count(str(bundle)) == 3
    bundle_reasons = " | ".join(reason for path, reason in skipped if path == str(bundle))
    assert "certificate 2 of 4: PEM: bad base64" in bundle_reasons
    assert "certificate 3 of 4: 'CN=Leafy' issued by 'CN=Leafy' is not a CA" in bundle_reasons
    assert "certificate 4 of 4: " in bundle_reasons
    assert f"unknown critical extension {UNKNOWN_CRITICAL}" in bundle_reasons
    assert "runs past the end" in reasons[str(tmp_path / "garbage.der")]
    assert reasons[str(tmp_path / "missing")] == "No such file or directory"


def test_an_intermediate_alone_is_a_trust_anchor(tmp_path: Path, ca: TestCA) -> None:
    (tmp_path / "ek-ca.pem").write_bytes(ca.intermediate.pem)
    certificates, _ = loaded([tmp_path / "ek-ca.pem"])
    leaf = load_certificate(der(ca.issue_ek_certificate(new_ek())))
    assert verify_chain(leaf, [], certificates, NOW)[-1].der == ca.intermediate.der


def test_configure_skips_with_notes_and_fails_only_when_nothing_is_usable(
    tmp_path: Path, ca: TestCA
) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "root.pem").write_bytes(ca.root.pem)
    (tmp_path / "good" / "readme.txt").write_bytes(b"Download the CAs from the vendor")
    config = build_server_config(
        f'ek_ca_path = ["{tmp_path / "good"}", "{tmp_path / "gone"}"]', CORE
    )
    try:
        assert names(config.ek_ca_bundle) == ["Test TPM Root CA"]
        assert config.notes == (
            f"ek_ca_path: skipped {tmp_path / 'good' / 'readme.txt'}: "
            "certificate is neither PEM nor a DER SEQUENCE",
            f"ek_ca_path: skipped {tmp_path / 'gone'}: No such file or directory",
        )
    finally:
        config.close()
    os.remove(tmp_path / "good" / "root.pem")
    with pytest.raises(ConfigProblems) as problems:
        build_server_config(f'ek_ca_path = "{tmp_path / "good"}"', CORE)
    assert problems.value.problems == [
        f"ek_ca_path: no usable CA certificate in {tmp_path / 'good'}; "
        f"{tmp_path / 'good' / 'readme.txt'}: certificate is neither PEM nor a DER SEQUENCE"
    ]

"""`ek inspect`, `ek verify` and `ca import` on every deviation class, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spire_tpm_attestor.cli.main import main
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.x509.certificate import to_pem
from tests.unit.x509_builders import CA_DEVIATIONS, EK_DEVIATIONS, Deviation, der, make_ca

RSA_EK = rsa.generate_private_key(65537, 2048).public_key()
EC_EK = ec.generate_private_key(ec.SECP256R1()).public_key()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("cli-ca"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def written(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("deviation", EK_DEVIATIONS, ids=lambda d: d.label)
def test_each_deviation_inspects_and_verifies(
    ca: TestCA, deviation: Deviation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = RSA_EK if deviation.rsa_key else EC_EK
    clean = der(ca.issue_ek_certificate(key))
    deviant, _ = deviation.make(clean, ca.intermediate)
    file = written(tmp_path, "ek.bin", deviant)
    code, out, _ = run(capsys, "ek", "inspect", file, "--json")
    facts = json.loads(out)
    assert code == 0
    assert deviation.quirk in facts["quirks"]
    assert facts["ek_hash"] == ek_hash(key)
    assert facts["key"] == ("rsa-2048" if deviation.rsa_key else "ecc-p256")
    assert (facts["manufacturer"], facts["model"], facts["version"]) == (
        "id:53575450",
        "swtpm",
        "id:20191023",
    )
    assert facts["not_after"] == "9999-12-31T23:59:59Z"
    verify = ("ek", "verify", file, "--ca-path", str(ca.directory), "--json")
    code, out, _ = run(capsys, *verify)
    result = json.loads(out)
    assert (code, result["verified"], result["reason"]) == (0, True, None)
    assert result["chain"][1:] == [
        "CN=Test TPM EK Intermediate CA,O=spire-tpm-attestor tests",
        "CN=Test TPM Root CA,O=spire-tpm-attestor tests",
    ]
    written(tmp_path, "ek.bin", deviation.forge(clean, ca.intermediate))
    code, out, err = run(capsys, *verify)
    assert code in (1, 2), out  # does not chain, or cannot be read at all
    if code == 1:
        assert json.loads(out)["verified"] is False
    else:
        assert "is not a usable EK certificate" in err


@pytest.mark.parametrize("deviation", CA_DEVIATIONS, ids=lambda d: d.label)
def test_ca_deviations_import_and_verify(
    ca: TestCA, deviation: Deviation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deviant, _ = deviation.make(ca.intermediate.der, ca.root)
    bundle = written(tmp_path, "bundle.pem", to_pem(deviant) + ca.root.pem)
    code, out, _ = run(capsys, "ca", "import", bundle, "--out", str(tmp_path / "cas"))
    assert code == 0 and out.count("wrote: ") == 2
    ek = written(tmp_path, "ek.der", der(ca.issue_ek_certificate(EC_EK)))
    code, out, _ = run(capsys, "ek", "verify", ek, "--ca-path", str(tmp_path / "cas"), "--json")
    assert (code, json.loads(out)["verified"]) == (0, True)


def test_ca_import_names_skips_and_reruns(
    ca: TestCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_ca = make_ca("Leafy", ca=False).pem
    bundle = written(tmp_path, "bundle.pem", b"# vendor bundle\n" + ca.root.pem + not_a_ca)
    out_dir = tmp_path / "cas"
    code, out, err = run(capsys, "ca", "import", bundle, "--out", str(out_dir))
    assert code == 1
    (name,) = [p.name for p in out_dir.iterdir()]
    assert name.startswith("spire-tpm-attestor-tests-") and name.endswith(".pem")
    assert (out_dir / name).read_bytes() == ca.root.pem
    assert (
        f"skipped: {bundle}: certificate 2 of 2: 'CN=Leafy' issued by 'CN=Leafy' is not a CA" in err
    )
    code, out, _ = run(capsys, "ca", "import", bundle, "--out", str(out_dir))
    assert code == 1 and out.startswith("already there: ")
    # A renewed CA of the same subject gets a name of its own.
    renewed = TestCA.create(tmp_path / "renewed")
    code, out, _ = run(capsys, "ca", "import", str(renewed.root_path), "--out", str(out_dir))
    assert code == 0 and out.startswith("wrote: ") and f"{name[:-4]}-2.pem" in out
    code, _, err = run(capsys, "ca", "import", str(tmp_path / "missing.pem"), "--out", str(out_dir))
    assert code == 2 and "no usable CA certificate" in err


def test_verify_reports_skipped_ca_files_and_expiry(
    ca: TestCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / "root.pem").write_bytes(ca.root.pem)
    (cas / "notes.txt").write_bytes(b"where these came from")
    ek = written(tmp_path, "ek.pem", to_pem(der(ca.issue_ek_certificate(EC_EK))))
    intermediates = written(tmp_path, "intermediates.pem", ca.intermediate.pem)
    verify = ("ek", "verify", ek, "--ca-path", str(cas), "--intermediates", intermediates)
    code, out, _ = run(capsys, *verify, "--json")
    result = json.loads(out)
    assert (code, result["verified"]) == (0, True)
    assert result["ca_files_skipped"] == [
        {"path": str(cas / "notes.txt"), "reason": "certificate is neither PEM nor a DER SEQUENCE"}
    ]
    later = ("--at", "2199-01-01T00:00:00Z", "--json")
    code, out, _ = run(capsys, *verify, *later)
    assert code == 1 and "has expired" in json.loads(out)["reason"]
    code, out, _ = run(capsys, *verify, *later, "--ek-cert-expiry", "ignore")
    assert code == 0
    code, out, _ = run(capsys, "ek", "verify", ek, "--ca-path", str(tmp_path / "none"), "--json")
    result = json.loads(out)
    assert (code, result["reason"]) == (1, "the CA paths hold no usable CA certificate")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00", b"\x30\x03\x02\x01\x01", b"-----BEGIN CERTIFICATE-----\n!\n", b"\x10\x01\x07"],
    ids=["empty", "zero", "not-a-certificate", "bad-pem", "partial-tcg"],
)
def test_unusable_ek_files_exit_2_without_a_traceback(
    content: bytes, ca: TestCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = written(tmp_path, "ek.bin", content)
    assert run(capsys, "ek", "inspect", file)[0] == 2
    assert run(capsys, "ek", "verify", file, "--ca-path", str(ca.directory))[0] == 2
    assert run(capsys, "hash", "--certificate", file)[0] == 2


def test_a_ca_certificate_is_not_an_ek_certificate(
    ca: TestCA, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "ek", "inspect", str(ca.root_path))
    assert code == 2 and "is a CA certificate, not an EK certificate" in err

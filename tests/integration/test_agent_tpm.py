"""agent_plugin.tpm against a live swtpm; the server half is the project's pure-Python code."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

tss = pytest.importorskip("tpm2_pytss")
tss_utils = pytest.importorskip("tpm2_pytss.utils")

from agent_plugin.tpm import (  # noqa: E402 - needs tpm2-pytss, checked just above
    EndorsementKey,
    TPMAccessError,
    TPMSession,
    flush_all_transients,
)
from spire_tpm_attestor.errors import MalformedInput  # noqa: E402
from spire_tpm_attestor.testing.ca import TestCA  # noqa: E402
from spire_tpm_attestor.testing.swtpm import (  # noqa: E402
    SWTPM,
    provision_ek_certificates,
    write_ek_certificate_nv,
)
from spire_tpm_attestor.tpm.credential import make_credential  # noqa: E402
from spire_tpm_attestor.tpm.keys import check_ak_public  # noqa: E402
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public  # noqa: E402
from spire_tpm_attestor.tpm.verify import verify_quote  # noqa: E402
from spire_tpm_attestor.x509 import certificate_der  # noqa: E402
from tests.integration.tpm_state import leftover_handles  # noqa: E402

SECRET = bytes(range(32))
NONCE = b"\x5a" * 32
RSA_EK_CERT_INDEX = 0x01C00002
SHA256 = 0x000B


SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ek_key(ek: EndorsementKey) -> bytes:
    """The EK public area's key as DER SubjectPublicKeyInfo."""
    public, _ = tss.TPM2B_PUBLIC.unmarshal(ek.public)
    return serialization.load_der_public_key(public.to_der()).public_bytes(*SPKI)


def certificate_key(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_key().public_bytes(*SPKI)


def challenge_for(
    ek_public: bytes, ak_public: bytes, secret: bytes = SECRET
) -> tuple[bytes, bytes]:
    """What the server sends: the secret wrapped to the EK and the AK's Name."""
    ak_name = parse_tpm2b_public(ak_public).name()
    return make_credential(parse_tpm2b_public(ek_public), ak_name, secret)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- pure helpers ---------------------------------------------------------------------


def test_certificate_der_strips_padding_and_header(ek_ca: TestCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = ek_ca.issue_ek_certificate(key).public_bytes(serialization.Encoding.DER)
    assert certificate_der(der) == der
    assert certificate_der(der + b"\xff" * 100) == der
    header = b"\x10\x01\x00" + len(der).to_bytes(2, "big")
    assert certificate_der(header + der + b"\x00" * 7) == der


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "neither PEM nor a DER SEQUENCE"),
        (b"\x04\x03abc", "neither PEM nor a DER SEQUENCE"),
        (b"\x30\x85\x00\x00\x00\x00\x01", "unsupported length encoding"),
        (b"\x30\x82\x01\x00" + b"\x00" * 10, "runs past the end"),
    ],
)
def test_certificate_der_rejects_non_certificates(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedInput, match=reason):
        certificate_der(data)


def test_unsupported_tcti_is_named() -> None:
    with pytest.raises(TPMAccessError, match=r"bogus:x \(unsupported TCTI"):
        TPMSession("bogus:x")


def test_unreachable_swtpm_error_names_the_tcti() -> None:
    tcti = f"swtpm:host=127.0.0.1,port={closed_port()}"
    with pytest.raises(TPMAccessError, match="cannot open the TPM; tried " + tcti):
        TPMSession(tcti)


@pytest.mark.skipif(
    os.path.exists("/dev/tpmrm0") or os.path.exists("/dev/tpm0"), reason="host has a TPM"
)
def test_default_tcti_error_names_both_devices() -> None:
    with pytest.raises(TPMAccessError) as raised:
        TPMSession()
    message = str(raised.value)
    assert "device:/dev/tpmrm0 (no such device)" in message
    assert "device:/dev/tpm0 (no such device)" in message


# -- endorsement key ------------------------------------------------------------------


@pytest.mark.swtpm
@pytest.mark.parametrize(
    ("algorithm", "high_range"), [("rsa2048", False), ("ecc256", False), ("ecc384", True)]
)
def test_read_ek_certificate_matches_ek(swtpm: SWTPM, algorithm: str, high_range: bool) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        ek = tpm.read_ek(algorithm)
    assert (ek.algorithm, ek.high_range) == (algorithm, high_range)
    assert ek.certificate is not None
    assert certificate_key(ek.certificate) == ek_key(ek)


@pytest.mark.swtpm
def test_default_algorithm_prefers_rsa(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        ek = tpm.read_ek()
    assert ek.algorithm == "rsa2048"
    assert ek.certificate is not None


@pytest.mark.swtpm
@pytest.mark.parametrize(("provisioned", "high_range"), [("ecc256", False), ("ecc384", True)])
def test_default_algorithm_follows_the_nv_certificate(
    bare_swtpm: SWTPM, ek_ca: TestCA, provisioned: str, high_range: bool
) -> None:
    provision_ek_certificates(bare_swtpm.tcti, ek_ca, [provisioned])
    with TPMSession(bare_swtpm.tcti) as tpm:
        ek = tpm.read_ek()
    assert (ek.algorithm, ek.high_range) == (provisioned, high_range)
    assert ek.certificate is not None
    assert certificate_key(ek.certificate) == ek_key(ek)


@pytest.mark.swtpm
def test_high_range_rsa_certificate_is_found(bare_swtpm: SWTPM, ek_ca: TestCA) -> None:
    provision_ek_certificates(bare_swtpm.tcti, ek_ca, ["H-1"])
    with TPMSession(bare_swtpm.tcti) as tpm:
        ek = tpm.read_ek("rsa2048")
    assert (ek.algorithm, ek.high_range) == ("rsa2048", True)
    assert ek.certificate is not None
    assert certificate_key(ek.certificate) == ek_key(ek)


@pytest.mark.swtpm
def test_no_certificate_anywhere(bare_swtpm: SWTPM) -> None:
    with TPMSession(bare_swtpm.tcti) as tpm:
        ek = tpm.read_ek()
    assert (ek.algorithm, ek.certificate) == ("rsa2048", None)


@pytest.mark.swtpm
@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
@pytest.mark.parametrize("algorithm", ["rsa2048", "ecc256"])
def test_cert_path_fallback_when_nv_is_empty(
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    tmp_path: Path,
    algorithm: str,
    encoding: serialization.Encoding,
) -> None:
    with TPMSession(bare_swtpm.tcti) as tpm:
        public, _ = tss.TPM2B_PUBLIC.unmarshal(tpm.read_ek(algorithm).public)
    key = serialization.load_der_public_key(public.to_der())
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    certificate = ek_ca.issue_ek_certificate(key)
    path = tmp_path / "ek-cert"
    path.write_bytes(certificate.public_bytes(encoding))

    # No algorithm configured: the file's key decides which EK to use.
    with TPMSession(bare_swtpm.tcti) as tpm:
        ek = tpm.read_ek(cert_path=str(path))
    assert ek.algorithm == algorithm
    assert ek.certificate == certificate.public_bytes(serialization.Encoding.DER)


@pytest.mark.swtpm
def test_nv_certificate_wins_over_cert_path(swtpm: SWTPM, tmp_path: Path) -> None:
    stale = tmp_path / "stale.pem"
    stale.write_text("not read")
    with TPMSession(swtpm.tcti) as tpm:
        ek = tpm.read_ek("rsa2048", cert_path=str(stale))
    assert ek.certificate is not None
    assert certificate_key(ek.certificate) == ek_key(ek)


@pytest.mark.swtpm
def test_unreadable_cert_path_is_reported(bare_swtpm: SWTPM, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"hello")
    with TPMSession(bare_swtpm.tcti) as tpm:
        with pytest.raises(TPMAccessError, match="neither PEM nor a DER SEQUENCE"):
            tpm.read_ek("rsa2048", cert_path=str(garbage))
        with pytest.raises(TPMAccessError, match="cannot read the EK certificate file"):
            tpm.read_ek("rsa2048", cert_path=str(tmp_path / "missing.pem"))


@pytest.mark.swtpm
def test_nv_certificate_with_header_and_padding(bare_swtpm: SWTPM, ek_ca: TestCA) -> None:
    with TPMSession(bare_swtpm.tcti) as tpm:
        public, _ = tss.TPM2B_PUBLIC.unmarshal(tpm.read_ek("rsa2048").public)
    key = serialization.load_der_public_key(public.to_der())
    assert isinstance(key, rsa.RSAPublicKey)
    der = ek_ca.issue_ek_certificate(key).public_bytes(serialization.Encoding.DER)
    header = b"\x10\x01\x00" + len(der).to_bytes(2, "big")
    write_ek_certificate_nv(bare_swtpm.tcti, RSA_EK_CERT_INDEX, header + der + b"\xff" * 64)
    with TPMSession(bare_swtpm.tcti) as tpm:
        assert tpm.read_ek().certificate == der


@pytest.mark.swtpm
def test_certificate_for_another_key_is_passed_through(bare_swtpm: SWTPM, ek_ca: TestCA) -> None:
    # The agent reports what NV holds; binding it to the EK is the server's check.
    provision_ek_certificates(bare_swtpm.tcti, ek_ca, ["rsa2048"], foreign_key=True)
    with TPMSession(bare_swtpm.tcti) as tpm:
        ek = tpm.read_ek()
    assert ek.certificate is not None
    assert certificate_key(ek.certificate) != ek_key(ek)


@pytest.mark.swtpm
def test_unknown_ek_algorithm(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm, pytest.raises(TPMAccessError, match="unknown EK algorithm"):
        tpm.read_ek("dsa1024")


# -- attestation key ------------------------------------------------------------------


@pytest.mark.swtpm
@pytest.mark.parametrize("algorithm", ["rsa", "ecc"])
def test_ak_is_a_restricted_signing_key(swtpm: SWTPM, algorithm: str) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        ak_public = tpm.create_ak(algorithm)
    area = tss.TPM2B_PUBLIC.unmarshal(ak_public)[0].publicArea
    attributes = area.objectAttributes
    for required in (
        "RESTRICTED",
        "SIGN_ENCRYPT",
        "FIXEDTPM",
        "FIXEDPARENT",
        "SENSITIVEDATAORIGIN",
    ):
        assert attributes & getattr(tss.TPMA_OBJECT, required), required
    assert not attributes & tss.TPMA_OBJECT.DECRYPT
    assert area.type == (tss.TPM2_ALG.RSA if algorithm == "rsa" else tss.TPM2_ALG.ECC)
    check_ak_public(parse_tpm2b_public(ak_public))


@pytest.mark.swtpm
def test_each_ak_is_fresh(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        first = tpm.create_ak("ecc")
        second = tpm.create_ak("ecc")
    assert first != second


@pytest.mark.swtpm
def test_unknown_ak_algorithm(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm, pytest.raises(TPMAccessError, match="unknown AK algorithm"):
        tpm.create_ak("dsa")
    assert leftover_handles(swtpm.tcti) == []


# -- credential activation and quotes -------------------------------------------------


@pytest.mark.swtpm
@pytest.mark.parametrize("ak_algorithm", ["rsa", "ecc"])
@pytest.mark.parametrize("ek_algorithm", ["rsa2048", "ecc256", "ecc384"])
def test_activate_credential_round_trip(swtpm: SWTPM, ek_algorithm: str, ak_algorithm: str) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        ek = tpm.read_ek(ek_algorithm)
        ak_public = tpm.create_ak(ak_algorithm)
        blob, encrypted_secret = challenge_for(ek.public, ak_public)
        assert tpm.activate_credential(blob, encrypted_secret) == SECRET
    assert leftover_handles(swtpm.tcti) == []


@pytest.mark.swtpm
def test_credential_for_another_ak_is_refused(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        ek = tpm.read_ek("rsa2048")
        other_ak = tpm.create_ak("ecc")
        tpm.create_ak("ecc")
        blob, encrypted_secret = challenge_for(ek.public, other_ak)
        with pytest.raises(TPMAccessError, match=r"activating the credential: .*integrity"):
            tpm.activate_credential(blob, encrypted_secret)
    assert leftover_handles(swtpm.tcti) == []


@pytest.mark.swtpm
def test_activation_needs_ek_and_ak(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm, pytest.raises(TPMAccessError, match="read_ek"):
        tpm.activate_credential(b"\x00\x00", b"\x00\x00")


@pytest.mark.swtpm
@pytest.mark.parametrize("ak_algorithm", ["rsa", "ecc"])
def test_quote_verifies_with_the_server_code(swtpm: SWTPM, ak_algorithm: str) -> None:
    selection: list[tuple[str | int, list[int]]] = [("sha256", [*range(12), 16]), (0x0004, [16])]
    with TPMSession(swtpm.tcti) as tpm:
        ak_public = tpm.create_ak(ak_algorithm)
        quote = tpm.quote(selection, NONCE)
    # More than 8 values: PCR_Read needed more than one call.
    assert [(v.hash_alg, v.index) for v in quote.pcr_values] == [
        *((SHA256, index) for index in [*range(12), 16]),
        (0x0004, 16),
    ]
    values = {(v.hash_alg, v.index): v.digest for v in quote.pcr_values}
    verify_quote(
        parse_tpm2b_public(ak_public),
        quote.attest,
        quote.signature,
        NONCE,
        values,
        required=list(values),
    )


@pytest.mark.swtpm
def test_quote_with_empty_selection(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        ak_public = tpm.create_ak("ecc")
        quote = tpm.quote([], NONCE)
    assert quote.pcr_values == []
    verify_quote(parse_tpm2b_public(ak_public), quote.attest, quote.signature, NONCE, {})


@pytest.mark.swtpm
def test_quote_is_retaken_when_an_extend_races(
    swtpm: SWTPM, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        ak_public = tpm.create_ak("ecc")
        # Inject the race through the session's own connection: swtpm serves one client.
        read_pcrs = tpm._read_pcrs
        reads: list[int] = []

        def extend_then_read(banks: list[tuple[int, list[int]]]) -> object:
            if not reads:  # between the first quote and its PCR read
                tpm._esapi.pcr_event(tss.ESYS_TR.PCR16, b"racing measurement")
            reads.append(1)
            return read_pcrs(banks)

        monkeypatch.setattr(tpm, "_read_pcrs", extend_then_read)
        quote = tpm.quote([("sha256", [0, 16])], NONCE)
    assert len(reads) == 2
    values = {(v.hash_alg, v.index): v.digest for v in quote.pcr_values}
    assert values[(SHA256, 16)] != bytes(32)
    verify_quote(parse_tpm2b_public(ak_public), quote.attest, quote.signature, NONCE, values)


@pytest.mark.swtpm
@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ([(0x0012, [0])], r"quoting the PCRs: .*hash algorithm"),
        ([("md5", [0])], "unknown PCR bank"),
        ([("sha256", [32])], "out of range"),
    ],
)
def test_bad_pcr_selection(
    swtpm: SWTPM, selection: list[tuple[str | int, list[int]]], message: str
) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        tpm.create_ak("ecc")
        with pytest.raises(TPMAccessError, match=message):
            tpm.quote(selection, NONCE)
    assert leftover_handles(swtpm.tcti) == []


@pytest.mark.swtpm
def test_quote_over_an_unallocated_bank(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sha1_off = tss.TPMS_PCR_SELECTION(hash=tss.TPM2_ALG.SHA1, sizeofSelect=3, pcrSelect=bytes(3))
    sha256_on = tss.TPMS_PCR_SELECTION.parse("sha256:all")
    with SWTPM(state) as simulator:
        esapi = tss.ESAPI(simulator.tcti)
        try:
            esapi.pcr_allocate(
                tss.TPML_PCR_SELECTION([sha1_off, sha256_on]), auth_handle=tss.ESYS_TR.RH_PLATFORM
            )
        finally:
            esapi.close()
    with SWTPM(state) as simulator, TPMSession(simulator.tcti) as tpm:  # reboot: new banks
        tpm.create_ak("ecc")
        # The TPM quotes what it has and drops the rest; the agent must not send that.
        with pytest.raises(TPMAccessError, match=r"does not have PCRs sha1:0"):
            tpm.quote([("sha256", [0]), ("sha1", [0])], NONCE)
        assert len(tpm.quote([("sha256", [0])], NONCE).pcr_values) == 1


@pytest.mark.swtpm
def test_overlong_nonce(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        tpm.create_ak("ecc")
        with pytest.raises(TPMAccessError, match="nonce of 65 bytes"):
            tpm.quote([], bytes(65))


# -- resource hygiene -----------------------------------------------------------------


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


# (EK algorithm, AK algorithm, what goes wrong). Failures hit every step that holds a
# handle: after the EK, after the AK, inside the policy session, inside the quote.
CYCLES = [
    ("rsa2048", "rsa", None),
    ("rsa2048", "ecc", "corrupt integrity HMAC"),
    ("ecc384", "ecc", None),
    ("ecc256", "rsa", "truncated blob"),
    ("rsa2048", "ecc", "crash after AK"),
    ("ecc384", "rsa", "corrupt encrypted seed"),
    ("ecc256", "ecc", "credential for another AK"),
    ("rsa2048", "ecc", "unavailable PCR bank"),
    ("ecc384", "ecc", "corrupt integrity HMAC"),
    ("rsa2048", "rsa", None),
]


def _attestation_cycle(tcti: str, ek_algorithm: str, ak_algorithm: str, fault: str | None) -> None:
    with TPMSession(tcti) as tpm:
        ek = tpm.read_ek(ek_algorithm)
        ak_public = tpm.create_ak(ak_algorithm)
        if fault == "crash after AK":
            raise RuntimeError("agent crashed mid-attestation")
        blob, encrypted_secret = challenge_for(ek.public, ak_public)
        if fault == "corrupt integrity HMAC":
            blob = _flip(blob, 6)
        elif fault == "truncated blob":
            blob = blob[:-1]
        elif fault == "corrupt encrypted seed":
            encrypted_secret = _flip(encrypted_secret, len(encrypted_secret) - 1)
        elif fault == "credential for another AK":
            tpm.create_ak(ak_algorithm)  # replaces the AK the credential names
        assert tpm.activate_credential(blob, encrypted_secret) == SECRET
        selection: list[tuple[str | int, list[int]]] = [("sha256", [0, 1, 2])]
        if fault == "unavailable PCR bank":
            selection.append((0x0012, [0]))
        tpm.quote(selection, NONCE)


@pytest.mark.swtpm
def test_ten_cycles_do_not_exhaust_object_slots(swtpm: SWTPM) -> None:
    for ek_algorithm, ak_algorithm, fault in CYCLES:
        if fault is None:
            _attestation_cycle(swtpm.tcti, ek_algorithm, ak_algorithm, fault)
        else:
            with pytest.raises((TPMAccessError, RuntimeError)):
                _attestation_cycle(swtpm.tcti, ek_algorithm, ak_algorithm, fault)
        assert leftover_handles(swtpm.tcti) == [], (ek_algorithm, ak_algorithm, fault)


@pytest.mark.swtpm
def test_flush_all_transients_clears_a_dead_process_leftovers(swtpm: SWTPM) -> None:
    esapi = tss.ESAPI(swtpm.tcti)
    for hierarchy in (tss.ESYS_TR.OWNER, tss.ESYS_TR.OWNER, tss.ESYS_TR.ENDORSEMENT):
        template = tss.TPM2B_PUBLIC(publicArea=tss.TPMT_PUBLIC.parse("ecc256"))
        esapi.create_primary(tss.TPM2B_SENSITIVE_CREATE(), template, hierarchy)
    esapi.close()  # like a process that died: three slots stay taken
    with TPMSession(swtpm.tcti) as tpm, pytest.raises(TPMAccessError, match=r"EK: .*out of memory"):
        tpm.read_ek("ecc256")
    assert flush_all_transients(swtpm.tcti) == 3
    _attestation_cycle(swtpm.tcti, "rsa2048", "rsa", None)


# -- persistent keys ------------------------------------------------------------------

PERSISTENT_EK = 0x81010001
PERSISTENT_AK = 0x81000100


def _persist_keys(tcti: str) -> None:
    """What an operator's provisioning script does: persist the EK and an AK."""
    ak_attributes = (
        tss.TPMA_OBJECT.RESTRICTED
        | tss.TPMA_OBJECT.SIGN_ENCRYPT
        | tss.TPMA_OBJECT.FIXEDTPM
        | tss.TPMA_OBJECT.FIXEDPARENT
        | tss.TPMA_OBJECT.SENSITIVEDATAORIGIN
        | tss.TPMA_OBJECT.USERWITHAUTH
    )
    ak_template = tss.TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=ak_attributes)
    esapi = tss.ESAPI(tcti)
    try:
        _, ek_template = tss_utils.create_ek_template("EK-RSA2048", tss_utils.NVReadEK(esapi))
        for template, hierarchy, handle in (
            (ek_template, tss.ESYS_TR.ENDORSEMENT, PERSISTENT_EK),
            (tss.TPM2B_PUBLIC(publicArea=ak_template), tss.ESYS_TR.OWNER, PERSISTENT_AK),
        ):
            key, *_ = esapi.create_primary(tss.TPM2B_SENSITIVE_CREATE(), template, hierarchy)
            esapi.evict_control(tss.ESYS_TR.OWNER, key, handle)
            esapi.flush_context(key)
    finally:
        esapi.close()


@pytest.mark.swtpm
def test_persistent_ek_and_ak(swtpm: SWTPM) -> None:
    _persist_keys(swtpm.tcti)
    with TPMSession(swtpm.tcti) as tpm:
        ek = tpm.read_ek(persistent_handle=PERSISTENT_EK)
        ak_public = tpm.create_ak(persistent_handle=PERSISTENT_AK)
        blob, encrypted_secret = challenge_for(ek.public, ak_public)
        assert tpm.activate_credential(blob, encrypted_secret) == SECRET
        with pytest.raises(TPMAccessError, match="is rsa2048, not ecc256"):
            tpm.read_ek("ecc256", persistent_handle=PERSISTENT_EK)
    assert (ek.algorithm, ek.high_range) == ("rsa2048", False)
    assert ek.certificate is not None
    assert certificate_key(ek.certificate) == ek_key(ek)
    assert leftover_handles(swtpm.tcti) == []
    esapi = tss.ESAPI(swtpm.tcti)
    try:
        _, data = esapi.get_capability(tss.TPM2_CAP.HANDLES, 0x81000000, 64)
        assert {PERSISTENT_EK, PERSISTENT_AK} <= {int(h) for h in data.data.handles}
    finally:
        esapi.close()


@pytest.mark.swtpm
def test_missing_persistent_handle(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm, pytest.raises(TPMAccessError, match="0x81010001"):
        tpm.read_ek(persistent_handle=PERSISTENT_EK)


@pytest.mark.swtpm
def test_an_ek_persisted_at_the_tcg_handle_is_reused(
    swtpm: SWTPM, caplog: pytest.LogCaptureFixture
) -> None:
    _persist_keys(swtpm.tcti)
    with caplog.at_level("DEBUG"), TPMSession(swtpm.tcti) as tpm:
        ek = tpm.read_ek("rsa2048")
        ak_public = tpm.create_ak()
        blob, encrypted_secret = challenge_for(ek.public, ak_public)
        assert tpm.activate_credential(blob, encrypted_secret) == SECRET
    assert "using the EK persisted at 0x81010001" in caplog.text
    assert ek.certificate is not None
    assert certificate_key(ek.certificate) == ek_key(ek)
    assert leftover_handles(swtpm.tcti) == []


@pytest.mark.swtpm
def test_another_key_at_the_tcg_handle_is_not_taken_for_the_ek(
    swtpm: SWTPM, caplog: pytest.LogCaptureFixture
) -> None:
    esapi = tss.ESAPI(swtpm.tcti)
    try:  # the P-256 EK where the RSA one belongs: not what the RSA template gives
        _, template = tss_utils.create_ek_template("EK-ECC256", tss_utils.NVReadEK(esapi))
        key, *_ = esapi.create_primary(
            tss.TPM2B_SENSITIVE_CREATE(), template, tss.ESYS_TR.ENDORSEMENT
        )
        esapi.evict_control(tss.ESYS_TR.OWNER, key, PERSISTENT_EK)
        esapi.flush_context(key)
    finally:
        esapi.close()
    with caplog.at_level("DEBUG"), TPMSession(swtpm.tcti) as tpm:
        ek = tpm.read_ek("rsa2048")
        ak_public = tpm.create_ak()
        blob, encrypted_secret = challenge_for(ek.public, ak_public)
        assert tpm.activate_credential(blob, encrypted_secret) == SECRET
    assert "is not this EK; creating it" in caplog.text
    assert ek.algorithm == "rsa2048"
    assert ek.certificate is not None
    assert certificate_key(ek.certificate) == ek_key(ek)
    assert leftover_handles(swtpm.tcti) == []

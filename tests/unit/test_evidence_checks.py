"""The server's evidence checks (PCR quotes and DevID) with software fakes: each rejection,
and its status."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from server_plugin.checks import Rejected
from server_plugin.evidence_checks import (
    VerifiedDevID,
    check_pcr_policy,
    pcr_selectors,
    reported_pcr_values,
    verify_devid_chain,
    verify_devid_public,
    verify_devid_residency,
    verify_devid_signature,
    verify_pcr_quote,
)
from server_plugin.pcr_policy import parse_pcr_policy
from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.status import InvalidArgument, PermissionDenied
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.tpm.constants import TPM_ALG, TPM_ST, TPMA_OBJECT
from spire_tpm_attestor.tpm.structures import PublicArea, parse_tpm2b_public
from spire_tpm_attestor.x509 import Certificate, load_ca_bundle, load_certificate
from tests.unit.tpm_builders import (
    DEVID_ATTRIBUTES,
    marshal_attest,
    marshal_public,
    marshal_selection,
    sha256,
    software_ak,
    tpm_sign,
)

NONCE = b"\x11" * 32
AGENT_NONCE = b"\x22" * 32
SHA256 = TPM_ALG.SHA256

AK_KEY = ec.generate_private_key(ec.SECP256R1())
AK = software_ak(AK_KEY)
DEVID_KEY = ec.generate_private_key(ec.SECP256R1())
DEVID_PUBLIC = marshal_public(DEVID_KEY.public_key(), attributes=DEVID_ATTRIBUTES)
DEVID = parse_tpm2b_public(DEVID_PUBLIC)


def rejection(call: object, *args: object) -> Rejected:
    with pytest.raises(Rejected) as raised:
        call(*args)  # type: ignore[operator]
    return raised.value


def denied(call: object, *args: object) -> Rejected:
    rejected = rejection(call, *args)
    assert isinstance(rejected.error, PermissionDenied), rejected
    return rejected


def malformed(call: object, *args: object) -> Rejected:
    rejected = rejection(call, *args)
    assert isinstance(rejected.error, InvalidArgument), rejected
    return rejected


# -- PCRs ------------------------------------------------------------------------------


def quote_response(
    values: dict[int, bytes], nonce: bytes = NONCE
) -> attestation_pb2.ChallengeResponse:
    indices = sorted(values)
    attest = marshal_attest(
        extra_data=nonce,
        selection=marshal_selection([(SHA256, indices)]),
        pcr_digest=sha256(b"".join(values[i] for i in indices)),
    )
    response = attestation_pb2.ChallengeResponse(
        quote=attest, quote_signature=tpm_sign(AK_KEY, attest, TPM_ALG.ECDSA)
    )
    for index in indices:
        response.pcr_values.add(hash_alg=SHA256, index=index, digest=values[index])
    return response


def test_verified_values_are_those_requested() -> None:
    values = {0: bytes(32), 7: b"\x07" * 32, 16: b"\x10" * 32}
    requested = frozenset({(SHA256, 0), (SHA256, 7)})
    verified = verify_pcr_quote(AK, quote_response(values), NONCE, requested)
    assert verified == {(SHA256, 0): bytes(32), (SHA256, 7): b"\x07" * 32}
    assert pcr_selectors(verified) == [
        f"pcr:sha256:0:{'00' * 32}",
        f"pcr:sha256:7:{'07' * 32}",
    ]


def test_malformed_quote_is_invalid_argument() -> None:
    response = quote_response({0: bytes(32)})
    response.quote_signature = response.quote_signature[:-3]
    rejected = malformed(verify_pcr_quote, AK, response, NONCE, frozenset({(SHA256, 0)}))
    assert rejected.check == "pcr_quote"


def test_quote_of_a_certify_is_denied() -> None:
    attest = marshal_attest(extra_data=NONCE, attest_type=TPM_ST.ATTEST_CERTIFY)
    response = attestation_pb2.ChallengeResponse(
        quote=attest, quote_signature=tpm_sign(AK_KEY, attest, TPM_ALG.ECDSA)
    )
    rejected = denied(verify_pcr_quote, AK, response, NONCE, frozenset({(SHA256, 0)}))
    assert "is not a quote" in str(rejected)


def test_repeated_value_is_malformed() -> None:
    values = [attestation_pb2.PCRValue(hash_alg=SHA256, index=1, digest=bytes(32))] * 2
    assert "reported twice" in str(malformed(reported_pcr_values, values))


def test_policy_names_the_pcr_and_the_value_seen() -> None:
    policy = parse_pcr_policy({"sha256": {"7": ["ab" * 32, "cd" * 32]}})
    check_pcr_policy(policy, {(SHA256, 7): b"\xcd" * 32})
    rejected = denied(check_pcr_policy, policy, {(SHA256, 7): b"\xee" * 32})
    assert rejected.check == "pcr_policy"
    assert str(rejected.error.message) == (
        f"PCR sha256:7 is {'ee' * 32}, which pcr_policy does not allow"
    )
    assert "was not quoted" in str(denied(check_pcr_policy, policy, {}))


# -- DevID certificate and public area -----------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("devid-ca"), name="Unit DevID")


def bundle(ca: TestCA) -> list[Certificate]:
    return load_ca_bundle(ca.root_path)


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def leaf(
    ca: TestCA, key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, *, is_ca: bool, signing: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(signing, False, not signing, False, False, is_ca, False, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
        .issuer_name(ca.intermediate_certificate.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(ca.intermediate_key, hashes.SHA256())
    )


def test_devid_chain_through_the_sent_intermediate(ca: TestCA) -> None:
    certificate = ca.issue_devid_certificate(DEVID_KEY.public_key(), "node-7", serial_number=0xBEEF)
    verified = verify_devid_chain([der(certificate), der(ca.intermediate_certificate)], bundle(ca))
    devid = VerifiedDevID(verified, verify_devid_public(DEVID_PUBLIC, verified))
    assert devid.facts()["DevIDSubjectCN"] == "node-7"
    assert ("devid:serialnumber", "beef") in devid.selectors()
    # Without the intermediate the leaf does not reach the root alone.
    assert denied(verify_devid_chain, [der(certificate)], bundle(ca)).check == "devid_cert_chain"


def test_devid_chain_rejections(ca: TestCA) -> None:
    key = DEVID_KEY.public_key()
    intermediate = der(ca.intermediate_certificate)
    for certificate, words in (
        (leaf(ca, key, is_ca=True, signing=True), "is a CA certificate"),
        (leaf(ca, key, is_ca=False, signing=False), "does not allow digitalSignature"),
    ):
        rejected = denied(verify_devid_chain, [der(certificate), intermediate], bundle(ca))
        assert words in str(rejected)
    assert malformed(verify_devid_chain, [b"\x30\x03junk"], bundle(ca)).check == (
        "devid_certificates"
    )


@pytest.mark.parametrize(
    ("attributes", "words"),
    [
        *[
            (DEVID_ATTRIBUTES & ~attribute, f"{attribute.name} is not set")
            for attribute in (
                TPMA_OBJECT.FIXED_TPM,
                TPMA_OBJECT.FIXED_PARENT,
                TPMA_OBJECT.SENSITIVE_DATA_ORIGIN,
                TPMA_OBJECT.SIGN_ENCRYPT,
            )
        ],
        (DEVID_ATTRIBUTES | TPMA_OBJECT.DECRYPT, "also a decryption key"),
    ],
    ids=["no-fixedTPM", "no-fixedParent", "no-sensitiveDataOrigin", "no-sign", "decrypt"],
)
def test_devid_key_attributes_are_each_required(ca: TestCA, attributes: int, words: str) -> None:
    certificate = load_certificate(
        der(ca.issue_devid_certificate(DEVID_KEY.public_key(), "node-7"))
    )
    verify_devid_public(  # the one change from a good key is what is refused
        marshal_public(DEVID_KEY.public_key(), attributes=DEVID_ATTRIBUTES), certificate
    )
    changed = marshal_public(DEVID_KEY.public_key(), attributes=attributes)
    rejected = denied(verify_devid_public, changed, certificate)
    assert rejected.check == "devid_key_attributes" and words in str(rejected)


def test_devid_public_rejections(ca: TestCA) -> None:
    certificate = load_certificate(
        der(ca.issue_devid_certificate(DEVID_KEY.public_key(), "node-7"))
    )
    verify_devid_public(DEVID_PUBLIC, certificate)
    decrypting = marshal_public(
        DEVID_KEY.public_key(), attributes=DEVID_ATTRIBUTES | TPMA_OBJECT.DECRYPT
    )
    assert "also a decryption key" in str(denied(verify_devid_public, decrypting, certificate))
    software = marshal_public(DEVID_KEY.public_key(), attributes=TPMA_OBJECT.SIGN_ENCRYPT)
    rejected = denied(verify_devid_public, software, certificate)
    assert rejected.check == "devid_key_attributes" and "FIXED_TPM" in str(rejected)
    other = marshal_public(
        ec.generate_private_key(ec.SECP256R1()).public_key(), attributes=DEVID_ATTRIBUTES
    )
    assert denied(verify_devid_public, other, certificate).check == "devid_cert_key"
    assert malformed(verify_devid_public, DEVID_PUBLIC[:-4], certificate).check == "devid_public"


# -- DevID residency and signature -------------------------------------------------------


def certify_response(name: bytes, nonce: bytes = NONCE) -> attestation_pb2.ChallengeResponse:
    attest = marshal_attest(
        extra_data=nonce, attest_type=TPM_ST.ATTEST_CERTIFY, certified_name=name
    )
    return attestation_pb2.ChallengeResponse(
        devid_certify=attest, devid_certify_signature=tpm_sign(AK_KEY, attest, TPM_ALG.ECDSA)
    )


def test_residency() -> None:
    verify_devid_residency(AK, certify_response(DEVID.name()), NONCE, DEVID)
    other: PublicArea = software_ak(ec.generate_private_key(ec.SECP256R1()))
    for response, words in (
        (certify_response(other.name()), "certified Name does not match"),
        (certify_response(DEVID.name(), nonce=b"\x33" * 32), "extraData does not match"),
        (attestation_pb2.ChallengeResponse(), "no TPM2_Certify"),
    ):
        rejected = denied(verify_devid_residency, AK, response, NONCE, DEVID)
        assert rejected.check == "devid_residency" and words in str(rejected)
    truncated = certify_response(DEVID.name())
    truncated.devid_certify_signature = truncated.devid_certify_signature[:-1]
    malformed(verify_devid_residency, AK, truncated, NONCE, DEVID)


def signed(message: bytes, hash_alg: int = SHA256) -> attestation_pb2.ChallengeResponse:
    return attestation_pb2.ChallengeResponse(
        agent_nonce=AGENT_NONCE,
        devid_signature=tpm_sign(DEVID_KEY, message, TPM_ALG.ECDSA, hash_alg),
    )


def test_signature_covers_both_nonces() -> None:
    verify_devid_signature(DEVID, signed(wire.devid_signed_data(NONCE, AGENT_NONCE)), NONCE)
    for response, words in (
        (signed(NONCE), "does not verify"),  # the server's value alone
        (signed(wire.devid_signed_data(NONCE, AGENT_NONCE), TPM_ALG.SHA384), "not SHA256"),
        (attestation_pb2.ChallengeResponse(agent_nonce=AGENT_NONCE), "no DevID signature"),
    ):
        rejected = denied(verify_devid_signature, DEVID, response, NONCE)
        assert rejected.check == "devid_signature" and words in str(rejected)

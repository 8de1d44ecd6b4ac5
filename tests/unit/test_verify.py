"""Quote, certify and signature verification on swtpm output, and every check's negative."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spire_tpm_attestor.errors import MalformedInput, NotProven
from spire_tpm_attestor.tpm.constants import TPM_ALG, TPM_ECC, TPMA_OBJECT
from spire_tpm_attestor.tpm.keys import check_ak_public
from spire_tpm_attestor.tpm.structures import (
    PublicArea,
    Signature,
    parse_signature,
    parse_tpm2b_public,
)
from spire_tpm_attestor.tpm.verify import (
    PCRValues,
    check_signature_scheme,
    pcr_digest,
    verify_certify,
    verify_quote,
    verify_signature,
)
from tests.unit.tpm_builders import (
    marshal_attest,
    marshal_selection,
    sha256,
    software_ak,
    tpm_sign,
    vector,
)

AKS = {kind: vector(f"swtpm_ak_{kind}.json") for kind in ("rsa", "ecc", "rsapss", "ecc384")}


def ak_area(kind: str) -> PublicArea:
    return parse_tpm2b_public(bytes.fromhex(AKS[kind]["ak_public"]))


def quote_args(kind: str) -> tuple[PublicArea, bytes, bytes, bytes, dict[tuple[int, int], bytes]]:
    quote: dict[str, Any] = AKS[kind]["quote"]
    values = {(alg, index): bytes.fromhex(v) for alg, index, v in quote["pcr_values"]}
    return (
        ak_area(kind),
        bytes.fromhex(quote["attest"]),
        bytes.fromhex(quote["signature"]),
        bytes.fromhex(quote["nonce"]),
        values,
    )


def certify_args(kind: str) -> tuple[PublicArea, bytes, bytes, bytes, PublicArea]:
    certify = AKS[kind]["certify"]
    return (
        ak_area(kind),
        bytes.fromhex(certify["attest"]),
        bytes.fromhex(certify["signature"]),
        bytes.fromhex(certify["nonce"]),
        parse_tpm2b_public(bytes.fromhex(certify["certified_public"])),
    )


# --- swtpm quotes ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ecc", "rsapss", "ecc384"])
def test_swtpm_quote_verifies(kind: str) -> None:
    ak, attest, sig, nonce, values = quote_args(kind)
    result = verify_quote(ak, attest, sig, nonce, values, required=[(TPM_ALG.SHA1, 16)])
    assert result.quote is not None and result.extra_data == nonce


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_swtpm_empty_selection_quote_verifies(kind: str) -> None:
    quote = AKS[kind]["empty_quote"]
    result = verify_quote(
        ak_area(kind),
        bytes.fromhex(quote["attest"]),
        bytes.fromhex(quote["signature"]),
        bytes.fromhex(quote["nonce"]),
        {},
    )
    assert result.quote is not None and result.quote.pcr_selection == ()
    assert result.quote.pcr_digest == hashlib.sha256(b"").digest()


def test_pcr_digest_matches_the_tpm() -> None:
    _, attest, _, _, values = quote_args("rsa")
    in_order = [values[(TPM_ALG.SHA256, i)] for i in (0, 1, 2, 3, 4, 5, 6, 7, 16, 23)]
    in_order.append(values[(TPM_ALG.SHA1, 16)])
    assert pcr_digest(TPM_ALG.SHA256, in_order) in attest
    # SHA-384 signing hash (P-384 AK) over a SHA-1 and a SHA-256 bank.
    _, attest384, _, _, values384 = quote_args("ecc384")
    in_order = [values384[(TPM_ALG.SHA256, i)] for i in (0, 7, 16)] + [values384[(4, 16)]]
    assert pcr_digest(TPM_ALG.SHA384, in_order) in attest384


def test_quote_wrong_nonce() -> None:
    ak, attest, sig, _, values = quote_args("rsa")
    with pytest.raises(NotProven, match="extraData does not match"):
        verify_quote(ak, attest, sig, bytes(32), values)
    with pytest.raises(ValueError, match="at least 16"):
        verify_quote(ak, attest, sig, b"", values)


def test_quote_tampered_pcr_value() -> None:
    ak, attest, sig, nonce, values = quote_args("ecc")
    values[(TPM_ALG.SHA256, 16)] = bytes(32)
    with pytest.raises(NotProven, match="do not match the quoted pcrDigest"):
        verify_quote(ak, attest, sig, nonce, values)


def test_quote_missing_extra_and_malformed_pcr_values() -> None:
    ak, attest, sig, nonce, values = quote_args("rsa")
    missing = dict(values)
    del missing[(TPM_ALG.SHA1, 16)]
    with pytest.raises(NotProven, match="quoted PCR sha1:16 has no value"):
        verify_quote(ak, attest, sig, nonce, missing)
    extra = {**values, (TPM_ALG.SHA256, 8): bytes(32)}
    with pytest.raises(NotProven, match="PCR sha256:8 is not covered"):
        verify_quote(ak, attest, sig, nonce, extra)
    short = {**values, (TPM_ALG.SHA256, 0): bytes(20)}
    with pytest.raises(MalformedInput, match="sha256:0 value is 20 bytes"):
        verify_quote(ak, attest, sig, nonce, short)


def test_quote_must_cover_required_pcrs() -> None:
    ak, attest, sig, nonce, values = quote_args("rsa")
    with pytest.raises(NotProven, match="requested PCR sha256:8 was not quoted"):
        verify_quote(ak, attest, sig, nonce, values, required=[(TPM_ALG.SHA256, 8)])


def test_quote_wrong_signature() -> None:
    ak, attest, sig, nonce, values = quote_args("rsa")
    flipped = sig[:-1] + bytes([sig[-1] ^ 1])
    with pytest.raises(NotProven, match="signature does not verify"):
        verify_quote(ak, attest, flipped, nonce, values)
    # Any change to the signed bytes, here the clock (offset 76), breaks the signature.
    tampered = bytearray(attest)
    tampered[80] ^= 1
    with pytest.raises(NotProven, match="signature does not verify"):
        verify_quote(ak, bytes(tampered), sig, nonce, values)


def test_quote_by_another_ak() -> None:
    _, attest, sig, nonce, values = quote_args("rsa")
    other = software_ak(rsa.generate_private_key(65537, 2048))
    with pytest.raises(NotProven, match="signature does not verify"):
        verify_quote(other, attest, sig, nonce, values)
    with pytest.raises(NotProven, match="does not fit the key type"):
        verify_quote(ak_area("ecc"), attest, sig, nonce, values)


def test_certify_is_not_a_quote() -> None:
    ak, attest, sig, nonce, _ = certify_args("rsa")
    with pytest.raises(NotProven, match="0x8017 is not a quote"):
        verify_quote(ak, attest, sig, nonce, {})


# --- checks that only a forged (software-signed) structure can reach --------------------


@pytest.fixture(scope="module")
def forger() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_quote_wrong_magic(forger: ec.EllipticCurvePrivateKey) -> None:
    nonce = bytes(range(32))
    attest = marshal_attest(extra_data=nonce, magic=0xFF544346, pcr_digest=sha256(b""))
    sig = tpm_sign(forger, attest, TPM_ALG.ECDSA)
    ak = software_ak(forger)
    with pytest.raises(NotProven, match="magic 0xff544346 is not TPM_GENERATED"):
        verify_quote(ak, attest, sig, nonce, {})
    good = marshal_attest(extra_data=nonce, pcr_digest=sha256(b""))
    verify_quote(ak, good, tpm_sign(forger, good, TPM_ALG.ECDSA), nonce, {})


def test_quote_digest_uses_signature_hash(forger: ec.EllipticCurvePrivateKey) -> None:
    nonce = bytes(range(32))
    value = bytes(20)
    selection = marshal_selection([(TPM_ALG.SHA1, [3])])
    # A SHA-1 bank digested with SHA-1 instead of the AK's SHA-256 is not what a TPM makes.
    sha1_digest = hashlib.sha1(value).digest()
    attest = marshal_attest(extra_data=nonce, selection=selection, pcr_digest=sha1_digest)
    ak = software_ak(forger)
    with pytest.raises(NotProven, match="pcrDigest"):
        verify_quote(ak, attest, tpm_sign(forger, attest, TPM_ALG.ECDSA), nonce, {(4, 3): value})


def test_quote_digest_follows_attested_bank_order(forger: ec.EllipticCurvePrivateKey) -> None:
    nonce = bytes(range(32))
    values: PCRValues = {(TPM_ALG.SHA256, 1): b"\x01" * 32, (TPM_ALG.SHA1, 2): b"\x02" * 20}
    # Banks attested SHA-1 first: the digest must follow that order, not sorted order.
    selection = marshal_selection([(TPM_ALG.SHA1, [2]), (TPM_ALG.SHA256, [1])])
    digest = sha256(b"\x02" * 20 + b"\x01" * 32)
    attest = marshal_attest(extra_data=nonce, selection=selection, pcr_digest=digest)
    ak = software_ak(forger)
    verify_quote(ak, attest, tpm_sign(forger, attest, TPM_ALG.ECDSA), nonce, values)
    swapped = marshal_attest(
        extra_data=nonce, selection=selection, pcr_digest=sha256(b"\x01" * 32 + b"\x02" * 20)
    )
    with pytest.raises(NotProven, match="pcrDigest"):
        verify_quote(ak, swapped, tpm_sign(forger, swapped, TPM_ALG.ECDSA), nonce, values)


def test_quote_requires_a_genuine_ak(forger: ec.EllipticCurvePrivateKey) -> None:
    nonce = bytes(range(32))
    attest = marshal_attest(extra_data=nonce, pcr_digest=sha256(b""))
    sig = tpm_sign(forger, attest, TPM_ALG.ECDSA)
    unrestricted = software_ak(forger, attributes=0x00040472)
    with pytest.raises(NotProven, match="RESTRICTED is not set"):
        verify_quote(unrestricted, attest, sig, nonce, {})
    with pytest.raises(NotProven, match="RESTRICTED is not set"):
        verify_certify(unrestricted, attest, sig, nonce, unrestricted)


# --- certify ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_swtpm_certify_verifies(kind: str) -> None:
    ak, attest, sig, nonce, certified = certify_args(kind)
    result = verify_certify(ak, attest, sig, nonce, certified)
    assert result.certify is not None and result.certify.name == certified.name()


def test_certify_negatives() -> None:
    ak, attest, sig, nonce, certified = certify_args("ecc")
    with pytest.raises(NotProven, match="certified Name does not match"):
        verify_certify(ak, attest, sig, nonce, ak)
    with pytest.raises(NotProven, match="extraData does not match"):
        verify_certify(ak, attest, sig, bytes(32), certified)
    with pytest.raises(NotProven, match="signature does not verify"):
        verify_certify(ak, attest, sig[:-1] + bytes([sig[-1] ^ 0x40]), nonce, certified)
    q_ak, q_attest, q_sig, q_nonce, _ = quote_args("ecc")
    with pytest.raises(NotProven, match="0x8018 is not a certify"):
        verify_certify(q_ak, q_attest, q_sig, q_nonce, certified)


# --- DevID signatures (unrestricted key, scheme pinned by the key) ----------------------


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_swtpm_devid_signature(kind: str) -> None:
    devid = parse_tpm2b_public(bytes.fromhex(AKS[kind]["certify"]["certified_public"]))
    message = bytes.fromhex(AKS[kind]["devid_signature"]["message"])
    sig = parse_signature(bytes.fromhex(AKS[kind]["devid_signature"]["signature"]))
    verify_signature(devid, message, sig)
    with pytest.raises(NotProven, match="does not verify"):
        verify_signature(devid, message[1:], sig)


def test_signature_scheme_must_match_the_pinned_scheme() -> None:
    rsa_ak = ak_area("rsa")  # pins RSASSA-SHA256
    with pytest.raises(NotProven, match="differs from the key's scheme RSASSA-SHA256"):
        check_signature_scheme(rsa_ak, Signature(TPM_ALG.RSAPSS, TPM_ALG.SHA256, b""))
    with pytest.raises(NotProven, match="differs"):
        check_signature_scheme(rsa_ak, Signature(TPM_ALG.RSASSA, TPM_ALG.SHA384, b""))
    with pytest.raises(NotProven, match="does not fit the key type"):
        check_signature_scheme(rsa_ak, Signature(TPM_ALG.ECDSA, TPM_ALG.SHA256, b""))
    with pytest.raises(NotProven, match="hash SHA1 not allowed"):
        check_signature_scheme(rsa_ak, Signature(TPM_ALG.RSASSA, TPM_ALG.SHA1, b""))


def test_unpinned_key_accepts_sane_schemes_only() -> None:
    private = rsa.generate_private_key(65537, 2048)
    unpinned = software_ak(private, scheme=(TPM_ALG.NULL,))
    for sig_alg in (TPM_ALG.RSASSA, TPM_ALG.RSAPSS):
        for hash_alg in (TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512):
            sig = parse_signature(tpm_sign(private, b"message", sig_alg, hash_alg))
            verify_signature(unpinned, b"message", sig)
    sha1 = parse_signature(tpm_sign(private, b"message", TPM_ALG.RSASSA, TPM_ALG.SHA1))
    with pytest.raises(NotProven, match="SHA1 not allowed"):
        verify_signature(unpinned, b"message", sha1)


# --- check_ak_public -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ecc", "rsapss", "ecc384"])
def test_swtpm_aks_are_genuine(kind: str) -> None:
    check_ak_public(ak_area(kind))


@pytest.mark.parametrize(
    "attribute",
    [
        TPMA_OBJECT.FIXED_TPM,
        TPMA_OBJECT.FIXED_PARENT,
        TPMA_OBJECT.SENSITIVE_DATA_ORIGIN,
        TPMA_OBJECT.RESTRICTED,
        TPMA_OBJECT.SIGN_ENCRYPT,
    ],
)
def test_ak_missing_attribute(attribute: TPMA_OBJECT) -> None:
    ak = ak_area("rsa")
    with pytest.raises(NotProven, match=f"AK public area: {attribute.name} is not set"):
        check_ak_public(replace(ak, attributes=ak.attributes & ~attribute))


def test_ak_with_decrypt() -> None:
    ak = ak_area("ecc")
    with pytest.raises(NotProven, match="DECRYPT is set"):
        check_ak_public(replace(ak, attributes=ak.attributes | TPMA_OBJECT.DECRYPT))


def test_ak_parameters() -> None:
    ak = ak_area("rsa")
    assert ak.rsa is not None

    def rejected(area: PublicArea, match: str) -> None:
        with pytest.raises(NotProven, match=match):
            check_ak_public(area)

    rejected(replace(ak, name_alg=TPM_ALG.SHA1), "nameAlg SHA1")
    rejected(replace(ak, symmetric=replace(ak.symmetric, alg=TPM_ALG.AES)), "symmetric")
    rejected(replace(ak, rsa=replace(ak.rsa, key_bits=1024)), "1024 bits")
    rejected(replace(ak, rsa=replace(ak.rsa, exponent=3)), "exponent 3")
    rejected(replace(ak, scheme=replace(ak.scheme, alg=TPM_ALG.NULL)), "RSA scheme NULL")
    rejected(replace(ak, scheme=replace(ak.scheme, hash=TPM_ALG.SHA1)), "RSASSA-SHA1")
    rejected(replace(ak, scheme=replace(ak.scheme, alg=TPM_ALG.OAEP)), "OAEP-SHA256")

    ecc_ak = ak_area("ecc")
    assert ecc_ak.ecc is not None
    rejected(replace(ecc_ak, ecc=replace(ecc_ak.ecc, curve=TPM_ECC.NIST_P521)), "curve 0x0005")
    rejected(replace(ecc_ak, scheme=replace(ecc_ak.scheme, alg=TPM_ALG.ECDAA)), "ECDAA")
    rejected(replace(ecc_ak, scheme=replace(ecc_ak.scheme, hash=TPM_ALG.SHA512)), "ECDSA-SHA512")
    kdf = replace(ecc_ak.ecc.kdf, alg=TPM_ALG.KDF1_SP800_108)
    rejected(replace(ecc_ak, ecc=replace(ecc_ak.ecc, kdf=kdf)), "kdf")


def test_ak_with_invalid_key_material() -> None:
    ak = ak_area("ecc")
    assert ak.ecc is not None
    with pytest.raises(MalformedInput, match="invalid ECC public key"):
        check_ak_public(replace(ak, ecc=replace(ak.ecc, x=bytes(32))))

"""Verification of AK evidence: signatures, quotes and certifications.

A restricted signing key only signs TPMS_ATTEST structures the TPM produced itself
(they begin with TPM_GENERATED_VALUE), so an AK signature over such a structure is
genuine TPM output; `tpm.keys.check_ak_public` decides what counts as an AK. Each check
below is a free function named for what it proves; the `verify_*` functions run them in
order and raise NotProven on the first failure.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from spire_tpm_attestor.errors import MalformedInput, NotProven
from spire_tpm_attestor.tpm.constants import (
    TPM_ALG,
    TPM_GENERATED_VALUE,
    alg_name,
    digest_size,
    hash_algorithm,
    pcr_label,
)
from spire_tpm_attestor.tpm.keys import AK_RSA_SCHEMES, check_ak_public, scheme_name
from spire_tpm_attestor.tpm.structures import (
    Attest,
    CertifyInfo,
    PCRSelection,
    PublicArea,
    QuoteInfo,
    Signature,
    parse_attest,
    parse_signature,
)

PCRValues = Mapping[tuple[int, int], bytes]
"""PCR values reported by the agent, keyed by (bank hash algorithm, PCR index)."""

MIN_NONCE_SIZE = 16
SIGNATURE_HASHES = (TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512)


def check_signature_scheme(key_area: PublicArea, sig: Signature) -> None:
    """Prove the signature uses the scheme the key pins, or a sane one if it pins none."""
    allowed = AK_RSA_SCHEMES if key_area.rsa is not None else (TPM_ALG.ECDSA,)
    used = f"{alg_name(sig.sig_alg)}-{alg_name(sig.hash_alg)}"
    if sig.sig_alg not in allowed:
        raise NotProven(f"signature scheme {used} does not fit the key type")
    if sig.hash_alg not in SIGNATURE_HASHES:
        raise NotProven(f"signature hash {alg_name(sig.hash_alg)} not allowed")
    pinned = key_area.scheme
    if pinned.alg != TPM_ALG.NULL and (pinned.alg, pinned.hash) != (sig.sig_alg, sig.hash_alg):
        raise NotProven(
            f"signature scheme {used} differs from the key's scheme {scheme_name(key_area)}"
        )


def verify_signature(key_area: PublicArea, message: bytes, sig: Signature) -> None:
    """Prove the key in `key_area` signed `message` (the signed bytes, not a digest)."""
    check_signature_scheme(key_area, sig)
    key = key_area.public_key()
    algorithm = hash_algorithm(sig.hash_alg)
    try:
        if isinstance(key, RSAPublicKey):
            key.verify(sig.value, message, _rsa_padding(sig.sig_alg, algorithm), algorithm)
        else:
            key.verify(sig.value, message, ec.ECDSA(algorithm))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise NotProven("signature does not verify") from None


def _rsa_padding(sig_alg: int, algorithm: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    if sig_alg == TPM_ALG.RSASSA:
        return padding.PKCS1v15()
    # TPMs use a digest-length salt, some older ones the maximum: accept any length.
    return padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)


def check_tpm_generated(attest: Attest) -> None:
    """Prove the structure claims TPM origin (only meaningful after an AK signature)."""
    if attest.magic != TPM_GENERATED_VALUE:
        raise NotProven(f"attestation magic 0x{attest.magic:08x} is not TPM_GENERATED")


def check_quote_type(attest: Attest) -> QuoteInfo:
    """Prove the attestation is a quote and return its quote info."""
    # parse_attest fills `quote` exactly when the type is TPM_ST_ATTEST_QUOTE.
    if attest.quote is None:
        raise NotProven(f"attestation type 0x{attest.type:04x} is not a quote")
    return attest.quote


def check_certify_type(attest: Attest) -> CertifyInfo:
    """Prove the attestation is a certification and return its certify info."""
    # parse_attest fills `certify` exactly when the type is TPM_ST_ATTEST_CERTIFY.
    if attest.certify is None:
        raise NotProven(f"attestation type 0x{attest.type:04x} is not a certify")
    return attest.certify


def check_nonce(attest: Attest, nonce: bytes) -> None:
    """Prove the attestation is fresh: its extraData is the server's nonce."""
    if len(nonce) < MIN_NONCE_SIZE:
        raise ValueError(f"nonce must be at least {MIN_NONCE_SIZE} bytes")
    if not hmac.compare_digest(attest.extra_data, nonce):
        raise NotProven("attestation extraData does not match the nonce")


def _quoted_pcrs(selection: Iterable[PCRSelection]) -> set[tuple[int, int]]:
    return {(bank.hash_alg, index) for bank in selection for index in bank.indices}


def check_pcr_values_match_selection(
    selection: Iterable[PCRSelection], pcr_values: PCRValues
) -> None:
    """Prove every quoted PCR has a reported value and every reported value was quoted."""
    quoted = _quoted_pcrs(selection)
    missing = sorted(quoted - pcr_values.keys())
    if missing:
        raise NotProven(f"quoted PCR {pcr_label(*missing[0])} has no value")
    unquoted = sorted(pcr_values.keys() - quoted)
    if unquoted:
        raise NotProven(f"PCR {pcr_label(*unquoted[0])} is not covered by the quote")
    for (hash_alg, index), value in pcr_values.items():
        if len(value) != digest_size(hash_alg):
            raise MalformedInput(f"PCR {pcr_label(hash_alg, index)} value is {len(value)} bytes")


def check_selection_covers(
    selection: Iterable[PCRSelection], required: Iterable[tuple[int, int]]
) -> None:
    """Prove the quote covers every (bank, index) the server asked for."""
    absent = sorted(set(required) - _quoted_pcrs(selection))
    if absent:
        raise NotProven(f"requested PCR {pcr_label(*absent[0])} was not quoted")


def pcr_digest(hash_alg: int, values_in_order: Iterable[bytes]) -> bytes:
    """pcrDigest as the TPM computes it: H(PCR values concatenated in selection order)."""
    digest = hashes.Hash(hash_algorithm(hash_alg))
    for value in values_in_order:
        digest.update(value)
    return digest.finalize()


def check_pcr_digest(quote: QuoteInfo, hash_alg: int, pcr_values: PCRValues) -> None:
    """Prove the reported PCR values are the ones the TPM quoted.

    The digest uses the signature's hash (even over a SHA-1 bank), banks in attested
    order and indices ascending within a bank.
    """
    values = (
        pcr_values[(bank.hash_alg, index)] for bank in quote.pcr_selection for index in bank.indices
    )
    if not hmac.compare_digest(pcr_digest(hash_alg, values), quote.pcr_digest):
        raise NotProven("PCR values do not match the quoted pcrDigest")


def check_certified_name(certify: CertifyInfo, certified: PublicArea) -> None:
    """Prove the certified object is the one whose public area we hold."""
    if not hmac.compare_digest(certify.name, certified.name()):
        raise NotProven("certified Name does not match the certified public area")


def _verify_attest(ak: PublicArea, attest_bytes: bytes, sig_bytes: bytes) -> tuple[Attest, int]:
    check_ak_public(ak)
    sig = parse_signature(sig_bytes)
    verify_signature(ak, attest_bytes, sig)
    attest = parse_attest(attest_bytes)
    check_tpm_generated(attest)
    return attest, sig.hash_alg


def verify_quote(
    ak: PublicArea,
    attest_bytes: bytes,
    sig_bytes: bytes,
    nonce: bytes,
    pcr_values: PCRValues,
    *,
    required: Iterable[tuple[int, int]] = (),
) -> Attest:
    """Verify a TPM2_Quote by the AK over the server's nonce and the reported PCR values.

    `required` lists the (bank, index) pairs the server asked for; an agent that quoted
    fewer is rejected. On success every entry of `pcr_values` is a verified PCR value.
    """
    attest, sig_hash = _verify_attest(ak, attest_bytes, sig_bytes)
    quote = check_quote_type(attest)
    check_nonce(attest, nonce)
    check_selection_covers(quote.pcr_selection, required)
    check_pcr_values_match_selection(quote.pcr_selection, pcr_values)
    check_pcr_digest(quote, sig_hash, pcr_values)
    return attest


def verify_certify(
    ak: PublicArea,
    attest_bytes: bytes,
    sig_bytes: bytes,
    nonce: bytes,
    certified: PublicArea,
) -> Attest:
    """Verify a TPM2_Certify by the AK, over the server's nonce, of `certified`."""
    attest, _ = _verify_attest(ak, attest_bytes, sig_bytes)
    certify = check_certify_type(attest)
    check_nonce(attest, nonce)
    check_certified_name(certify, certified)
    return attest

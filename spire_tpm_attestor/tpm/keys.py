"""What makes a TPM public area an EK or an AK: attribute and algorithm policy.

`check_ek_template` admits an endorsement key that credential activation can use;
`check_ak_public` admits an attestation key whose signatures prove TPM origin. Both
raise NotProven for a well-formed key of the wrong kind.
"""

from __future__ import annotations

from spire_tpm_attestor.errors import NotProven
from spire_tpm_attestor.tpm.constants import TPM_ALG, TPM_ECC, TPMA_OBJECT, alg_name
from spire_tpm_attestor.tpm.structures import PublicArea

# --- EK -------------------------------------------------------------------------------

EK_NAME_ALGS = (TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512)
EK_SYMMETRIC_KEY_BITS = (128, 192, 256)
_EK_REQUIRED_ATTRIBUTES = (
    TPMA_OBJECT.FIXED_TPM,
    TPMA_OBJECT.FIXED_PARENT,
    TPMA_OBJECT.SENSITIVE_DATA_ORIGIN,
    TPMA_OBJECT.RESTRICTED,
    TPMA_OBJECT.DECRYPT,
)
_EK_REQUIRED_MASK = sum(attribute.value for attribute in _EK_REQUIRED_ATTRIBUTES)


def _missing(area: PublicArea, required: tuple[TPMA_OBJECT, ...], mask: int) -> str | None:
    """The name of the first required attribute `area` lacks, or None (one test when
    none is missing: every attestation checks its EK and AK)."""
    if area.attributes & mask == mask:
        return None
    return next(str(attribute.name) for attribute in required if not area.has(attribute))


def check_ek_template(ek: PublicArea) -> None:
    """Require an EK-shaped public area: a TPM-resident restricted decryption key whose
    symmetric definition (AES-CFB) and nameAlg can be used for credential activation."""
    missing = _missing(ek, _EK_REQUIRED_ATTRIBUTES, _EK_REQUIRED_MASK)
    if missing is not None:
        raise NotProven(f"EK public area: {missing} is not set")
    if ek.has(TPMA_OBJECT.SIGN_ENCRYPT):
        raise NotProven("EK public area: SIGN_ENCRYPT is set")
    if ek.name_alg not in EK_NAME_ALGS:
        raise NotProven(f"EK public area: nameAlg {alg_name(ek.name_alg)} not allowed")
    symmetric = ek.symmetric
    if symmetric.alg != TPM_ALG.AES or symmetric.mode != TPM_ALG.CFB:
        raise NotProven(
            f"EK public area: symmetric {alg_name(symmetric.alg)}-{alg_name(symmetric.mode)}"
            " is not AES-CFB"
        )
    if symmetric.key_bits not in EK_SYMMETRIC_KEY_BITS:
        raise NotProven(f"EK public area: AES key size {symmetric.key_bits} not allowed")


# --- AK -------------------------------------------------------------------------------

AK_RSA_MIN_BITS = 2048
AK_RSA_EXPONENTS = (0, 65537)  # 0 is the TPM's spelling of 65537
AK_RSA_SCHEMES = (TPM_ALG.RSASSA, TPM_ALG.RSAPSS)
AK_ECC_CURVES = (TPM_ECC.NIST_P256, TPM_ECC.NIST_P384)
AK_ECC_HASHES = (TPM_ALG.SHA256, TPM_ALG.SHA384)
_AK_REQUIRED_ATTRIBUTES = (
    TPMA_OBJECT.FIXED_TPM,
    TPMA_OBJECT.FIXED_PARENT,
    TPMA_OBJECT.SENSITIVE_DATA_ORIGIN,
    TPMA_OBJECT.RESTRICTED,
    TPMA_OBJECT.SIGN_ENCRYPT,
)
_AK_REQUIRED_MASK = sum(attribute.value for attribute in _AK_REQUIRED_ATTRIBUTES)


def check_ak_public(ak: PublicArea) -> None:
    """Prove the public area describes a genuine AK: a TPM-generated, non-duplicable,
    restricted signing key with a pinned, strong signature scheme."""
    missing = _missing(ak, _AK_REQUIRED_ATTRIBUTES, _AK_REQUIRED_MASK)
    if missing is not None:
        raise NotProven(f"AK public area: {missing} is not set")
    if ak.has(TPMA_OBJECT.DECRYPT):
        raise NotProven("AK public area: DECRYPT is set")
    if ak.name_alg != TPM_ALG.SHA256:
        raise NotProven(f"AK public area: nameAlg {alg_name(ak.name_alg)} is not SHA256")
    if ak.symmetric.alg != TPM_ALG.NULL:
        raise NotProven("AK public area: symmetric algorithm is not NULL")
    if ak.rsa is not None:
        if ak.rsa.key_bits < AK_RSA_MIN_BITS:
            raise NotProven(f"AK public area: RSA key of {ak.rsa.key_bits} bits")
        if ak.rsa.exponent not in AK_RSA_EXPONENTS:
            raise NotProven(f"AK public area: RSA exponent {ak.rsa.exponent}")
        if ak.scheme.alg not in AK_RSA_SCHEMES or ak.scheme.hash != TPM_ALG.SHA256:
            raise NotProven(f"AK public area: RSA scheme {scheme_name(ak)}")
    elif ak.ecc is not None:
        if ak.ecc.curve not in AK_ECC_CURVES:
            raise NotProven(f"AK public area: ECC curve 0x{ak.ecc.curve:04x}")
        if ak.scheme.alg != TPM_ALG.ECDSA or ak.scheme.hash not in AK_ECC_HASHES:
            raise NotProven(f"AK public area: ECC scheme {scheme_name(ak)}")
        if ak.ecc.kdf.alg != TPM_ALG.NULL:
            raise NotProven("AK public area: ECC kdf is not NULL")
    ak.public_key()  # the key itself must be valid (modulus size, point on the curve)


def scheme_name(area: PublicArea) -> str:
    return f"{alg_name(area.scheme.alg)}-{alg_name(area.scheme.hash)}"

"""TPM 2.0 and TCG constants: the one copy the agent, the server and the tools share.

TPM 2.0 Library Part 2 (algorithms, curves, attributes, structure tags, handles, response
codes) and the TCG EK Credential Profile (default EK templates, their certificates' NV
indices, certificate OIDs). Class and member names are spelled as in the specifications.
"""

from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from spire_tpm_attestor.errors import MalformedInput


class TPM_ALG(IntEnum):
    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    KEYEDHASH = 0x0008
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    SM3_256 = 0x0012
    SM4 = 0x0013
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CAMELLIA = 0x0026
    CTR = 0x0040
    OFB = 0x0041
    CBC = 0x0042
    CFB = 0x0043
    ECB = 0x0044


class TPM_ECC(IntEnum):
    NIST_P192 = 0x0001
    NIST_P224 = 0x0002
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005
    BN_P256 = 0x0010
    BN_P638 = 0x0011
    SM2_P256 = 0x0020


class TPMA_OBJECT(IntFlag):
    FIXED_TPM = 0x00000002
    ST_CLEAR = 0x00000004
    FIXED_PARENT = 0x00000010
    SENSITIVE_DATA_ORIGIN = 0x00000020
    USER_WITH_AUTH = 0x00000040
    ADMIN_WITH_POLICY = 0x00000080
    NO_DA = 0x00000400
    ENCRYPTED_DUPLICATION = 0x00000800
    RESTRICTED = 0x00010000
    DECRYPT = 0x00020000
    SIGN_ENCRYPT = 0x00040000
    X509SIGN = 0x00080000


class TPM_ST(IntEnum):
    ATTEST_NV = 0x8014
    ATTEST_COMMAND_AUDIT = 0x8015
    ATTEST_SESSION_AUDIT = 0x8016
    ATTEST_CERTIFY = 0x8017
    ATTEST_QUOTE = 0x8018
    ATTEST_TIME = 0x8019
    ATTEST_CREATION = 0x801A
    ATTEST_NV_DIGEST = 0x801C


TPM_ST_ATTEST_QUOTE: Final = TPM_ST.ATTEST_QUOTE
TPM_ST_ATTEST_CERTIFY: Final = TPM_ST.ATTEST_CERTIFY

# First four bytes of every structure the TPM signs itself (TPM_GENERATED_VALUE).
TPM_GENERATED_VALUE: Final = 0xFF544347

# Persistent object handles (TPM_HT_PERSISTENT).
PERSISTENT_FIRST: Final = 0x81000000
PERSISTENT_LAST: Final = 0x81FFFFFF

# TPM_RC_HANDLE + TPM_RC_1: nothing is defined or loaded at the command's first handle.
RC_NO_SUCH_HANDLE: Final = 0x18B

HASH_ALGORITHMS: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    TPM_ALG.SHA1: hashes.SHA1,
    TPM_ALG.SHA256: hashes.SHA256,
    TPM_ALG.SHA384: hashes.SHA384,
    TPM_ALG.SHA512: hashes.SHA512,
}

# PCR bank names as used in selectors and configuration ("sha256"), both directions.
BANK_NAMES: Final[dict[int, str]] = {
    TPM_ALG.SHA1: "sha1",
    TPM_ALG.SHA256: "sha256",
    TPM_ALG.SHA384: "sha384",
    TPM_ALG.SHA512: "sha512",
}
BANKS_BY_NAME: Final[dict[str, int]] = {name: alg for alg, name in BANK_NAMES.items()}

ECC_CURVES: Final[dict[int, type[ec.EllipticCurve]]] = {
    TPM_ECC.NIST_P256: ec.SECP256R1,
    TPM_ECC.NIST_P384: ec.SECP384R1,
    TPM_ECC.NIST_P521: ec.SECP521R1,
}


# TCG EK Credential Profile: subject alternative name attributes of an EK certificate
# (TPM manufacturer, model, firmware version) and its extended key usage.
OID_TCG_MANUFACTURER: Final = x509.ObjectIdentifier("2.23.133.2.1")
OID_TCG_MODEL: Final = x509.ObjectIdentifier("2.23.133.2.2")
OID_TCG_VERSION: Final = x509.ObjectIdentifier("2.23.133.2.3")
OID_TCG_EK_CERTIFICATE: Final = x509.ObjectIdentifier("2.23.133.8.1")


@dataclass(frozen=True)
class EKTemplate:
    """One TCG default EK template (EK Credential Profile) and its NV indices."""

    tcg_name: str  # "L-1", "H-3", ...; empty for a key of no TCG template
    template: str  # tpm2-pytss lookup name (the long names work with 2.3 and 3.0)
    algorithm: str  # "rsa2048", "ecc256", ...: the agent's ek_algorithm values
    high_range: bool
    cert_index: int  # 0: no NV index to look for a certificate

    @property
    def nonce_index(self) -> int | None:
        """Where a manufacturer may provision the `unique` nonce (low range only)."""
        return self.cert_index + 1 if self.cert_index and not self.high_range else None

    @property
    def template_index(self) -> int | None:
        """Where a manufacturer may provision a TPMT_PUBLIC replacing the default template:
        after the nonce in the low range, right after the certificate in the high range."""
        if not self.cert_index:
            return None
        return self.cert_index + (1 if self.high_range else 2)


# In the agent's preference order: RSA 2048 first (every server accepts it), low range first.
EK_TEMPLATES: Final = (
    EKTemplate("L-1", "EK-RSA2048", "rsa2048", False, 0x01C00002),
    EKTemplate("H-1", "EK-HIGH-RSA2048", "rsa2048", True, 0x01C00012),
    EKTemplate("L-2", "EK-ECC256", "ecc256", False, 0x01C0000A),
    EKTemplate("H-2", "EK-HIGH-ECC256", "ecc256", True, 0x01C00014),
    EKTemplate("H-3", "EK-HIGH-ECC384", "ecc384", True, 0x01C00016),
    EKTemplate("H-6", "EK-HIGH-RSA3072", "rsa3072", True, 0x01C0001C),
    EKTemplate("H-7", "EK-HIGH-RSA4096", "rsa4096", True, 0x01C0001E),
    EKTemplate("H-4", "EK-HIGH-ECC521", "ecc521", True, 0x01C00018),
)

# TCG EK Credential Profile: the certificates that chain an EK certificate to the
# manufacturer's root, one or more concatenated DER certificates per index.
EK_CHAIN_FIRST_INDEX: Final = 0x01C00100
EK_CHAIN_LAST_INDEX: Final = 0x01C001FF


def hash_algorithm(alg: int) -> hashes.HashAlgorithm:
    """A fresh `cryptography` hash object for a TPM hash algorithm id."""
    try:
        return HASH_ALGORITHMS[alg]()
    except KeyError:
        raise MalformedInput(f"unsupported hash algorithm {alg_name(alg)}") from None


def digest_size(alg: int) -> int:
    """Digest length in bytes of a TPM hash algorithm id."""
    return hash_algorithm(alg).digest_size


def ecc_curve(curve: int) -> ec.EllipticCurve:
    """A `cryptography` curve object for a TPM curve id."""
    try:
        return ECC_CURVES[curve]()
    except KeyError:
        raise MalformedInput(f"unsupported ECC curve 0x{curve:04x}") from None


def pcr_label(hash_alg: int, index: int) -> str:
    """`sha256:7`, the spelling of a PCR in selectors, options and messages."""
    return f"{BANK_NAMES.get(hash_alg, alg_name(hash_alg))}:{index}"


def alg_name(alg: int) -> str:
    """A readable name for error messages: `SHA256` or `0x1234` when unknown."""
    try:
        return TPM_ALG(alg).name
    except ValueError:
        return f"0x{alg:04x}"

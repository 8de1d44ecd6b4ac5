"""Marshal TPM structures from software keys, independently of the parsers under test.

Used to build inputs a real TPM would never produce (wrong magic, wrong nonce, forged
attributes) and sign them with a software "AK", so each verification check can be shown
to be the one that rejects them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from spire_tpm_attestor.tpm.constants import (
    TPM_ALG,
    TPM_ECC,
    TPM_GENERATED_VALUE,
    TPM_ST,
    TPMA_OBJECT,
    hash_algorithm,
)
from spire_tpm_attestor.tpm.structures import PublicArea, parse_tpm2b_public

VECTORS = Path(__file__).parent / "vectors"

AK_ATTRIBUTES = (
    TPMA_OBJECT.FIXED_TPM
    | TPMA_OBJECT.FIXED_PARENT
    | TPMA_OBJECT.SENSITIVE_DATA_ORIGIN
    | TPMA_OBJECT.USER_WITH_AUTH
    | TPMA_OBJECT.NO_DA
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)
EK_ATTRIBUTES = 0x000300B2  # TCG low-range EK template (L-1, L-2)
DEVID_ATTRIBUTES = (  # a TPM-generated, non-migratable signing key
    TPMA_OBJECT.FIXED_TPM
    | TPMA_OBJECT.FIXED_PARENT
    | TPMA_OBJECT.SENSITIVE_DATA_ORIGIN
    | TPMA_OBJECT.USER_WITH_AUTH
    | TPMA_OBJECT.SIGN_ENCRYPT
)
_CURVE_IDS = {"secp256r1": TPM_ECC.NIST_P256, "secp384r1": TPM_ECC.NIST_P384}


def vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def marshal_public(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    attributes: int = AK_ATTRIBUTES,
    name_alg: int = TPM_ALG.SHA256,
    symmetric: tuple[int, ...] = (TPM_ALG.NULL,),
    scheme: tuple[int, ...] = (TPM_ALG.NULL,),
    auth_policy: bytes = b"",
) -> bytes:
    """A TPM2B_PUBLIC for a software key; symmetric/scheme are marshaled as given."""
    body = struct.pack(">HHI", 0, name_alg, attributes) + tpm2b(auth_policy)
    parms = b"".join(struct.pack(">H", v) for v in (*symmetric, *scheme))
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        exponent = 0 if numbers.e == 65537 else numbers.e
        modulus = numbers.n.to_bytes(key.key_size // 8, "big")
        body = struct.pack(">H", TPM_ALG.RSA) + body[2:]
        body += parms + struct.pack(">HI", key.key_size, exponent) + tpm2b(modulus)
    else:
        size = (key.curve.key_size + 7) // 8
        point = key.public_numbers()
        body = struct.pack(">H", TPM_ALG.ECC) + body[2:]
        body += parms + struct.pack(">HH", _CURVE_IDS[key.curve.name], TPM_ALG.NULL)
        body += tpm2b(point.x.to_bytes(size, "big")) + tpm2b(point.y.to_bytes(size, "big"))
    return tpm2b(body)


def area(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, **kwargs: Any) -> PublicArea:
    return parse_tpm2b_public(marshal_public(key, **kwargs))


def software_ak(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **kwargs: Any
) -> PublicArea:
    """The public area of a software key posing as a (RSASSA or ECDSA, SHA-256) AK."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        kwargs.setdefault("scheme", (TPM_ALG.RSASSA, TPM_ALG.SHA256))
    else:
        kwargs.setdefault("scheme", (TPM_ALG.ECDSA, TPM_ALG.SHA256))
    return area(private_key.public_key(), **kwargs)


def marshal_selection(banks: list[tuple[int, list[int]]]) -> bytes:
    out = struct.pack(">I", len(banks))
    for hash_alg, indices in banks:
        bitmap = bytearray(3)
        for i in indices:
            bitmap[i // 8] |= 1 << (i % 8)
        out += struct.pack(">HB", hash_alg, 3) + bytes(bitmap)
    return out


def marshal_attest(
    *,
    extra_data: bytes,
    attest_type: int = TPM_ST.ATTEST_QUOTE,
    magic: int = TPM_GENERATED_VALUE,
    selection: bytes = b"",
    pcr_digest: bytes = b"",
    certified_name: bytes = b"",
) -> bytes:
    """A TPMS_ATTEST of type QUOTE (selection, digest) or CERTIFY (name)."""
    out = struct.pack(">IH", magic, attest_type) + tpm2b(b"\x00\x0b" + bytes(32))
    out += tpm2b(extra_data) + struct.pack(">QIIB", 1000, 1, 0, 1) + struct.pack(">Q", 7)
    if attest_type == TPM_ST.ATTEST_CERTIFY:
        return out + tpm2b(certified_name) + tpm2b(certified_name)
    return out + (selection or struct.pack(">I", 0)) + tpm2b(pcr_digest)


def tpm_sign(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    message: bytes,
    sig_alg: int,
    hash_alg: int = TPM_ALG.SHA256,
) -> bytes:
    """A TPMT_SIGNATURE over `message` as a TPM would marshal it."""
    algorithm = hash_algorithm(hash_alg)
    head = struct.pack(">HH", sig_alg, hash_alg)
    if isinstance(private_key, rsa.RSAPrivateKey):
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
        if sig_alg == TPM_ALG.RSAPSS:
            pad = padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)
        return head + tpm2b(private_key.sign(message, pad, algorithm))
    r, s = decode_dss_signature(private_key.sign(message, ec.ECDSA(algorithm)))
    size = (private_key.curve.key_size + 7) // 8
    return head + tpm2b(r.to_bytes(size, "big")) + tpm2b(s.to_bytes(size, "big"))


def sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()

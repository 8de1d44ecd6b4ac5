"""Server-side MakeCredential (TPM 2.0 Library Part 1, "Credential Protection").

Wraps a secret so that only the TPM holding the EK can recover it, and only by
TPM2_ActivateCredential on a loaded object with the given Name. Every hash is the EK's
nameAlg and the symmetric key size is the EK's: mixing in the AK's algorithms breaks
SHA-384 EKs.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.tpm.constants import (
    HASH_ALGORITHMS,
    alg_name,
    digest_size,
    hash_algorithm,
)
from spire_tpm_attestor.tpm.keys import check_ek_template
from spire_tpm_attestor.tpm.structures import PublicArea

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # cryptography < 47 only has it in primitives
    from cryptography.hazmat.primitives.ciphers.modes import CFB

# The NUL is part of the label for OAEP and KDFe (TPM 2.0 Part 1, "Secret Sharing").
IDENTITY_LABEL = b"IDENTITY\x00"
# KDFa labels go to KBKDF without the NUL: KBKDF inserts the 0x00 separator itself.
_STORAGE_LABEL = b"STORAGE"
_INTEGRITY_LABEL = b"INTEGRITY"


def make_credential(ek: PublicArea, object_name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """Wrap `secret` for TPM2_ActivateCredential with the EK and the object `object_name`.

    Returns (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET), both with their UINT16 size prefix.
    The secret must be 1 to digest-size-of-EK-nameAlg bytes (the TPM holds it in a
    TPM2B_DIGEST); use 32.
    """
    check_ek_template(ek)
    _check_name(object_name)
    name_alg = ek.name_alg
    if not 0 < len(secret) <= digest_size(name_alg):
        raise ValueError(f"secret must be 1 to {digest_size(name_alg)} bytes")
    key = ek.public_key()
    try:
        if isinstance(key, RSAPublicKey):
            seed, encrypted_seed = _rsa_seed(key, name_alg)
        else:
            seed, encrypted_seed = _ecc_seed(key, name_alg)
    except (ValueError, UnsupportedAlgorithm) as exc:  # e.g. an RSA key too small for OAEP
        raise MalformedInput(str(exc)) from None

    sym_key = _kdfa(name_alg, seed, _STORAGE_LABEL, object_name, ek.symmetric.key_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(_tpm2b(secret)) + encryptor.finalize()

    hmac_key = _kdfa(name_alg, seed, _INTEGRITY_LABEL, b"", digest_size(name_alg) * 8)
    mac = hmac.HMAC(hmac_key, hash_algorithm(name_alg))
    mac.update(enc_identity + object_name)
    id_object = _tpm2b(mac.finalize()) + enc_identity
    return _tpm2b(id_object), _tpm2b(encrypted_seed)


def _check_name(name: bytes) -> None:
    if len(name) < 2:
        raise MalformedInput("object Name is too short")
    (alg,) = struct.unpack(">H", name[:2])
    if alg not in HASH_ALGORITHMS or len(name) != 2 + digest_size(alg):
        raise MalformedInput(f"object Name of {len(name)} bytes with {alg_name(alg)}")


def _rsa_seed(key: RSAPublicKey, name_alg: int) -> tuple[bytes, bytes]:
    # The seed may be at most the nameAlg digest size; the TPM rejects longer ones.
    seed = os.urandom(digest_size(name_alg))
    oaep = padding.OAEP(
        mgf=padding.MGF1(hash_algorithm(name_alg)),
        algorithm=hash_algorithm(name_alg),
        label=IDENTITY_LABEL,
    )
    return seed, key.encrypt(seed, oaep)


def _ecc_seed(key: ec.EllipticCurvePublicKey, name_alg: int) -> tuple[bytes, bytes]:
    ephemeral = ec.generate_private_key(key.curve)
    shared_x = ephemeral.exchange(ec.ECDH(), key)
    size = (key.curve.key_size + 7) // 8
    point = ephemeral.public_key().public_numbers()
    ephemeral_x = point.x.to_bytes(size, "big")
    ek_x = key.public_numbers().x.to_bytes(size, "big")
    seed = ConcatKDFHash(  # KDFe
        algorithm=hash_algorithm(name_alg),
        length=digest_size(name_alg),
        otherinfo=IDENTITY_LABEL + ephemeral_x + ek_x,
    ).derive(shared_x)
    return seed, _tpm2b(ephemeral_x) + _tpm2b(point.y.to_bytes(size, "big"))


def _kdfa(name_alg: int, key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    """KDFa: SP 800-108 counter-mode KDF with HMAC, as the TPM specifies it."""
    return KBKDFHMAC(
        algorithm=hash_algorithm(name_alg),
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    ).derive(key)


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data

"""A TPM's side of credential activation, in software: the inverse of make_credential.

TPM2_ActivateCredential with KDFa/KDFe written out as the specification states them,
independently of `spire_tpm_attestor.tpm.credential`, so a round trip proves the server's
MakeCredential is what a TPM unwraps.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from spire_tpm_attestor.tpm.constants import TPM_ALG, hash_algorithm
from spire_tpm_attestor.tpm.structures import PublicArea, Reader
from tests.unit.tpm_builders import EK_ATTRIBUTES, area

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # cryptography < 47
    from cryptography.hazmat.primitives.ciphers.modes import CFB


class IntegrityError(Exception):
    pass


def kdfa(alg: int, key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    out, counter = b"", 1
    while len(out) * 8 < bits:
        mac = hmac.HMAC(key, hash_algorithm(alg))
        mac.update(struct.pack(">I", counter) + label + b"\x00" + context + struct.pack(">I", bits))
        out += mac.finalize()
        counter += 1
    return out[: bits // 8]


def kdfe(alg: int, z: bytes, use: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    out, counter = b"", 1
    while len(out) * 8 < bits:
        digest = hashes.Hash(hash_algorithm(alg))
        digest.update(struct.pack(">I", counter) + z + use + party_u + party_v)
        out += digest.finalize()
        counter += 1
    return out[: bits // 8]


def activate(
    ek_private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    ek: PublicArea,
    object_name: bytes,
    id_object: bytes,
    encrypted_secret: bytes,
) -> bytes:
    """TPM2_ActivateCredential in software (TPM 2.0 Part 1 §24, Part 3 §12.5)."""
    alg = ek.name_alg
    digest_bits = hash_algorithm(alg).digest_size * 8
    blob = Reader(id_object, "id_object").tpm2b("credential", 1024)
    outer = Reader(blob, "blob")
    integrity = outer.tpm2b("integrity", 64)
    enc_identity = blob[2 + len(integrity) :]
    seed_blob = Reader(encrypted_secret, "secret").tpm2b("secret", 1024)
    if isinstance(ek_private, rsa.RSAPrivateKey):
        h = hash_algorithm(alg)
        seed = ek_private.decrypt(seed_blob, padding.OAEP(padding.MGF1(h), h, b"IDENTITY\x00"))
    else:
        r = Reader(seed_blob, "point")
        x, y = r.tpm2b("x", 66), r.tpm2b("y", 66)
        r.finish()
        ephemeral = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ek_private.curve
        ).public_key()
        z = ek_private.exchange(ec.ECDH(), ephemeral)
        assert ek.ecc is not None
        seed = kdfe(alg, z, b"IDENTITY\x00", x, ek.ecc.x, digest_bits)
    mac = hmac.HMAC(kdfa(alg, seed, b"INTEGRITY", b"", digest_bits), hash_algorithm(alg))
    mac.update(enc_identity + object_name)
    if mac.finalize() != integrity:
        raise IntegrityError("integrity check failed")
    sym = kdfa(alg, seed, b"STORAGE", object_name, ek.symmetric.key_bits)
    decryptor = Cipher(algorithms.AES(sym), CFB(bytes(16))).decryptor()
    plain = decryptor.update(enc_identity) + decryptor.finalize()
    return Reader(plain, "credential").tpm2b("secret", 64)


def software_ek(
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    name_alg: int = TPM_ALG.SHA256,
    key_bits: int = 128,
) -> PublicArea:
    return area(
        private.public_key(),
        attributes=EK_ATTRIBUTES,
        name_alg=name_alg,
        symmetric=(TPM_ALG.AES, key_bits, TPM_ALG.CFB),
    )

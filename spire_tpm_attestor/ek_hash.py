"""The EK hash that names a TPM, from a key, a certificate or a public-key file.

Lowercase hex SHA-256 of the EK's DER SubjectPublicKeyInfo, as spiffe/spire-tpm-plugin
computes its `pub_hash`: the same TPM gets the same name from either plugin.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.x509 import load_certificate


def ek_hash(public_key: PublicKeyTypes) -> str:
    """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo (spiffe/spire-tpm-plugin)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def hash_of_certificate(data: bytes) -> str:
    """The EK hash of the key in an EK certificate (PEM, DER or an NV read)."""
    return ek_hash(load_certificate(data).public_key())


def load_public_key(data: bytes) -> PublicKeyTypes:
    """The key in a PEM or DER SubjectPublicKeyInfo."""
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_public_key(data)
        return serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedInput(str(exc)) from None


def hash_of_public_key(data: bytes) -> str:
    """The EK hash of a PEM or DER SubjectPublicKeyInfo."""
    return ek_hash(load_public_key(data))

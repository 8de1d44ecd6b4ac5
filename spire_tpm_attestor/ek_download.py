"""Where TPM manufacturers publish the EK certificates their TPMs do not hold in NV.

Intel PTT and AMD fTPM firmware TPMs have no EK certificate in NV; each manufacturer's
web service serves it at a path derived from the EK public key (the schemes of
go-attestation's `intelEKURL`/`amdEKURL` and tpm2-tools' `tpm2_getekcertificate`):

- Intel: base64url (with `=` padding, percent-encoded) of SHA-256(modulus || 01 00 01)
  for RSA, SHA-256(x || y) for ECC. The answer is JSON whose `certificate` is base64url
  DER (or, from a mirror, the certificate itself).
- AMD: the first 16 bytes, lowercase hex, of SHA-256(00 00 22 22 || exponent (UINT32)
  || modulus) for RSA, SHA-256(00 00 44 44 || x || y) for ECC. The answer is the DER.

Pure: the URL for a key and the certificate in an answer. Fetching is the server's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Final
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.x509 import Certificate, load_certificate

DEFAULT_SERVICE_URLS: Final = {
    "intel": "https://ekop.intel.com/ekcertservice/",
    "amd": "https://ftpm.amd.com/pki/aia/",
}
MANUFACTURERS: Final = tuple(DEFAULT_SERVICE_URLS)
# TPM_PT_MANUFACTURER values (four ASCII letters) of the TPMs these services serve.
MANUFACTURER_IDS: Final = {"INTC": "intel", "AMD": "amd"}


def _rsa_modulus(key: rsa.RSAPublicKey) -> bytes:
    n = key.public_numbers().n
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def _ecc_point(key: ec.EllipticCurvePublicKey) -> bytes:
    numbers = key.public_numbers()
    size = (key.curve.key_size + 7) // 8
    return numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big")


def intel_ek_path(key: PublicKeyTypes) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        digest = hashlib.sha256(_rsa_modulus(key) + b"\x01\x00\x01").digest()
    elif isinstance(key, ec.EllipticCurvePublicKey):
        digest = hashlib.sha256(_ecc_point(key)).digest()
    else:
        raise MalformedInput(f"no Intel EK certificate path for a {type(key).__name__}")
    return quote(base64.urlsafe_b64encode(digest).decode(), safe="")


def amd_ek_path(key: PublicKeyTypes) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        exponent = key.public_numbers().e.to_bytes(4, "big")
        digest = hashlib.sha256(b"\x00\x00\x22\x22" + exponent + _rsa_modulus(key)).digest()
    elif isinstance(key, ec.EllipticCurvePublicKey):
        digest = hashlib.sha256(b"\x00\x00\x44\x44" + _ecc_point(key)).digest()
    else:
        raise MalformedInput(f"no AMD EK certificate path for a {type(key).__name__}")
    return digest[:16].hex()


_PATHS: Final = {"intel": intel_ek_path, "amd": amd_ek_path}


def ek_certificate_url(manufacturer: str, base_url: str, key: PublicKeyTypes) -> str:
    """Where `manufacturer`'s service at `base_url` publishes the certificate of `key`."""
    return base_url.rstrip("/") + "/" + _PATHS[manufacturer](key)


def downloaded_ek_certificate(body: bytes) -> Certificate:
    """The certificate in a service's answer: Intel's JSON, DER or PEM."""
    if body.lstrip().startswith(b"{"):
        try:
            document = json.loads(body)
            encoded = document["certificate"]
            body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise MalformedInput(f"JSON answer without a base64url certificate: {exc}") from None
    return load_certificate(body)

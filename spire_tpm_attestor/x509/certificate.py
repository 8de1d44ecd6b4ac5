"""One X.509 certificate, as it was signed: EK, DevID and CA certificates alike.

`load_certificate` takes PEM, DER or what an NV read returns (a TCG header in front,
padding behind) and keeps the original DER, TBS bytes, signature and
SubjectPublicKeyInfo for signature checks. `cryptography` reads the fields, from a
canonically re-encoded copy (`der.canonical`) when it refuses the original, and RSA keys
in an id-RSAES-OAEP SubjectPublicKeyInfo (common in EK certificates) are read here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.tpm.constants import OID_TCG_MANUFACTURER, OID_TCG_MODEL, OID_TCG_VERSION
from spire_tpm_attestor.x509 import der

MAX_CERTIFICATE_SIZE = 64 * 1024

# TCG PC-Client NV header in front of some EK certificates: 10 01 00, UINT16 length.
_TCG_NV_HEADER = b"\x10\x01\x00"
# DER of OID 1.2.840.113549.1.1.7 (id-RSAES-OAEP), used in some EK certificates' SPKI.
_OID_RSAES_OAEP = bytes.fromhex("06092a864886f70d010107")

# What `cryptography` raises for a certificate it cannot read; none of it leaves here.
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
)

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True, eq=False)
class Certificate:
    """An X.509 certificate as it was signed, plus its fields as `cryptography` reads them.

    `der`, `tbs_bytes`, `signature` and `spki` are the original bytes. `certificate` is
    the `cryptography` object; when `lenient` is true it was parsed from a canonical
    re-encoding because `cryptography` refused the original DER.
    """

    der: bytes
    tbs_bytes: bytes
    signature: bytes
    spki: bytes
    certificate: x509.Certificate
    lenient: bool

    @property
    def signature_algorithm_oid(self) -> x509.ObjectIdentifier:
        return self.certificate.signature_algorithm_oid

    @property
    def issuer(self) -> x509.Name:
        return self.certificate.issuer

    @property
    def subject(self) -> x509.Name:
        return self.certificate.subject

    @property
    def serial_number(self) -> int:
        return self.certificate.serial_number

    @property
    def not_valid_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_valid_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def sha256_fingerprint(self) -> str:
        """Lowercase hex SHA-256 of the certificate's DER."""
        return hashlib.sha256(self.der).hexdigest()

    @property
    def issuer_common_name(self) -> str | None:
        return _first_value(self.issuer, NameOID.COMMON_NAME)

    @property
    def subject_common_name(self) -> str | None:
        return _first_value(self.subject, NameOID.COMMON_NAME)

    @property
    def tcg_manufacturer(self) -> str | None:
        """TPM manufacturer from the SAN directoryName, e.g. `id:49465800`."""
        return self._tcg_attribute(OID_TCG_MANUFACTURER)

    @property
    def tcg_model(self) -> str | None:
        return self._tcg_attribute(OID_TCG_MODEL)

    @property
    def tcg_version(self) -> str | None:
        return self._tcg_attribute(OID_TCG_VERSION)

    @property
    def key_usage(self) -> x509.KeyUsage | None:
        """The KeyUsage extension, or None when the certificate has none."""
        try:
            return self.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return None

    @property
    def is_ca(self) -> bool:
        try:
            constraints = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            return False
        return constraints.value.ca

    def public_key(self) -> PublicKeyTypes:
        """The subject key, including RSA keys in an id-RSAES-OAEP SubjectPublicKeyInfo."""
        spki = der.children(der.read_element(self.spki)[1])
        algorithm = der.children(der.read_element(spki[0])[1]) if len(spki) == 2 else []
        if not algorithm:
            raise MalformedInput("SubjectPublicKeyInfo: not an algorithm and a key")
        if algorithm[0] == _OID_RSAES_OAEP:
            return _rsa_key_from_bit_string(spki[1])
        try:
            return serialization.load_der_public_key(self.spki)
        except _PARSE_ERRORS as exc:
            raise MalformedInput(f"unsupported certificate public key: {exc}") from None

    def _tcg_attribute(self, oid: x509.ObjectIdentifier) -> str | None:
        try:
            san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return None
        for name in san.value.get_values_for_type(x509.DirectoryName):
            value = _first_value(name, oid)
            if value is not None:
                return value
        return None

    def describe(self) -> str:
        """A short label for messages: subject (or serial) and issuer."""
        subject = self.subject.rfc4514_string() or f"serial {self.serial_number}"
        return f"{subject!r} issued by {self.issuer.rfc4514_string()!r}"


def _first_value(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    for attribute in name.get_attributes_for_oid(oid):
        if isinstance(attribute.value, str):
            return attribute.value
    return None


def _rsa_key_from_bit_string(bit_string: bytes) -> RSAPublicKey:
    tag, content, _ = der.read_element(bit_string)
    if tag != der.TAG_BIT_STRING or not content or content[0] != 0:
        raise MalformedInput("SubjectPublicKeyInfo: malformed BIT STRING")
    tag, sequence, end = der.read_element(content, 1)
    integers = der.children(sequence)
    if tag != der.TAG_SEQUENCE or end != len(content) or len(integers) != 2:
        raise MalformedInput("SubjectPublicKeyInfo: malformed RSAPublicKey")
    n, e = (der.read_integer(i) for i in integers)
    try:
        return RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise MalformedInput(f"invalid RSA public key: {exc}") from None


def strip_nv_wrapping(data: bytes) -> bytes:
    """The certificate DER from an NV read: drop the TCG header and trailing padding."""
    if data.startswith(_TCG_NV_HEADER):
        if len(data) < 5:
            raise MalformedInput("EK certificate: truncated TCG NV header")
        (length,) = struct.unpack(">H", data[3:5])
        data = data[5 : 5 + length]
    tag, _, end = der.read_element(data)
    if tag != der.TAG_SEQUENCE:
        raise MalformedInput("certificate is neither PEM nor a DER SEQUENCE")
    return data[:end]


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER of every CERTIFICATE block in PEM `data` (at least one)."""
    blocks = []
    for match in _PEM_CERTIFICATE.finditer(data):
        try:
            blocks.append(base64.b64decode(b"".join(match.group(1).split()), validate=True))
        except binascii.Error as exc:
            raise MalformedInput(f"PEM: bad base64: {exc}") from None
    if not blocks:
        raise MalformedInput("PEM: no CERTIFICATE block")
    return blocks


def _parse_x509(encoded: bytes) -> x509.Certificate:
    certificate = x509.load_der_x509_certificate(encoded)
    certificate.extensions  # noqa: B018 - parse extensions now, not on first use
    return certificate


def from_der(encoded: bytes) -> Certificate:
    """The certificate whose DER is `encoded`, exactly as signed."""
    tag, content, end = der.read_element(encoded)
    parts = der.children(content)
    if tag != der.TAG_SEQUENCE or end != len(encoded) or len(parts) != 3:
        raise MalformedInput("certificate: not a SEQUENCE of three elements")
    tbs, algorithm, signature = parts
    tbs_fields = der.children(der.read_element(tbs)[1])
    first = 1 if tbs_fields and tbs_fields[0][0] == der.TAG_CONTEXT_0 else 0  # [0] version
    if len(tbs_fields) < first + 6:
        raise MalformedInput("certificate: TBSCertificate is too short")
    if tbs_fields[first + 1] != algorithm:
        raise MalformedInput("certificate: inner and outer signature algorithms differ")
    sig_tag, sig_bits, _ = der.read_element(signature)
    if sig_tag != der.TAG_BIT_STRING or not sig_bits or sig_bits[0] != 0:
        raise MalformedInput("certificate: malformed signature BIT STRING")
    lenient = False
    try:
        certificate = _parse_x509(encoded)
    except _PARSE_ERRORS:
        lenient = True
        try:
            certificate = _parse_x509(der.canonical(encoded))
        except _PARSE_ERRORS as exc:
            raise MalformedInput(f"certificate cannot be parsed: {exc}") from None
    return Certificate(
        der=encoded,
        tbs_bytes=tbs,
        signature=sig_bits[1:],
        spki=tbs_fields[first + 5],
        certificate=certificate,
        lenient=lenient,
    )


def certificate_der(data: bytes) -> bytes:
    """The DER of the one certificate in PEM, DER or an NV read (TCG header, padding),
    exactly as it was signed."""
    if len(data) > MAX_CERTIFICATE_SIZE:
        raise MalformedInput(f"certificate is {len(data)} bytes, limit is {MAX_CERTIFICATE_SIZE}")
    if data.lstrip().startswith(b"-----BEGIN"):
        blocks = pem_certificates(data)
        if len(blocks) != 1:
            raise MalformedInput(f"PEM: expected one certificate, found {len(blocks)}")
        return blocks[0]
    return strip_nv_wrapping(data)


def load_certificate(data: bytes) -> Certificate:
    """Load one certificate from PEM, DER, or an NV read (TCG header, padding)."""
    return from_der(certificate_der(data))

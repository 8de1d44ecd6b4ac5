"""One X.509 certificate, as it was signed: EK, DevID and CA certificates alike.

`load_certificate` takes PEM (with any text around it), DER or what an NV read returns
(a TCG header or TPM 1.2 stored-certificate structure in front, padding or other bytes
behind) and keeps the original DER, TBS bytes, signature and SubjectPublicKeyInfo for
signature checks. `cryptography` reads the fields, from a canonical re-encoding
(`der.canonical_certificate`) when it refuses the original; the serial number and the
subject key (including RSA keys in an id-RSAES-OAEP SubjectPublicKeyInfo, common in EK
certificates) are read here from the original bytes. Every deviation tolerated on the
way is named in `Certificate.quirks`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.tpm.constants import OID_TCG_MANUFACTURER, OID_TCG_MODEL, OID_TCG_VERSION
from spire_tpm_attestor.x509 import der

MAX_CERTIFICATE_SIZE = 64 * 1024

# TCG PC Client NV structures in front of some EK certificates: TCG_PCCLIENT_STORED_CERT
# (tag 10 01, certType 0 = full, UINT16 size), then on TPM 1.2-era parts TCG_FULL_CERT's
# tag (10 02) before the DER.
_TCG_STORED_CERT = b"\x10\x01"
_TCG_FULL_CERT = b"\x10\x02"
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

# Deviations outside the DER (see der.QUIRK_* for those inside), by the name `quirks` gives.
QUIRK_TCG_NV_HEADER = "tcg-nv-header"
QUIRK_TCG_STORED_CERTIFICATE = "tcg-stored-certificate"
QUIRK_NV_PADDING = "nv-padding"
QUIRK_TRAILING_BYTES = "trailing-bytes"
QUIRK_PEM_SURROUNDING_TEXT = "pem-surrounding-text"
QUIRK_LONG_SERIAL = "long-serial"
QUIRK_RSAES_OAEP_KEY = "rsaes-oaep-key"
MAX_SERIAL_OCTETS = 20  # RFC 5280 4.1.2.2

# The extensions a certificate may mark critical: the ones chain verification applies
# or that only describe (RFC 5280 6.1.3 lets a verifier ignore no other critical one).
UNDERSTOOD_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,  # critical in EK certificates (empty subject)
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.CERTIFICATE_POLICIES,  # critical in some EK certificates; any policy
        ExtensionOID.SUBJECT_DIRECTORY_ATTRIBUTES,  # TCG: TPM specification, security level
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
)


@dataclass(frozen=True, eq=False)
class Certificate:
    """An X.509 certificate as it was signed, plus its fields as `cryptography` reads them.

    `der`, `tbs_bytes`, `signature`, `spki` and `serial_number` are the original bytes
    and value. `certificate` is the `cryptography` object; when `lenient` is true it was
    parsed from a canonical re-encoding because `cryptography` refused the original DER.
    `quirks` names, sorted, every deviation tolerated in reading it.
    """

    der: bytes
    tbs_bytes: bytes
    signature: bytes
    spki: bytes
    serial_number: int
    certificate: x509.Certificate
    lenient: bool
    quirks: tuple[str, ...]
    # Read once: `cryptography` builds these anew on each access, and chains compare them.
    subject: x509.Name
    issuer: x509.Name

    @property
    def signature_algorithm_oid(self) -> x509.ObjectIdentifier:
        return self.certificate.signature_algorithm_oid

    @property
    def not_valid_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_valid_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    # Cached properties: a function of the certificate's bytes alone, computed at most
    # once per object; CA certificates are loaded once and serve every chain.
    @functools.cached_property
    def der_digest(self) -> bytes:
        """SHA-256 of the certificate's DER."""
        return hashlib.sha256(self.der).digest()

    @property
    def sha256_fingerprint(self) -> str:
        """Lowercase hex SHA-256 of the certificate's DER."""
        return self.der_digest.hex()

    @functools.cached_property
    def subject_key(self) -> NameKey:
        """`subject` as `name_key` gives it: compares as the names do."""
        return name_key(self.subject)

    @functools.cached_property
    def issuer_key(self) -> NameKey:
        return name_key(self.issuer)

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

    @functools.cached_property
    def key_usage(self) -> x509.KeyUsage | None:
        """The KeyUsage extension, or None when the certificate has none."""
        try:
            return self.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return None

    @functools.cached_property
    def basic_constraints(self) -> x509.BasicConstraints | None:
        """The BasicConstraints extension, or None when the certificate has none."""
        try:
            return self.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            return None

    @property
    def is_ca(self) -> bool:
        constraints = self.basic_constraints
        return constraints is not None and constraints.ca

    @functools.cached_property
    def unknown_critical_extensions(self) -> list[str]:
        """The dotted OIDs of critical extensions outside UNDERSTOOD_EXTENSIONS."""
        return [
            extension.oid.dotted_string
            for extension in self.certificate.extensions
            if extension.critical and extension.oid not in UNDERSTOOD_EXTENSIONS
        ]

    def public_key(self) -> PublicKeyTypes:
        """The subject key, including RSA keys in an id-RSAES-OAEP SubjectPublicKeyInfo."""
        return self._public_key

    @functools.cached_property
    def _public_key(self) -> PublicKeyTypes:  # a key that cannot be read raises each time
        algorithm, bit_string = _spki_parts(self.spki)
        if algorithm == _OID_RSAES_OAEP:
            return _rsa_key_from_bit_string(bit_string)
        try:
            return serialization.load_der_public_key(self.spki)
        except _PARSE_ERRORS as exc:
            raise MalformedInput(f"unsupported certificate public key: {one_line(exc)}") from None

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
        """A short label for messages: subject (or serial, in hex: Python refuses to
        print an int of over 4,300 digits in decimal) and issuer."""
        subject = self.subject.rfc4514_string() or f"serial {self.serial_number:#x}"
        return f"{subject!r} issued by {self.issuer.rfc4514_string()!r}"


NameKey = tuple[frozenset[tuple[x509.ObjectIdentifier, str | bytes]], ...]


def name_key(name: x509.Name) -> NameKey:
    """What `x509.Name` equality compares (each RDN's attribute types and values, in
    RDN order), as one hashable value: two names are equal exactly when their keys are,
    however either was encoded, and comparing keys costs no Python call per attribute."""
    return tuple(
        frozenset((attribute.oid, attribute.value) for attribute in rdn) for rdn in name.rdns
    )


def _first_value(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    for attribute in name.get_attributes_for_oid(oid):
        if isinstance(attribute.value, str):
            return attribute.value
    return None


def _spki_parts(spki: bytes) -> tuple[bytes, bytes]:
    """A SubjectPublicKeyInfo's algorithm OID and subjectPublicKey, as encoded."""
    parts = der.children(der.read_element(spki)[1])
    algorithm = der.children(der.read_element(parts[0])[1]) if len(parts) == 2 else []
    if not algorithm:
        raise MalformedInput("SubjectPublicKeyInfo: not an algorithm and a key")
    return algorithm[0], parts[1]


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


def one_line(exc: Exception) -> str:
    """A library's error message on one line, for reasons and audit lines."""
    return " ".join(str(exc).split()) or type(exc).__name__


def strip_nv_wrapping(data: bytes, quirks: set[str]) -> bytes:
    """The certificate DER from an NV read or a DER file: without a TCG header in front
    (adding to `quirks` which) or anything behind."""
    bound = len(data)
    if data.startswith(_TCG_STORED_CERT):
        if len(data) < 5:
            raise MalformedInput("certificate: truncated TCG NV header")
        if data[2] != 0:
            raise MalformedInput(
                f"certificate: TCG stored certificate of type {data[2]}; "
                "only full certificates (type 0) are supported"
            )
        (size,) = struct.unpack(">H", data[3:5])
        start = 5
        if data[5:7] == _TCG_FULL_CERT:
            quirks.add(QUIRK_TCG_STORED_CERTIFICATE)
            start = 7  # the size may count this tag or not: either way it bounds the DER
        else:
            quirks.add(QUIRK_TCG_NV_HEADER)
        bound, data = size, data[start:]
    if data[:1] != bytes([der.TAG_SEQUENCE]):
        raise MalformedInput("certificate is neither PEM nor a DER SEQUENCE")
    _, _, end = der.read_element(data)
    if end > bound:
        raise MalformedInput("certificate: longer than the size in its TCG NV header")
    rest = data[end:]
    if rest:
        padding = rest.strip(b"\xff") == b"" or rest.strip(b"\x00") == b""
        quirks.add(QUIRK_NV_PADDING if padding else QUIRK_TRAILING_BYTES)
    return data[:end]


def pem_blocks(data: bytes) -> list[bytes]:
    """The base64 text of every CERTIFICATE block in PEM `data`, in order."""
    return [match.group(1) for match in _PEM_CERTIFICATE.finditer(data)]


def decode_pem_block(text: bytes) -> bytes:
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except binascii.Error as exc:
        raise MalformedInput(f"PEM: bad base64: {exc}") from None


def to_pem(encoded: bytes) -> bytes:
    """PEM of certificate DER exactly as it is (no re-encoding)."""
    text = base64.b64encode(encoded)
    lines = b"".join(text[at : at + 64] + b"\n" for at in range(0, len(text), 64))  # RFC 7468
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"-----END CERTIFICATE-----\n"


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER of every CERTIFICATE block in PEM `data` (at least one)."""
    blocks = [decode_pem_block(text) for text in pem_blocks(data)]
    if not blocks:
        raise MalformedInput("PEM: no CERTIFICATE block")
    return blocks


def _parse_x509(encoded: bytes) -> x509.Certificate:
    certificate = x509.load_der_x509_certificate(encoded)
    # Parse everything read later now, so that a refusal happens here and only here.
    certificate.extensions  # noqa: B018
    certificate.signature_algorithm_oid  # noqa: B018
    return certificate


def _parse_strictly(encoded: bytes) -> x509.Certificate | None:
    """The certificate as `cryptography` reads the original DER, or None if it refuses."""
    try:
        return _parse_x509(encoded)
    except _PARSE_ERRORS:
        return None


def from_der(encoded: bytes, quirks: Iterable[str] = ()) -> Certificate:
    """The certificate whose DER is `encoded`, exactly as signed; `quirks` are the
    deviations already met in unwrapping it."""
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
    serial_number = der.read_integer(tbs_fields[first])
    spki = tbs_fields[first + 5]
    found = set(quirks)
    if len(der.read_element(tbs_fields[first])[1]) > MAX_SERIAL_OCTETS:
        found.add(QUIRK_LONG_SERIAL)
    if _spki_parts(spki)[0] == _OID_RSAES_OAEP:
        found.add(QUIRK_RSAES_OAEP_KEY)
    # cryptography reads a serial number that is not positive, but warns on stderr.
    certificate = _parse_strictly(encoded) if serial_number > 0 else None
    lenient = certificate is None
    if certificate is None:
        canonical, repaired = der.canonical_certificate(encoded)
        found |= repaired
        try:
            certificate = _parse_x509(canonical)
        except _PARSE_ERRORS as exc:
            raise MalformedInput(f"certificate cannot be parsed: {one_line(exc)}") from None
    try:
        subject, issuer = certificate.subject, certificate.issuer
    except _PARSE_ERRORS as exc:
        raise MalformedInput(f"certificate cannot be parsed: {one_line(exc)}") from None
    return Certificate(
        der=encoded,
        tbs_bytes=tbs,
        signature=sig_bits[1:],
        spki=spki,
        serial_number=serial_number,
        certificate=certificate,
        lenient=lenient,
        quirks=tuple(sorted(found)),
        subject=subject,
        issuer=issuer,
    )


def is_pem(data: bytes) -> bool:
    """Whether `data` is PEM text rather than DER or an NV read (which may hold anything)."""
    binary = data[:1] == b"\x30" or data.startswith(_TCG_STORED_CERT)
    return not binary and b"-----BEGIN" in data


def unwrap_certificate(data: bytes) -> tuple[bytes, set[str]]:
    """The DER of the one certificate in PEM, DER or an NV read, exactly as it was signed,
    and the names of the wrapping deviations met (text around PEM, TCG NV structures,
    padding or other trailing bytes)."""
    if len(data) > MAX_CERTIFICATE_SIZE:
        raise MalformedInput(f"certificate is {len(data)} bytes, limit is {MAX_CERTIFICATE_SIZE}")
    quirks: set[str] = set()
    if is_pem(data):
        blocks = pem_certificates(data)
        if len(blocks) != 1:
            raise MalformedInput(f"PEM: expected one certificate, found {len(blocks)}")
        text = data.strip()
        if not (text.startswith(b"-----BEGIN") and text.endswith(b"-----")):
            quirks.add(QUIRK_PEM_SURROUNDING_TEXT)
        return blocks[0], quirks
    return strip_nv_wrapping(data, quirks), quirks


def certificate_der(data: bytes) -> bytes:
    """The DER of the one certificate in PEM, DER or an NV read (TCG header, padding),
    exactly as it was signed."""
    return unwrap_certificate(data)[0]


def load_certificate(data: bytes) -> Certificate:
    """Load one certificate from PEM, DER, or an NV read (TCG header, padding)."""
    return from_der(*unwrap_certificate(data))

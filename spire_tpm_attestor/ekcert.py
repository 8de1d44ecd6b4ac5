"""EK (and DevID) certificate handling: loading, chain verification, EK hash.

Real EK certificates are often not strictly valid X.509 (explicitly encoded defaults,
unsorted SETs, RSAES-OAEP keys, NV padding). This module therefore splits the DER
itself, keeps the original TBS bytes for signature checks, lets `cryptography` read the
fields (from a canonically re-encoded copy when it refuses the original) and walks the
chain by signature instead of by encoded issuer name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from spire_tpm_attestor.errors import MalformedInput, NotProven, SourceUnavailable
from spire_tpm_attestor.tpm.constants import OID_TCG_MANUFACTURER, OID_TCG_MODEL, OID_TCG_VERSION
from spire_tpm_attestor.tpm.structures import PublicArea, public_key_equals

MAX_CERTIFICATE_SIZE = 64 * 1024
MAX_BUNDLE_FILE_SIZE = 4 * 1024 * 1024
MAX_CHAIN_DEPTH = 8  # certificates from leaf to anchor inclusive
_MAX_DER_NESTING = 32

# TCG PC-Client NV header in front of some EK certificates: 10 01 00, UINT16 length.
_TCG_NV_HEADER = b"\x10\x01\x00"
# DER of OID 1.2.840.113549.1.1.7 (id-RSAES-OAEP), used in some EK certificates' SPKI.
_OID_RSAES_OAEP = bytes.fromhex("06092a864886f70d010107")
_CHAIN_HASHES = (hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL
)

_TAG_BOOLEAN = 0x01
_TAG_INTEGER = 0x02
_TAG_BIT_STRING = 0x03
_TAG_SEQUENCE = 0x30
_TAG_SET = 0x31
_TAG_CONTEXT_0 = 0xA0
_CONSTRUCTED = 0x20


# --- minimal DER ------------------------------------------------------------------------


def _der_element(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """The DER element at `pos`: (tag, content, end offset)."""
    if pos + 2 > len(data):
        raise MalformedInput("DER: truncated element header")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise MalformedInput("DER: high tag numbers are not supported")
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 0 < count <= 4:  # 0 is BER indefinite length
            raise MalformedInput("DER: unsupported length encoding")
        if start + count > len(data):
            raise MalformedInput("DER: truncated length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise MalformedInput("DER: element runs past the end of the data")
    return tag, data[start:end], end


def _der_children(content: bytes) -> list[bytes]:
    """The complete encodings of the elements inside a constructed value."""
    children, pos = [], 0
    while pos < len(content):
        _, _, end = _der_element(content, pos)
        children.append(content[pos:end])
        pos = end
    return children


def _der_encode(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_canonical(element: bytes, depth: int = 0) -> bytes:
    """Re-encode an element as DER, fixing the violations seen in real EK certificates:
    explicitly encoded BOOLEAN FALSE defaults (dropped), unsorted SET OF (sorted),
    padded INTEGERs (minimal) and non-0xFF TRUE. Every fix preserves the value."""
    if depth > _MAX_DER_NESTING:
        raise MalformedInput("DER: nested too deeply")
    tag, content, _ = _der_element(element)
    if tag & _CONSTRUCTED:
        children = [_der_canonical(child, depth + 1) for child in _der_children(content)]
        if tag == _TAG_SEQUENCE:
            # In a certificate outside OCTET STRINGs only DEFAULT FALSE fields (like
            # Extension.critical) are BOOLEAN, and DER forbids encoding a default.
            children = [c for c in children if c != b"\x01\x01\x00"]
        elif tag == _TAG_SET:
            children.sort()
        return _der_encode(tag, b"".join(children))
    if tag == _TAG_INTEGER:
        while len(content) > 1 and (
            (content[0] == 0x00 and content[1] < 0x80)
            or (content[0] == 0xFF and content[1] >= 0x80)
        ):
            content = content[1:]
    elif tag == _TAG_BOOLEAN and content not in (b"\x00", b"\xff"):
        content = b"\xff"
    return _der_encode(tag, content)


# --- certificates ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EKCertificate:
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
    def is_ca(self) -> bool:
        try:
            constraints = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            return False
        return constraints.value.ca

    def public_key(self) -> PublicKeyTypes:
        """The subject key, including RSA keys in an id-RSAES-OAEP SubjectPublicKeyInfo."""
        algorithm, bit_string = _der_children(_der_element(self.spki)[1])
        if _der_children(_der_element(algorithm)[1])[0] == _OID_RSAES_OAEP:
            return _rsa_key_from_bit_string(bit_string)
        try:
            return serialization.load_der_public_key(self.spki)
        except (ValueError, UnsupportedAlgorithm) as exc:
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
    tag, content, _ = _der_element(bit_string)
    if tag != _TAG_BIT_STRING or not content or content[0] != 0:
        raise MalformedInput("SubjectPublicKeyInfo: malformed BIT STRING")
    tag, sequence, end = _der_element(content, 1)
    integers = _der_children(sequence)
    if tag != _TAG_SEQUENCE or end != len(content) or len(integers) != 2:
        raise MalformedInput("SubjectPublicKeyInfo: malformed RSAPublicKey")
    n, e = (_der_integer(i) for i in integers)
    try:
        return RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise MalformedInput(f"invalid RSA public key: {exc}") from None


def _der_integer(element: bytes) -> int:
    tag, content, _ = _der_element(element)
    if tag != _TAG_INTEGER or not content:
        raise MalformedInput("DER: expected an INTEGER")
    return int.from_bytes(content, "big", signed=True)


def _strip_nv_wrapping(data: bytes) -> bytes:
    """The certificate DER from an NV read: drop the TCG header and trailing padding."""
    if data.startswith(_TCG_NV_HEADER):
        if len(data) < 5:
            raise MalformedInput("EK certificate: truncated TCG NV header")
        (length,) = struct.unpack(">H", data[3:5])
        data = data[5 : 5 + length]
    tag, _, end = _der_element(data)
    if tag != _TAG_SEQUENCE:
        raise MalformedInput("certificate is neither PEM nor a DER SEQUENCE")
    return data[:end]


def _pem_certificates(data: bytes) -> list[bytes]:
    blocks = []
    for match in _PEM_CERTIFICATE.finditer(data):
        try:
            blocks.append(base64.b64decode(b"".join(match.group(1).split()), validate=True))
        except binascii.Error as exc:
            raise MalformedInput(f"PEM: bad base64: {exc}") from None
    if not blocks:
        raise MalformedInput("PEM: no CERTIFICATE block")
    return blocks


def _parse_x509(der: bytes) -> x509.Certificate:
    certificate = x509.load_der_x509_certificate(der)
    certificate.extensions  # noqa: B018 - parse extensions now, not on first use
    return certificate


def _from_der(der: bytes) -> EKCertificate:
    tag, content, end = _der_element(der)
    parts = _der_children(content)
    if tag != _TAG_SEQUENCE or end != len(der) or len(parts) != 3:
        raise MalformedInput("certificate: not a SEQUENCE of three elements")
    tbs, algorithm, signature = parts
    tbs_fields = _der_children(_der_element(tbs)[1])
    first = 1 if tbs_fields and tbs_fields[0][0] == _TAG_CONTEXT_0 else 0  # [0] version
    if len(tbs_fields) < first + 6:
        raise MalformedInput("certificate: TBSCertificate is too short")
    if tbs_fields[first + 1] != algorithm:
        raise MalformedInput("certificate: inner and outer signature algorithms differ")
    sig_tag, sig_bits, _ = _der_element(signature)
    if sig_tag != _TAG_BIT_STRING or not sig_bits or sig_bits[0] != 0:
        raise MalformedInput("certificate: malformed signature BIT STRING")
    lenient = False
    try:
        certificate = _parse_x509(der)
    except (ValueError, x509.DuplicateExtension):
        lenient = True
        try:
            certificate = _parse_x509(_der_canonical(der))
        except (ValueError, x509.DuplicateExtension) as exc:
            raise MalformedInput(f"certificate cannot be parsed: {exc}") from None
    return EKCertificate(
        der=der,
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
        blocks = _pem_certificates(data)
        if len(blocks) != 1:
            raise MalformedInput(f"PEM: expected one certificate, found {len(blocks)}")
        return blocks[0]
    return _strip_nv_wrapping(data)


def load_certificate(data: bytes) -> EKCertificate:
    """Load one certificate from PEM, DER, or an NV read (TCG header, padding)."""
    return _from_der(certificate_der(data))


def load_ca_bundle(path: str | os.PathLike[str]) -> list[EKCertificate]:
    """All certificates in a PEM/DER file, or in the regular files of a directory.

    Hidden entries and subdirectories are skipped (Kubernetes volume mounts keep their
    `..data` machinery there). A file that is not a certificate is an error naming it.
    """
    if os.path.isdir(path):
        files = sorted(
            entry.path
            for entry in os.scandir(path)
            if not entry.name.startswith(".") and entry.is_file()
        )
    else:
        files = [os.fspath(path)]
    certificates: list[EKCertificate] = []
    for file in files:
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_BUNDLE_FILE_SIZE + 1)
        except OSError as exc:
            raise SourceUnavailable(f"CA bundle {file}: {exc}") from None
        try:
            if len(data) > MAX_BUNDLE_FILE_SIZE:
                raise MalformedInput(f"larger than {MAX_BUNDLE_FILE_SIZE} bytes")
            if b"-----BEGIN" in data:
                certificates.extend(_from_der(der) for der in _pem_certificates(data))
            else:
                certificates.append(load_certificate(data))
        except MalformedInput as exc:
            raise MalformedInput(f"CA bundle {file}: {exc}") from None
    return certificates


# --- binding -------------------------------------------------------------------------


def check_certificate_matches_public_area(cert: EKCertificate, area: PublicArea) -> None:
    """Prove the certificate certifies the very key in the TPM public area."""
    if not public_key_equals(area, cert.public_key()):
        raise NotProven("certificate key does not match the TPM public area")


# --- chain verification ---------------------------------------------------------------


class _SignatureResults:
    """The outcome of recent signature checks, keyed by both certificates' whole DER.

    Chains share their upper links (intermediate by root, the root by itself) and nodes
    re-attest with the same EK certificate, so most checks repeat; the key holds every
    signed byte, so a certificate that differs in any byte is checked afresh.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._results: OrderedDict[tuple[bytes, bytes], bool] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[bytes, bytes]) -> bool | None:
        with self._lock:
            result = self._results.get(key)
            if result is not None:
                self._results.move_to_end(key)
            return result

    def put(self, key: tuple[bytes, bytes], result: bool) -> None:
        with self._lock:
            self._results[key] = result
            if len(self._results) > self._size:
                self._results.popitem(last=False)


_signature_results = _SignatureResults(size=4096)


def _signed_by(child: EKCertificate, parent: EKCertificate) -> bool:
    """Whether `parent`'s key made `child`'s signature over its original TBS bytes."""
    key = (child.der, parent.der)
    result = _signature_results.get(key)
    if result is None:
        result = _verify_signature(child, parent)
        _signature_results.put(key, result)
    return result


def _verify_signature(child: EKCertificate, parent: EKCertificate) -> bool:
    try:
        params = child.certificate.signature_algorithm_parameters
        algorithm = child.certificate.signature_hash_algorithm
        key = parent.public_key()
    except (UnsupportedAlgorithm, MalformedInput):
        return False
    try:
        if isinstance(key, RSAPublicKey):
            if not isinstance(params, padding.PKCS1v15 | padding.PSS) or not isinstance(
                algorithm, _CHAIN_HASHES
            ):
                return False
            key.verify(child.signature, child.tbs_bytes, params, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA) or not isinstance(algorithm, _CHAIN_HASHES):
                return False
            key.verify(child.signature, child.tbs_bytes, params)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(child.signature, child.tbs_bytes)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def check_validity(cert: EKCertificate, now: datetime) -> None:
    """Prove `now` lies within the certificate's validity period."""
    if now < cert.not_valid_before:
        raise NotProven(f"certificate {cert.describe()} is not yet valid")
    if now > cert.not_valid_after:
        raise NotProven(f"certificate {cert.describe()} has expired")


def _issuer_problem(parent: EKCertificate, cas_below: int, now: datetime) -> str | None:
    """Why `parent`, which signed the certificate below it, cannot act as its issuer."""
    if not parent.is_ca:
        return f"issuer {parent.describe()} is not a CA"
    extensions = parent.certificate.extensions
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            return f"issuer {parent.describe()} may not sign certificates"
    except x509.ExtensionNotFound:
        pass
    path_length = extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    if path_length is not None and cas_below > path_length:
        return f"issuer {parent.describe()} exceeds its path length"
    try:
        check_validity(parent, now)
    except NotProven as exc:
        return str(exc)
    return None


def _candidates(child: EKCertificate, pool: Sequence[EKCertificate]) -> list[EKCertificate]:
    # Try certificates whose subject equals the issuer first; the signature decides.
    return sorted(pool, key=lambda cert: cert.subject != child.issuer)


def _self_signed(cert: EKCertificate) -> bool:
    return cert.subject == cert.issuer and _signed_by(cert, cert)


def verify_chain(
    leaf: EKCertificate,
    intermediates: Sequence[EKCertificate],
    bundle: Sequence[EKCertificate],
    now: datetime,
) -> list[EKCertificate]:
    """Verify `leaf` chains to a certificate of `bundle`, possibly through intermediates.

    Parents are found by signature over every candidate, never by encoded issuer name
    (equal names are encoded differently in practice). Every parent must be a CA allowed
    to sign certificates, every certificate valid at `now` (timezone-aware), and the
    chain at most MAX_CHAIN_DEPTH long. Returns [leaf, intermediates..., anchor]. The
    anchor is a self-signed root of `bundle` whenever one is reachable, so it does not
    depend on whether an intermediate was configured in the bundle or sent by the agent;
    otherwise it is the nearest bundle certificate.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    check_validity(leaf, now)
    trusted = {cert.der for cert in bundle}
    pool = list({cert.der: cert for cert in [*bundle, *intermediates]}.values())
    queue: deque[list[EKCertificate]] = deque([[leaf]])
    expanded = {leaf.der}
    nearest: list[EKCertificate] | None = None
    problems: list[str] = []
    # Breadth first with each certificate expanded once: the shortest chain wins, and
    # cross-signed certificates cannot make the search explode.
    while queue:
        path = queue.popleft()
        for parent in _candidates(path[-1], pool):
            if parent.der in expanded or not _signed_by(path[-1], parent):
                continue
            problem = _issuer_problem(parent, len(path) - 1, now)
            if problem is not None:
                problems.append(problem)
                continue
            chain = [*path, parent]
            if parent.der in trusted:
                if _self_signed(parent):
                    return chain
                nearest = nearest or chain
            if len(chain) < MAX_CHAIN_DEPTH:
                expanded.add(parent.der)
                queue.append(chain)
    if nearest is not None:
        return nearest
    reason = problems[0] if problems else "no trusted issuer signed it"
    raise NotProven(f"certificate {leaf.describe()} does not chain to a trusted CA: {reason}")

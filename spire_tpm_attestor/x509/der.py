"""Just enough DER to take a certificate apart, and to re-encode a sloppy one.

Real EK and CA certificates are often not strictly valid DER. `read_element` and
`children` split the bytes without judging them, so the original TBS bytes stay
available for signature checks. `canonical_certificate` re-encodes a whole certificate,
extension values included, as DER that `cryptography` reads, preserving what every field
means, and names each deviation it repaired (the `QUIRK_*` names, reported as
`Certificate.quirks`). The re-encoding is only ever read from: no signature is checked
over it. Malformed bytes raise MalformedInput.
"""

from __future__ import annotations

from collections.abc import Callable

from spire_tpm_attestor.errors import MalformedInput

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
TAG_CONTEXT_0 = 0xA0
TAG_CONTEXT_1 = 0xA1
TAG_CONTEXT_2 = 0xA2
TAG_CONTEXT_3 = 0xA3
CONSTRUCTED = 0x20
MAX_NESTING = 32

# The deviations `canonical_certificate` repairs, by the name `quirks` reports.
QUIRK_UNSORTED_SET = "unsorted-set"
QUIRK_ENCODED_DEFAULT = "encoded-default"
QUIRK_NON_MINIMAL_INTEGER = "non-minimal-integer"
QUIRK_NON_MINIMAL_LENGTH = "non-minimal-length"
QUIRK_NON_DER_BOOLEAN = "non-der-boolean"
QUIRK_NON_POSITIVE_SERIAL = "non-positive-serial"
QUIRK_ECDSA_NULL_PARAMETERS = "ecdsa-null-parameters"
QUIRK_UNKNOWN_VERSION = "unknown-version"
QUIRK_UNSUPPORTED_GENERAL_NAME = "unsupported-general-name"

_BOOLEAN_FALSE = b"\x01\x01\x00"
_NULL = b"\x05\x00"
# ecdsa-with-SHA1 (1.2.840.10045.4.1) and ecdsa-with-SHA224..512 (1.2.840.10045.4.3.1-4).
_ECDSA_SIGNATURE_OIDS = frozenset(
    bytes.fromhex(oid)
    for oid in (
        "06072a8648ce3d0401",
        "06082a8648ce3d040301",
        "06082a8648ce3d040302",
        "06082a8648ce3d040303",
        "06082a8648ce3d040304",
    )
)
# GeneralName forms `cryptography` refuses: x400Address [3] and ediPartyName [5].
_UNSUPPORTED_GENERAL_NAMES = frozenset({0xA3, 0xA5})


def read_element(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
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


def children(content: bytes) -> list[bytes]:
    """The complete encodings of the elements inside a constructed value."""
    found, pos = [], 0
    while pos < len(content):
        _, _, end = read_element(content, pos)
        found.append(content[pos:end])
        pos = end
    return found


def encode(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def read_integer(element: bytes) -> int:
    tag, content, _ = read_element(element)
    if tag != TAG_INTEGER or not content:
        raise MalformedInput("DER: expected an INTEGER")
    return int.from_bytes(content, "big", signed=True)


def canonical(element: bytes, quirks: set[str], depth: int = 0) -> bytes:
    """Re-encode an element as DER, value for value, adding to `quirks` what it fixed:
    explicitly encoded BOOLEAN FALSE defaults (dropped), unsorted SET OF (sorted), padded
    INTEGERs and lengths (minimal), non-0xFF TRUE, NULL parameters of ECDSA algorithms."""
    if depth > MAX_NESTING:
        raise MalformedInput("DER: nested too deeply")
    tag, content, _ = read_element(element)
    if len(element) - len(content) != _header_size(len(content)):
        quirks.add(QUIRK_NON_MINIMAL_LENGTH)
    if tag & CONSTRUCTED:
        parts = [canonical(child, quirks, depth + 1) for child in children(content)]
        if tag == TAG_SEQUENCE:
            # Outside OCTET STRINGs and explicit tags, the BOOLEANs of certificates and
            # their extensions are DEFAULT FALSE fields (Extension.critical,
            # BasicConstraints.cA), and DER forbids encoding a default.
            if _BOOLEAN_FALSE in parts:
                quirks.add(QUIRK_ENCODED_DEFAULT)
                parts = [part for part in parts if part != _BOOLEAN_FALSE]
            if len(parts) == 2 and parts[0] in _ECDSA_SIGNATURE_OIDS and parts[1] == _NULL:
                quirks.add(QUIRK_ECDSA_NULL_PARAMETERS)  # RFC 5758: parameters absent
                parts = parts[:1]
        elif tag == TAG_SET and parts != sorted(parts):
            quirks.add(QUIRK_UNSORTED_SET)
            parts.sort()
        return encode(tag, b"".join(parts))
    if tag == TAG_INTEGER:
        content = _minimal_integer(content, quirks)
    elif tag == TAG_BOOLEAN and content not in (b"\x00", b"\xff"):
        quirks.add(QUIRK_NON_DER_BOOLEAN)
        content = b"\xff"
    return encode(tag, content)


def _header_size(length: int) -> int:
    """The size of a DER tag and length for content of `length` bytes."""
    return 2 if length < 0x80 else 2 + (length.bit_length() + 7) // 8


def _minimal_integer(content: bytes, quirks: set[str]) -> bytes:
    start = 0
    while start + 1 < len(content) and (
        (content[start] == 0x00 and content[start + 1] < 0x80)
        or (content[start] == 0xFF and content[start + 1] >= 0x80)
    ):
        start += 1
    if start:
        quirks.add(QUIRK_NON_MINIMAL_INTEGER)
    return content[start:]


def canonical_certificate(encoded: bytes) -> tuple[bytes, frozenset[str]]:
    """A DER re-encoding of the certificate `encoded` that `cryptography` reads, and the
    names of the deviations repaired. Besides `canonical`'s fixes, inside the TBS: a
    version other than v1..v3 is read as v3, a serial number that is not positive as 1
    (`Certificate.serial_number` reads the original), and every extension value is
    re-encoded too, without the GeneralName forms `cryptography` refuses."""
    quirks: set[str] = set()
    tag, content, _ = read_element(encoded)
    parts = children(content)
    if tag != TAG_SEQUENCE or len(parts) != 3:
        raise MalformedInput("certificate: not a SEQUENCE of three elements")
    tbs_tag, tbs_content, _ = read_element(parts[0])
    fields = children(tbs_content)
    first = 1 if fields and fields[0][0] == TAG_CONTEXT_0 else 0
    if len(fields) < first + 6:
        raise MalformedInput("certificate: TBSCertificate is too short")
    fixed = [canonical(field, quirks) for field in fields]
    if first:
        fixed[0] = _version(fixed[0], quirks)
    if read_integer(fixed[first]) <= 0:
        quirks.add(QUIRK_NON_POSITIVE_SERIAL)
        fixed[first] = encode(TAG_INTEGER, b"\x01")
    for index in range(first + 6, len(fixed)):
        if fixed[index][0] == TAG_CONTEXT_3:
            fixed[index] = _extensions(fixed[index], quirks)
    tbs = encode(tbs_tag, b"".join(fixed))
    whole = tbs + canonical(parts[1], quirks) + canonical(parts[2], quirks)
    return encode(tag, whole), frozenset(quirks)


def _version(field: bytes, quirks: set[str]) -> bytes:
    """The [0] EXPLICIT version: v2/v3 kept, v1 (a DEFAULT) and unknown values read as v3."""
    inner = children(read_element(field)[1])
    version = read_integer(inner[0]) if len(inner) == 1 else None
    if version in (1, 2):
        return field
    quirks.add(QUIRK_ENCODED_DEFAULT if version == 0 else QUIRK_UNKNOWN_VERSION)
    return encode(TAG_CONTEXT_0, encode(TAG_INTEGER, b"\x02"))


def _extensions(field: bytes, quirks: set[str]) -> bytes:
    """[3] EXPLICIT Extensions with each extnValue re-encoded when it holds DER."""
    inner = children(read_element(field)[1])
    if len(inner) != 1 or inner[0][0] != TAG_SEQUENCE:
        return field  # malformed: left for `cryptography` to refuse
    fixed = []
    for extension in children(read_element(inner[0])[1]):
        parts = children(read_element(extension)[1])
        if len(parts) >= 2 and parts[0][0] == TAG_OID and parts[-1][0] == TAG_OCTET_STRING:
            value = _extension_value(parts[0], read_element(parts[-1])[1], quirks)
            parts[-1] = encode(TAG_OCTET_STRING, value)
        fixed.append(encode(TAG_SEQUENCE, b"".join(parts)))
    return encode(TAG_CONTEXT_3, encode(TAG_SEQUENCE, b"".join(fixed)))


def _extension_value(oid: bytes, value: bytes, quirks: set[str]) -> bytes:
    try:
        _, _, end = read_element(value)
    except MalformedInput:
        return value  # not DER: left for `cryptography` to judge
    if end != len(value):
        return value
    value = canonical(value, quirks)
    drop_names = _GENERAL_NAME_HOLDERS.get(oid)
    return drop_names(value, quirks) if drop_names else value


def _unsupported(name: bytes, quirks: set[str]) -> bool:
    if name[0] in _UNSUPPORTED_GENERAL_NAMES:
        quirks.add(QUIRK_UNSUPPORTED_GENERAL_NAME)
        return True
    return False


def _without_names(general_names: bytes, quirks: set[str]) -> bytes:
    """GeneralNames (SAN, IAN) without the forms `cryptography` refuses."""
    tag, content, _ = read_element(general_names)
    kept = [name for name in children(content) if not _unsupported(name, quirks)]
    return encode(tag, b"".join(kept))


def _without_access_names(descriptions: bytes, quirks: set[str]) -> bytes:
    """AIA/SIA: drop the AccessDescriptions whose accessLocation `cryptography` refuses."""
    tag, content, _ = read_element(descriptions)
    kept = [
        description
        for description in children(content)
        if not any(_unsupported(part, quirks) for part in _inside(description))
    ]
    return encode(tag, b"".join(kept))


def _without_issuer_names(key_identifier: bytes, quirks: set[str]) -> bytes:
    """AKI: authorityCertIssuer [1] and authorityCertSerialNumber [2] go together, so both
    are dropped when the issuer names hold a form `cryptography` refuses."""
    tag, content, _ = read_element(key_identifier)
    parts = children(content)
    names = [name for part in parts if part[0] == TAG_CONTEXT_1 for name in _inside(part)]
    if not any(_unsupported(name, quirks) for name in names):
        return key_identifier
    return encode(tag, b"".join(p for p in parts if p[0] not in (TAG_CONTEXT_1, 0x82)))


def _without_distribution_names(points: bytes, quirks: set[str]) -> bytes:
    """CRL distribution points: drop each point naming a form `cryptography` refuses."""
    tag, content, _ = read_element(points)
    kept = []
    for point in children(content):
        names = []
        for field in _inside(point):
            if field[0] == TAG_CONTEXT_0:  # distributionPoint: fullName [0] or an RDN [1]
                names += [
                    n
                    for choice in _inside(field)
                    if choice[0] == TAG_CONTEXT_0
                    for n in _inside(choice)
                ]
            elif field[0] == TAG_CONTEXT_2:  # cRLIssuer
                names += _inside(field)
        if not any(_unsupported(name, quirks) for name in names):
            kept.append(point)
    return encode(tag, b"".join(kept))


def _inside(element: bytes) -> list[bytes]:
    """The elements inside a constructed element (none inside a primitive one)."""
    return children(read_element(element)[1]) if element[0] & CONSTRUCTED else []


# Extension OIDs (DER) whose values hold GeneralNames, and how to drop refused forms.
_GENERAL_NAME_HOLDERS: dict[bytes, Callable[[bytes, set[str]], bytes]] = {
    bytes.fromhex("0603551d11"): _without_names,  # subjectAltName
    bytes.fromhex("0603551d12"): _without_names,  # issuerAltName
    bytes.fromhex("06082b06010505070101"): _without_access_names,  # authorityInfoAccess
    bytes.fromhex("06082b0601050507010b"): _without_access_names,  # subjectInfoAccess
    bytes.fromhex("0603551d23"): _without_issuer_names,  # authorityKeyIdentifier
    bytes.fromhex("0603551d1f"): _without_distribution_names,  # cRLDistributionPoints
}

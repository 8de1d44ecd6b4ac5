"""Just enough DER to take a certificate apart, and to re-encode a sloppy one.

Real EK certificates are often not strictly valid DER (explicitly encoded defaults,
unsorted SETs, padded INTEGERs). `read_element` and `children` split the bytes without
judging them, so the original TBS bytes stay available for signature checks;
`canonical` re-encodes an element as DER that `cryptography` accepts, preserving every
value. Malformed bytes raise MalformedInput.
"""

from __future__ import annotations

from spire_tpm_attestor.errors import MalformedInput

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
TAG_CONTEXT_0 = 0xA0
CONSTRUCTED = 0x20
MAX_NESTING = 32


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


def canonical(element: bytes, depth: int = 0) -> bytes:
    """Re-encode an element as DER, fixing the violations seen in real EK certificates:
    explicitly encoded BOOLEAN FALSE defaults (dropped), unsorted SET OF (sorted),
    padded INTEGERs (minimal) and non-0xFF TRUE. Every fix preserves the value."""
    if depth > MAX_NESTING:
        raise MalformedInput("DER: nested too deeply")
    tag, content, _ = read_element(element)
    if tag & CONSTRUCTED:
        parts = [canonical(child, depth + 1) for child in children(content)]
        if tag == TAG_SEQUENCE:
            # In a certificate outside OCTET STRINGs only DEFAULT FALSE fields (like
            # Extension.critical) are BOOLEAN, and DER forbids encoding a default.
            parts = [c for c in parts if c != b"\x01\x01\x00"]
        elif tag == TAG_SET:
            parts.sort()
        return encode(tag, b"".join(parts))
    if tag == TAG_INTEGER:
        while len(content) > 1 and (
            (content[0] == 0x00 and content[1] < 0x80)
            or (content[0] == 0xFF and content[1] >= 0x80)
        ):
            content = content[1:]
    elif tag == TAG_BOOLEAN and content not in (b"\x00", b"\xff"):
        content = b"\xff"
    return encode(tag, content)


def read_integer(element: bytes) -> int:
    tag, content, _ = read_element(element)
    if tag != TAG_INTEGER or not content:
        raise MalformedInput("DER: expected an INTEGER")
    return int.from_bytes(content, "big", signed=True)

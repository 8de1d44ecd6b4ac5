"""Structure-aware mutators: each reads an input as its format (a DER TLV tree, the fields
of a TPM structure, the records of an event log, a JSON or HCL tree, a protobuf message),
changes one thing at that level and writes it back; what does not read as the format
is mutated as bytes.

A mutator takes the input and a `Mutation` (the random source and the byte-level
mutator: libFuzzer's under atheris, `byte_mutate` below in the short run) and returns
the new input. Every mutator is deterministic for a given random state.
"""

from __future__ import annotations

import json
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message

from spire_tpm_attestor import eventlog
from spire_tpm_attestor.errors import AttestorError
from spire_tpm_attestor.tpm import structures
from spire_tpm_attestor.tpm.constants import TPM_ALG

Mutator = Callable[[bytes, "Mutation"], bytes]

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)
INTERESTING_INTS = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000)
INTERESTING_U32 = (*INTERESTING_INTS, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 24, 23, 0x80000001)


def byte_mutate(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """A small libFuzzer-like byte mutator, for runs without atheris."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        if kind == 0 and out:  # flip a bit
            at = rng.randrange(len(out))
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:  # an interesting byte
            out[rng.randrange(len(out))] = rng.choice(INTERESTING_BYTES)
        elif kind == 2:  # insert random bytes
            at = rng.randint(0, len(out))
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == 3 and out:  # delete a range
            at = rng.randrange(len(out))
            del out[at : at + rng.randint(1, 16)]
        elif kind == 4 and out:  # duplicate a range
            at = rng.randrange(len(out))
            out[at:at] = out[at : at + rng.randint(1, 32)]
        elif kind == 5 and len(out) > 1:  # truncate
            del out[rng.randrange(len(out)) :]
        elif kind == 6 and len(out) >= 4:  # an interesting 16/32-bit value, either order
            width = rng.choice((2, 4))
            at = rng.randrange(len(out) - width + 1)
            value = rng.choice(INTERESTING_U32) & (0xFFFF if width == 2 else 0xFFFFFFFF)
            out[at : at + width] = value.to_bytes(width, rng.choice(("big", "little")))
    return bytes(out[:max_size])


@dataclass
class Mutation:
    rng: random.Random
    max_size: int = 1 << 16
    # libFuzzer's mutator under atheris (atheris.Mutate); byte_mutate otherwise.
    bytes_mutator: Callable[[bytes, int], bytes] | None = None

    def bytes(self, data: bytes, max_size: int | None = None) -> bytes:
        limit = self.max_size if max_size is None else max_size
        if self.bytes_mutator is not None:
            return self.bytes_mutator(data, limit)
        return byte_mutate(data, limit, self.rng)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


def either(structured: Mutator, p_bytes: float = 0.15) -> Mutator:
    """`structured`, or a byte-level mutation now and then (and when the structure fails)."""

    def mutate(data: bytes, m: Mutation) -> bytes:
        if not m.chance(p_bytes):
            try:
                result = structured(data, m)
                if result != data:
                    return result
            except Exception:
                pass
        return m.bytes(data)

    return mutate


# --- DER --------------------------------------------------------------------------------


@dataclass
class TLV:
    tag: int
    value: bytes | list[TLV]
    length_form: str = "short"  # "short" (DER), "long" (non-minimal), "indefinite"


def read_tlv(data: bytes, pos: int = 0, depth: int = 0) -> tuple[TLV, int]:
    """One BER element (definite lengths; constructed elements as trees); ValueError if
    `data` is not one."""
    if depth > 32 or pos + 2 > len(data):
        raise ValueError("not a TLV")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    form = "short"
    if first >= 0x80:
        count = first & 0x7F
        if not 0 < count <= 4 or pos + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
        form = "long"
    else:
        length = first
    end = pos + length
    if end > len(data):
        raise ValueError("truncated")
    content = data[pos:end]
    if tag & 0x20:
        children: list[TLV] = []
        offset = 0
        while offset < len(content):
            child, offset = read_tlv(content, offset, depth + 1)
            children.append(child)
        return TLV(tag, children, form), end
    return TLV(tag, content, form), end


def write_tlv(node: TLV) -> bytes:
    content = node.value if isinstance(node.value, bytes) else b"".join(map(write_tlv, node.value))
    if node.length_form == "indefinite" and node.tag & 0x20:
        return bytes([node.tag, 0x80]) + content + b"\x00\x00"
    size = len(content)
    if size < 0x80 and node.length_form == "short":
        return bytes([node.tag, size]) + content
    length = size.to_bytes(max(1, (size.bit_length() + 7) // 8), "big")
    return bytes([node.tag, 0x80 | len(length)]) + length + content


def _nodes(node: TLV, parent: TLV | None = None) -> Iterator[tuple[TLV, TLV | None]]:
    yield node, parent
    if isinstance(node.value, list):
        for child in node.value:
            yield from _nodes(child, node)


DER_TAGS = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x18, 0x1E, 0x30, 0x31)
DER_TAGS += (0x80, 0x81, 0x82, 0x86, 0xA0, 0xA1, 0xA3, 0xA4)
# OIDs (content octets) certificates carry: algorithms, extensions, TCG attributes.
INTERESTING_OIDS = tuple(
    bytes.fromhex(h)
    for h in (
        "2a864886f70d010101",  # rsaEncryption
        "2a864886f70d010107",  # RSAES-OAEP
        "2a864886f70d01010b",  # sha256WithRSAEncryption
        "2a864886f70d01010a",  # RSASSA-PSS
        "2a8648ce3d0201",  # id-ecPublicKey
        "2a8648ce3d040302",  # ecdsa-with-SHA256
        "2a8648ce3d030107",  # P-256
        "2b81040022",  # P-384
        "551d13",  # basicConstraints
        "551d0f",  # keyUsage
        "551d11",  # subjectAltName
        "551d25",  # extKeyUsage
        "551d20",  # certificatePolicies
        "551d23",  # authorityKeyIdentifier
        "551d1f",  # cRLDistributionPoints
        "551d09",  # subjectDirectoryAttributes
        "2b06010505070101",  # authorityInfoAccess
        "2b06010505073002",  # caIssuers
        "67081101",  # tcg-at-tpmManufacturer
        "67081102",  # tcg-at-tpmModel
        "67081103",  # tcg-at-tpmVersion
        "67810801",  # tcg-kp-EKCertificate
        "550403",  # commonName
        "2a864886f70d010702",  # PKCS#7 signedData
    )
)
INTERESTING_INTEGERS = (b"", b"\x00", b"\x00\x01", b"\xff", b"\x80", b"\x00" * 21 + b"\x01")


def _der_edit(root: TLV, m: Mutation) -> None:
    everything = list(_nodes(root))
    node, parent = m.rng.choice(everything)
    rng = m.rng
    kind = rng.randrange(11)
    if kind == 0:
        node.tag = rng.choice(DER_TAGS)
        if node.tag & 0x20 and isinstance(node.value, bytes):
            node.value = [TLV(0x04, node.value)]
        elif not node.tag & 0x20 and isinstance(node.value, list):
            node.value = b"".join(map(write_tlv, node.value))
    elif kind == 1:
        node.length_form = rng.choice(("short", "long", "indefinite"))
    elif kind == 2 and parent is not None and isinstance(parent.value, list):
        parent.value.remove(node)
    elif kind == 3 and parent is not None and isinstance(parent.value, list):
        at = rng.randint(0, len(parent.value))
        parent.value.insert(at, TLV(node.tag, _copy(node.value), node.length_form))
    elif kind == 4 and isinstance(node.value, list) and len(node.value) > 1:
        rng.shuffle(node.value)
    elif kind == 5:  # graft another element of the tree here
        donor, _ = rng.choice(everything)
        if donor is not node and node not in [n for n, _ in _nodes(donor)]:
            node.tag, node.value = donor.tag, _copy(donor.value)
    elif kind == 6 and node.tag == 0x06:
        node.value = rng.choice(INTERESTING_OIDS)
    elif kind == 7 and node.tag == 0x02:
        node.value = rng.choice(INTERESTING_INTEGERS) or rng.randbytes(rng.randint(1, 40))
    elif kind == 8 and isinstance(node.value, bytes):
        # DER inside a primitive (an extension's OCTET STRING, a key's BIT STRING).
        offset = 1 if node.tag == 0x03 and node.value[:1] == b"\x00" else 0
        inner = node.value[offset:]
        try:
            tree, end = read_tlv(inner)
            if end != len(inner):
                raise ValueError("not one element")
            _der_edit(tree, m)
            node.value = node.value[:offset] + write_tlv(tree)
        except ValueError:
            node.value = m.bytes(node.value, 4096)
    elif kind == 9 and isinstance(node.value, bytes):
        node.value = m.bytes(node.value, 4096)
    elif parent is not None and isinstance(parent.value, list):  # wrap
        at = parent.value.index(node)
        parent.value[at] = TLV(rng.choice((0x30, 0x31, 0x04, 0xA0)), [node])


def _copy(value: bytes | list[TLV]) -> bytes | list[TLV]:
    if isinstance(value, bytes):
        return value
    return [TLV(child.tag, _copy(child.value), child.length_form) for child in value]


def _mutate_der(data: bytes, m: Mutation) -> bytes:
    tree, end = read_tlv(data)
    for _ in range(m.rng.randint(1, 3)):
        _der_edit(tree, m)
    return write_tlv(tree) + data[end:]


mutate_der = either(_mutate_der)


# --- TPM structures -----------------------------------------------------------------------


@dataclass
class Token:
    kind: str  # u8, u16, u32, u64, tpm2b, raw
    value: int | bytes


@dataclass
class _Reading:
    data: bytes
    tokens: list[Token] = field(default_factory=list)


class _RecordingReader(structures.Reader):
    """The project's own TPM reader, noting each field it reads: the parsers are the
    grammar, so the mutator knows every structure they know."""

    readings: list[_Reading] = []  # noqa: RUF012 - reset by `recorded` for each use

    def __init__(self, data: bytes, what: str) -> None:
        super().__init__(data, what)
        self._depth = 0
        self._reading = _Reading(data)
        _RecordingReader.readings.append(self._reading)

    def _typed(self, kind: str, read: Callable[..., Any], *args: Any) -> Any:
        self._depth += 1
        try:
            value = read(*args)
        finally:
            self._depth -= 1
        if not self._depth:
            self._reading.tokens.append(Token(kind, value))
        return value

    def take(self, n: int, field: str) -> bytes:
        chunk = super().take(n, field)
        if not self._depth:
            self._reading.tokens.append(Token("raw", chunk))
        return chunk

    def u8(self, field: str) -> int:
        return int(self._typed("u8", super().u8, field))

    def u16(self, field: str) -> int:
        return int(self._typed("u16", super().u16, field))

    def u32(self, field: str) -> int:
        return int(self._typed("u32", super().u32, field))

    def u64(self, field: str) -> int:
        return int(self._typed("u64", super().u64, field))

    def tpm2b(self, field: str, limit: int) -> bytes:
        return bytes(self._typed("tpm2b", super().tpm2b, field, limit))

    def finish(self) -> None:
        rest = self._data[self._pos :]  # what the parser did not get to
        if rest:
            self._reading.tokens.append(Token("raw", rest))


@contextmanager
def _recorded() -> Iterator[list[_Reading]]:
    original = structures.Reader
    _RecordingReader.readings = []
    structures.Reader = _RecordingReader  # type: ignore[misc]
    try:
        yield _RecordingReader.readings
    finally:
        structures.Reader = original  # type: ignore[misc]


def tpm_fields(parse: Callable[[bytes], object], data: bytes) -> list[_Reading]:
    """The fields `parse` reads from `data`, per reader (a TPM2B's body has its own)."""
    with _recorded() as readings:
        try:
            parse(data)
        except AttestorError:
            # The fields read before the failure; the rest of the input as it is.
            for reading in readings:
                consumed = sum(len(_pack(token)) for token in reading.tokens)
                if consumed < len(reading.data):
                    reading.tokens.append(Token("raw", reading.data[consumed:]))
    return readings


_WIDTH = {"u8": ">B", "u16": ">H", "u32": ">I", "u64": ">Q"}
ALG_IDS = tuple(int(alg) for alg in TPM_ALG)


def _pack(token: Token) -> bytes:
    if token.kind == "tpm2b":
        assert isinstance(token.value, bytes)
        return struct.pack(">H", len(token.value) & 0xFFFF) + token.value
    if token.kind == "raw":
        assert isinstance(token.value, bytes)
        return token.value
    return struct.pack(_WIDTH[token.kind], token.value)


def _int_value(kind: str, value: int, rng: random.Random) -> int:
    bits = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}[kind]
    choice = rng.randrange(5)
    if choice == 0 and kind == "u16":
        return rng.choice(ALG_IDS)
    if choice == 1:
        return value ^ (1 << rng.randrange(bits))
    if choice == 2:
        return (value + rng.choice((-1, 1))) % (1 << bits)
    return rng.choice(INTERESTING_U32) % (1 << bits)


def _edit_tokens(tokens: list[Token], m: Mutation) -> None:
    rng = m.rng
    at = rng.randrange(len(tokens))
    token = tokens[at]
    kind = rng.randrange(6)
    if kind == 0 and token.kind in _WIDTH:
        assert isinstance(token.value, int)
        token.value = _int_value(token.kind, token.value, rng)
    elif kind == 1 and token.kind in ("tpm2b", "raw"):
        assert isinstance(token.value, bytes)
        token.value = m.bytes(token.value, 1024)
    elif kind == 2 and token.kind == "tpm2b":  # a size that lies
        assert isinstance(token.value, bytes)
        size = rng.choice((len(token.value) + 1, len(token.value) - 1, 0, 0xFFFF)) & 0xFFFF
        tokens[at] = Token("raw", struct.pack(">H", size) + token.value)
    elif kind == 3:
        del tokens[at]
    elif kind == 4:
        tokens.insert(at, Token(token.kind, token.value))
    else:  # a field of another width where this one was
        width = rng.choice(("u8", "u16", "u32", "tpm2b"))
        tokens.insert(at, Token(width, b"" if width == "tpm2b" else rng.choice(INTERESTING_INTS)))


def tpm_mutator(parse: Callable[[bytes], object]) -> Mutator:
    """A mutator for the structure `parse` reads: one field at a time, TPM2B sizes kept
    consistent (or made to lie on purpose), nested TPM2Bs rebuilt around their body."""

    def mutate(data: bytes, m: Mutation) -> bytes:
        readings = [r for r in tpm_fields(parse, data) if r.tokens]
        if not readings:
            raise ValueError("nothing read")
        chosen = m.rng.randrange(len(readings))
        _edit_tokens(readings[chosen].tokens, m)
        # Rebuild from the innermost reader out: a TPM2B holding a body becomes the new body.
        rebuilt = b"".join(map(_pack, readings[-1].tokens))
        for outer, inner in zip(reversed(readings[:-1]), reversed(readings[1:]), strict=True):
            for token in outer.tokens:
                if token.kind == "tpm2b" and token.value == inner.data:
                    token.value = rebuilt
                    break
            rebuilt = b"".join(map(_pack, outer.tokens))
        return rebuilt

    return either(mutate)


# --- JSON ---------------------------------------------------------------------------------

JSON_STRINGS = (
    "",
    "a" * 64,
    "0" * 64,
    "F" * 64,
    "\x00",
    "\ud800",
    "\u202e",
    "é",
    "x" * 300,
    "\n",
    '"',
    "\\",
    "1",
    "-1",
)


def _json_value(rng: random.Random, vocabulary: tuple[str, ...], depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(JSON_STRINGS + vocabulary)
    if kind == 1:
        return rng.choice((0, 1, -1, 2, 2**31, 2**63, 10**400, 1.5, -0.0))
    if kind == 2:
        return rng.choice((True, False))
    if kind == 3:
        return None
    if kind == 4:
        return "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(rng.choice((63, 64))))
    if kind == 5:
        return rng.choice(vocabulary) if vocabulary else ""
    if kind == 6:
        return [_json_value(rng, vocabulary, depth + 1) for _ in range(rng.randint(0, 3))]
    return {
        rng.choice(vocabulary + JSON_STRINGS): _json_value(rng, vocabulary, depth + 1)
        for _ in range(rng.randint(0, 3))
    }


def _containers(value: Any) -> Iterator[Any]:
    if isinstance(value, dict | list):
        yield value
        for child in value.values() if isinstance(value, dict) else value:
            yield from _containers(child)


def _json_edit(document: Any, m: Mutation, vocabulary: tuple[str, ...]) -> Any:
    rng = m.rng
    containers = list(_containers(document))
    if not containers:
        return _json_value(rng, vocabulary)
    target = rng.choice(containers)
    kind = rng.randrange(5)
    if isinstance(target, dict):
        keys = list(target)
        if kind == 0 and keys:
            del target[rng.choice(keys)]
        elif kind == 1 or not keys:
            target[rng.choice(vocabulary + JSON_STRINGS)] = _json_value(rng, vocabulary)
        elif kind == 2:
            key = rng.choice(keys)
            target[key] = _json_value(rng, vocabulary)
        elif kind == 3:  # rename a key
            key = rng.choice(keys)
            target[rng.choice(vocabulary)] = target.pop(key)
        else:  # nest
            key = rng.choice(keys)
            target[key] = rng.choice(([target[key]], {rng.choice(vocabulary): target[key]}))
    else:
        if kind == 0 and target:
            del target[rng.randrange(len(target))]
        elif kind == 1 and target:  # duplicate an element
            target.insert(rng.randint(0, len(target)), json.loads(json.dumps(rng.choice(target))))
        elif kind == 2 and target:
            target[rng.randrange(len(target))] = _json_value(rng, vocabulary)
        elif kind == 3 and len(target) > 1:
            rng.shuffle(target)
        else:
            target.append(_json_value(rng, vocabulary))
    return document


def json_mutator(vocabulary: tuple[str, ...]) -> Mutator:
    """Mutate a JSON document as a tree (keys from `vocabulary`), written compact or
    indented, escaped or not; now and then a textual splice (a duplicate key, say)."""

    def mutate(data: bytes, m: Mutation) -> bytes:
        document = json.loads(data)
        for _ in range(m.rng.randint(1, 3)):
            document = _json_edit(document, m, vocabulary)
        text = json.dumps(
            document,
            ensure_ascii=m.chance(0.5),
            indent=m.rng.choice((None, None, 1)),
            separators=m.rng.choice(((",", ":"), (", ", ": "))),
        )
        if m.chance(0.1):  # what a tree cannot say: a key twice, trailing text
            splice = m.rng.choice((',"name":"x"', ',"version":1', " ", "]", "}", "\x00"))
            at = m.rng.randint(0, len(text))
            text = text[:at] + splice + text[at:]
        return text.encode("utf-8", "surrogatepass")

    return either(mutate)


# --- HCL ----------------------------------------------------------------------------------


def _hcl_key(key: str) -> str:
    return key if key.replace("_", "").isalnum() else json.dumps(key)


def write_hcl(document: Any, rng: random.Random, indent: str = "") -> str:
    """HCL v1 for a tree: blocks for objects (sometimes as `key = {...}`), lists, scalars."""
    lines = []
    for key, value in document.items():
        name = _hcl_key(str(key))
        if isinstance(value, dict):
            assign = " = " if rng.random() < 0.3 else " "
            lines.append(f"{indent}{name}{assign}{{")
            lines.append(write_hcl(value, rng, indent + "  "))
            lines.append(f"{indent}}}")
        else:
            lines.append(f"{indent}{name} = {_hcl_value(value)}")
    return "\n".join(lines)


def _hcl_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if abs(value) < 1e300 else "1e400"
    if isinstance(value, list):
        return "[" + ", ".join(_hcl_value(v) for v in value if not isinstance(v, dict)) + "]"
    if value is None:
        return '""'
    return json.dumps(str(value))


def hcl_mutator(parse: Callable[[str], Any], vocabulary: tuple[str, ...]) -> Mutator:
    """Mutate HCL as a tree (keys from the option tables), written as HCL or as JSON."""

    def mutate(data: bytes, m: Mutation) -> bytes:
        document = parse(data.decode())
        if not isinstance(document, dict):
            raise ValueError("not an object")
        for _ in range(m.rng.randint(1, 3)):
            document = _json_edit(document, m, vocabulary)
        if not isinstance(document, dict):
            raise ValueError("not an object")
        if m.chance(0.2):
            return json.dumps(document).encode()
        return write_hcl(document, m.rng).encode()

    return either(mutate, p_bytes=0.2)


# --- protobuf -----------------------------------------------------------------------------


def message_mutator(
    message_type: Callable[[], Message], fields: dict[str, Mutator], ints: tuple[str, ...] = ()
) -> Mutator:
    """Mutate one field of a protobuf message with that field's own mutator (a TPM
    structure, a certificate, an event log): add, drop, duplicate repeated elements;
    interesting values for integers."""

    def mutate(data: bytes, m: Mutation) -> bytes:
        message = message_type()
        try:
            message.ParseFromString(data)
        except DecodeError as exc:
            raise ValueError("not the message") from exc
        name = m.rng.choice((*fields, *ints))
        if name in ints:
            setattr(message, name, m.rng.choice((*INTERESTING_U32, *ALG_IDS)))
            return message.SerializeToString()
        value = getattr(message, name)
        mutate_field = fields[name]
        if isinstance(value, bytes):
            setattr(message, name, mutate_field(value, m) if value else m.rng.randbytes(8))
        elif isinstance(value, str):
            setattr(message, name, mutate_field(value.encode(), m).decode("utf-8", "replace"))
        elif len(value) and m.chance(0.7):  # an element of a repeated field
            at = m.rng.randrange(len(value))
            if isinstance(value[at], bytes):
                value[at] = mutate_field(value[at], m)
            else:  # a message: through its own mutator
                element = mutate_field(value[at].SerializeToString(), m)
                value[at].Clear()
                with suppress(DecodeError):
                    value[at].ParseFromString(element)
        elif len(value) and m.chance(0.5):
            del value[m.rng.randrange(len(value))]
        elif message.DESCRIPTOR.fields_by_name[name].message_type is not None:
            added = value.add()
            if len(value) > 1:
                added.CopyFrom(value[m.rng.randrange(len(value) - 1)])
        else:
            value.append(value[m.rng.randrange(len(value))] if len(value) else m.rng.randbytes(8))
        return message.SerializeToString()

    return either(mutate, p_bytes=0.05)


# --- the firmware event log ----------------------------------------------------------------


@dataclass
class Record:
    pcr: int
    type: int
    digests: list[tuple[int, bytes]]
    data: bytes


@dataclass
class Log:
    crypto_agile: bool
    header: bytes  # the Spec ID event of a crypto-agile log, as it was
    records: list[Record]
    trailing: bytes


def read_log(data: bytes) -> Log:
    """The records of a log the project's parser reads (ValueError for one it refuses)."""
    try:
        parsed = eventlog.parse(data)
    except AttestorError as exc:
        raise ValueError("not a log") from exc
    events = parsed.events
    crypto_agile = parsed.format == eventlog.LogFormat.CRYPTO_AGILE
    header_end = events[0].offset if events else parsed.size
    records = [
        Record(e.pcr, e.type, [(alg, bytes(d)) for alg, d in e.digests.items()], bytes(e.data))
        for e in events
    ]
    log = Log(crypto_agile, data[:header_end] if crypto_agile else b"", records, b"")
    log.trailing = data[len(write_log(log)) :]
    return log


def _write_record(record: Record, crypto_agile: bool) -> bytes:
    if crypto_agile:
        digests = b"".join(struct.pack("<H", alg) + value for alg, value in record.digests)
        head = struct.pack("<III", record.pcr, record.type, len(record.digests)) + digests
    else:
        sha1 = record.digests[0][1] if record.digests else b""
        head = struct.pack("<II", record.pcr, record.type) + sha1[:20].ljust(20, b"\x00")
    return head + struct.pack("<I", len(record.data)) + record.data


def write_log(log: Log) -> bytes:
    body = b"".join(_write_record(record, log.crypto_agile) for record in log.records)
    return log.header + body + log.trailing


EVENT_TYPES = tuple(int(t) for t in eventlog.EventType)
GUIDS = tuple(
    uuid.UUID(text).bytes_le
    for text in (
        "8be4df61-93ca-11d2-aa0d-00e098032b8c",  # EFI global variable
        "d719b2cb-3d3a-4596-a3bc-dad00e67656f",  # image security database
        "605dab50-e046-4300-abb6-3dd810dd8b23",  # shim lock
        "a5c059a1-94e4-4aa7-87b5-ab155c2bf072",  # EFI_CERT_X509_GUID
        "c1c41626-504c-4092-aca9-41f936934328",  # EFI_CERT_SHA256_GUID
    )
)
VARIABLE_NAMES = ("SecureBoot", "PK", "KEK", "db", "dbx", "Shim", "SbatLevel", "MokList", "")


def _signature_lists(rng: random.Random, payloads: list[bytes]) -> bytes:
    """EFI_SIGNATURE_LISTs of `payloads` (certificates or hashes), sizes now and then wrong."""
    out = b""
    for _ in range(rng.randint(0, 3)):
        entries = [rng.choice(payloads) for _ in range(rng.randint(0, 3))] or [b""]
        size = 16 + max(len(entry) for entry in entries)
        body = b"".join(rng.choice(GUIDS) + entry.ljust(size - 16, b"\x00") for entry in entries)
        header = rng.choice((b"", b"\x00" * 4))
        list_size = 28 + len(header) + len(body)
        if rng.random() < 0.2:
            list_size = rng.choice((0, 27, list_size + 1, 0xFFFFFFFF))
        if rng.random() < 0.1:
            size = rng.choice((0, 15, 16, 0xFFFFFFFF))
        out += rng.choice(GUIDS) + struct.pack("<III", list_size, len(header), size) + header + body
    return out


def _variable(rng: random.Random, payloads: list[bytes]) -> bytes:
    name = rng.choice(VARIABLE_NAMES).encode("utf-16-le")
    value = rng.choice(
        (b"\x01", b"\x00", b"", rng.choice(payloads), _signature_lists(rng, payloads))
    )
    name_length, data_length = len(name) // 2, len(value)
    if rng.random() < 0.2:
        name_length = rng.choice((0, name_length + 1, 1025, 2**64 - 1))
    if rng.random() < 0.2:
        data_length = rng.choice((0, data_length + 1, max(0, data_length - 1), 2**64 - 1))
    return rng.choice(GUIDS) + struct.pack("<QQ", name_length, data_length) + name + value


def _edit_log(log: Log, m: Mutation) -> None:
    rng = m.rng
    records = log.records
    kind = rng.randrange(10)
    record = rng.choice(records) if records else Record(0, 1, [], b"")
    if kind == 0:
        record.pcr = rng.choice((*range(24), 24, 0xFFFFFFFF, 0x80000000))
    elif kind == 1:
        record.type = rng.choice((*EVENT_TYPES, *INTERESTING_U32))
    elif kind == 2 and record.digests:  # drop, repeat or change one digest
        at = rng.randrange(len(record.digests))
        alg, value = record.digests[at]
        choice = rng.randrange(4)
        if choice == 0:
            del record.digests[at]
        elif choice == 1:
            record.digests.append((alg, value))
        elif choice == 2:
            record.digests[at] = (rng.choice(ALG_IDS), value)
        else:
            record.digests[at] = (alg, m.bytes(value, 64))
    elif kind == 3:
        record.data = m.bytes(record.data, 4096)
    elif kind == 4:  # UEFI variable data, signature lists inside
        payloads = [r.data for r in records if r.data] or [b"\x30\x03\x02\x01\x01"]
        record.data = _variable(rng, payloads)
    elif kind == 5 and records:
        del records[rng.randrange(len(records))]
    elif kind == 6:
        records.insert(
            rng.randint(0, len(records)),
            Record(record.pcr, record.type, list(record.digests), record.data),
        )
    elif kind == 7 and len(records) > 1:
        i, j = rng.randrange(len(records)), rng.randrange(len(records))
        records[i], records[j] = records[j], records[i]
    elif kind == 8 and log.header:
        log.header = m.bytes(log.header, 1024)
    else:
        log.trailing = rng.choice((b"", bytes(rng.randint(1, 64)), b"\xff" * 8, rng.randbytes(8)))
    if not records:
        records.append(record)


def _mutate_log(data: bytes, m: Mutation) -> bytes:
    log = read_log(data)
    for _ in range(m.rng.randint(1, 3)):
        _edit_log(log, m)
    return write_log(log)


mutate_event_log = either(_mutate_log)

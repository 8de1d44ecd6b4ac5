"""The allowlist JSON document and its compact in-memory index.

The document (served over HTTP(S), or kept in a local file):

    {"version": 1,
     "entries": [{"pub_hash": "<64 lowercase hex>", "name": "node-7", "labels": {"rack": "r1"}},
                 {"pub_hash": "<64 lowercase hex>"}]}

`name` and `labels` are optional. Every key is known: an unknown key, an unknown
version, a malformed entry or an EK hash listed twice rejects the whole document (a
partly applied list is worse than the last good one), and the error names the entry.

The index keeps 32-byte digests sorted in one bytes object and looks them up by
binary search: a million EKs cost 32 MB. Metadata is kept only for the entries that
have some, as compact JSON text in one string, found through its own sorted digests
and an offset array; nothing per entry is a Python object, so memory is what it
looks like and is given back when a newer index replaces this one.

The document is parsed as it is fed (DocumentParser), a piece at a time, by ijson
(the yajl C tokenizer its wheels ship): the entries are built a batch at a time and
folded into the index before the next batch, so a parse needs the index plus a few
MiB, never the whole JSON tree (for a million entries, several times the document).
It accepts what `json.loads` and the checks after it would, bar what json.loads allows
beyond JSON (NaN, Infinity) and documents nested deeper than any valid one; and yajl
reads a lone surrogate escape (`\\ud800`) as `?`, which json.loads keeps (and the
checks then refuse as unprintable), and refuses a lone surrogate's encoded bytes as not
JSON, where json.loads keeps it too (and the checks refuse it).
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import ctypes
import ctypes.util
import gc
import json
import json.encoder
import operator
import re
import threading
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, chain, compress, count, islice, pairwise, repeat
from typing import Any

import ijson

from server_plugin.allowlist.base import (
    EK_HASH,
    AllowlistEntry,
    AllowlistError,
    check_ek_hash,
    entry_from_json,
    metadata_problem,
)

VERSION = 1
DIGEST_SIZE = 32
ENTRY_KEYS = frozenset({"pub_hash", "name", "labels"})
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii

PIECE = 1 << 16  # bytes checked and tokenized at a time
BUCKETS = 256  # digests are gathered by first byte, then each bucket is sorted alone
_PREFIXES = [f"{bucket:02x}" for bucket in range(1, BUCKETS)]
_RECORD = re.compile(rb".{32}", re.DOTALL)


class DocumentError(ValueError):
    """The document as a whole is unusable; the message says where and why."""


def _position(digests: bytes, key: bytes) -> int | None:
    """Index of `key` among the sorted 32-byte digests, or None."""
    low, high = 0, len(digests) // DIGEST_SIZE
    while low < high:
        middle = (low + high) // 2
        start = middle * DIGEST_SIZE
        if digests[start : start + DIGEST_SIZE] < key:
            low = middle + 1
        else:
            high = middle
    start = low * DIGEST_SIZE
    return low if digests[start : start + DIGEST_SIZE] == key else None


@dataclass(frozen=True)
class Index:
    digests: bytes
    meta_digests: bytes
    meta_offsets: array[int]
    meta_text: str

    def __len__(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def lookup(self, pub_hash: str, source: str) -> AllowlistEntry | None:
        check_ek_hash(pub_hash)
        key = bytes.fromhex(pub_hash)
        if _position(self.digests, key) is None:
            return None
        position = _position(self.meta_digests, key)
        if position is None:
            return AllowlistEntry(pub_hash=pub_hash, source=source)
        start, end = self.meta_offsets[position], self.meta_offsets[position + 1]
        name, labels = json.loads(self.meta_text[start:end])
        return AllowlistEntry(pub_hash=pub_hash, name=name, labels=labels, source=source)


_gc_lock = threading.Lock()
_gc_pauses = 0


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building millions of containers makes the cyclic GC rescan the heap again and
    again (twice the parse time); the document holds no cycles, so pause it."""
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()


def parse_document(body: bytes | bytearray | str, source: str) -> Index:
    """The index of a version 1 document; DocumentError says what is wrong with it."""
    parser = DocumentParser(source)
    parser.feed(body)
    return parser.finish()


def _release_free_heap() -> None:
    """Give the pages freed by a large parse back to the OS.

    glibc raises its mmap threshold after large blocks are freed, so the next parse's
    big lists come from the heap, whose freed top is not returned on its own: without
    this, each refresh left ~25 MB more resident for a million entries."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)  # glibc only
    return trim


_malloc_trim = _load_malloc_trim()


# --- the parse: ijson's yajl tokenizer, the index built as entries arrive ------------

# The kind of each ijson basic event, and what it does to the nesting depth.
_KIND = operator.itemgetter(0)
_DEPTH_CHANGE = {
    "start_map": 1,
    "start_array": 1,
    "end_map": -1,
    "end_array": -1,
    "map_key": 0,
    "null": 0,
    "boolean": 0,
    "integer": 0,
    "double": 0,
    "number": 0,
    "string": 0,
}
_CONTAINER_STARTS = frozenset({"start_map", "start_array"})
# A document is four levels deep (document, entries, entry, labels); anything much
# deeper is refused before ijson's prefix tracking, whose cost grows with the square of
# the depth, ever sees it.
MAX_DEPTH = 64
FOLD_EVERY = 2048  # entries gathered before they are folded into the index


def _ijson_backend() -> Any:
    """yajl2_c, the C extension the ijson wheels ship, else the best one available."""
    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:  # a platform without the wheel's extension
        return ijson.get_backend(ijson.backend_name)


_backend = _ijson_backend()


class DocumentParser:
    """Parses a document fed a piece at a time, as it is downloaded or read; finish()
    gives its Index or raises DocumentError.

    ijson (yajl) tokenizes each piece; this class follows the top level of the document
    itself (the few events outside the entries array) and hands the events inside the
    entries array to ijson's C object builder, whose entries are folded into the index
    a batch at a time. Only the index being built and one piece's events are held.

    Problems are reported in the order json.loads and the checks after it would find
    them: undecodable bytes anywhere first, then the first JSON syntax error (yajl's
    reason, and the byte near which it found it), then what the document says."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._head = b""  # the first bytes, until the encoding is known
        self._encoding: str | None = None
        self._text_decoder: codecs.IncrementalDecoder | None = None
        self._decoded = 0  # bytes handed to the decoder (or found ASCII) so far
        self._fed_text = False
        self._events = ijson.sendable_list()
        self._tokens = _backend.basic_parse_coro(self._events, use_float=True)
        self._parsed = 0  # bytes handed to yajl so far
        self._depth = 0
        self._unreadable: str | None = None
        self._malformed: str | None = None
        self._is_object: bool | None = None  # known once the document starts
        self._key: str | None = None  # the top-level member whose value is being read
        self._version: Any = None
        self._version_builder: ijson.ObjectBuilder | None = None
        self._unknown: set[str] = set()
        self._building: _Builder | None = None  # the "entries" array being read
        self._items: Any = None  # ijson's builder of its entries
        self._built = ijson.sendable_list()  # entries built, not yet folded in
        self._entries: _Builder | None = None

    def feed(self, data: bytes | bytearray | memoryview | str) -> None:
        """The next piece: bytes (any encoding json.loads accepts), or text, not both."""
        if isinstance(data, str):
            if self._encoding is not None or self._head:
                raise TypeError("text fed after bytes")
            if not (self._fed_text or self._parsed) and data.startswith("\ufeff"):
                self._malformed = (
                    "not valid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig): "
                    "line 1 column 1 (char 0)"
                )
            self._fed_text = True
            with _gc_paused():
                for start in range(0, len(data), PIECE):  # never a copy of the whole text
                    self._parse(data[start : start + PIECE].encode("utf-8", "surrogatepass"))
            return
        if self._fed_text:
            raise TypeError("bytes fed after text")
        view = memoryview(data).cast("B")
        with _gc_paused():
            for start in range(0, len(view), PIECE):
                self._take(bytes(view[start : start + PIECE]), final=False)

    def finish(self) -> Index:
        """The index of the whole document; DocumentError says what is wrong with it."""
        try:
            with _gc_paused():
                if not self._fed_text:
                    self._take(b"", final=True)
                if self._malformed is None and self._unreadable is None:
                    try:
                        self._tokens.close()
                    except ijson.JSONError as exc:
                        self._malformed = _syntax_error(exc, b"", self._parsed)
                    except UnicodeDecodeError:
                        self._malformed = _lone_surrogate(self._parsed, 0)
                    else:
                        self._follow(self._events)
                return self._index()
        finally:
            self._drop()
            _release_free_heap()  # what the parse allocated is gone now

    def _index(self) -> Index:
        if self._unreadable is not None:
            raise DocumentError(self._unreadable)
        if self._malformed is not None:
            raise DocumentError(self._malformed)
        if not self._is_object:
            raise DocumentError("the document must be a JSON object")
        version = self._version
        if type(version) is not int or version != VERSION:
            raise DocumentError(f"unsupported version {version!r} (this plugin reads {VERSION})")
        if self._unknown:
            raise DocumentError(f"unknown keys {sorted(self._unknown)}")
        entries = self._entries
        if entries is None:
            raise DocumentError('"entries" must be a list')
        if entries.problem is not None:
            raise DocumentError(entries.problem)
        return entries.index()

    def _drop(self) -> None:
        """Only the first problem matters now: let go of what was built."""
        self._building = self._entries = self._items = None
        del self._events[:], self._built[:]

    # Bytes: the encoding json.loads would use, and every byte checked to decode.

    def _take(self, piece: bytes, final: bool) -> None:
        if self._unreadable is not None:
            return
        if self._encoding is None:
            self._head += piece
            if len(self._head) < 4 and not final:
                return
            # json.loads(bytes) decodes the same way (json.detect_encoding reads 4 bytes).
            self._encoding = json.detect_encoding(self._head[:4])
            self._text_decoder = codecs.getincrementaldecoder(self._encoding)("surrogatepass")
            piece, self._head = self._head, b""
        decoder = self._text_decoder
        assert decoder is not None
        before = self._decoded - len(decoder.getstate()[0])
        if self._encoding not in ("utf-8", "utf-8-sig"):
            try:
                text = decoder.decode(piece, final)
            except UnicodeDecodeError as exc:
                self._unreadable = f"not valid JSON: {_decode_error(exc, before)}"
                self._drop()
                return
            self._decoded += len(piece)
            self._parse(text.encode("utf-8", "surrogatepass"))
            return
        # UTF-8 goes to yajl as it is; only pieces that are not plain ASCII (or that
        # finish a character cut by the last piece) need decoding, to check them.
        if final or not piece.isascii() or decoder.getstate()[0]:
            try:
                decoder.decode(piece, final)
            except UnicodeDecodeError as exc:
                # json.loads decodes the whole body before it parses: this comes first.
                self._unreadable = f"not valid JSON: {_decode_error(exc, before)}"
                self._malformed = None
                self._drop()
                return
        first = self._decoded == 0
        self._decoded += len(piece)
        if first and self._encoding == "utf-8-sig":
            piece = piece.removeprefix(codecs.BOM_UTF8)  # json.loads drops it too
        self._parse(piece)

    # JSON: yajl's events, followed at the top level, built inside the entries array.

    def _parse(self, piece: bytes) -> None:
        if self._malformed is not None or not piece:
            return
        try:
            self._tokens.send(piece)
        except ijson.JSONError as exc:
            self._malformed = _syntax_error(exc, piece, self._parsed)
            self._drop()
            return
        except UnicodeDecodeError:
            self._malformed = _lone_surrogate(self._parsed, len(piece))
            self._drop()
            return
        self._parsed += len(piece)
        self._follow(self._events)

    def _follow(self, events: list[tuple[str, Any]]) -> None:
        """Takes the events of the last piece: the top-level ones here, one by one;
        those inside a member's value in runs, to its builder (or to nothing)."""
        if not events:
            return
        # depths[i] is the depth before events[i]; all computed at C speed.
        depths = list(
            accumulate(map(_DEPTH_CHANGE.__getitem__, map(_KIND, events)), initial=self._depth)
        )
        if max(depths) > MAX_DEPTH:
            self._malformed = f"not valid JSON: nested too deeply (more than {MAX_DEPTH} levels)"
            self._drop()
            return
        self._depth = depths[-1]
        if self._is_object is False:
            del events[:]  # not an object: only its syntax matters now
            return
        top = list(compress(count(), map(operator.le, islice(depths, len(events)), repeat(1))))
        start = 0
        for at in top:
            if start < at:
                self._inside(events[start:at])
            self._top_level(depths[at], *events[at])
            start = at + 1
        if start < len(events):
            self._inside(events if start == 0 else events[start:])
        del events[:]
        if len(self._built) >= FOLD_EVERY:
            self._fold()

    def _top_level(self, depth: int, kind: str, value: Any) -> None:
        """An event outside any member's value: the document's start and end, a member's
        key, or the start of its value."""
        if depth == 0:
            self._is_object = kind == "start_map"
        elif kind == "map_key":
            self._end_member()
            self._key = value
            if value == "entries":
                self._entries = None  # the last "entries" counts, as in a dict
            elif value != "version":
                self._unknown.add(value)
        elif kind == "end_map":
            self._end_member()
        elif self._key == "entries":
            if kind == "start_array":
                self._building = _Builder(self.source)
                self._items = _backend.parse_basecoro(_backend.items_basecoro(self._built, "item"))
                self._items.send((kind, value))
        elif self._key == "version":
            self._version = value
            if kind in _CONTAINER_STARTS:
                self._version_builder = ijson.ObjectBuilder()
                self._version_builder.event(kind, value)

    def _inside(self, events: list[tuple[str, Any]]) -> None:
        """Events inside the current member's value."""
        if self._items is not None:
            deque(map(self._items.send, events), maxlen=0)
        elif self._version_builder is not None:
            for kind, value in events:
                self._version_builder.event(kind, value)

    def _end_member(self) -> None:
        if self._items is not None:
            self._fold()
            self._entries, self._building, self._items = self._building, None, None
        if self._version_builder is not None:
            self._version = self._version_builder.value
            self._version_builder = None

    def _fold(self) -> None:
        """Adds the entries built so far to the index being built."""
        if self._building is not None and self._built:
            self._building.add(self._built)
        del self._built[:]


def _syntax_error(exc: Exception, piece: bytes, start: int) -> str:
    """yajl's reason, and near which byte of the document: `piece` (which began at byte
    `start`) is what yajl was parsing; its message quotes the bytes around the spot."""
    message = str(exc)
    raw = (
        ast.literal_eval(message)
        if message.startswith(("b'", 'b"'))
        else message.encode("utf-8", "surrogateescape")
    )
    lines = raw.split(b"\n")
    reason = lines[0].decode("utf-8", "replace").rstrip(".")
    if not piece:  # found at the end of the document (premature EOF)
        offset: int | None = 0
    else:
        offset = _error_offset(lines[1], piece) if len(lines) > 2 else None
    if offset is None:
        return f"not valid JSON: {reason} (in bytes {start}-{start + len(piece)})"
    return f"not valid JSON: {reason} near byte {start + offset}"


def _lone_surrogate(start: int, size: int) -> str:
    """yajl decodes strings strictly, so a lone surrogate encoded in the bytes (which
    json.loads decodes with surrogatepass) stops it. No valid document holds one (names
    and labels must be printable, hashes hex, keys known): refused as not JSON."""
    return f"not valid JSON: a string holds a lone surrogate (in bytes {start}-{start + size})"


def _error_offset(quoted: bytes, piece: bytes) -> int | None:
    """Where in `piece` yajl stopped, from the line its verbose error quotes: up to 30
    bytes either side of the spot, newlines as spaces, padded so the spot falls at
    column 40 (yajl_render_error_string)."""
    text = piece.replace(b"\n", b" ").replace(b"\r", b" ")
    for offset in range(min(30, len(text) + 1)):
        if quoted == b" " * (40 - offset) + text[: offset + 30]:
            return offset
    window = quoted[10:]
    at = text.find(window)
    while at >= 0:
        if len(window) == min(at + 60, len(text)) - at:
            return at + 30
        at = text.find(window, at + 1)
    return None


def _decode_error(exc: UnicodeDecodeError, before: int) -> str:
    """str(exc), at its position in the whole body rather than in this piece."""
    start = before + exc.start
    if exc.end - exc.start == 1:
        where = f"byte 0x{exc.object[exc.start]:02x} in position {start}"
    else:
        where = f"bytes in position {start}-{before + exc.end - 1}"
    return f"'{exc.encoding}' codec can't decode {where}: {exc.reason}"


class _Builder:
    """The index of an entries array, built a slice of entries at a time: digests are
    gathered in buckets by first byte, metadata texts alongside, and each bucket is
    sorted alone at the end, so no step holds an object per entry of the document."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0  # entries added
        self.problem: str | None = None
        self._digests = [bytearray() for _ in range(BUCKETS)]
        self._meta_digests = [bytearray() for _ in range(BUCKETS)]
        self._meta_texts: list[list[str]] = [[] for _ in range(BUCKETS)]
        self._meta_lengths = [array("Q") for _ in range(BUCKETS)]

    def add(self, entries: list[Any]) -> None:
        if self.problem is not None:
            return
        # Whole-slice checks run at C speed; only a failure walks the entries one by one
        # (_first_problem) to say which one is wrong.
        try:
            hashes = [entry["pub_hash"] for entry in entries]
            with_metadata = [entry for entry in entries if len(entry) != 1]
            hashes.sort()
            joined = "".join(hashes)
            digests = bytes.fromhex(joined)
            well_formed = (
                set(map(type, entries)) <= {dict}
                and set(map(len, hashes)) <= {64}
                and joined == joined.lower()
                and len(digests) == DIGEST_SIZE * len(hashes)
            )
            meta_hashes, meta_texts = _metadata(with_metadata)
        except (KeyError, TypeError, ValueError, AttributeError):
            well_formed = False
        if not well_formed:
            self.problem = _first_problem(entries, self.source, self.count)
            self._digests, self._meta_digests, self._meta_texts, self._meta_lengths = [], [], [], []
            return
        self.count += len(entries)
        view = memoryview(digests)
        for bucket, (low, high) in enumerate(_bucket_bounds(hashes)):
            if low < high:
                self._digests[bucket] += view[low * DIGEST_SIZE : high * DIGEST_SIZE]
        if not meta_hashes:
            return
        view = memoryview(bytes.fromhex("".join(meta_hashes)))
        for bucket, (low, high) in enumerate(_bucket_bounds(meta_hashes)):
            if low < high:
                self._meta_digests[bucket] += view[low * DIGEST_SIZE : high * DIGEST_SIZE]
                self._meta_texts[bucket].append("".join(meta_texts[low:high]))
                self._meta_lengths[bucket].extend(map(len, meta_texts[low:high]))

    def index(self) -> Index:
        parts: list[bytes] = []
        for bucket in range(BUCKETS):
            records = _RECORD.findall(self._digests[bucket])
            self._digests[bucket] = bytearray()  # given back as it is copied
            records.sort()
            if any(map(operator.eq, records, islice(records, 1, None))):
                twice = next(a for a, b in pairwise(records) if a == b)
                raise DocumentError(f"EK hash {twice.hex()} is listed more than once")
            parts.append(b"".join(records))
        digests = b"".join(parts)
        del parts
        meta_parts: list[bytes] = []
        text_parts: list[str] = []
        lengths = array("Q")
        for bucket in range(BUCKETS):
            text = "".join(self._meta_texts[bucket])
            ends = list(accumulate(self._meta_lengths[bucket]))
            texts = [text[start:end] for start, end in zip([0, *ends], ends, strict=False)]
            ordered = sorted(zip(_RECORD.findall(self._meta_digests[bucket]), texts, strict=True))
            meta_parts.append(b"".join([digest for digest, _ in ordered]))
            text_parts.append("".join([text for _, text in ordered]))
            lengths.extend([len(text) for _, text in ordered])
        offsets = array("Q", accumulate(lengths, initial=0))
        return Index(digests, b"".join(meta_parts), offsets, "".join(text_parts))


def _bucket_bounds(ordered: list[str]) -> Iterator[tuple[int, int]]:
    """(start, end) in the sorted hashes `ordered` of each bucket's run."""
    return pairwise([0, *(bisect_left(ordered, prefix) for prefix in _PREFIXES), len(ordered)])


def _metadata(with_metadata: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The hashes, sorted, and their compact `[name, labels]` JSON texts.

    Raises ValueError when any metadata is malformed (the caller finds which)."""
    names = [entry.get("name") for entry in with_metadata]
    labels = [entry.get("labels", {}) for entry in with_metadata]
    if not (
        set(chain.from_iterable(with_metadata)) <= ENTRY_KEYS
        and set(map(type, names)) <= {str, type(None)}
        and set(map(type, labels)) <= {dict}
        and set(map(type, chain.from_iterable(labels))) <= {str}
        and set(map(type, chain.from_iterable(map(dict.values, labels)))) <= {str}
        and not any(map(metadata_problem, names, labels))
    ):
        raise ValueError("malformed metadata")
    ordered = sorted(
        zip((entry["pub_hash"] for entry in with_metadata), names, labels, strict=True),
        key=operator.itemgetter(0),
    )
    texts = [_metadata_text(name, entry_labels) for _, name, entry_labels in ordered]
    return [pub_hash for pub_hash, _, _ in ordered], texts


def _metadata_text(name: str | None, labels: dict[str, str]) -> str:
    """`[name, labels]` as compact ASCII JSON (json.dumps per entry is twice as slow)."""
    pairs = ",".join([_quote(key) + ":" + _quote(value) for key, value in labels.items()])
    return f"[{'null' if name is None else _quote(name)},{{{pairs}}}]"


def _first_problem(entries: list[Any], source: str, start: int = 0) -> str:
    """What is wrong with the first bad entry; `start` is the number of the first."""
    for number, entry in enumerate(entries, start):
        if not isinstance(entry, dict):
            return f"entry {number} must be a JSON object"
        pub_hash = entry.get("pub_hash")
        if not isinstance(pub_hash, str) or not EK_HASH.match(pub_hash):
            return f"entry {number}: pub_hash must be 64 lowercase hex digits, got {pub_hash!r}"
        try:
            entry_from_json(pub_hash, entry, source)
        except AllowlistError as exc:
            return f"entry {number}: {exc}"
    return "malformed entries"


def render_document(entries: Iterable[AllowlistEntry]) -> str:
    """A version 1 document listing `entries` in EK hash order (what export writes)."""
    items: list[dict[str, Any]] = []
    for entry in sorted(entries, key=lambda e: e.pub_hash):
        item: dict[str, Any] = {"pub_hash": entry.pub_hash}
        if entry.name is not None:
            item["name"] = entry.name
        if entry.labels:
            item["labels"] = dict(sorted(entry.labels.items()))
        items.append(item)
    lines = ",\n".join("  " + json.dumps(item, ensure_ascii=False) for item in items)
    listed = f"[\n{lines}\n]" if items else "[]"
    return f'{{"version": {VERSION}, "entries": {listed}}}\n'


def read_document_file(path: str, source: str) -> Index:
    parser = DocumentParser(source)
    try:
        with open(path, "rb") as document:
            # Fed as it is read: the file is never all in memory at once.
            while piece := document.read(PIECE):
                parser.feed(piece)
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror}") from None
    return parser.finish()

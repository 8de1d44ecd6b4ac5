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

The document is parsed as it is fed (DocumentParser), a piece at a time: the entries
array is walked with the stdlib decoder a slice of entries at a time, and each slice is
folded into the index before the next is parsed, so a parse needs the index plus a few
MiB, never the whole JSON tree (for a million entries, several times the document).
It accepts and rejects exactly what `json.loads` and the checks after it would.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, chain, islice, pairwise
from typing import Any

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

PIECE = 1 << 20  # bytes decoded, and characters of entries parsed, at a time
BUCKETS = 256  # digests are gathered by first byte, then each bucket is sorted alone
_PREFIXES = [f"{bucket:02x}" for bucket in range(1, BUCKETS)]
_decoder = json.JSONDecoder()  # what json.loads uses
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A `}` that closes an entry: the next entry or the array's end follows it.
_ENTRY_END = re.compile(r"\}[ \t\n\r]*(?:,[ \t\n\r]*\{|\])")
_RECORD = re.compile(rb".{32}", re.DOTALL)
# A decoder error this close to the end of the text so far may only mean that the rest
# has not arrived yet (a cut literal, number or \u escape is at most 9 characters).
_CUT_SHORT = 16


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


class _Malformed(Exception):
    """Not JSON: json's own wording, and where in the text being parsed."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


# Where the parser is in the document: what it expects next.
_DOCUMENT, _FIRST_KEY, _KEY, _COLON, _MEMBER, _AFTER_MEMBER = range(6)
_FIRST_ITEM, _ITEM, _AFTER_ITEM, _END = range(6, 10)
_EXPECTING = {
    _DOCUMENT: "Expecting value",
    _FIRST_KEY: "Expecting property name enclosed in double quotes",
    _KEY: "Expecting property name enclosed in double quotes",
    _COLON: "Expecting ':' delimiter",
    _MEMBER: "Expecting value",
    _AFTER_MEMBER: "Expecting ',' delimiter",
    _FIRST_ITEM: "Expecting value",
    _ITEM: "Expecting value",
    _AFTER_ITEM: "Expecting ',' delimiter",
}


class DocumentParser:
    """Parses a document fed a piece at a time, as it is downloaded or read; finish()
    gives its Index or raises DocumentError.

    Only the index being built and the text not parsed yet (under a piece, unless one
    value is larger) are held. Problems are reported as json.loads and the checks after
    it would: undecodable bytes anywhere first, then the first JSON syntax error (with
    json's message and position), then what the document says, in the same order."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._raw = bytearray()  # bytes not decoded yet
        self._text_decoder: codecs.IncrementalDecoder | None = None
        self._decoded = 0  # bytes handed to the decoder so far
        self._want = PIECE  # decode once this many bytes wait
        self._fed_text = False
        self._text = ""  # decoded text not parsed yet
        self._offset = 0  # its position in the document, in characters
        self._lines = 0  # the newlines before it
        self._last_newline = -1  # and where the last one is
        self._state = _DOCUMENT
        self._key = ""  # the top-level member whose value comes next
        self._top_array = False  # the array being walked is the document itself
        self._building: _Builder | None = None  # the "entries" array being walked
        self._items: list[Any] = []  # its entries parsed one by one, not yet folded in
        self._bulk_after = 0  # entries before this position are parsed one by one
        self._unreadable: str | None = None
        self._malformed: str | None = None
        self._is_object = False
        self._version: Any = None
        self._unknown: set[str] = set()
        self._entries: _Builder | None = None

    def feed(self, data: bytes | bytearray | memoryview | str) -> None:
        """The next piece: bytes (any encoding json.loads accepts), or text, not both."""
        if isinstance(data, str):
            if self._text_decoder is not None or self._raw:
                raise TypeError("text fed after bytes")
            if not (self._offset or self._text) and data.startswith("\ufeff"):
                self._fail(_Malformed("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0), "")
            self._fed_text = True
            if self._unreadable is None and self._malformed is None:
                with _gc_paused():
                    self._parse(data, final=False)
            return
        if self._fed_text:
            raise TypeError("bytes fed after text")
        view = memoryview(data).cast("B")
        for start in range(0, len(view), PIECE):
            self._raw += view[start : start + PIECE]
            if len(self._raw) >= self._want:
                with _gc_paused():
                    self._decode(final=False)

    def finish(self) -> Index:
        """The index of the whole document; DocumentError says what is wrong with it."""
        try:
            with _gc_paused():
                if self._fed_text:
                    if self._malformed is None:
                        self._parse("", final=True)
                else:
                    self._decode(final=True)
                return self._index()
        finally:
            self._building = self._entries = None
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

    def _decode(self, final: bool) -> None:
        if self._unreadable is not None:
            self._raw.clear()
            return
        if self._text_decoder is None:
            if len(self._raw) < 4 and not final:
                return
            # json.loads(bytes) decodes the same way (json.detect_encoding reads 4 bytes).
            encoding = json.detect_encoding(bytes(self._raw[:4]))
            self._text_decoder = codecs.getincrementaldecoder(encoding)("surrogatepass")
        raw, self._raw = self._raw, bytearray()
        before = self._decoded - len(self._text_decoder.getstate()[0])
        try:
            text = self._text_decoder.decode(raw, final)
        except UnicodeDecodeError as exc:
            # json.loads decodes the whole body before it parses: this comes first.
            self._unreadable = f"not valid JSON: {_decode_error(exc, before)}"
            self._malformed = None
            self._drop()
            return
        self._decoded += len(raw)
        if self._malformed is None:
            self._parse(text, final)

    def _parse(self, text: str, final: bool) -> None:
        buffer = self._text + text if self._text else text
        try:
            done = self._walk(buffer, final)
        except _Malformed as exc:
            self._fail(exc, buffer)
            return
        except RecursionError:  # json's C scanner recurses once per nesting level
            self._malformed = "not valid JSON: nested too deeply"
            self._drop()
            return
        newlines = buffer.count("\n", 0, done)
        if newlines:
            self._lines += newlines
            self._last_newline = self._offset + buffer.rfind("\n", 0, done)
        self._offset += done
        self._text = buffer[done:]
        # A value longer than a piece waits for as much text again before it is retried:
        # a huge value costs a few retries, not one per piece.
        self._want = max(PIECE, len(self._text))

    def _fail(self, exc: _Malformed, buffer: str) -> None:
        """Records the syntax error, in json's words: `msg: line L column C (char N)`."""
        at = self._offset + exc.position
        last_newline = buffer.rfind("\n", 0, exc.position)
        line = self._lines + buffer.count("\n", 0, exc.position) + 1
        column = at - (self._offset + last_newline if last_newline >= 0 else self._last_newline)
        self._malformed = f"not valid JSON: {exc.message}: line {line} column {column} (char {at})"
        self._drop()

    def _drop(self) -> None:
        """Only the first problem matters now: let go of what was built."""
        self._text = ""
        self._building = self._entries = None
        self._items = []

    def _walk(self, buffer: str, final: bool) -> int:
        """Parses `buffer` as far as it can and says where it stopped (the rest may go
        on in the next piece); with `final`, all of it or _Malformed."""
        end = len(buffer)
        position = 0
        while True:
            position = _skip_whitespace(buffer, position)
            state = self._state
            if position == end:
                if final and state != _END:
                    raise _Malformed(_EXPECTING[state], position)
                return position
            char = buffer[position]
            if state == _ITEM or (state == _FIRST_ITEM and char != "]"):
                after = self._take_entries(buffer, position, final)
                if after is None:
                    return position
                position = after
                self._state = _AFTER_ITEM
            elif state in (_AFTER_ITEM, _FIRST_ITEM):
                if char == ",":
                    self._state = _ITEM
                elif char == "]":
                    self._end_array()
                else:
                    raise _Malformed("Expecting ',' delimiter", position)
                position += 1
            elif state in (_FIRST_KEY, _KEY):
                if char == "}" and state == _FIRST_KEY:
                    self._state = _END
                    position += 1
                elif char != '"':
                    raise _Malformed("Expecting property name enclosed in double quotes", position)
                else:
                    key = _value(buffer, position, final)
                    if key is None:
                        return position
                    self._key, position = key
                    self._state = _COLON
            elif state == _COLON:
                if char != ":":
                    raise _Malformed("Expecting ':' delimiter", position)
                self._state = _MEMBER
                position += 1
            elif state == _MEMBER:
                after = self._member(buffer, position, final)
                if after is None:
                    return position
                position = after
            elif state == _AFTER_MEMBER:
                if char == ",":
                    self._state = _KEY
                elif char == "}":
                    self._state = _END
                else:
                    raise _Malformed("Expecting ',' delimiter", position)
                position += 1
            elif state == _DOCUMENT:
                if char == "{":
                    self._is_object = True
                    self._state = _FIRST_KEY
                    position += 1
                elif char == "[":  # not an object, but walked all the same: it may be big
                    self._start_array(top=True)
                    position += 1
                else:
                    value = _value(buffer, position, final)
                    if value is None:
                        return position
                    position = value[1]
                    self._state = _END
            else:
                raise _Malformed("Extra data", position)

    def _member(self, buffer: str, position: int, final: bool) -> int | None:
        """The value of the member `self._key`; where it ends, None to wait for more."""
        key = self._key
        if key == "entries":
            self._entries = None  # the last "entries" counts, as in a dict
        elif key != "version":
            self._unknown.add(key)
        if buffer[position] == "[" and key != "version":
            self._start_array(top=False)
            return position + 1
        value = _value(buffer, position, final)
        if value is None:
            return None
        if key == "version":
            self._version = value[0]
        self._state = _AFTER_MEMBER
        return value[1]

    def _start_array(self, top: bool) -> None:
        self._top_array = top
        self._building = _Builder(self.source) if self._key == "entries" and not top else None
        self._items = []
        self._state = _FIRST_ITEM

    def _end_array(self) -> None:
        self._fold()
        if self._top_array:
            self._state = _END
        else:
            if self._key == "entries":
                self._entries = self._building
            self._state = _AFTER_MEMBER
        self._building = None

    def _take_entries(self, buffer: str, position: int, final: bool) -> int | None:
        """Entries from `position` (where one starts): where the last one taken ends,
        None to wait for more text. Many at once where it can, else one."""
        if self._offset + position >= self._bulk_after:
            after = self._take_many(buffer, position)
            if after is not None:
                return after
        value = _value(buffer, position, final)
        if value is None:
            return None
        if self._building is not None:
            self._items.append(value[0])
            if len(self._items) >= 4096:
                self._fold()
        return value[1]

    def _take_many(self, buffer: str, position: int) -> int | None:
        """Up to a piece of entries in one json call, cut after the last `}` followed by
        `, {` or `]`. A cut in the wrong place (in a string such as a name holding
        `}, {`, or in a nested value) leaves that string or value open, so the slice
        does not parse: then the entries up to the cut are taken one by one, as they
        are when the slice holds a real error (which json then reports as usual)."""
        limit = min(len(buffer), position + PIECE)
        cut = limit
        for _ in range(8):  # the last `}` may close a cut entry's labels: look back a bit
            cut = buffer.rfind("}", position, cut)
            if cut < 0:
                break
            if _ENTRY_END.match(buffer, cut):
                try:
                    entries = _decoder.decode("[" + buffer[position : cut + 1] + "]")
                except json.JSONDecodeError:
                    break
                self._fold(entries)
                return cut + 1
        self._bulk_after = self._offset + (limit if cut < 0 else cut + 1)
        return None

    def _fold(self, entries: list[Any] | None = None) -> None:
        """Adds the entries parsed so far to the index being built."""
        builder = self._building
        if builder is not None:
            if self._items and entries:  # one slice: each costs a bucket split
                self._items.extend(entries)
            batch = self._items or entries
            if batch:
                builder.add(batch)
        self._items = []


def _skip_whitespace(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


def _value(text: str, position: int, final: bool) -> tuple[Any, int] | None:
    """The JSON value at `position` and where it ends; None when it may go on past the
    end of the text seen so far."""
    try:
        value, end = _decoder.raw_decode(text, position)
    except json.JSONDecodeError as exc:
        if not final and (
            exc.msg.startswith("Unterminated string") or exc.pos > len(text) - _CUT_SHORT
        ):
            return None
        raise _Malformed(exc.msg, exc.pos) from None
    if not final and end > len(text) - _CUT_SHORT:
        return None  # a number may go on in the next piece (`1` then `.5`)
    return value, end


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

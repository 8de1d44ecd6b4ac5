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
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import json.encoder
import operator
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, chain, islice
from typing import Any

from server_plugin.allowlist import EK_HASH, AllowlistEntry, AllowlistError, entry_from_json
from server_plugin.reload import Reloading

VERSION = 1
DIGEST_SIZE = 32
ENTRY_KEYS = frozenset({"pub_hash", "name", "labels"})
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii


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
        if not EK_HASH.match(pub_hash):
            raise AllowlistError(f"{pub_hash!r} is not an EK hash")
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
    try:
        with _gc_paused():
            return _parse(body, source)
    finally:
        _release_free_heap()  # the parsed tree is gone now


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


def _parse(body: bytes | bytearray | str, source: str) -> Index:
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DocumentError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DocumentError("the document must be a JSON object")
    version = document.get("version")
    if type(version) is not int or version != VERSION:
        raise DocumentError(f"unsupported version {version!r} (this plugin reads {VERSION})")
    unknown = set(document) - {"version", "entries"}
    if unknown:
        raise DocumentError(f"unknown keys {sorted(unknown)}")
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise DocumentError('"entries" must be a list')
    return _index(entries, source)


def _index(entries: list[Any], source: str) -> Index:
    # Whole-list checks run at C speed; only a failure walks the entries one by one
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
        meta_hashes, meta_text, offsets = _metadata(with_metadata)
    except (KeyError, TypeError, ValueError, AttributeError):
        well_formed = False
    if not well_formed:
        raise DocumentError(_first_problem(entries, source))
    if any(map(operator.eq, hashes, islice(hashes, 1, None))):
        twice = next(a for a, b in zip(hashes, islice(hashes, 1, None), strict=False) if a == b)
        raise DocumentError(f"EK hash {twice} is listed more than once")
    return Index(digests, bytes.fromhex("".join(meta_hashes)), offsets, meta_text)


def _metadata(with_metadata: list[dict[str, Any]]) -> tuple[list[str], str, array[int]]:
    """Sorted hashes, compact `[name, labels]` JSON texts joined, and their offsets.

    Raises ValueError when any metadata is malformed (the caller finds which)."""
    names = [entry.get("name") for entry in with_metadata]
    labels = [entry.get("labels", {}) for entry in with_metadata]
    if not (
        set(chain.from_iterable(with_metadata)) <= ENTRY_KEYS
        and set(map(type, names)) <= {str, type(None)}
        and set(map(type, labels)) <= {dict}
        and set(map(type, chain.from_iterable(labels))) <= {str}
        and set(map(type, chain.from_iterable(map(dict.values, labels)))) <= {str}
    ):
        raise ValueError("malformed metadata")
    ordered = sorted(
        zip((entry["pub_hash"] for entry in with_metadata), names, labels, strict=True),
        key=operator.itemgetter(0),
    )
    texts = [_metadata_text(name, entry_labels) for _, name, entry_labels in ordered]
    offsets = array("Q", accumulate(map(len, texts), initial=0))
    return [pub_hash for pub_hash, _, _ in ordered], "".join(texts), offsets


def _metadata_text(name: str | None, labels: dict[str, str]) -> str:
    """`[name, labels]` as compact ASCII JSON (json.dumps per entry is twice as slow)."""
    pairs = ",".join([_quote(key) + ":" + _quote(value) for key, value in labels.items()])
    return f"[{'null' if name is None else _quote(name)},{{{pairs}}}]"


def _first_problem(entries: list[Any], source: str) -> str:
    for number, entry in enumerate(entries):
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
    try:
        with open(path, "rb") as document:
            body = document.read()
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror}") from None
    return parse_document(body, source)


class DocumentFile:
    """A document in a local file, reloaded when the file changes (Reloading)."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        source = self.describe()
        # A document that fails to load here is a configuration problem (DocumentError).
        self._index = Reloading(name, [path], lambda: read_document_file(path, source))

    def lookup(self, pub_hash: str) -> AllowlistEntry | None:
        return self._index.value.lookup(pub_hash, self.describe())

    def describe(self) -> str:
        return f"{self.name} (file {self.path})"

    def close(self) -> None:
        self._index.close()

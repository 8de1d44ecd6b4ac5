"""Allowlist sources: where the server looks up EK hashes (DESIGN.md §5).

One interface, several sources behind it: here the directory layouts (flat, compatible
with spiffe/spire-tpm-plugin's `hash_path`, and bucketed); the JSON document kinds (a
local file, an HTTP(S) endpoint) live in `allowlist_document` and `allowlist_http`.
A source answers a lookup with an entry, with None for "not present", or raises
AllowlistError: a lookup that failed is never an admission (nor, on a deny list, a
pass).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# \Z, not $: a name ending in a newline is not an EK hash.
EK_HASH = re.compile(r"^[0-9a-f]{64}\Z")
BUCKET = re.compile(r"^[0-9a-f]{2}\Z")
MAX_ENTRY_BODY = 64 * 1024


class AllowlistError(Exception):
    """A lookup could not give a reliable answer (I/O error, malformed entry...)."""


@dataclass(frozen=True)
class AllowlistEntry:
    pub_hash: str
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    source: str = ""


class AllowlistSource(Protocol):
    def lookup(self, pub_hash: str) -> AllowlistEntry | None:
        """The entry for this EK hash, None when absent; AllowlistError when unsure."""

    def describe(self) -> str:
        """A short name for logs and error messages, e.g. `directory /var/lib/hashes`."""

    def close(self) -> None:
        """Release watchers, connections or caches."""


def parse_entry_body(pub_hash: str, body: bytes, source: str) -> AllowlistEntry:
    """An entry file is empty, or JSON `{"name": str, "labels": {str: str}}`."""
    if not body.strip():
        return AllowlistEntry(pub_hash=pub_hash, source=source)
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise AllowlistError(f"{source}: entry {pub_hash} is not valid JSON: {exc}") from None
    return entry_from_json(pub_hash, document, source)


def entry_from_json(pub_hash: str, document: Any, source: str) -> AllowlistEntry:
    if not isinstance(document, dict):
        raise AllowlistError(f"{source}: entry {pub_hash} must be a JSON object")
    unknown = set(document) - {"name", "labels", "pub_hash"}
    if unknown:
        raise AllowlistError(f"{source}: entry {pub_hash} has unknown keys {sorted(unknown)}")
    name = document.get("name")
    labels = document.get("labels", {})
    if name is not None and not isinstance(name, str):
        raise AllowlistError(f"{source}: entry {pub_hash}: name must be a string")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise AllowlistError(f"{source}: entry {pub_hash}: labels must map strings to strings")
    problem = metadata_problem(name, labels)
    if problem is not None:
        raise AllowlistError(f"{source}: entry {pub_hash}: {problem}")
    return AllowlistEntry(pub_hash=pub_hash, name=name, labels=dict(labels), source=source)


def metadata_problem(name: str | None, labels: dict[str, str]) -> str | None:
    """Why this name and these labels cannot become selectors unambiguously, or None.

    Selectors read `name:<name>` and `label:<key>:<value>`: a `:` in a key would make
    `label:a:b:c` mean two things, and a name may end up as an agent ID path segment, so
    it holds no `/`. Nothing may hold a character selector_safe would rewrite (control
    and other unprintable characters), or two entries could render the same selector."""
    if name is not None:
        if not name.isprintable():
            return f"name {name!r} holds an unprintable character"
        if "/" in name:
            return f"name {name!r} holds a '/'"
    for key, value in labels.items():
        if not key or ":" in key or not key.isprintable():
            return f"label key {key!r} must be non-empty, printable and without ':'"
        if not value.isprintable():
            return f"label {key!r} value {value!r} holds an unprintable character"
    return None


def read_entry_file(path: str, pub_hash: str, source: str) -> AllowlistEntry | None:
    try:
        with open(path, "rb") as entry:
            body = entry.read(MAX_ENTRY_BODY + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AllowlistError(f"{source}: cannot read entry {pub_hash}: {exc.strerror}") from None
    if len(body) > MAX_ENTRY_BODY:
        raise AllowlistError(f"{source}: entry {pub_hash} is larger than {MAX_ENTRY_BODY} bytes")
    return parse_entry_body(pub_hash, body, source)


class DirectorySource:
    """An allowlist kept as one file per EK hash under `path`; nothing is cached, so
    every lookup sees the directory as it is now (NFS, ConfigMaps, git checkouts)."""

    kind = ""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name

    def entry_path(self, pub_hash: str) -> str:
        raise NotImplementedError

    def hashes(self) -> Iterator[str]:
        """Every EK hash this layout would find, in no particular order."""
        raise NotImplementedError

    def lookup(self, pub_hash: str) -> AllowlistEntry | None:
        if not EK_HASH.match(pub_hash):
            raise AllowlistError(f"{pub_hash!r} is not an EK hash")
        entry = read_entry_file(self.entry_path(pub_hash), pub_hash, self.describe())
        # "Absent" only counts while the directory itself is there (not unmounted).
        if entry is None and not os.path.isdir(self.path):
            raise AllowlistError(f"{self.describe()}: {self.path} is not a directory")
        return entry

    def describe(self) -> str:
        return f"{self.name} ({self.kind} {self.path})"

    def close(self) -> None:
        """Nothing is cached: every lookup reads the directory."""


def _hash_names(directory: str, prefix: str = "") -> Iterator[str]:
    with os.scandir(directory) as entries:
        for entry in entries:
            if EK_HASH.match(entry.name) and entry.name.startswith(prefix):
                yield entry.name


class FlatDirectory(DirectorySource):
    """`<dir>/<ek hash>`: spiffe/spire-tpm-plugin's `hash_path` layout."""

    kind = "directory"

    def entry_path(self, pub_hash: str) -> str:
        return os.path.join(self.path, pub_hash)

    def hashes(self) -> Iterator[str]:
        return _hash_names(self.path)


class BucketedDirectory(DirectorySource):
    """`<dir>/<first two hex digits>/<ek hash>`: 256 buckets, for millions of entries."""

    kind = "bucketed directory"

    def entry_path(self, pub_hash: str) -> str:
        return os.path.join(self.path, pub_hash[:2], pub_hash)

    def hashes(self) -> Iterator[str]:
        for bucket in sorted(os.listdir(self.path)):
            if BUCKET.match(bucket) and os.path.isdir(os.path.join(self.path, bucket)):
                yield from _hash_names(os.path.join(self.path, bucket), bucket)


def check_directory(path: str) -> str | None:
    """Why `path` cannot serve as an allowlist directory, or None."""
    if not os.path.isdir(path):
        return f"{path} is not a directory"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{path} is not readable"
    return None

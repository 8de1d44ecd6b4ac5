"""Directory allowlists: one file per EK hash, read at every lookup.

Two layouts: flat (`<dir>/<ek hash>`, compatible with spiffe/spire-tpm-plugin's
`hash_path`) and bucketed (`<dir>/<first two hex digits>/<ek hash>`, for millions of
entries). An entry file is empty, or JSON `{"name": str, "labels": {str: str}}`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from server_plugin.allowlist.base import (
    EK_HASH,
    AllowlistEntry,
    AllowlistError,
    AllowlistSource,
    parse_entry_body,
)
from spire_tpm_attestor.files import FileTooLarge, read_bounded

BUCKET = re.compile(r"^[0-9a-f]{2}\Z")
MAX_ENTRY_BODY = 64 * 1024


def read_entry_file(path: str, pub_hash: str, source: str) -> AllowlistEntry | None:
    try:
        body = read_bounded(path, MAX_ENTRY_BODY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AllowlistError(f"{source}: cannot read entry {pub_hash}: {exc.strerror}") from None
    except FileTooLarge as exc:
        raise AllowlistError(f"{source}: entry {exc}") from None
    return parse_entry_body(pub_hash, body, source)


class DirectorySource(AllowlistSource):
    """An allowlist kept as one file per EK hash under `path`; nothing is cached, so
    every lookup sees the directory as it is now (NFS, ConfigMaps, git checkouts). A
    lookup may wait on storage: the server makes it off its event loop."""

    kind = ""
    lookup_reads_storage = True

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name

    def entry_path(self, pub_hash: str) -> str:
        raise NotImplementedError

    def hashes(self) -> Iterator[str]:
        """Every EK hash this layout would find, in no particular order."""
        raise NotImplementedError

    def _lookup(self, pub_hash: str) -> AllowlistEntry | None:
        entry = read_entry_file(self.entry_path(pub_hash), pub_hash, self.describe())
        # "Absent" only counts while the directory itself is there (not unmounted).
        if entry is None and not os.path.isdir(self.path):
            raise AllowlistError(f"{self.describe()}: {self.path} is not a directory")
        return entry

    def describe(self) -> str:
        return f"{self.name} ({self.kind} {self.path})"


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

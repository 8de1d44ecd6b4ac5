"""An allowlist (or deny list) kept as a JSON document in a local file.

The file is read whole when the source is built (a document that does not load is a
configuration problem), then, once started, reloaded when it changes (Reloading): a
half-written or broken version keeps the last good copy in use. Deleting the file is an
intentional change, unlike a half-written one: the list it held must stop answering,
for an allowlist (no more admissions through it) and for a deny list (every EK refused)
alike, and it stays untrusted until a good copy loads: a broken file put back does not
bring the old copy back. A replacement by rename or a ConfigMap symlink swap never
leaves the path missing.
"""

from __future__ import annotations

import os

from server_plugin.allowlist.base import (
    AllowlistEntry,
    AllowlistError,
    AllowlistSource,
    SourceHealth,
)
from server_plugin.allowlist.document import Index, read_document_file
from server_plugin.reload import Reloading


class DocumentFile(AllowlistSource):
    """A document in a local file, reloaded when the file changes; fails closed once
    the file is deleted, until a good copy is loaded."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        self._loaded = False
        # A document that fails to load here is a configuration problem (DocumentError).
        # Afterwards the value is None while the file is deleted and no good copy has
        # loaded since: a reload that fails keeps that None, not the copy before it.
        self._index: Reloading[Index | None] = Reloading(name, [path], self._load)
        self._loaded = True

    def _load(self) -> Index | None:
        if self._loaded and not os.path.exists(self.path):
            return None  # deleted: a change to apply, not a load that failed
        return read_document_file(self.path, self.describe())

    def _lookup(self, pub_hash: str) -> AllowlistEntry | None:
        if not os.path.exists(self.path):
            # Seen before the watcher's reload: record the deletion now, so that a
            # broken file put back in the meantime cannot revive the old copy.
            self._index.reload()
            raise AllowlistError(f"{self.describe()}: {self.path} was removed")
        index = self._index.value
        if index is None:
            raise AllowlistError(
                f"{self.describe()}: {self.path} was removed and no good copy has loaded since"
            )
        return index.lookup(pub_hash, self.describe())

    def describe(self) -> str:
        return f"{self.name} (file {self.path})"

    def health(self) -> SourceHealth:
        index = self._index.value
        return SourceHealth(entries=None if index is None else len(index))

    def start(self) -> None:
        self._index.start()

    def close(self) -> None:
        self._index.close()

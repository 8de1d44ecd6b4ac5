"""An allowlist (or deny list) kept as a JSON document in a local file.

The file is read whole when the source is built (a document that does not load is a
configuration problem), then, once started, reloaded when it changes (Reloading): a
half-written or broken version keeps the last good copy in use. Deleting the file is an intentional
change, unlike a half-written one: the list it held must stop answering, for an
allowlist (no more admissions through it) and for a deny list (every EK refused) alike.
A replacement by rename or a ConfigMap symlink swap never leaves the path missing.
"""

from __future__ import annotations

import os

from server_plugin.allowlist.base import AllowlistEntry, AllowlistError, AllowlistSource
from server_plugin.allowlist.document import read_document_file
from server_plugin.reload import Reloading


class DocumentFile(AllowlistSource):
    """A document in a local file, reloaded when the file changes; fails closed once
    the file is deleted."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        source = self.describe()
        # A document that fails to load here is a configuration problem (DocumentError).
        self._index = Reloading(name, [path], lambda: read_document_file(path, source), watch=False)

    def _lookup(self, pub_hash: str) -> AllowlistEntry | None:
        if not os.path.exists(self.path):
            raise AllowlistError(f"{self.describe()}: {self.path} was removed")
        return self._index.value.lookup(pub_hash, self.describe())

    def describe(self) -> str:
        return f"{self.name} (file {self.path})"

    def start(self) -> None:
        self._index.start()

    def close(self) -> None:
        self._index.close()

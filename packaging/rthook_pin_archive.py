"""PyInstaller runtime hook: read Python modules from the file that is running.

The pure-Python modules of a one-file executable stay inside it (the PYZ archive) and
PyInstaller reopens the executable *by path* for every import. Modules imported after
start-up (on the first Configure, or an allowlist source's first use) would then come
from whatever file sits at that path by then: replacing the executable after SPIRE
checked its checksum would change the running plugin. /proc/self/exe names the file
this process was started from, even after it is renamed over or deleted, and a running
executable cannot be opened for writing (ETXTBSY), so imports keep coming from the
bytes that started.
"""

from __future__ import annotations

import os


def _pin() -> None:
    try:
        import pyimod02_importers  # type: ignore[import-not-found]  # frozen only
    except ImportError:
        return
    archive = getattr(pyimod02_importers, "pyz_archive", None)
    path = getattr(archive, "_filename", None)
    if not path:
        return
    try:
        same = os.path.samefile(path, "/proc/self/exe")
    except OSError:
        return
    if same:
        archive._filename = "/proc/self/exe"  # type: ignore[union-attr]


_pin()

"""Values loaded from files or directories that reload themselves when those change.

`Reloading(what, paths, load)` calls `load()` once (its errors are the caller's to
report, typically as configuration problems) and watches nothing; `start()` watches
`paths` with watchdog, so building a configuration that is only validated, or is
rejected, starts no watch and no thread. On a change it waits for writes
to settle, calls `load()` again and swaps the value in atomically. A load that fails
keeps the last good value and logs why, so a half-written or broken file never takes
trust material away. Deleting trust material is another matter: loaders decide what a
removed path means (a CA bundle drops it, see ca_bundle), and should not raise for it.
`close()` stops watching.

Usage, for a CA bundle given as a list of files or directories:

    bundle = Reloading("ek_ca_path", paths, CABundle("ek_ca_path", paths))
    bundle.start()           # once the configuration is committed
    ...  bundle.value  ...   # the current list, never a partially loaded one
    bundle.close()

A file is watched through its parent directory, so replacing it by rename (editors,
`mv`, Kubernetes ConfigMap/Secret mounts swapping their `..data` symlink) is seen too; a
directory is watched with its subdirectories, which `visible_tree` lists.
Only events on the entries a value is made of count: the file itself and every symlink
on the way to its target (or anything below a watched directory given as a path); writes
to other files beside it (a web root's access log beside a TLS CA file) cost one set
lookup each, and neither log nor reload anything. A change that counts triggers a cheap
stat fingerprint of the paths; `load()` runs when that fingerprint changed (`touch`
forces a reload). One watchdog
Observer thread serves the whole process, with one watch per directory however many
values share it. Filesystems that do not deliver inotify events for remote writes (NFS
changed on another host) need a local touch, or a configuration reload, to be seen.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

T = TypeVar("T")
log = logging.getLogger(__name__)

# Long enough for a writer to finish a file (or an editor its save dance), short enough
# that an operator sees the change at once.
SETTLE_SECONDS = 0.2
# Opening or reading a file (which load() itself does) must not count as a change.
_CHANGES = frozenset(
    {
        EVENT_TYPE_CREATED,
        EVENT_TYPE_DELETED,
        EVENT_TYPE_MODIFIED,
        EVENT_TYPE_MOVED,
        EVENT_TYPE_CLOSED,
        EVENT_TYPE_ATTRIB,
    }
)

Fingerprint = tuple[object, ...]
# Directories of trust material hold hundreds of files; beyond this many entries, a
# path is not one (a loader refuses it, and its fingerprint stops there).
MAX_TREE_ENTRIES = 10_000
# More symlinks than this on the way to a file is a loop (as the kernel's ELOOP limit).
MAX_SYMLINKS = 40


def _stat_key(path: str) -> object:
    try:
        st = os.stat(path)  # follows symlinks: a swapped target is a change
    except OSError as exc:
        return exc.errno
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def visible_tree(
    directory: str, on_error: Callable[[OSError], None] | None = None
) -> Iterator[str]:
    """Every entry below `directory`, recursively, in a stable order, but none that is
    hidden (a name starting with "."): Kubernetes mounts keep their `..data` machinery
    there, and the visible names link into it. Symlinked directories are followed, each
    once. Lazy, so that a caller can stop early in a directory far too large."""
    seen: set[str] = set()
    for top, directories, files in os.walk(directory, onerror=on_error, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            directories.clear()
            continue
        seen.add(real)
        directories[:] = sorted(name for name in directories if not name.startswith("."))
        yield from (os.path.join(top, name) for name in directories)
        yield from (os.path.join(top, name) for name in sorted(files) if not name.startswith("."))


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """What changes when the content under `paths` may have changed."""
    parts: list[object] = []
    for path in paths:
        parts.append(_stat_key(path))
        if os.path.isdir(path):
            try:
                names = sorted(os.listdir(path))  # hidden ones too: `..data` swaps
            except OSError as exc:
                parts.append(exc.errno)
                continue
            parts.extend((name, _stat_key(os.path.join(path, name))) for name in names)
            errors: list[OSError] = []
            tree = itertools.islice(visible_tree(path, errors.append), MAX_TREE_ENTRIES + 1)
            nested = [entry for entry in tree if os.path.dirname(entry) != path]
            parts.extend((entry, _stat_key(entry)) for entry in nested)
            parts.extend(error.errno for error in errors)
    return tuple(parts)


def resolution_chain(path: str) -> set[str]:
    """`path` (absolute) and every symlink met on the way to what it names: the entries
    whose change can change what `path` holds."""
    chain = {path}
    pending = path
    for _ in range(MAX_SYMLINKS):
        parts = pending.split(os.sep)
        for end in range(2, len(parts) + 1):
            prefix = os.sep.join(parts[:end])
            if os.path.islink(prefix):
                try:
                    target = os.readlink(prefix)
                except OSError:
                    return chain
                chain.add(prefix)
                rest = parts[end:]
                pending = os.path.normpath(os.path.join(os.path.dirname(prefix), target, *rest))
                chain.add(pending)
                break
        else:
            return chain
    return chain


def served_entries(paths: Sequence[str]) -> frozenset[str]:
    """The entries of watched directories whose events count for `paths`: a directory
    path counts with everything in it (its own events name it or an entry under it)."""
    entries: set[str] = set()
    for path in paths:
        entries |= resolution_chain(path)
    return frozenset(entries)


def _event_paths(event: FileSystemEvent) -> list[str]:
    paths = [event.src_path, getattr(event, "dest_path", "")]
    return [os.fsdecode(path) for path in paths if path]


class _Dispatch(FileSystemEventHandler):
    """The one watchdog handler of a directory; hands each change to everyone
    watching it, with the paths the change is about."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[list[str]], None]] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _CHANGES:
            paths = _event_paths(event)
            for callback in list(self.callbacks):
                callback(paths)


class DirectoryWatches:
    """Reference-counted watchdog watches on directories, on one shared Observer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._watches: dict[tuple[str, bool], tuple[ObservedWatch, _Dispatch]] = {}

    def add(
        self, directory: str, callback: Callable[[list[str]], None], recursive: bool = False
    ) -> None:
        with self._lock:
            if self._observer is None:
                self._observer = Observer()  # a daemon thread, like its emitters
                self._observer.start()
            key = (directory, recursive)
            if key not in self._watches:
                dispatch = _Dispatch()
                watch = self._observer.schedule(dispatch, directory, recursive=recursive)
                self._watches[key] = (watch, dispatch)
            self._watches[key][1].callbacks.append(callback)

    def remove(
        self, directory: str, callback: Callable[[list[str]], None], recursive: bool = False
    ) -> None:
        with self._lock:
            key = (directory, recursive)
            watch, dispatch = self._watches[key]
            dispatch.callbacks.remove(callback)
            if not dispatch.callbacks and self._observer is not None:
                del self._watches[key]
                self._observer.unschedule(watch)

    def watched(self) -> list[str]:
        with self._lock:
            return sorted(directory for directory, _ in self._watches)


WATCHES = DirectoryWatches()


def _watch_for(path: str) -> tuple[str, bool]:
    """The directory to watch for `path`, and whether with its subdirectories."""
    if os.path.isdir(path):
        return path, True
    return os.path.dirname(path) or ".", False


class Reloading(Generic[T]):
    """A value loaded from `paths` by `load`, reloaded when they change (see module doc)."""

    def __init__(
        self,
        what: str,
        paths: Sequence[str],
        load: Callable[[], T],
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.what = what
        self.paths = [os.path.abspath(path) for path in paths]
        self.loader = load  # e.g. a CABundle, whose counts the metrics read
        self._settle = settle_seconds
        # Taken before loading: a change during the load is then seen as a change.
        self._fingerprint = fingerprint(self.paths)
        self._value = load()
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False
        self._watching = False
        self._directories = sorted({_watch_for(path) for path in self.paths})
        self._served_directories = frozenset(path for path in self.paths if os.path.isdir(path))
        self._entries = served_entries(self.paths)

    def start(self) -> None:
        """Starts watching (once, unless closed); a change since the first load is
        loaded now."""
        with self._lock:
            if self._watching or self._closed:
                return
            self._watching = True
        for directory, recursive in self._directories:
            WATCHES.add(directory, self._changed, recursive)
        self.reload()

    @property
    def value(self) -> T:
        return self._value

    def _concerns(self, event_paths: list[str]) -> bool:
        return any(
            path in self._entries or self._below_served_directory(path) for path in event_paths
        )

    def _below_served_directory(self, path: str) -> bool:
        """A directory given as a path is watched with its subdirectories: any entry at
        any depth below it (or the directory itself) is part of the value."""
        directory = path
        while directory not in self._served_directories:
            parent = os.path.dirname(directory)
            if parent == directory:
                return False
            directory = parent
        return True

    def _changed(self, event_paths: list[str]) -> None:
        """On the observer thread: for a change to what this value is made of, (re)start
        the settle timer, so a burst loads once."""
        if not self._concerns(event_paths):
            return
        with self._lock:
            if self._closed:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self._settle, self._settled)
            self._timer.daemon = True
            self._timer.start()

    def _settled(self) -> None:
        log.debug("files changed; reloading", extra={"what": self.what})
        self.reload()

    def reload(self) -> bool:
        """Load again if the paths changed; True when a new value was swapped in."""
        with self._reload_lock:
            current = fingerprint(self.paths)
            if current == self._fingerprint or self._closed:
                return False
            self._fingerprint = current  # a bad state is reported once, not per event
            self._entries = served_entries(self.paths)  # a symlink may point elsewhere now
            try:
                value = self.loader()
            except Exception as exc:  # whatever the loader raises, the last good value stays
                log.warning(
                    "reload failed; keeping the last good value",
                    extra={"what": self.what, "paths": ",".join(self.paths), "reason": str(exc)},
                )
                return False
            self._value = value
        log.info("reloaded", extra={"what": self.what, "paths": ",".join(self.paths)})
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            watching, self._watching = self._watching, False
        if watching:
            for directory, recursive in self._directories:
                WATCHES.remove(directory, self._changed, recursive)

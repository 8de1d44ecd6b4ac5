"""CA bundles given as files or directories (ek_ca_path, devid_ca_path), as loaded by
`Reloading`.

At Configure every path must load and hold certificates; anything else is a
configuration problem. On a reload, removing trust material is an intentional change: a
deleted path or file contributes nothing and an emptied directory nothing either, so a
removed CA is never trusted again; when nothing remains, nothing is trusted. A file that
is there but does not load (a half-written or truncated PEM) keeps its own last good
certificates, and only those: the last good value is kept per file, never per bundle.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from spire_tpm_attestor.errors import AttestorError
from spire_tpm_attestor.runtime.config import ConfigProblems
from spire_tpm_attestor.x509 import Certificate, load_ca_bundle

log = logging.getLogger(__name__)

Certificates = list[Certificate]
_LOAD_ERRORS = (OSError, ValueError, AttestorError)


def _files(path: str) -> list[str]:
    """The files load_ca_bundle reads for `path` (hidden entries and
    subdirectories skipped, as Kubernetes mounts keep `..data` there)."""
    if not os.path.isdir(path):
        return [path]
    return sorted(
        entry.path
        for entry in os.scandir(path)
        if not entry.name.startswith(".") and entry.is_file()
    )


def _under(file: str, path: str) -> bool:
    return file == path or file.startswith(path.rstrip(os.sep) + os.sep)


class CABundle:
    """`load()` for a Reloading CA bundle: strict the first time, per file after."""

    def __init__(self, option: str, paths: Sequence[str]) -> None:
        self.option = option
        self.paths = list(paths)
        self._last_good: dict[str, Certificates] | None = None  # per file
        self._skipped: dict[str, int] = {}  # per path: its files whose last load failed

    def __call__(self) -> Certificates:
        if self._last_good is None:
            self._last_good = self._load_configured()
        else:
            self._last_good = self._load_again(self._last_good)
        return [cert for certificates in self._last_good.values() for cert in certificates]

    def counts(self) -> list[tuple[str, int, int]]:
        """(path, certificates in use, files whose current version does not load) per
        configured path, for the metrics."""
        last_good = self._last_good or {}
        return [
            (
                path,
                sum(len(c) for file, c in last_good.items() if _under(file, path)),
                self._skipped.get(path, 0),
            )
            for path in self.paths
        ]

    def _load_configured(self) -> dict[str, Certificates]:
        """Every path loads and holds certificates, or ConfigProblems names each that does not."""
        loaded: dict[str, Certificates] = {}
        problems: list[str] = []
        for path in self.paths:
            try:
                files = {file: load_ca_bundle(file) for file in _files(path)}
            except _LOAD_ERRORS as exc:
                problems.append(f"{self.option}: {exc}")
                continue
            if not any(files.values()):
                problems.append(f"{self.option}: {path} holds no certificates")
            loaded.update(files)
        if problems:
            raise ConfigProblems(problems)
        return loaded

    def _load_again(self, last_good: dict[str, Certificates]) -> dict[str, Certificates]:
        loaded: dict[str, Certificates] = {}
        self._skipped = {}
        for path in self.paths:
            if not os.path.exists(path):
                self._warn(f"{path} was removed; its certificates are no longer trusted", path)
                continue
            try:
                files = _files(path)
            except OSError as exc:  # an unreadable directory is not an emptied one
                self._keeping(path, exc)
                self._skipped[path] = self._skipped.get(path, 0) + 1
                loaded.update({f: c for f, c in last_good.items() if _under(f, path)})
                continue
            found = 0
            for file in files:
                try:
                    certificates = load_ca_bundle(file)
                except _LOAD_ERRORS as exc:
                    if not os.path.exists(file):
                        continue  # removed while we listed it
                    self._keeping(file, exc)
                    self._skipped[path] = self._skipped.get(path, 0) + 1
                    certificates = last_good.get(file, [])
                loaded[file] = certificates
                found += len(certificates)
            if not found:
                self._warn(f"{path} holds no certificates; none of it is trusted", path)
        if not any(loaded.values()):
            log.error(
                f"{self.option}: no certificates remain; nothing is trusted until some are added",
                extra={"what": self.option, "paths": ",".join(self.paths)},
            )
        return loaded

    def _warn(self, message: str, path: str) -> None:
        log.warning(f"{self.option}: {message}", extra={"what": self.option, "paths": path})

    def _keeping(self, path: str, exc: Exception) -> None:
        # The wording Reloading uses, for the same situation: a file half written.
        log.warning(
            "reload failed; keeping the last good value",
            extra={"what": self.option, "paths": path, "reason": str(exc)},
        )

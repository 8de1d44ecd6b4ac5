"""CA bundles given as files or directories (ek_ca_path, devid_ca_path), as loaded by
`Reloading`, and by `spire-tpm-attestor ek verify`.

Every certificate found is a trust anchor, self-signed or not: an operator may trust a
manufacturer's intermediate alone. A directory is read recursively, so the packages
operators download (one folder per manufacturer, roots and intermediates apart) keep
their layout; hidden entries are skipped (Kubernetes mounts keep `..data` there).

A file, or one certificate of a bundle, that cannot be used (unreadable, undecodable,
not a CA) is skipped with a warning naming the file and the reason, and reported by
Validate. Only an option whose paths hold no usable certificate at all is a
configuration problem.

On a reload, removing trust material is an intentional change: a deleted path or file
contributes nothing and an emptied directory nothing either, so a removed CA is never
trusted again; when nothing remains, nothing is trusted. A file that is there but yields
no usable certificate (a half-written or truncated PEM) keeps its own last good
certificates, and only those: the last good value is kept per file, never per bundle.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from server_plugin.reload import MAX_TREE_ENTRIES, visible_tree
from spire_tpm_attestor.files import FileTooLarge, read_bounded
from spire_tpm_attestor.runtime.config import ConfigProblems
from spire_tpm_attestor.x509 import Certificate, ca_certificates_in
from spire_tpm_attestor.x509.bundle import MAX_BUNDLE_FILE_SIZE

log = logging.getLogger(__name__)

Certificates = list[Certificate]


@dataclass(frozen=True)
class Skipped:
    """A CA file, or certificates in it, that could not be used, and why."""

    path: str
    reason: str


def ca_files(path: str) -> tuple[list[str], list[Skipped]]:
    """The files read for `path` (itself, or every visible file below it), and the
    subdirectories that could not be listed."""
    if not os.path.isdir(path):
        return [path], []
    os.listdir(path)  # raises OSError when `path` itself cannot be listed
    unlisted: list[Skipped] = []

    def cannot_list(error: OSError) -> None:
        unlisted.append(Skipped(error.filename or path, error.strerror or str(error)))

    entries = list(itertools.islice(visible_tree(path, cannot_list), MAX_TREE_ENTRIES + 1))
    if len(entries) > MAX_TREE_ENTRIES:
        raise OSError(f"{path} holds more than {MAX_TREE_ENTRIES} entries; not a CA directory")
    return [entry for entry in entries if not os.path.isdir(entry)], unlisted


def load_ca_file(file: str) -> tuple[Certificates, list[Skipped]]:
    """The usable CA certificates of one file, and what was skipped in it."""
    try:
        data = read_bounded(file, MAX_BUNDLE_FILE_SIZE)
    except OSError as exc:
        return [], [Skipped(file, exc.strerror or str(exc))]
    except FileTooLarge:
        return [], [Skipped(file, f"larger than {MAX_BUNDLE_FILE_SIZE} bytes")]
    certificates, unusable = ca_certificates_in(data)
    return certificates, [Skipped(file, reason) for reason in unusable]


def load_ca_paths(paths: Sequence[str]) -> tuple[dict[str, Certificates], list[Skipped]]:
    """The usable CA certificates under `paths`, by file, and everything skipped."""
    loaded: dict[str, Certificates] = {}
    skipped: list[Skipped] = []
    for path in paths:
        if not os.path.exists(path):
            skipped.append(Skipped(path, "No such file or directory"))
            continue
        try:
            files, unlisted = ca_files(path)
        except OSError as exc:
            skipped.append(Skipped(path, str(exc)))
            continue
        skipped.extend(unlisted)
        for file in files:
            loaded[file], unusable = load_ca_file(file)
            skipped.extend(unusable)
    return loaded, skipped


class CABundle:
    """`load()` for a Reloading CA bundle: all paths the first time, per file after.

    `skipped` is what the first load could not use, for Validate's notes."""

    def __init__(self, option: str, paths: Sequence[str]) -> None:
        self.option = option
        self.paths = list(paths)
        self.skipped: list[Skipped] = []
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
        """What the paths hold; ConfigProblems if no usable certificate at all."""
        loaded, self.skipped = load_ca_paths(self.paths)
        for skipped in self.skipped:
            self._skipping(skipped)
            for path in self.paths:
                if _under(skipped.path, path):
                    self._skipped[path] = self._skipped.get(path, 0) + 1
        if not any(loaded.values()):
            reasons = "".join(f"; {s.path}: {s.reason}" for s in self.skipped)
            raise ConfigProblems(
                [f"{self.option}: no usable CA certificate in {', '.join(self.paths)}{reasons}"]
            )
        return loaded

    def _load_again(self, last_good: dict[str, Certificates]) -> dict[str, Certificates]:
        loaded: dict[str, Certificates] = {}
        self._skipped = {}
        for path in self.paths:
            if not os.path.exists(path):
                self._warn(f"{path} was removed; its certificates are no longer trusted", path)
                continue
            try:
                files, unlisted = ca_files(path)
            except OSError as exc:  # an unreadable directory is not an emptied one
                self._keeping(path, str(exc))
                self._skipped[path] = self._skipped.get(path, 0) + 1
                loaded.update({f: c for f, c in last_good.items() if _under(f, path)})
                continue
            for skipped in unlisted:
                self._keeping(skipped.path, f"{skipped.path}: {skipped.reason}")
                loaded.update({f: c for f, c in last_good.items() if _under(f, skipped.path)})
            found = 0
            for file in files:
                certificates, unusable = load_ca_file(file)
                if not certificates and not os.path.exists(file):
                    continue  # removed while we listed it
                for skipped in unusable:
                    self._skipping(skipped)
                if unusable:
                    self._skipped[path] = self._skipped.get(path, 0) + 1
                if not certificates and file in last_good:
                    reasons = "; ".join(skipped.reason for skipped in unusable)
                    self._keeping(file, f"{file}: no usable certificate: {reasons}")
                    certificates = last_good[file]
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

    def _skipping(self, skipped: Skipped) -> None:
        log.warning(
            f"{self.option}: skipping a CA certificate that cannot be used",
            extra={
                "what": self.option,
                "paths": skipped.path,
                "reason": f"{skipped.path}: {skipped.reason}",
            },
        )

    def _keeping(self, path: str, reason: str) -> None:
        # The wording Reloading uses, for the same situation: a file half written.
        log.warning(
            "reload failed; keeping the last good value",
            extra={"what": self.option, "paths": path, "reason": reason},
        )


def _under(file: str, path: str) -> bool:
    return file == path or file.startswith(path.rstrip(os.sep) + os.sep)

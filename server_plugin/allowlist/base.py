"""What every allowlist source shares: the entry, the error, the base class.

A source answers a lookup with an entry, with None for "not present", or raises
AllowlistError: a lookup that failed is never an admission (nor, on a deny list, a
pass). The base class enforces it: its public `lookup` refuses anything that is not an
EK hash before a source sees it, and turns whatever else a source's `_lookup` raises
into AllowlistError, so no source can fail open by forgetting a case.

A source is inert when built (it may read its configuration, as a `file` list reads its
document to judge it, but it watches and fetches nothing); `start()` starts its watchers
or refresh, and is called for the configuration that Configure commits, never for one
that Validate checks or Configure rejects. `close()` stops them.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from spire_tpm_attestor.errors import SourceUnavailable

log = logging.getLogger(__name__)

# \Z, not $: a name ending in a newline is not an EK hash.
EK_HASH = re.compile(r"^[0-9a-f]{64}\Z")


class AllowlistError(SourceUnavailable):
    """A lookup could not give a reliable answer (I/O error, malformed entry...)."""


@dataclass(frozen=True)
class SourceHealth:
    """What the metrics show of a source; None where the source has no such thing."""

    entries: int | None = None  # in the copy held in memory
    copy_age: float | None = None  # seconds since the copy was last confirmed
    max_staleness: float | None = None  # the age past which lookups fail closed


@dataclass(frozen=True)
class AllowlistEntry:
    pub_hash: str
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    source: str = ""


def check_ek_hash(pub_hash: str) -> None:
    """AllowlistError unless `pub_hash` is 64 lowercase hex digits (never a path)."""
    if not isinstance(pub_hash, str) or not EK_HASH.match(pub_hash):
        raise AllowlistError(f"{pub_hash!r} is not an EK hash")


class AllowlistSource(ABC):
    """Where EK hashes are looked up: a directory, a document file, an HTTP endpoint.

    Subclasses implement `_lookup` (given a valid EK hash) and `describe`, and
    `start`/`close` when they watch or refresh anything."""

    name: str  # as configured: `hash_path`, `allowlist "racks"`, `denylist "revoked"`
    # Whether a lookup reads storage (and may wait on it, as on a stalled NFS mount):
    # such lookups run off the server's event loop.
    lookup_reads_storage = False

    def lookup(self, pub_hash: str) -> AllowlistEntry | None:
        """The entry for this EK hash, None when absent; AllowlistError when unsure."""
        check_ek_hash(pub_hash)
        try:
            return self._lookup(pub_hash)
        except AllowlistError:
            raise
        except Exception as exc:  # fail closed: an unsure answer is never "absent"
            log.exception("allowlist lookup failed", extra={"source": self.describe()})
            raise AllowlistError(
                f"{self.describe()}: lookup failed ({type(exc).__name__}); see the plugin log"
            ) from exc

    @abstractmethod
    def _lookup(self, pub_hash: str) -> AllowlistEntry | None:
        """The entry for this (valid) EK hash, None when absent; raise when unsure."""

    @abstractmethod
    def describe(self) -> str:
        """A short name for logs and error messages, e.g. `directory /var/lib/hashes`."""

    def health(self) -> SourceHealth:
        """For the metrics; sources holding a copy in memory say more."""
        return SourceHealth()

    def start(self) -> None:  # noqa: B027 - optional: most sources watch nothing
        """Start watchers or refreshing, for a committed configuration; idempotent."""

    def close(self) -> None:  # noqa: B027 - optional: most sources hold nothing
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

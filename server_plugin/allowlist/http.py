"""An allowlist (or deny list) fetched from an HTTP(S) endpoint serving the JSON document.

Once started, a daemon thread fetches the document at once, then every `refresh_interval` (with
±10% jitter, so a fleet of SPIRE servers does not fetch in step; after a failure it
retries within 30 s). Requests are conditional (If-None-Match / If-Modified-Since from
the last accepted document), so an unchanged list costs a 304. Bodies larger than
`max_body_bytes` (after decompression), responses slower than the timeouts, other
statuses than 200/304, a whole fetch longer than `fetch_timeout` (a server trickling
its headers or body byte by byte never waits `read_timeout` for one read; a `Deadline`
shuts the connection down) and documents that do not parse are refused and the last good
copy stays in use, until it is `max_staleness` older than its last confirmation: then
lookups fail closed (AllowlistError, hence UNAVAILABLE).

An outage is logged by its transitions, not per attempt: the first failed refresh
(warn, with the reason), half of `max_staleness` gone without a good copy (warn), the
moment lookups fail closed (error, saying what to do), the recovery (info, with how
long the source was down). Every failed attempt is counted, by reason, in the
`allowlist_refresh_failures_total` metric.

TLS trust (`ca_path`, else the system store), the optional client certificate and the
optional bearer token are files reloaded when they change (Reloading), so rotating
them needs no restart. Redirects are not followed.

Each source keeps one `httpx.Client` across refreshes, so a refresh reuses the
kept-alive connection (and TLS session) of the one before; the client is rebuilt only
when the TLS material was reloaded. Refreshes of one source never overlap.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx  # imported when a source first fetches: ≈5 MiB, 20 ms

from server_plugin import metrics
from server_plugin.allowlist.base import (
    AllowlistEntry,
    AllowlistError,
    AllowlistSource,
    SourceHealth,
)
from server_plugin.allowlist.document import DocumentError, DocumentParser, Index
from server_plugin.reload import Reloading
from server_plugin.web_fetch import Connections, Deadline
from spire_tpm_attestor.files import read_bounded

log = logging.getLogger(__name__)

JITTER = 0.1
RETRY_SECONDS = 30.0
MIN_WAKE_SECONDS = 0.1  # how late an outage's line may be
MAX_TOKEN_BYTES = 16 * 1024
USER_AGENT = "spire-tpm-attestor"


@dataclass(frozen=True)
class HTTPSettings:
    url: str
    ca_path: str | None = None
    client_certificate_path: str | None = None
    client_key_path: str | None = None
    bearer_token_path: str | None = None
    refresh_interval: float = 60.0
    max_staleness: float = 3600.0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    fetch_timeout: float = 120.0
    max_body_bytes: int = 256 * 2**20


class FetchError(Exception):
    """This refresh failed; the message says why (no secrets in it), `reason` in one
    word, for the failure metric: connection, timeout, tls, http_status, too_large."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


FAILURE_KINDS = {"document": "document rejected", "unexpected": "unexpected error"}


def failure_reason(error: Exception) -> str:
    if isinstance(error, FetchError):
        return error.reason
    return "document" if isinstance(error, DocumentError) else "unexpected"


@dataclass(frozen=True)
class Snapshot:
    """The last accepted document and what confirms it is still current."""

    index: Index
    etag: str | None
    last_modified: str | None
    confirmed_at: float  # monotonic time of the last 200 or 304


def tls_context(settings: HTTPSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ca_path)
    if settings.client_certificate_path:
        context.load_cert_chain(settings.client_certificate_path, settings.client_key_path)
    return context


def read_token(path: str) -> str:
    data = read_bounded(path, MAX_TOKEN_BYTES)
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} holds a non-ASCII byte; a bearer token is ASCII") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError(f"{path} does not hold a bearer token (one line of printable text)")
    return token


class HTTPAllowlist(AllowlistSource):
    def __init__(
        self, name: str, settings: HTTPSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._last_error = "no fetch has completed yet"
        self._outage: Outage | None = None  # since the first failed refresh, until one succeeds
        self._first_attempt = threading.Event()
        self._stop = threading.Event()
        self._tls: Reloading[ssl.SSLContext] | None = None
        self._token: Reloading[str] | None = None
        self._refreshing = threading.Lock()  # held by the refresh in progress
        self._http: httpx.Client | None = None  # built by the first refresh
        self._http_verify: ssl.SSLContext | bool = True  # the TLS material it was built with
        self._connections = Connections()  # the client's, for the Deadline
        try:
            if settings.url.startswith("https://"):
                paths = [
                    path
                    for path in (
                        settings.ca_path,
                        settings.client_certificate_path,
                        settings.client_key_path,
                    )
                    if path
                ]
                self._tls = Reloading(f"{name} TLS", paths, lambda: tls_context(settings))
            token_path = settings.bearer_token_path
            if token_path:
                self._token = Reloading(
                    f"{name} bearer token",
                    [token_path],
                    lambda: read_token(token_path),
                )
        except BaseException:
            self.close()
            raise
        self._started = False
        self._thread = threading.Thread(
            target=self._run, name=f"allowlist-http {name}", daemon=True
        )

    def start(self) -> None:
        """Watches the TLS and token files and starts refreshing (once)."""
        if self._started or self._stop.is_set():
            return
        self._started = True
        for reloading in (self._tls, self._token):
            if reloading is not None:
                reloading.start()
        self._thread.start()

    def describe(self) -> str:
        return f"{self.name} ({self.settings.url})"

    def _lookup(self, pub_hash: str) -> AllowlistEntry | None:
        snapshot = self._snapshot
        if snapshot is None:
            if not self._started:
                raise AllowlistError(f"{self.describe()}: not started: no fetch is made")
            # Right after Configure the first fetch may still be on its way.
            self._first_attempt.wait(self.settings.connect_timeout + self.settings.read_timeout)
            snapshot = self._snapshot
        if snapshot is None:
            raise AllowlistError(f"{self.describe()}: no copy of the list yet: {self._last_error}")
        age = self._clock() - snapshot.confirmed_at
        if age > self.settings.max_staleness:
            raise AllowlistError(
                f"{self.describe()}: the last good copy was confirmed {age:.0f}s ago, more than "
                f"max_staleness ({self.settings.max_staleness:g}s): {self._last_error}"
            )
        return snapshot.index.lookup(pub_hash, self.describe())

    def health(self) -> SourceHealth:
        snapshot = self._snapshot
        return SourceHealth(
            entries=None if snapshot is None else len(snapshot.index),
            copy_age=self.copy_age(),
            max_staleness=self.settings.max_staleness,
        )

    def copy_age(self) -> float | None:
        """Seconds since a good copy was last confirmed; None before the first."""
        snapshot = self._snapshot
        return None if snapshot is None else self._clock() - snapshot.confirmed_at

    def close(self) -> None:
        """Stop refreshing; a fetch in flight finishes in the background and is dropped."""
        self._stop.set()
        for reloading in (self._tls, self._token):
            if reloading is not None:
                reloading.close()
        self._close_client()

    def _close_client(self) -> None:
        """Closes the client once stopped, unless a refresh is using it: then that
        refresh closes it when it is over (it checks `_stop` after letting go)."""
        if not self._refreshing.acquire(blocking=False):
            return
        try:
            client, self._http = self._http, None
            if client is not None:
                client.close()
        finally:
            self._refreshing.release()

    def _client(self) -> httpx.Client:
        """The source's one client; rebuilt when the TLS material was reloaded (called
        with `_refreshing` held)."""
        import httpx

        verify: ssl.SSLContext | bool = self._tls.value if self._tls is not None else True
        if self._http is None or verify is not self._http_verify:
            if self._http is not None:
                self._http.close()
            settings = self.settings
            timeout = httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.connect_timeout,
            )
            self._http = httpx.Client(verify=verify, timeout=timeout, follow_redirects=False)
            self._http_verify = verify
            self._connections = Connections()
        return self._http

    def _run(self) -> None:
        while not self._stop.is_set():
            succeeded = self.refresh()
            self._first_attempt.set()
            interval = self.settings.refresh_interval
            if not succeeded:
                interval = min(interval, RETRY_SECONDS)
            self._sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds` (or until closed); in an outage, wake to log its next line
        when that is due, not at the next attempt."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            due = self._until_next_outage_line()
            if self._stop.wait(remaining if due is None else min(remaining, due)):
                return
            self.check_staleness()

    def refresh(self) -> bool:
        """Fetch once; True when the list is confirmed current (200 accepted or 304)."""
        try:
            with self._refreshing:
                if self._stop.is_set():
                    return False
                try:
                    return self._refresh()
                except Exception as exc:  # FetchError, DocumentError, or a bug: the
                    return self._refresh_failed(exc)  # thread outlives it either way
        finally:
            if self._stop.is_set():
                self._close_client()

    def check_staleness(self) -> None:
        """Log the outage's next line if its time has come (nothing when healthy)."""
        with self._refreshing:
            self._log_outage()
        if self._stop.is_set():
            self._close_client()  # as refresh does: close() may have found the lock held

    def _until_next_outage_line(self) -> float | None:
        """Seconds until the outage's next line is due; None when none is left."""
        outage, age = self._outage, self.copy_age()
        if outage is None or age is None or outage.failing_closed:
            return None
        limit = self.settings.max_staleness
        due = limit if outage.warned_stale else limit / 2
        # Just past the moment, so that it is due; never a busy loop.
        return max(MIN_WAKE_SECONDS, due - age + 0.001)

    def _log_outage(self) -> None:
        """The outage's lines whose time has come: half of max_staleness gone (warn),
        lookups failing closed (error). Called with `_refreshing` held."""
        outage, age = self._outage, self.copy_age()
        if outage is None or outage.failing_closed:
            return
        limit = self.settings.max_staleness
        fields = {"source": self.describe(), "reason": self._last_error}
        if age is not None:
            fields |= {"age_seconds": f"{age:.0f}", "max_staleness_seconds": f"{limit:g}"}
        if age is not None and age > limit / 2 and not outage.warned_stale:
            outage.warned_stale = True
            log.warning(
                "allowlist copy is getting stale: half of max_staleness has passed without "
                "a good copy; lookups fail closed when all of it has",
                extra=fields,
            )
        if age is None or age > limit:
            outage.failing_closed = outage.warned_stale = True
            if age is None:
                why, remedy = "no copy of the list has loaded", "make the URL serve a good document"
            else:
                why = "the last good copy is older than max_staleness"
                remedy = "make the URL serve a good document again, or raise max_staleness"
            log.error(
                f"allowlist lookups fail closed: {why}; attestations that need this source "
                f"are refused (UNAVAILABLE) until a refresh succeeds: {remedy}",
                extra=fields,
            )

    def _refresh(self) -> bool:
        started = self._clock()
        snapshot = self._fetch(self._snapshot)
        if self._stop.is_set():
            return False
        changed = self._snapshot is None or snapshot.index is not self._snapshot.index
        self._snapshot = snapshot
        if self._outage is not None:
            log.info(
                "allowlist source recovered",
                extra={
                    "source": self.describe(),
                    "down_seconds": f"{self._clock() - self._outage.started:.0f}",
                },
            )
            self._outage = None
        if changed:
            log.info(
                "allowlist refreshed",
                extra={
                    "source": self.describe(),
                    "entries": len(snapshot.index),
                    "seconds": f"{self._clock() - started:.3f}",
                },
            )
        else:
            log.debug("allowlist unchanged (304)", extra={"source": self.describe()})
        return True

    def _refresh_failed(self, error: Exception) -> bool:
        reason = failure_reason(error)
        unexpected = reason == "unexpected"
        self._last_error = f"unexpected error: {error!r}" if unexpected else str(error)
        metrics.ALLOWLIST_REFRESH_FAILURES.inc(source=self.name, reason=reason)
        if self._outage is None:
            self._outage = Outage(self._clock())
            kind = FAILURE_KINDS.get(reason, "fetch failed")
            keeping = "keeping the last good copy" if self._snapshot else "no copy of the list yet"
            log.warning(
                f"allowlist refresh failed ({kind}); {keeping}",
                extra={"source": self.describe(), "reason": self._last_error},
                exc_info=error if unexpected else None,  # a bug: its traceback, once
            )
        else:
            log.debug(
                "allowlist refresh failed again",
                extra={"source": self.describe(), "reason": self._last_error},
            )
        self._log_outage()
        return False

    def _headers(self, snapshot: Snapshot | None) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if snapshot is not None and snapshot.etag:
            headers["If-None-Match"] = snapshot.etag
        if snapshot is not None and snapshot.last_modified:
            headers["If-Modified-Since"] = snapshot.last_modified
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.value}"
        return headers

    def _fetch(self, snapshot: Snapshot | None) -> Snapshot:
        import httpx

        parser = DocumentParser(self.describe())
        client = self._client()
        # Refreshes never overlap: the client's connections are this fetch's.
        deadline = Deadline(self.settings.fetch_timeout, self._connections)
        too_late = FetchError(
            f"the response took longer than fetch_timeout ({self.settings.fetch_timeout:g}s)",
            "timeout",
        )
        try:
            with (
                deadline,
                client.stream(
                    "GET",
                    self.settings.url,
                    headers=self._headers(snapshot),
                    extensions={"trace": deadline.trace},
                ) as response,
            ):
                if response.status_code == 304 and snapshot is not None:
                    response.read()  # a 304 has no body: reading its end keeps the connection
                    return Snapshot(
                        snapshot.index, snapshot.etag, snapshot.last_modified, self._clock()
                    )
                if response.status_code != 200:
                    raise FetchError(f"HTTP status {response.status_code}", "http_status")
                self._read_body(response, parser)
                etag = response.headers.get("ETag")
                last_modified = response.headers.get("Last-Modified")
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            if deadline.expired:
                raise too_late from None
            if isinstance(exc, httpx.HTTPError):
                raise FetchError(f"{type(exc).__name__}: {exc}", http_error_reason(exc)) from None
            kind = "tls" if isinstance(exc, ssl.SSLError) else "connection"
            raise FetchError(str(exc), kind) from None
        if deadline.expired:  # the last bytes came in just before the shutdown
            raise too_late
        # The parser reports problems only now, so a body too large or too slow is a
        # FetchError whatever it holds, as when the body was read whole first.
        index = parser.finish()
        return Snapshot(index, etag, last_modified, self._clock())

    def _read_body(self, response: httpx.Response, parser: DocumentParser) -> None:
        """Feeds the body to `parser` as it arrives: neither the body nor its text is
        ever held whole, only the index being built."""
        limit = self.settings.max_body_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise FetchError(
                f"the body ({declared} bytes) is larger than max_body_bytes ({limit})", "too_large"
            )
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise FetchError(f"the body is larger than max_body_bytes ({limit})", "too_large")
            parser.feed(chunk)


def http_error_reason(error: httpx.HTTPError) -> str:
    import httpx

    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    context = error.__context__
    if isinstance(context, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(error):
        return "tls"
    return "connection"


@dataclass
class Outage:
    """From a source's first failed refresh to its next good one: which of the
    outage's lines are out."""

    started: float
    warned_stale: bool = False
    failing_closed: bool = False

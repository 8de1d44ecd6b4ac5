"""Fetching certificates over HTTP(S) during an attestation, and keeping them on disk.

`WebFetcher.get(url)` is the one way the server reaches a certificate service: only
hosts on the allowlist, no redirects, a whole-request deadline and a size limit. It
blocks its caller for at most `timeout` (callers on an event loop run it in a thread):
httpx's timeouts bound each read, not the request, so a `Deadline` shuts the client's
connections down when the time is up, which ends even a read that a server trickling its
headers byte by byte keeps alive. Which kept-alive connection a request uses is httpx's
business, so all of them go: a concurrent fetch on another connection fails too (and is
retried by its agent), which only happens when a service is failing anyway.
httpx is imported, and the client built, only at the first fetch,
so a configuration that is validated, rejected or never needs a fetch opens nothing.

`DiskCache` keeps bodies under a directory, one file per key, written atomically
(temporary file, then rename). A directory that cannot be used leaves the server
working without a cache, with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from spire_tpm_attestor.errors import NotProven, SourceUnavailable
from spire_tpm_attestor.urls import http_hostname

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

USER_AGENT = "spire-tpm-attestor"


class NotPublished(NotProven):
    """The service answered that it has nothing at this URL (404 or 410)."""


@dataclass(frozen=True)
class FetchSettings:
    option: str  # the option block, for messages: "ek_aia_fetch"
    allowed_hosts: frozenset[str]
    timeout: float
    max_size: int
    tls: ssl.SSLContext | None = None  # trust for https URLs; None: the system's


class Connections:
    """The sockets of one httpx client's connections, as its requests' `Deadline`s
    see them opened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            # Closed ones, and plain sockets a TLS one replaced, have no descriptor left.
            self._sockets = [s for s in self._sockets if s.fileno() != -1]
            self._sockets.append(sock)

    def shut_all(self) -> None:
        with self._lock:
            for sock in self._sockets:
                _shut(sock)


class Deadline:
    """Ends a request at a deadline however its server dribbles: the connections it
    opens (seen through httpx's `trace` extension) join `connections`, all of which are
    shut down when `seconds` have passed. Used as a context manager around the
    request; `expired` says whether it had to."""

    def __init__(self, seconds: float, connections: Connections) -> None:
        self.connections = connections
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's `trace` extension: keeps the socket of each new connection (the TLS
        one once there is one: wrapping detaches the plain socket)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sock = info["return_value"].get_extra_info("socket")
            self.connections.add(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        self.expired = True
        self.connections.shut_all()

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    """Shut down the connection under `sock`; for a TLS socket, without touching its TLS
    state (SSLSocket.shutdown drops it under the thread reading from it)."""
    with contextlib.suppress(OSError):  # closed meanwhile
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def host_allowed(url: str, allowed_hosts: frozenset[str]) -> bool:
    return http_hostname(url) in allowed_hosts


class WebFetcher:
    """GET with the limits of one option block; one kept-alive client, built lazily."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self._client: httpx.Client | None = None
        self._connections = Connections()
        self._lock = threading.Lock()
        self._closed = False

    def _http(self) -> httpx.Client:
        import httpx  # only servers that use these options pay for the import

        with self._lock:
            if self._closed:
                raise SourceUnavailable(f"{self.settings.option}: the configuration was replaced")
            if self._client is None:
                self._client = httpx.Client(
                    verify=self.settings.tls or True,
                    timeout=httpx.Timeout(self.settings.timeout),
                    follow_redirects=False,  # a redirect could leave the allowed hosts
                    headers={"User-Agent": USER_AGENT},
                )
            return self._client

    def get(self, url: str) -> bytes:
        """The body of a 200 answer. Raises NotProven when the host is not allowed
        (nothing is sent), NotPublished for 404/410, SourceUnavailable for the rest."""
        settings = self.settings
        if not host_allowed(url, settings.allowed_hosts):
            raise NotProven(
                f"{url} is not on a host in {settings.option}.allowed_hosts; not fetched"
            )
        import httpx

        too_late = SourceUnavailable(f"{url}: no answer within {settings.timeout:g}s")
        deadline = Deadline(settings.timeout, self._connections)
        try:
            with (
                deadline,
                self._http().stream("GET", url, extensions={"trace": deadline.trace}) as response,
            ):
                if response.status_code in (404, 410):
                    raise NotPublished(f"{url}: HTTP {response.status_code}")
                if response.status_code != 200:
                    raise SourceUnavailable(f"{url}: HTTP status {response.status_code}")
                return self._read_body(url, response, deadline)
        except httpx.TimeoutException:
            raise too_late from None
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            if deadline.expired:
                raise too_late from None
            raise SourceUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None

    def _read_body(self, url: str, response: httpx.Response, deadline: Deadline) -> bytes:
        limit = self.settings.max_size
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise SourceUnavailable(
                f"{url}: the answer ({declared} bytes) is larger than max_size ({limit})"
            )
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise SourceUnavailable(f"{url}: the answer is larger than max_size ({limit})")
            if deadline.expired:  # the last bytes came in just before the shutdown
                raise SourceUnavailable(f"{url}: no answer within {self.settings.timeout:g}s")
        return bytes(body)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()


class DiskCache:
    """Bodies under `directory`, one file per key (a hex digest), written atomically."""

    def __init__(self, directory: str, option: str) -> None:
        self.directory = Path(directory)
        self._option = option
        self._warned = False

    def get(self, key: str) -> bytes | None:
        try:
            return (self.directory / key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn("read", exc)
            return None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(prefix=f".{key}.", dir=self.directory)
            try:
                with os.fdopen(descriptor, "wb") as file:
                    file.write(data)
                os.replace(temporary, self.directory / key)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as exc:
            self._warn("write", exc)

    def _warn(self, action: str, error: OSError) -> None:
        if not self._warned:  # once: the attestations go on without a cache
            self._warned = True
            log.warning(
                f"{self._option}: cannot {action} the cache; going on without it",
                extra={"cache_path": str(self.directory), "reason": str(error)},
            )

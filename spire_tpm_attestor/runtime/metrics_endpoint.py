"""The Prometheus endpoint's HTTP server, on its own thread (runtime.metrics starts it).

It shares nothing with an attestation but the GIL: it accepts at most
`MAX_SCRAPES_PER_SECOND` connections a second (leaving the rest to the kernel's listen
queue), holds `MAX_CONNECTIONS` at once (closing any other as soon as accepted), gives
each `CONNECTION_TIMEOUT`, and renders the page at most once per `RENDER_INTERVAL`
however often it is scraped (README, "Metrics").
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from spire_tpm_attestor.runtime.metrics import PrometheusSettings, render

# Scrapers served at once; more are turned away at once (closed), never queued.
MAX_CONNECTIONS = 4
# A scraper that connects and sends nothing, or never reads, is dropped after this.
CONNECTION_TIMEOUT = 5.0
# However often scraped, the page is rendered at most this often.
RENDER_INTERVAL = 1.0
# Connections accepted per second (in bursts of as many): beyond, the server does not
# accept until it may, so a flood waits in the kernel's listen queue (and beyond it is
# refused by the kernel) at no cost to the plugin. Prometheus scrapes every few seconds.
MAX_SCRAPES_PER_SECOND = 10


class _Page:
    """The rendered page, rendered again only once it is RENDER_INTERVAL old."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._body = b""
        self._rendered_at = float("-inf")

    def body(self) -> bytes:
        with self._lock:
            now = time.monotonic()
            if now - self._rendered_at >= RENDER_INTERVAL:
                self._body = render()
                self._rendered_at = now
            return self._body


class _Budget:
    """A token bucket of `rate` a second, in bursts of as many; `wait()` takes a token,
    sleeping until there is one. Only the server's accepting thread calls it."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate
        self._at = time.monotonic()

    def wait(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            time.sleep((1 - self._tokens) / self._rate)
            self._tokens, self._at = 1.0, time.monotonic()
        self._tokens -= 1


class _Handler(BaseHTTPRequestHandler):
    timeout = CONNECTION_TIMEOUT  # applies to every read and write on the connection
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = self.server.page.body()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: PrometheusSettings) -> None:
        self.page = _Page()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._budget = _Budget(MAX_SCRAPES_PER_SECOND)
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
        self.address_family = infos[0][0]
        super().__init__((settings.host, settings.port), _Handler)

    def get_request(self) -> Any:
        self._budget.wait()  # not before it may: a flood stays in the kernel's queue
        return super().get_request()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: turned away, never queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that went away or timed out is not an error of the plugin."""

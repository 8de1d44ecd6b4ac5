"""Prometheus metrics: declared anywhere, counted everywhere, exported only when asked.

A module declares its metrics once, at import:

    ATTESTATIONS = Counter("attestations_total", "...", ("decision", "check"))

and calls them unconditionally (`ATTESTATIONS.inc(decision="admitted", check="")`).
Until telemetry is configured every call is one attribute test and nothing else:
`prometheus_client` is not even imported. `enable()` (on the first Configure that asks
for a Prometheus endpoint) imports it, creates the real metric behind every declaration,
past and future, and from then on calls count. Counters are never reset: a
reconfiguration keeps them, as Prometheus expects.

`Sampled` is a gauge read when scraped (the age of an allowlist copy, the challenges
waiting), from a function its owner registers with `sample_with`.

The endpoint (`MetricsEndpoint`) follows the committed configuration; its HTTP server
(metrics_endpoint.py) is imported only when there is an endpoint to serve.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spire_tpm_attestor.runtime.metrics_endpoint import MetricsServer

log = logging.getLogger("spire_tpm_attestor.metrics")

PREFIX = "spire_tpm_attestor_"
# Attestation steps take milliseconds (server checks) to seconds (a TPM, a round trip).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_lock = threading.Lock()
_declared: list[Metric] = []
_registry: Any = None  # a prometheus_client CollectorRegistry once enabled

Samples = Iterable[tuple[Sequence[str], float]]


class Metric:
    """A declaration; `_real` is the prometheus_client metric once enabled, else None."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = PREFIX + name
        self.documentation = documentation
        self.labels = tuple(labels)
        self._real: Any = None
        with _lock:
            _declared.append(self)
            if _registry is not None:
                self._attach(_registry)

    def _attach(self, registry: Any) -> None:
        raise NotImplementedError

    def _child(self, labels: dict[str, str]) -> Any:
        real = self._real
        return real.labels(**labels) if labels else real


class Counter(Metric):
    def _attach(self, registry: Any) -> None:
        import prometheus_client

        self._real = prometheus_client.Counter(
            self.name.removesuffix("_total"), self.documentation, self.labels, registry=registry
        )

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if self._real is not None:
            self._child(labels).inc(amount)


class Gauge(Metric):
    def _attach(self, registry: Any) -> None:
        import prometheus_client

        self._real = prometheus_client.Gauge(
            self.name, self.documentation, self.labels, registry=registry
        )

    def set(self, value: float, **labels: str) -> None:
        if self._real is not None:
            self._child(labels).set(value)


class Histogram(Metric):
    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.buckets = tuple(buckets)
        super().__init__(name, documentation, labels)

    def _attach(self, registry: Any) -> None:
        import prometheus_client

        self._real = prometheus_client.Histogram(
            self.name, self.documentation, self.labels, registry=registry, buckets=self.buckets
        )

    def observe(self, seconds: float, **labels: str) -> None:
        if self._real is not None:
            self._child(labels).observe(seconds)

    def timer(self, **labels: str) -> Timer:
        """`with HISTOGRAM.timer(step="quote"): ...` observes the block's duration."""
        return Timer(self, labels)


class Timer:
    def __init__(self, histogram: Histogram, labels: dict[str, str]) -> None:
        self._histogram = histogram
        self._labels = labels
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self._histogram.observe(time.perf_counter() - self._started, **self._labels)


class Sampled(Metric):
    """A gauge whose values are read when scraped, from `sample_with`'s function: one
    (label values, value) pair per series. A function that fails yields nothing."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self._sample: Callable[[], Samples] = tuple
        super().__init__(name, documentation, labels)

    def sample_with(self, sample: Callable[[], Samples]) -> None:
        self._sample = sample

    def _attach(self, registry: Any) -> None:
        registry.register(self)
        self._real = self

    def describe(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        try:
            samples = list(self._sample())
        except Exception:  # a scrape must never fail because one reading did
            log.warning("a metric could not be read", extra={"metric": self.name}, exc_info=True)
            samples = []
        for values, value in samples:
            family.add_metric(list(values), value)
        yield family


def declared() -> list[Metric]:
    """Every metric declared so far, in declaration order."""
    with _lock:
        return list(_declared)


def enable() -> None:
    """Make every declared metric count from now on (once; imports prometheus_client)."""
    global _registry
    with _lock:
        if _registry is not None:
            return
        import prometheus_client

        _registry = prometheus_client.CollectorRegistry()
        for metric in _declared:
            metric._attach(_registry)


def render() -> bytes:
    """The exposition text of every metric (enable() first)."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(_registry))


@dataclass(frozen=True)
class PrometheusSettings:
    host: str
    port: int


class MetricsEndpoint:
    """The process's one Prometheus endpoint, following the committed configuration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: PrometheusSettings | None = None
        self._server: MetricsServer | None = None

    def serve(self, settings: PrometheusSettings | None) -> None:
        """Serve at `settings` (None: serve nothing). The same address keeps its
        listener; a new one is bound before the old one closes, so a failure to bind
        (OSError) leaves the endpoint as it was."""
        with self._lock:
            if settings == self._settings:
                return
            server = None
            if settings is not None:
                from spire_tpm_attestor.runtime.metrics_endpoint import MetricsServer

                enable()
                server = MetricsServer(settings)
            self._stop()
            self._settings, self._server = settings, server
            if server is not None:
                threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
                host, port = server.server_address[:2]
                log.info("serving metrics", extra={"host": str(host), "port": str(port)})

    def close(self) -> None:
        with self._lock:
            self._stop()
            self._settings = None

    def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


ENDPOINT = MetricsEndpoint()

"""A long mixed run through one server plugin process, watching its memory: `make soak`.

One process, configured `cert_or_allowlist` with the test CA, a flat hash directory and
an HTTP allowlist (refreshed every second, its document changed at every sample), takes
`attestations` streams, `concurrency` at a time, in the proportions of `MIX`: new nodes
and re-attesting ones, refusals of several kinds, streams cancelled or left silent once
challenged. Every `every` outcomes the process is read from /proc; the growth that
counts is from the first sample at or after `warmup` (caches filled, allocator settled)
to the end.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import tracemalloc
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from spire_tpm_attestor.runtime.host import SERVER_HOST_SERVICES, PluginProcess
from tests.bench.load.driver import (
    Act,
    Job,
    Outcome,
    ProcessSample,
    latency_figures,
    run,
    unexpected,
)
from tests.bench.load.fleet import Fleet, Known, Node
from tests.bench.measure import load_average
from tests.integration.http_servers import free_port
from tests.integration.plugins import start_plugin

Code = grpc.StatusCode
# Per 100 attestations: what the agent is, does, and how the stream must end.
MIX: dict[str, tuple[int, Known | None, Act, grpc.StatusCode]] = {
    "new chain node": (30, Known.CHAIN, Act.ANSWER, Code.OK),
    "re-attestation, chain": (20, None, Act.ANSWER, Code.OK),
    "new hash_path node": (10, Known.HASH_PATH, Act.ANSWER, Code.OK),
    "re-attestation, hash_path": (10, None, Act.ANSWER, Code.OK),
    "re-attestation, http allowlist": (10, None, Act.ANSWER, Code.OK),
    "unknown CA": (5, Known.UNKNOWN, Act.ANSWER, Code.PERMISSION_DENIED),
    "wrong secret": (5, None, Act.WRONG_SECRET, Code.PERMISSION_DENIED),
    "garbage payload": (3, None, Act.GARBAGE, Code.INVALID_ARGUMENT),
    "cancelled once challenged": (5, None, Act.CANCEL, Code.CANCELLED),
    "silent once challenged": (2, None, Act.SILENT, Code.DEADLINE_EXCEEDED),
}
POOL = 50  # re-attesting nodes of each kind
CHALLENGE_TIMEOUT = "2s"  # how long a silent stream holds its slot
VARIANTS = ("info", "metrics", "debug")
GROWTH_LIMIT = 5 * 2**20
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Mix:
    """The jobs of a soak, in MIX's proportions, shuffled within each hundred."""

    fleet: Fleet
    rng: random.Random = field(default_factory=lambda: random.Random(12))
    pools: dict[str, list[Node]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, known in (
            ("re-attestation, chain", Known.CHAIN),
            ("re-attestation, hash_path", Known.HASH_PATH),
            ("re-attestation, http allowlist", Known.HTTP),
        ):
            self.pools[name] = [self.fleet.node(known) for _ in range(POOL)]
        self.fleet.publish()

    def jobs(self, count: int) -> Iterator[Job]:
        hundred = [name for name, (weight, *_) in MIX.items() for _ in range(weight)]
        for number in range(count):
            if number % len(hundred) == 0:
                self.rng.shuffle(hundred)
            yield self.job(hundred[number % len(hundred)])

    def job(self, name: str) -> Job:
        _, known, act, expected = MIX[name]
        if known is not None:
            node = self.fleet.node(known)
        else:
            node = self.rng.choice(self.pools.get(name, self.pools["re-attestation, chain"]))
        return Job(node, act, expected, name)


@dataclass
class Watch:
    """Reads the process every `every` outcomes (and changes the HTTP document then)."""

    pid: int
    fleet: Fleet
    every: int
    metrics_url: str | None
    trace_dir: Path | None = None  # the plugin dumps tracemalloc snapshots there
    samples: list[dict[str, Any]] = field(default_factory=list)

    def take(self, done: int) -> None:
        sample = ProcessSample.of(self.pid)
        row: dict[str, Any] = {
            "done": done,
            "seconds": time.monotonic(),
            "rss": sample.rss,
            "threads": sample.threads,
            "fds": sample.fds,
            "cpu_seconds": sample.cpu_seconds,
        }
        if self.metrics_url is not None:
            with urllib.request.urlopen(self.metrics_url, timeout=10) as page:
                row["metrics_bytes"] = len(page.read())
        self.samples.append(row)
        self.fleet.publish(revision=len(self.samples))

    def on_done(self, outcomes: list[Outcome]) -> None:
        if len(outcomes) % self.every == 0:
            self.take(len(outcomes))

    def snapshot(self) -> tracemalloc.Snapshot:
        """The plugin's allocations now (traced_server.py), once it has written them."""
        assert self.trace_dir is not None
        path = self.trace_dir / f"{len(list(self.trace_dir.glob('*.snapshot')))}.snapshot"
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the plugin wrote no tracemalloc snapshot")
            time.sleep(0.1)
        return tracemalloc.Snapshot.load(str(path))


def grown(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[str]:
    """Where Python allocations grew between two snapshots: the top lines, by size."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    changes = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    return [str(change) for change in changes[:15]]


def slope_per_10k(samples: list[dict[str, Any]]) -> float:
    """Least-squares RSS growth per 10,000 attestations over `samples`, in bytes."""
    if len(samples) < 2:
        return 0.0
    xs = [row["done"] for row in samples]
    ys = [row["rss"] for row in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return covariance / spread * 10_000 if spread else 0.0


def soak_figures(
    directory: Path,
    attestations: int = 20_000,
    warmup: int = 2_000,
    every: int = 500,
    concurrency: int = 16,
    variant: str = "info",
    trace: bool = False,
) -> dict[str, Any]:
    """One soak of a fresh server plugin process; its figures (see the module). With
    `trace`, the plugin runs under tracemalloc and the figures say where its Python
    allocations grew after the warm-up (slower: a debugging run)."""
    fleet = Fleet(directory)
    mix = Mix(fleet)
    port = free_port() if variant == "metrics" else None
    options: dict[str, object] = {"challenge_timeout": CHALLENGE_TIMEOUT}
    if variant == "debug":
        options["log_level"] = "DEBUG"
    text = fleet.hcl(Known.CHAIN, Known.HASH_PATH, Known.HTTP, **options)
    if port is not None:
        text += f'\ntelemetry {{\nPrometheus {{\nhost = "127.0.0.1"\nport = {port}\n}}\n}}'
    load_before = load_average()[0]
    trace_dir = directory / "traces" if trace else None
    try:
        with start_server(trace_dir) as server:
            server.configure(text)
            watch = Watch(server.process.pid, fleet, every, metrics_url(port), trace_dir)
            figures = _soak(server, mix, watch, attestations, warmup, concurrency)
            figures["log_lines"] = len(server.stderr_lines)
    finally:
        fleet.close()
    return {
        "variant": variant,
        "attestations": attestations,
        "warmup": warmup,
        "sample_every": every,
        "concurrency": concurrency,
        "traced": trace,
        "load_before": load_before,
        "load_after": load_average()[0],
        **figures,
    }


def metrics_url(port: int | None) -> str | None:
    return f"http://127.0.0.1:{port}/metrics" if port is not None else None


def start_server(trace_dir: Path | None) -> PluginProcess:
    """The installed plugin executable, or with `trace_dir` traced_server.py."""
    if trace_dir is None:
        return start_plugin("server")
    trace_dir.mkdir()
    return PluginProcess.start(
        [sys.executable, "-m", "tests.bench.load.traced_server"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "SOAK_TRACE_DIR": str(trace_dir)},
        host_service_names=SERVER_HOST_SERVICES,
        cwd=str(ROOT),
    )


def _soak(
    server: PluginProcess, mix: Mix, watch: Watch, attestations: int, warmup: int, concurrency: int
) -> dict[str, Any]:
    warmed: list[tracemalloc.Snapshot] = []

    def on_done(outcomes: list[Outcome]) -> None:
        watch.on_done(outcomes)
        if watch.trace_dir is not None and len(outcomes) == warmup:
            warmed.append(watch.snapshot())

    watch.take(0)
    started = time.perf_counter()
    outcomes = asyncio.run(
        run(server.handshake.address, mix.jobs(attestations), concurrency, on_done=on_done)
    )
    wall = time.perf_counter() - started
    time.sleep(1)  # cancelled and timed-out streams end on the plugin's side
    watch.take(len(outcomes))
    samples = watch.samples
    settled = next(row for row in samples if row["done"] >= min(warmup, len(outcomes)))
    end = samples[-1]
    after_warmup = [row for row in samples if row["done"] >= settled["done"]]
    measured = end["done"] - settled["done"]
    counts: Counter[tuple[str, str]] = Counter(
        (outcome.job.kind, outcome.code.name) for outcome in outcomes
    )
    wrong = unexpected(outcomes)
    mib = 2**20
    figures: dict[str, Any] = {
        "outcomes": {f"{kind}: {code}": count for (kind, code), count in sorted(counts.items())},
        "unexpected": len(wrong),
        "unexpected_first": wrong[:10],
        "wall_seconds": round(wall, 1),
        "attestations_per_second": round(len(outcomes) / wall, 1),
        "cpu_ms_per_attestation": round(
            (end["cpu_seconds"] - settled["cpu_seconds"]) * 1e3 / max(measured, 1), 3
        ),
        **latency_figures(outcomes),
        "rss_start_mib": round(samples[0]["rss"] / mib, 2),
        "rss_after_warmup_mib": round(settled["rss"] / mib, 2),
        "rss_end_mib": round(end["rss"] / mib, 2),
        "rss_growth_mib": round((end["rss"] - settled["rss"]) / mib, 2),
        "rss_max_after_warmup_mib": round(max(row["rss"] for row in after_warmup) / mib, 2),
        "rss_slope_mib_per_10k": round(slope_per_10k(after_warmup) / mib, 2),
        "peak_rss_mib": round(ProcessSample.of(server.process.pid).peak_rss / mib, 2),
        "threads_after_warmup": settled["threads"],
        "threads_end": end["threads"],
        "threads_max": max(row["threads"] for row in samples),
        "fds_after_warmup": settled["fds"],
        "fds_end": end["fds"],
        "growth_under_limit": end["rss"] - settled["rss"] < GROWTH_LIMIT,
        "samples": [
            {key: value for key, value in row.items() if key != "seconds"} for row in samples
        ],
    }
    if "metrics_bytes" in end:
        figures["metrics_page_bytes_after_warmup"] = settled["metrics_bytes"]
        figures["metrics_page_bytes_end"] = end["metrics_bytes"]
    if warmed:
        figures["traced_growth_top"] = grown(warmed[0], watch.snapshot())
    return figures

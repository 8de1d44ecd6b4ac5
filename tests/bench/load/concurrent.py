"""Many attestations at once through one server plugin process: all admitted, and what
the burst costs the process (CPU per attestation, latency, peak resident memory and
threads)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from spire_tpm_attestor.runtime.host import PluginProcess
from tests.bench.load.driver import (
    Act,
    Gate,
    Job,
    Outcome,
    ProcessSample,
    latency_figures,
    run,
)
from tests.bench.load.fleet import Fleet, Known, Node

AT_ONCE = 200
KINDS = {Known.CHAIN: "new chain node", Known.HASH_PATH: "hash_path", Known.HTTP: "http"}


def admissions(fleet: Fleet, known: Known, count: int = AT_ONCE) -> list[Job]:
    """`count` nodes never seen, each known as `known` (HTTP ones published)."""
    nodes: list[Node] = [fleet.node(known) for _ in range(count)]
    if known is Known.HTTP:
        fleet.publish()
    return [Job(node, Act.ANSWER, grpc.StatusCode.OK, KINDS[known]) for node in nodes]


async def _burst(
    pid: int, address: str, jobs: list[Job], gate: Gate | None
) -> tuple[list[Outcome], int]:
    """Every job's stream opened at once; the most threads the plugin had meanwhile."""
    done = asyncio.Event()
    most = 0

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, ProcessSample.of(pid).threads)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        return await run(address, jobs, len(jobs), gate=gate), most
    finally:
        done.set()
        await watcher


def burst(
    server: PluginProcess, jobs: list[Job], held: bool = False
) -> tuple[list[Outcome], dict[str, Any]]:
    """All `jobs` at once through `server`, with the process's figures around them;
    `held`: each answered only once all hold their challenge, so the plugin has them
    all in progress together (and their latencies are all the burst's)."""
    pid = server.process.pid
    before = ProcessSample.of(pid)
    started = time.perf_counter()
    gate = Gate(len(jobs)) if held else None
    outcomes, threads = asyncio.run(_burst(pid, server.handshake.address, jobs, gate))
    wall = time.perf_counter() - started
    after = ProcessSample.of(pid)
    return outcomes, {
        "attestations": len(jobs),
        "admitted": sum(outcome.code == grpc.StatusCode.OK for outcome in outcomes),
        "wall_seconds": round(wall, 3),
        "cpu_ms_per_attestation": round(
            (after.cpu_seconds - before.cpu_seconds) * 1e3 / len(jobs), 3
        ),
        **latency_figures(outcomes),
        "rss_before_mib": round(before.rss / 2**20, 1),
        "rss_after_mib": round(after.rss / 2**20, 1),
        "peak_rss_mib": round(after.peak_rss / 2**20, 1),
        "threads_before": before.threads,
        "threads_peak": threads,
        "fds_after": after.fds,
    }

"""Load: 200 attestations at once through one server plugin process, per configuration.

A fresh `spire-tpm-attestor-server` process per configuration, loaded like SPIRE loads it;
software nodes (P-256 EKs, tests/bench/load/fleet.py) that SPIRE's one connection would
carry: 200 streams opened at once, each answered as soon as challenged (the test,
tests/integration/test_load.py, also holds every answer until all 200 are challenged).
One burst to warm up, then ROUNDS measured, every node new. The long run is `make soak`.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.load.concurrent import AT_ONCE, admissions, burst
from tests.bench.load.driver import unexpected
from tests.bench.load.fleet import Fleet, Known
from tests.bench.measure import Figure, Table, load_average, progress
from tests.integration.plugins import start_plugin

ROUNDS = 3
CONFIGURATIONS = (Known.CHAIN, Known.HASH_PATH, Known.HTTP)


def figures() -> dict[str, Any]:
    """Per configuration, the medians over ROUNDS bursts (see `burst`), and the errors."""
    out: dict[str, Any] = {"at_once": AT_ONCE, "rounds": ROUNDS, "loadavg_before": load_average()}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as directory:
        fleet = Fleet(Path(directory))
        try:
            for known in CONFIGURATIONS:
                progress(f"{known}: {ROUNDS + 1} bursts of {AT_ONCE}")
                bursts = [admissions(fleet, known) for _ in range(ROUNDS + 1)]
                with start_plugin("server") as server:
                    server.configure(fleet.hcl(known))
                    runs = [burst(server, jobs) for jobs in bursts]
                measured = [result for _, result in runs[1:]]
                errors = [line for outcomes, _ in runs for line in unexpected(outcomes)]
                out[str(known)] = {
                    key: statistics.median(result[key] for result in measured)
                    for key in measured[0]
                } | {
                    "peak_rss_mib": measured[-1]["peak_rss_mib"],
                    "threads_peak": max(result["threads_peak"] for result in measured),
                    "errors": len(errors),
                    "errors_first": errors[:5],
                }
        finally:
            fleet.close()
    out["loadavg_after"] = load_average()
    return out


def run() -> list[Table]:
    results = figures()
    table = Table(
        f"{AT_ONCE} attestations at once, one server plugin process (medians of {ROUNDS})",
        [
            "configuration",
            "admitted",
            "p50 ms",
            "p99 ms",
            "burst s",
            "CPU ms/attestation",
            "peak RSS MiB",
            "threads before / peak",
        ],
    )
    for known in CONFIGURATIONS:
        row = results[str(known)]
        table.record(
            Figure(f"{known}: admitted of {AT_ONCE}", row["admitted"], "count"),
            Figure(
                f"{known}: latency, {AT_ONCE} at once",
                row["latency_p50_ms"],
                "ms",
                p50=row["latency_p50_ms"],
                p99=row["latency_p99_ms"],
            ),
            Figure(f"{known}: burst of {AT_ONCE}", row["wall_seconds"], "s"),
            Figure(f"{known}: CPU per attestation", row["cpu_ms_per_attestation"], "ms"),
            Figure(f"{known}: peak RSS", row["peak_rss_mib"], "MiB"),
            Figure(f"{known}: threads at the peak", row["threads_peak"], "count"),
        )
        table.add(
            str(known),
            f"{row['admitted']:.0f} of {AT_ONCE}",
            row["latency_p50_ms"],
            row["latency_p99_ms"],
            row["wall_seconds"],
            row["cpu_ms_per_attestation"],
            row["peak_rss_mib"],
            f"{row['threads_before']:.0f} / {row['threads_peak']}",
        )
        for line in row["errors_first"]:
            table.note(f"{known}: {line}")
    before, after = results["loadavg_before"][0], results["loadavg_after"][0]
    table.note(f"load average {before} before, {after} after; the driver shares the machine")
    return [table]

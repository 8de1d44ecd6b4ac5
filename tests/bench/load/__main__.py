"""`python -m tests.bench.load`: the soak (`make soak`); figures to stdout and
bench/soak.json. Exits 1 when an attestation ended otherwise than expected or resident
memory grew by 5 MiB or more after the warm-up (not checked with --trace)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bench.load.soak import GROWTH_LIMIT, VARIANTS, soak_figures
from tests.bench.measure import Figure, Table, progress

ROOT = Path(__file__).resolve().parents[3]


def table(results: list[dict[str, Any]]) -> Table:
    out = Table("Soak: one server plugin process", ["figure", *(r["variant"] for r in results)])
    rows = (
        ("attestations, unexpected outcomes", "attestations", "unexpected"),
        ("attestations/s, at concurrency", "attestations_per_second", "concurrency"),
        ("CPU ms per attestation after warm-up", "cpu_ms_per_attestation"),
        ("latency p50 / p99 ms (admitted)", "latency_p50_ms", "latency_p99_ms"),
        (
            "RSS MiB: start / warmed up / end",
            "rss_start_mib",
            "rss_after_warmup_mib",
            "rss_end_mib",
        ),
        ("RSS growth after warm-up MiB", "rss_growth_mib"),
        ("RSS slope MiB per 10k after warm-up", "rss_slope_mib_per_10k"),
        ("peak RSS MiB", "peak_rss_mib"),
        ("threads warmed up / end / max", "threads_after_warmup", "threads_end", "threads_max"),
        ("fds warmed up / end", "fds_after_warmup", "fds_end"),
        ("plugin log lines", "log_lines"),
        ("load average before / after", "load_before", "load_after"),
    )
    for name, *keys in rows:
        out.add(name, *(" / ".join(str(result[key]) for key in keys) for result in results))
    for result in results:
        out.record(*figures(result))
        if "metrics_page_bytes_end" in result:
            out.note(
                f"{result['variant']}: metrics page {result['metrics_page_bytes_after_warmup']} "
                f"bytes after warm-up, {result['metrics_page_bytes_end']} at the end"
            )
        for line in result["unexpected_first"]:
            out.note(f"{result['variant']}: {line}")
        for line in result.get("traced_growth_top", []):
            out.note(f"{result['variant']}, grown after warm-up: {line}")
    return out


# What bench/results.json keeps of a run (section "soak"): key, name, unit.
FIGURES = (
    ("unexpected", "unexpected outcomes", "count"),
    ("attestations_per_second", "attestations/s at concurrency", "1/s"),
    ("cpu_ms_per_attestation", "CPU per attestation after warm-up", "ms"),
    ("rss_growth_mib", "RSS growth after warm-up", "MiB"),
    ("rss_slope_mib_per_10k", "RSS slope after warm-up", "MiB per 10k attestations"),
    ("peak_rss_mib", "peak RSS", "MiB"),
    ("threads_end", "threads at the end", "count"),
    ("fds_end", "file descriptors at the end", "count"),
)


def figures(result: dict[str, Any]) -> list[Figure]:
    variant = result["variant"]
    out = [Figure(f"{variant}: {name}", result[key], unit) for key, name, unit in FIGURES]
    p50, p99 = result["latency_p50_ms"], result["latency_p99_ms"]
    out.append(Figure(f"{variant}: latency (admitted)", p50, "ms", p50=p50, p99=p99))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.load", description=__doc__)
    parser.add_argument("--attestations", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000, help="attestations before the base")
    parser.add_argument("--every", type=int, default=500, help="attestations between samples")
    parser.add_argument("--concurrency", type=int, default=16, help="streams at a time")
    parser.add_argument(
        "--variants",
        default="info",
        help=f"comma-separated, of {', '.join(VARIANTS)}: log level INFO, the same with "
        "the Prometheus endpoint scraped at every sample, log level DEBUG",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the plugin under tracemalloc and print where its allocations grew after "
        "the warm-up (a debugging run: slower, and its RSS includes tracemalloc's own)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "soak.json"))
    args = parser.parse_args(argv)
    variants = [name for name in args.variants.split(",") if name]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}")
    results = []
    for variant in variants:
        progress(f"soak, {variant}: {args.attestations} attestations")
        with tempfile.TemporaryDirectory(prefix="soak-") as directory:
            results.append(
                soak_figures(
                    Path(directory), args.attestations, args.warmup, args.every,
                    args.concurrency, variant, args.trace,
                )
            )  # fmt: skip
    summary = table(results)
    print(summary.render())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "what": "soak of one server plugin process (tests/bench/load, make soak)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "growth_limit_mib": GROWTH_LIMIT / 2**20,
        "runs": results,
        "figures": [figure.as_json() for figure in summary.figures],
    }
    out.write_text(json.dumps(document, indent=1))
    print(f"\nfigures written to {out}")
    # Under tracemalloc RSS holds the traces too, which grow with what is allocated.
    failed = [
        r["variant"]
        for r in results
        if r["unexpected"] or not (r["growth_under_limit"] or r["traced"])
    ]
    if failed:
        print(f"soak failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

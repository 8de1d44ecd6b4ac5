"""Figures from the Go driver's raw results: summary, tables, and py-spy profile digests."""

from __future__ import annotations

import argparse
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.bench.measure import Table, median, percentile, progress

__all__ = ["print_decomposition", "print_profiles", "print_tables", "progress", "summarize"]

MIB = 1024 * 1024
# Issue 12: this project at a19ce94, as a process, measured on these machines.
ANCHOR_CPU_MS = {"chain": 3.10, "allowlist": 2.78, "noop": 1.11}  # noop: "does nothing"
ANCHOR_HANDSHAKE_MS = 348.0
ANCHOR_RSS_MIB = 55.0
CONFIG_TITLES = {
    "chain": "RSA-2048 EK, chain to RSA root + intermediate, new node each time",
    "allowlist": "RSA-2048 EK, EK-hash allowlist (flat directory, 1008 entries), no EK cert",
    "noop": "do-nothing Attest on the project's runtime (tests/bench/procbench/noop_plugin.py)",
    "noop-reader": "do-nothing Attest, reading through server_plugin's RequestReader",
    "noop-reader-audit": "do-nothing Attest, RequestReader and server_plugin's audit line",
    "noop-h2": "do-nothing Attest: grpc.aio runtime (noop_plugin.py) vs asyncio + h2, no grpcio "
    "(noop_h2_plugin.py)",
}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _mib(sizes: list[int]) -> float:
    return round(median([float(size) for size in sizes]) / MIB, 1)


def _ratio(current: float, baseline: float) -> float | None:
    return round(current / baseline, 3) if baseline else None


def summarize(
    results: dict[str, Any], plugins: list[str], pair: tuple[str, str] | None = None
) -> dict[str, Any]:
    """Figures per plugin; the ratios ("current_over_baseline") are pair[1] over pair[0]
    (by default current over baseline)."""
    base_name, cur_name = pair or ("baseline", "current")
    summary: dict[str, Any] = {"configs": {}, "starts": {}, "ratio_of": f"{cur_name}/{base_name}"}
    for config in results["configs"]:
        by_plugin: dict[str, Any] = {}
        per_round: dict[str, dict[int, float]] = {}
        for name in plugins:
            batches = [b for b in config["batches"] if b["plugin"] == name]
            per_batch = [b["cpu_seconds"] / b["attestations"] for b in batches]
            per_round[name] = {b["round"]: b["cpu_seconds"] / b["attestations"] for b in batches}
            latencies = [x for b in batches for x in b["latencies"]]
            attestations = sum(b["attestations"] for b in batches)
            cpu = sum(b["cpu_seconds"] for b in batches) / attestations
            by_plugin[name] = {
                "attestations": attestations,
                "cpu_ms_per_attestation": _ms(cpu),
                "cpu_ms_per_attestation_batches": [_ms(x) for x in per_batch],
                "cpu_batch_cv": round(statistics.pstdev(per_batch) / statistics.mean(per_batch), 3),
                "latency_ms_p50": _ms(median(latencies)),
                "latency_ms_p99": _ms(percentile(latencies, 99)),
                "attestations_per_second_sequential": round(
                    attestations / sum(b["wall_seconds"] for b in batches), 1
                ),
                "rss_mib_after_configure": _mib(config["rss_after_configure"][name]),
                "rss_mib_after_batches": _mib(config["rss_after_batches"][name]),
                "threads_after_batches": config["threads_after_batches"][name],
            }
        entry: dict[str, Any] = {"plugins": by_plugin}
        if base_name in by_plugin and cur_name in by_plugin:
            base, cur = by_plugin[base_name], by_plugin[cur_name]
            paired = [
                per_round[cur_name][r] / per_round[base_name][r]
                for r in sorted(per_round[base_name])
                if r in per_round[cur_name] and per_round[base_name][r]
            ]
            entry["current_over_baseline"] = {
                "cpu": _ratio(cur["cpu_ms_per_attestation"], base["cpu_ms_per_attestation"]),
                "cpu_paired_by_round_median": round(median(paired), 3),
                "cpu_paired_by_round_min": round(min(paired), 3),
                "cpu_paired_by_round_max": round(max(paired), 3),
                "latency_p50": _ratio(cur["latency_ms_p50"], base["latency_ms_p50"]),
                "latency_p99": _ratio(cur["latency_ms_p99"], base["latency_ms_p99"]),
            }
        summary["configs"][config["config"]] = entry
    for name in plugins:
        starts = [s for s in results.get("starts") or [] if s["plugin"] == name]
        if not starts:
            continue
        summary["starts"][name] = {
            "starts": len(starts),
            "handshake_ms_p50": _ms(median([s["handshake_seconds"] for s in starts])),
            "handshake_ms_max": _ms(max(s["handshake_seconds"] for s in starts)),
            "loaded_ms_p50": _ms(median([s["loaded_seconds"] for s in starts])),
            "configured_ms_p50": _ms(median([s["configured_seconds"] for s in starts])),
            "rss_mib_after_configure_p50": round(
                median([float(s["rss_after_configure"]) for s in starts]) / MIB, 1
            ),
            "cpu_ms_to_configured_p50": _ms(
                median([s["cpu_seconds_to_configured"] for s in starts])
            ),
        }
    summary["silent"] = {}
    for run in results.get("silent") or []:
        phases: dict[str, Any] = {}
        for phase in run["phases"]:
            phase["errors"] = phase["errors"] or []  # a nil slice in Go is null
            phase["latencies"] = phase["latencies"] or []
            latencies = phase["latencies"] or [float("nan")]
            opened = phase["opened"]
            phases[phase["phase"]] = {
                "streams_opened": opened,
                "streams_refused": phase["refused"],
                "honest_admitted": len(phase["latencies"]),
                "honest_errors": len(phase["errors"]),
                "first_error": phase["errors"][0] if phase["errors"] else "",
                "latency_ms_p50": _ms(median(latencies)),
                "latency_ms_p99": _ms(percentile(latencies, 99)),
                "threads": phase["threads_open"],
                "rss_mib_open": round(phase["rss_open"] / MIB, 1),
                "kib_per_stream": (
                    round((phase["rss_open"] - phase["rss_before"]) / 1024 / opened, 1)
                    if opened
                    else None
                ),
            }
        summary["silent"][run["plugin"]] = phases
    if {base_name, cur_name} <= set(summary["starts"]):
        base, cur = summary["starts"][base_name], summary["starts"][cur_name]
        summary["starts"]["current_over_baseline"] = {
            key: _ratio(cur[key], base[key]) for key in cur if key != "starts"
        }
    return summary


def print_tables(summary: dict[str, Any], args: argparse.Namespace) -> None:
    ratio_of = summary.get("ratio_of", "current/baseline")
    for name, entry in summary["configs"].items():
        plugins = entry["plugins"]
        ratio = entry.get("current_over_baseline", {})
        table = Table(
            f"{name}: {CONFIG_TITLES.get(name, name)}",
            ("figure", *plugins, *([ratio_of] if ratio else []), "anchor"),
        )

        rows = (
            (
                "server CPU ms/attestation",
                "cpu_ms_per_attestation",
                ANCHOR_CPU_MS.get(name, ""),
                "cpu",
            ),
            ("  batch-to-batch CV", "cpu_batch_cv", "", ""),
            ("latency p50 ms", "latency_ms_p50", "", "latency_p50"),
            ("latency p99 ms", "latency_ms_p99", "", "latency_p99"),
            ("attestations/s (one at a time)", "attestations_per_second_sequential", "", ""),
            ("RSS after Configure MiB", "rss_mib_after_configure", "", ""),
            ("RSS after the batches MiB", "rss_mib_after_batches", "", ""),
            ("threads after the batches", "threads_after_batches", "", ""),
        )
        for label, key, anchor, ratio_key in rows:
            extra = [ratio.get(ratio_key, "")] if ratio else []
            table.add(label, *(p[key] for p in plugins.values()), *extra, anchor)
            if key != "cpu_ms_per_attestation":
                continue
            batches = [p["cpu_ms_per_attestation_batches"] for p in plugins.values()]
            paired = (
                [
                    f"{ratio['cpu_paired_by_round_min']:.2f}.."
                    f"{ratio['cpu_paired_by_round_max']:.2f} "
                    f"(median {ratio['cpu_paired_by_round_median']:.3f})"
                ]
                if ratio
                else []
            )
            table.add(
                "  per batch min..max",
                *(f"{min(b):.2f}..{max(b):.2f}" for b in batches),
                *paired,
                "",
            )
        table.note(
            f"{args.rounds} batches x {args.batch} sequential attestations per plugin, on "
            f"{args.processes} fresh processes each (after {args.warmup} warm-up attestations "
            "each); batches alternate between plugins (ABBA order); RSS: median of processes"
        )
        table.note("CPU = utime+stime of the plugin process (/proc/<pid>/stat, 10 ms ticks)")
        if ratio:
            table.note(f"per batch min..max under {ratio_of}: ratios of same-round batches")
        print()
        print(table.render())
    starts = summary["starts"]
    if starts:
        plugins = {k: v for k, v in starts.items() if k != "current_over_baseline"}
        ratio = starts.get("current_over_baseline", {})
        table = Table(
            f"plugin start, as SPIRE loads it ({next(iter(plugins.values()))['starts']} starts "
            "each, interleaved, after one warm-up start each; "
            f"{'empty' if getattr(args, 'h2', False) else 'chain'} configuration)",
            ("figure", *plugins, *([ratio_of] if ratio else []), "anchor"),
        )
        for label, key, anchor in (
            ("exec -> handshake line, p50 ms", "handshake_ms_p50", ANCHOR_HANDSHAKE_MS),
            ("exec -> handshake line, max ms", "handshake_ms_max", ""),
            ("exec -> Init answered, p50 ms", "loaded_ms_p50", ""),
            ("exec -> Configure answered, p50 ms", "configured_ms_p50", ""),
            ("CPU until configured, p50 ms", "cpu_ms_to_configured_p50", ""),
            ("RSS after Configure, p50 MiB", "rss_mib_after_configure_p50", ANCHOR_RSS_MIB),
        ):
            extra = [ratio[key]] if ratio else []
            table.add(label, *(p[key] for p in plugins.values()), *extra, anchor)
        print()
        print(table.render())
    silent = summary.get("silent") or {}
    if silent:
        columns = [(plugin, phase) for plugin, phases in silent.items() for phase in phases]
        table = Table(
            f"silent streams: honest attestations (chain) with {args.silent} streams open that "
            "say nothing, then as many holding an unanswered challenge",
            ("figure", *(f"{plugin} {phase}" for plugin, phase in columns)),
        )
        for label, key in (
            ("silent streams open", "streams_opened"),
            ("  ended by the plugin at once", "streams_refused"),
            ("honest attestations admitted", "honest_admitted"),
            ("honest attestations failed", "honest_errors"),
            ("honest latency p50 ms", "latency_ms_p50"),
            ("honest latency p99 ms", "latency_ms_p99"),
            ("plugin threads", "threads"),
            ("RSS with the streams open MiB", "rss_mib_open"),
            ("RSS growth per silent stream KiB", "kib_per_stream"),
        ):
            table.add(label, *(silent[plugin][phase][key] for plugin, phase in columns))
        errors = {
            f"{plugin} {phase}": silent[plugin][phase]["first_error"]
            for plugin, phase in columns
            if silent[plugin][phase]["first_error"]
        }
        for where, error in errors.items():
            table.note(f"{where}: first failure: {error[:160]}")
        print()
        print(table.render())


# ---- py-spy profiles -------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")
# Where a sample's time belongs, by the outermost matching frame (first match wins).
CATEGORIES = (
    ("attestation steps (server_plugin/attestation.py)", "server_plugin/attestation.py"),
    ("audit log line (logging, JSON)", "server_plugin/plugin.py:AuditLine"),
    ("RequestReader: thread per read + queue wait", "server_plugin/plugin.py:_read_one"),
    ("RequestReader.next (thread start, queue.get)", "server_plugin/plugin.py:next"),
    ("other server_plugin/plugin.py", "server_plugin/plugin.py"),
    ("grpc Python server layer (grpc/_server.py)", "grpc/_server.py"),
    ("grpc C core (cygrpc, completion queue)", "cygrpc"),
    ("threading / thread start and exit", "threading.py"),
    ("concurrent.futures worker", "concurrent/futures"),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) pairs, outermost first; native frames have no file."""
    out = []
    for part in stack.split(";"):
        match = _FRAME.match(part)
        out.append((match["function"], match["file"]) if match else (part, ""))
    return out


def _category(frames: list[tuple[str, str]]) -> str:
    for label, key in CATEGORIES:
        path, _, function = key.partition(":")
        for name, file in frames:
            if (path in file or (not file and path in name)) and (
                not function or name.startswith(function) or name.endswith("." + function)
            ):
                return label
    return "other"


def _short(function: str, file: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{function} ({file})" if file else function


def _load(path: Path) -> Iterable[tuple[list[tuple[str, str]], int]]:
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            parts = stack.split(";")
            if parts and parts[0].startswith(("thread", "process")):
                parts = parts[1:]  # --threads adds the thread as the root frame
            yield _frames(";".join(parts)), int(count)


def print_profiles(profiles: Path, results: dict[str, Any], keep: Path) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    for config in results["configs"]:
        name = config["config"]
        path = profiles / f"{name}.txt"
        if not path.exists():
            print(f"{name}: no profile written")
            continue
        (keep / path.name).write_text(path.read_text())
        batches = config["batches"]
        attestations = sum(b["attestations"] for b in batches)
        cpu_ms = 1000 * sum(b["cpu_seconds"] for b in batches) / attestations
        samples = list(_load(path))
        total = sum(count for _, count in samples)
        categories: Counter[str] = Counter()
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        for frames, count in samples:
            categories[_category(frames)] += count
            python = [f for f in frames if f[1]]
            if python:
                own[_short(*python[-1])] += count
            for frame in {_short(*f) for f in frames if f[1]}:
                inclusive[frame] += count
        scale = cpu_ms / total if total else 0.0
        table = Table(
            f"{name}: where the plugin's CPU goes (py-spy, {total} on-CPU samples over "
            f"{attestations} attestations; {cpu_ms:.2f} ms CPU/attestation measured)",
            ("category (outermost matching frame)", "share", "ms/attestation"),
        )
        for label, count in categories.most_common():
            table.add(label, f"{count / total:.1%}", f"{count * scale:.3f}")
        print()
        print(table.render())
        for title, counter in (
            ("innermost Python frame (own time incl. native callees)", own),
            ("inclusive (any frame on the stack)", inclusive),
        ):
            table = Table(f"{name}: top 20 by {title}", ("function (file)", "share", "ms/att"))
            for label, count in counter.most_common(20):
                table.add(label[:110], f"{count / total:.1%}", f"{count * scale:.3f}")
            print()
            print(table.render())
    print(f"\nraw py-spy stacks kept in {keep}/")


def print_decomposition(results: dict[str, Any], in_process: dict[str, float]) -> None:
    """Server CPU per attestation, priced by difference (no profiler involved)."""
    cpu = {
        config["config"]: sum(b["cpu_seconds"] for b in config["batches"])
        / sum(b["attestations"] for b in config["batches"])
        for config in results["configs"]
    }
    table = Table(
        "server CPU per attestation, by difference between plugins (ms; this run, the "
        "plugin sampled by py-spy --nonblocking)",
        ("part", "ms/attestation", "how"),
    )
    rows: list[tuple[str, float | None, str]] = [
        ("runtime + grpc sync server, inline reads", cpu.get("noop"), "noop"),
        (
            "+ RequestReader (a thread per read)",
            _difference(cpu, "noop-reader", "noop"),
            "noop-reader - noop",
        ),
        (
            "+ audit line",
            _difference(cpu, "noop-reader-audit", "noop-reader"),
            "noop-reader-audit - noop-reader",
        ),
    ]
    for name, steps in in_process.items():
        rows.append((f"{name}: attestation steps in-process", steps, "thread CPU, same payloads"))
        if name in cpu and "noop-reader-audit" in cpu:
            rest = cpu[name] - cpu["noop-reader-audit"] - steps
            rows.append((f"{name}: the rest", rest, f"{name} - noop-reader-audit - steps"))
        rows.append((f"{name}: as a process", cpu.get(name), name))
    for label, value, how in rows:
        table.add(label, "" if value is None else f"{value * 1000:.3f}", how)
    print()
    print(table.render())


def _difference(cpu: dict[str, float], a: str, b: str) -> float | None:
    return cpu[a] - cpu[b] if a in cpu and b in cpu else None

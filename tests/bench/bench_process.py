"""The server plugin as a process (procbench, Go driver), this tree against a baseline commit.

Runs `python -m tests.bench.procbench` (its own tables print as it goes; bench/process.json
keeps its raw results) and records its figures: CPU per attestation by configuration and
the ratio current/baseline, per-attestation latency, exec -> handshake. The baseline is
BENCH_BASELINE (`make bench` sets it from BASELINE, a19ce94 by default; empty: this tree
only); PROCBENCH_ARGS adds options (e.g. "--rounds 4"), BENCH_QUICK=1 makes it short.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from typing import Any

from tests.bench.measure import Figure, Skipped, Table
from tests.bench.results import BENCH_DIR

PROCESS_JSON = BENCH_DIR / "process.json"
# Short enough for a first look (~2 minutes), long enough to draw the curves.
QUICK_ARGS = ["--rounds", "4", "--starts", "8", "--silent", "0"]
PLUGINS = ("baseline", "current")


def cpu_figure(config: str, plugin: str) -> str:
    return f"{config}: CPU per attestation, {plugin}"


def ratio_figure(config: str) -> str:
    return f"{config}: CPU per attestation, current/baseline"


def latency_figure(config: str, plugin: str) -> str:
    return f"{config}: latency per attestation, {plugin}"


def handshake_figure(plugin: str) -> str:
    return f"exec -> handshake line, {plugin}"


def _procbench_argv() -> list[str]:
    argv = [sys.executable, "-m", "tests.bench.procbench", "--out", str(PROCESS_JSON)]
    baseline = os.environ.get("BENCH_BASELINE", "")
    if baseline:
        argv += ["--baseline", baseline]
    if os.environ.get("BENCH_QUICK"):
        argv += QUICK_ARGS
    return argv + shlex.split(os.environ.get("PROCBENCH_ARGS", ""))


def run() -> list[Table]:
    if shutil.which("go") is None:
        raise Skipped("go is not installed: the process bench's driver is a Go program")
    argv = _procbench_argv()
    print("$", shlex.join(argv[1:]), flush=True)
    subprocess.run(argv, check=True)
    return [figures_table(json.loads(PROCESS_JSON.read_text()))]


def figures_table(document: dict[str, Any]) -> Table:
    """A recap of procbench's document (CPU by configuration), carrying all its figures."""
    summary, raw = document["summary"], document["raw"]
    commits = document["commits"]
    plugins = [name for name in PLUGINS if name in commits]
    table = Table(
        "server plugin as a process: CPU per attestation by configuration (ms)",
        ("configuration", *plugins, *(["current/baseline"] if len(plugins) == 2 else [])),
    )
    for config in raw["configs"]:
        name = config["config"]
        entry = summary["configs"][name]
        for plugin in plugins:
            batches = [b for b in config["batches"] if b["plugin"] == plugin]
            figures = entry["plugins"][plugin]
            table.record(
                Figure(
                    cpu_figure(name, plugin),
                    figures["cpu_ms_per_attestation"],
                    "ms",
                    count=figures["attestations"],
                ),
                Figure.of(
                    latency_figure(name, plugin),
                    [latency for b in batches for latency in b["latencies"]],
                    "ms",
                    scale=1e3,
                    curve=True,
                ),
                Figure(
                    f"{name}: RSS after Configure, {plugin}",
                    figures["rss_mib_after_configure"],
                    "MiB",
                ),
            )
        ratio = entry.get("current_over_baseline")
        if ratio:
            table.record(Figure(ratio_figure(name), ratio["cpu"], "ratio"))
        table.add(
            name,
            *(f"{entry['plugins'][plugin]['cpu_ms_per_attestation']:.2f}" for plugin in plugins),
            *([f"{ratio['cpu']:.2f}"] if ratio else []),
        )
    for plugin in plugins:
        starts = [s for s in raw.get("starts") or [] if s["plugin"] == plugin]
        if starts:
            table.record(
                Figure.of(
                    handshake_figure(plugin),
                    [s["handshake_seconds"] for s in starts],
                    "ms",
                    scale=1e3,
                    curve=True,
                ),
                Figure.of(
                    f"exec -> Configure answered, {plugin}",
                    [s["configured_seconds"] for s in starts],
                    "ms",
                    scale=1e3,
                ),
                Figure.of(
                    f"CPU until configured, {plugin}",
                    [s["cpu_seconds_to_configured"] for s in starts],
                    "ms",
                    scale=1e3,
                ),
            )
    for run in raw.get("silent") or []:
        for phase in run["phases"]:
            where = f"silent streams, {phase['phase']}, {run['plugin']}"
            latencies = phase["latencies"] or []
            table.record(
                Figure(f"{where}: honest attestations admitted", len(latencies), "count"),
                Figure(f"{where}: plugin threads", phase["threads_open"], "count"),
            )
            if latencies:
                table.record(Figure.of(f"{where}: honest latency", latencies, "ms", scale=1e3))
    table.note("commits: " + ", ".join(f"{plugin} {commits[plugin][:12]}" for plugin in plugins))
    table.note(f"procbench's raw results: {PROCESS_JSON.relative_to(BENCH_DIR.parent)}")
    table.details["commits"] = commits
    return table

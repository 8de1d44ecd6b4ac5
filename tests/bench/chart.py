"""bench/results.png from bench/results.json: CPU per attestation by configuration against
the baseline commit, latency distribution, plugin start time.

Drawn from the results document alone (`python -m tests.bench.chart [results.json]`
redraws it), with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot, ticker
from matplotlib.axes import Axes

from tests.bench.bench_process import (
    PLUGINS,
    cpu_figure,
    handshake_figure,
    latency_figure,
    ratio_figure,
)
from tests.bench.bench_runtime import HANDSHAKE, start_figure
from tests.bench.results import RESULTS

COLORS = {"baseline": "#9e9e9e", "current": "#1f77b4"}
LATENCY_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")
LATENCY_CONFIGS = ("chain", "allowlist", "noop")  # the rest lie between these


def _figures(results: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    found = results["sections"].get(section) or {}
    return {figure["name"]: figure for figure in found.get("figures", [])}


def _not_measured(axes: Axes, results: dict[str, Any], section: str) -> None:
    found = results["sections"].get(section)
    why = f"{found['status']}: {found.get('note', '')}" if found else "not run"
    message = textwrap.shorten(f"section '{section}' {why}", 160, placeholder=" ...")
    axes.text(
        0.5,
        0.5,
        textwrap.fill(message, 48),
        ha="center",
        va="center",
        transform=axes.transAxes,
        color="#777777",
    )
    axes.set_xticks([])
    axes.set_yticks([])


def _configs(figures: dict[str, dict[str, Any]]) -> list[str]:
    """The process bench's configurations, in the order it ran them."""
    suffix = cpu_figure("", "current")
    return [name.removesuffix(suffix) for name in figures if name.endswith(suffix)]


def _cpu_panel(axes: Axes, results: dict[str, Any]) -> None:
    figures = _figures(results, "process")
    configs = _configs(figures)
    axes.set_title("server CPU per attestation, as a process")
    if not configs:
        _not_measured(axes, results, "process")
        return
    plugins = [p for p in PLUGINS if cpu_figure(configs[0], p) in figures]
    width = 0.8 / len(plugins)
    commits = results["sections"]["process"].get("commits", {})
    for index, plugin in enumerate(plugins):
        values = [figures[cpu_figure(config, plugin)]["value"] for config in configs]
        where = [n + (index - (len(plugins) - 1) / 2) * width for n in range(len(configs))]
        label = f"{plugin} {commits.get(plugin, '')[:10]}".strip()
        bars = axes.bar(where, values, width, label=label, color=COLORS[plugin])
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    top = max(
        figures[cpu_figure(config, plugin)]["value"] for config in configs for plugin in plugins
    )
    for n, config in enumerate(configs):
        ratio = figures.get(ratio_figure(config))
        tallest = max(figures[cpu_figure(config, plugin)]["value"] for plugin in plugins)
        if ratio and ratio["value"] is not None:
            axes.text(n, tallest + top * 0.07, f"{ratio['value']:.2f}", ha="center", fontsize=10)
    axes.set_ylim(0, top * 1.35)
    axes.set_xticks(range(len(configs)), [c.replace("-", "-\n") for c in configs], fontsize=8)
    axes.set_ylabel("ms of CPU (utime+stime) per attestation")
    axes.legend(
        loc="upper right", fontsize=8, title="above the bars: current/baseline", title_fontsize=8
    )


def _cdf(axes: Axes, figure: dict[str, Any], label: str, **style: Any) -> None:
    points = figure["cdf"]
    axes.plot([value for _, value in points], [q for q, _ in points], label=label, **style)


def _two_and_five(value: float, _position: int) -> str:
    """Minor tick labels of a log axis at 2 and 5 times a power of ten only."""
    return f"{value:g}" if f"{value:.0e}"[0] in "25" else ""


def _latency_panel(axes: Axes, results: dict[str, Any]) -> None:
    figures = _figures(results, "process")
    axes.set_title("latency per attestation (grpc-go driver, one at a time)")
    shown = [c for c in LATENCY_CONFIGS if latency_figure(c, "current") in figures]
    if not shown:
        _not_measured(axes, results, "process")
        return
    for config, color in zip(shown, LATENCY_COLORS, strict=False):
        for plugin, line in (("baseline", "--"), ("current", "-")):
            figure = figures.get(latency_figure(config, plugin))
            if figure is None:
                continue
            label = f"{config}, {plugin}: p50 {figure['p50']:.2f}, p99 {figure['p99']:.2f} ms"
            _cdf(axes, figure, label, color=color, linestyle=line, linewidth=1.4)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(ticker.FuncFormatter(_two_and_five))
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_xlabel("ms, exchange start to result (log scale)")
    axes.set_ylabel("percentile")
    axes.axhline(99, color="#cccccc", linewidth=0.8, zorder=0)
    axes.set_ylim(0, 101)
    axes.grid(True, which="both", axis="x", color="#eeeeee")
    axes.legend(loc="lower right", fontsize=7)


def _box(figure: dict[str, Any], label: str) -> dict[str, Any]:
    """Box statistics from a recorded curve: quartiles, median, whiskers at min and max."""
    at = dict((q, value) for q, value in figure["cdf"])
    return {
        "label": label,
        "whislo": at[0],
        "q1": at[25],
        "med": at[50],
        "q3": at[75],
        "whishi": at[100],
        "fliers": [],
    }


def _start_panel(axes: Axes, results: dict[str, Any]) -> None:
    axes.set_title("plugin start: exec -> handshake line")
    process, runtime = _figures(results, "process"), _figures(results, "runtime")
    boxes, colors = [], []
    for plugin in PLUGINS:
        figure = process.get(handshake_figure(plugin))
        if figure is not None:
            boxes.append(_box(figure, f"server\n{plugin}\n(Go host)"))
            colors.append(COLORS[plugin])
    for side in ("server", "agent"):
        figure = runtime.get(start_figure(side, HANDSHAKE))
        if figure is not None and figure.get("cdf"):
            boxes.append(_box(figure, f"{side}\ncurrent\n(Python host)"))
            colors.append("#aec7e8")
    if not boxes:
        _not_measured(axes, results, "runtime")
        return
    drawn = axes.bxp(boxes, patch_artist=True, widths=0.5, medianprops={"color": "black"})
    for patch, color in zip(drawn["boxes"], colors, strict=True):
        patch.set_facecolor(color)
    for n, box in enumerate(boxes, start=1):
        axes.text(n + 0.27, box["med"], f"{box['med']:.0f}", fontsize=8, va="center")
    axes.set_ylim(bottom=0)
    axes.set_ylabel("ms, wall (box: quartiles; whiskers: min, max; label: median)")
    axes.tick_params(axis="x", labelsize=8)


def _caption(results: dict[str, Any]) -> str:
    machine, commit = results["machine"], results["commit"]
    load = "/".join(f"{x:g}" for x in machine["loadavg_before"])
    load_after = "/".join(f"{x:g}" for x in machine["loadavg_after"])
    dirty = " + uncommitted changes" if commit["dirty"] else ""
    return (
        f"make bench, commit {commit['sha'][:10]}{dirty}, {results['date']} — "
        f"{machine['cpu']}, {machine['cpus']} CPUs, {machine['ram_gib']} GiB, Linux "
        f"{machine['kernel']}, Python {machine['python']}, grpcio {machine['grpcio']} — "
        f"load average (1/5/15 min) {load} at the start, {load_after} at the end"
    )


def draw(results: dict[str, Any], path: Path) -> None:
    figure, axes = pyplot.subplots(1, 3, figsize=(18, 6.2), width_ratios=(1.2, 1.2, 0.9))
    _cpu_panel(axes[0], results)
    _latency_panel(axes[1], results)
    _start_panel(axes[2], results)
    figure.text(0.5, 0.01, _caption(results), ha="center", fontsize=9, color="#444444")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    source = Path(args[0]) if args else RESULTS
    picture = source.with_suffix(".png")
    draw(json.loads(source.read_text()), picture)
    print(f"chart drawn to {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark report (bench/results.json and its chart) on a tiny synthetic run.

No timing is asserted: these only keep the writer and the chart working as the
sections change (`make bench` runs them for real).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.bench import bench_process, results
from tests.bench.bench_runtime import HANDSHAKE, start_figure
from tests.bench.measure import Figure
from tests.bench.procbench import report

PLUGINS = ("baseline", "current")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _procbench_document() -> dict[str, Any]:
    """What procbench writes to bench/process.json, for two configurations."""
    configs = []
    for name, cpu in (("chain", 0.0015), ("noop", 0.0006)):
        batches = [
            {
                "plugin": plugin,
                "round": round_number,
                "process": 0,
                "attestations": 10,
                "cpu_seconds": 10 * cpu * (0.8 if plugin == "current" else 1.0),
                "wall_seconds": 0.03,
                "latencies": [0.002 + 0.0001 * n for n in range(10)],
            }
            for round_number in range(2)
            for plugin in PLUGINS
        ]
        configs.append(
            {
                "config": name,
                "batches": batches,
                "rss_after_configure": {p: [57 * 2**20] for p in PLUGINS},
                "rss_after_batches": {p: [58 * 2**20] for p in PLUGINS},
                "threads_after_batches": {p: 6 for p in PLUGINS},
            }
        )
    starts = [
        {
            "plugin": plugin,
            "handshake_seconds": 0.1 + 0.01 * n,
            "loaded_seconds": 0.15,
            "configured_seconds": 0.2,
            "rss_after_configure": 57 * 2**20,
            "cpu_seconds_to_configured": 0.18,
        }
        for n in range(4)
        for plugin in PLUGINS
    ]
    raw = {"clock_ticks_per_second": 100, "configs": configs, "starts": starts}
    return {
        "commits": {"baseline": "a" * 40, "current": "b" * 40 + "+dirty"},
        "summary": report.summarize(raw, list(PLUGINS)),
        "raw": raw,
    }


def _document(sections: list[results.SectionResult]) -> dict[str, Any]:
    machine = results.machine()
    commit = {"sha": "b" * 40, "dirty": True, "subject": "synthetic"}
    started = datetime(2025, 1, 1, tzinfo=UTC)
    return results.document(sections, machine, commit, started, ["test"], None)


def _sections() -> list[results.SectionResult]:
    process = bench_process.figures_table(_procbench_document())
    runtime = [
        Figure.of(start_figure(side, HANDSHAKE), [0.09, 0.1, 0.12], "ms", 1e3, curve=True)
        for side in ("server", "agent")
    ]
    return [
        results.SectionResult("process", "ok", 1.0, process.figures, "", process.details),
        results.SectionResult("runtime", "ok", 1.0, runtime),
        results.SectionResult("x509", "skipped", 0.0, note="no swtpm"),
    ]


def test_figure_of_a_distribution_keeps_median_p99_and_curve() -> None:
    figure = Figure.of("lookup", [0.001, 0.002, 0.003], "ms", scale=1e3, curve=True)
    assert (figure.value, figure.p50, figure.count) == (2.0, 2.0, 3)
    assert figure.p99 == pytest.approx(2.98)
    assert figure.cdf is not None and figure.cdf[0] == (0, 1.0) and figure.cdf[-1] == (100, 3.0)


def test_figures_are_written_as_strict_json() -> None:
    assert Figure("gone", math.nan, "ms").as_json()["value"] is None
    assert Figure("count", 3, "count").as_json() == {"name": "count", "value": 3, "unit": "count"}


def test_process_figures_compare_the_baseline_by_configuration() -> None:
    figures = {f.name: f for f in bench_process.figures_table(_procbench_document()).figures}
    assert figures[bench_process.cpu_figure("chain", "baseline")].value == pytest.approx(1.5)
    assert figures[bench_process.ratio_figure("chain")].value == pytest.approx(0.8)
    latency = figures[bench_process.latency_figure("noop", "current")]
    assert latency.unit == "ms" and latency.count == 20 and latency.cdf is not None
    assert figures[bench_process.handshake_figure("current")].count == 4


def test_results_document_has_machine_commit_and_every_unit(tmp_path: Path) -> None:
    path = tmp_path / "bench" / "results.json"
    results.write(path, _document(_sections()))
    written = json.loads(path.read_text())
    assert {"cpu", "cpus", "ram_gib", "kernel", "python", "grpcio", "cryptography"} <= set(
        written["machine"]
    )
    assert len(written["machine"]["loadavg_before"]) == len(written["machine"]["loadavg_after"])
    assert written["commit"]["dirty"] is True
    assert written["sections"]["x509"] == {
        "status": "skipped",
        "seconds": 0.0,
        "note": "no swtpm",
        "figures": [],
    }
    assert written["sections"]["process"]["commits"]["baseline"] == "a" * 40
    figures = [f for section in written["sections"].values() for f in section["figures"]]
    assert figures and all(f["unit"] for f in figures)


def test_soak_document_is_picked_up_as_a_section(tmp_path: Path) -> None:
    soak = tmp_path / "soak.json"
    assert results.soak_section(soak) is None
    figure = {"name": "RSS growth per hour", "value": 0.1, "unit": "MiB"}
    soak.write_text(json.dumps({"figures": [figure], "hours": 1}))
    section = results.soak_section(soak)
    assert section is not None
    machine = results.machine()
    started = datetime.now(UTC)
    document = results.document([], machine, {"sha": "c"}, started, [], section)
    assert document["sections"]["soak"]["figures"] == [figure]
    assert document["sections"]["soak"]["document"]["hours"] == 1


@pytest.mark.parametrize("measured", [True, False], ids=["measured", "all-skipped"])
def test_chart_is_a_png(tmp_path: Path, measured: bool) -> None:
    pytest.importorskip("matplotlib")
    from tests.bench import chart

    sections = _sections() if measured else [results.SectionResult("process", "skipped", 0.0)]
    picture = tmp_path / "results.png"
    chart.draw(_document(sections), picture)
    assert picture.read_bytes().startswith(PNG_SIGNATURE)

"""Run the benchmark sections: `python -m tests.bench [name ...]` (`--list` lists them).

The figures go to bench/results.json (`--out`) and the chart to the same name in .png."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import tests.bench
from tests.bench import results
from tests.bench.measure import Skipped, Table

PREFIX = "bench_"
# Left out of a full run when BENCH_QUICK is set (minutes of building 1,000,000 entries).
QUICK_SKIPS = ("allowlist",)
RULE = "=" * 78


def available() -> list[str]:
    """Section names (module names without `bench_`), in run order."""
    return sorted(
        info.name.removeprefix(PREFIX)
        for info in pkgutil.iter_modules(tests.bench.__path__)
        if info.name.startswith(PREFIX) and not info.ispkg
    )


def describe(module: ModuleType) -> str:
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def run_section(name: str, index: int, total: int) -> results.SectionResult:
    """Import and run one section, printing its header and tables."""
    started = time.perf_counter()
    print(RULE)
    tables: Sequence[Table] = ()
    note = ""
    try:
        module = importlib.import_module(f"tests.bench.{PREFIX}{name}")
        print(f"[{index}/{total}] {name}: {describe(module)}")
        print(RULE, flush=True)
        tables = module.run() or ()
        for table in tables:
            print()
            print(table.render())
        status = "ok"
    except Skipped as reason:
        print(f"[{index}/{total}] {name}: SKIPPED: {reason}")
        status, note = "skipped", str(reason)
    except Exception as error:
        print(f"[{index}/{total}] {name}: FAILED")
        traceback.print_exc(file=sys.stdout)
        status, note = "FAILED", f"{type(error).__name__}: {error}"
    print(flush=True)
    figures = [figure for table in tables for figure in table.figures]
    details = {key: value for table in tables for key, value in table.details.items()}
    seconds = time.perf_counter() - started
    return results.SectionResult(name, status, seconds, figures, note, details)


def write_results(out: Path, document: dict[str, object]) -> None:
    """bench/results.json, then the chart next to it (when matplotlib is installed)."""
    results.write(out, document)
    print(f"figures written to {out}")
    try:
        from tests.bench import chart
    except ImportError as missing:
        print(f"no chart: {missing} (make install brings matplotlib)")
        return
    picture = out.with_suffix(".png")
    chart.draw(document, picture)
    print(f"chart drawn to {picture}")


def main(argv: Sequence[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", metavar="name", help=f"one of: {', '.join(names)}")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument(
        "--out",
        type=Path,
        default=results.RESULTS,
        help="where the figures go (default bench/results.json; the chart: same name, .png)",
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(names))
        return 0
    quick = [name for name in names if name not in QUICK_SKIPS]
    default = quick if os.environ.get("BENCH_QUICK") else names
    wanted = [section.removeprefix(PREFIX) for section in args.sections] or default
    unknown = [section for section in wanted if section not in names]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(names)}")

    started = datetime.now(UTC)
    machine, commit = results.machine(), results.commit()
    ran = [run_section(name, i, len(wanted)) for i, name in enumerate(wanted, start=1)]
    summary = Table("bench summary", ("section", "status", "seconds", "figures"))
    for section in ran:
        summary.add(section.name, section.status, f"{section.seconds:.1f}", len(section.figures))
    summary.add("total", "", f"{sum(section.seconds for section in ran):.1f}", "")
    print(RULE)
    print(summary.render())
    argv = ["python -m tests.bench", *(sys.argv[1:] if argv is None else argv)]
    document = results.document(ran, machine, commit, started, argv, results.soak_section())
    print(
        f"load average {machine['loadavg_before']} at the start, "
        f"{document['machine']['loadavg_after']} at the end"
    )
    write_results(args.out, document)
    return 1 if any(section.status == "FAILED" for section in ran) else 0


if __name__ == "__main__":
    sys.exit(main())

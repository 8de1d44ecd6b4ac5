"""Run the benchmark sections: `python -m tests.bench [name ...]` (`--list` lists them)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from types import ModuleType

import tests.bench
from tests.bench.measure import Skipped, Table

PREFIX = "bench_"
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


def run_section(name: str, index: int, total: int) -> tuple[str, float]:
    """Import and run one section, printing its header and tables; returns (status, s)."""
    started = time.perf_counter()
    print(RULE)
    try:
        module = importlib.import_module(f"tests.bench.{PREFIX}{name}")
        print(f"[{index}/{total}] {name}: {describe(module)}")
        print(RULE, flush=True)
        tables: Sequence[Table] | None = module.run()
        for table in tables or ():
            print()
            print(table.render())
        status = "ok"
    except Skipped as reason:
        print(f"[{index}/{total}] {name}: SKIPPED: {reason}")
        status = "skipped"
    except Exception:
        print(f"[{index}/{total}] {name}: FAILED")
        traceback.print_exc(file=sys.stdout)
        status = "FAILED"
    print(flush=True)
    return status, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", metavar="name", help=f"one of: {', '.join(names)}")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(names))
        return 0
    wanted = [section.removeprefix(PREFIX) for section in args.sections] or names
    unknown = [section for section in wanted if section not in names]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(names)}")

    results = [run_section(name, i, len(wanted)) for i, name in enumerate(wanted, start=1)]
    summary = Table("bench summary", ("section", "status", "seconds"))
    for name, (status, seconds) in zip(wanted, results, strict=True):
        summary.add(name, status, f"{seconds:.1f}")
    summary.add("total", "", f"{sum(seconds for _, seconds in results):.1f}")
    print(RULE)
    print(summary.render())
    return 1 if any(status == "FAILED" for status, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())

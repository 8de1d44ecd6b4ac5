"""bench/results.json: every figure of a `make bench` run, with the machine and the commit.

The document is built from what the sections returned (each table's `figures`), plus the
soak run's bench/soak.json when `make soak` left one (it is read, never run, here).
`tests.bench.chart` draws bench/results.png from the document alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.bench.measure import Figure, load_average

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "bench"
RESULTS = BENCH_DIR / "results.json"
SOAK = BENCH_DIR / "soak.json"
PACKAGES = ("grpcio", "cryptography", "protobuf")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _ram_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _go_version() -> str:
    try:
        found = subprocess.run(["go", "version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return found.stdout.strip()


def machine() -> dict[str, Any]:
    """What the figures were measured on; `loadavg_before` is the load at this call."""
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **{package: _version(package) for package in PACKAGES},
        "go": _go_version(),
        "loadavg_before": load_average(),
    }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit() -> dict[str, Any]:
    """The commit measured; `dirty` when tracked files differ from it."""
    return {
        "sha": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "subject": _git("log", "-1", "--format=%s"),
    }


@dataclass(frozen=True)
class SectionResult:
    name: str
    status: str  # ok, skipped, FAILED
    seconds: float
    figures: Sequence[Figure] = ()
    note: str = ""  # why it was skipped or failed
    details: dict[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "seconds": round(self.seconds, 1)}
        if self.note:
            out["note"] = self.note
        out.update(self.details)
        out["figures"] = [figure.as_json() for figure in self.figures]
        return out


def soak_section(path: Path = SOAK) -> dict[str, Any] | None:
    """`make soak`'s document as a section, if it left one: its `figures` (when it keeps
    them in this file's form) and the whole document, with when it was written."""
    if not path.exists():
        return None
    document = json.loads(path.read_text())
    written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    figures = document.get("figures", []) if isinstance(document, dict) else []
    return {
        "status": "read",
        "note": f"from {path.name}, written {written.isoformat(timespec='seconds')} "
        "by `make soak` (not run by `make bench`)",
        "figures": figures,
        "document": document,
    }


def document(
    sections: Sequence[SectionResult],
    machine_info: dict[str, Any],
    commit_info: dict[str, Any],
    started: datetime,
    argv: Sequence[str],
    soak: dict[str, Any] | None,
) -> dict[str, Any]:
    """The whole results document; `machine_info` gains the load average at the end."""
    out: dict[str, Any] = {
        "what": "figures of `make bench` (tests/bench); values in `unit`, `value` is the "
        "median where there is a distribution",
        "date": started.isoformat(timespec="seconds"),
        "command": list(argv),
        "commit": commit_info,
        "machine": {**machine_info, "loadavg_after": load_average()},
        "seconds": round(sum(section.seconds for section in sections), 1),
        "sections": {section.name: section.as_json() for section in sections},
    }
    if soak is not None:
        out["sections"]["soak"] = soak
    return out


def write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")

"""Shared helpers for the benchmarks: percentiles, CPU pinning, process RSS, tables, figures."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


class Skipped(Exception):
    """This machine lacks something the benchmark needs (the message says what)."""


def require_swtpm() -> None:
    """Skip a section that runs swtpm and the agent's TPM code where they are missing."""
    if shutil.which("swtpm") is None:
        raise Skipped("swtpm is not installed (make install)")
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        raise Skipped("tpm2-pytss is not installed (pip install '.[agent]')") from None


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between closest ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def p99(samples: Sequence[float]) -> float:
    return percentile(samples, 99)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was."""
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        return [float(value) for value in loadavg.read().split()[:3]]


def ops_per_second(seconds_per_op: float) -> float:
    return 1 / seconds_per_op if seconds_per_op > 0 else math.inf


@dataclass(frozen=True)
class Stats:
    """Summary of one set of samples (seconds, bytes, ...: whatever was sampled)."""

    count: int
    median: float
    p99: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        return cls(
            count=len(samples),
            median=median(samples),
            p99=p99(samples),
            min=min(samples),
            max=max(samples),
            mean=sum(samples) / len(samples),
        )


def proc_status_bytes(pid: int, key: str = "VmRSS") -> int:
    """A memory figure (VmRSS, VmHWM, ...) of a process from /proc/<pid>/status, in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name == key:
                amount, unit = value.split()
                if unit != "kB":
                    raise ValueError(f"unexpected unit {unit!r} for {key}")
                return int(amount) * 1024
    raise ValueError(f"/proc/{pid}/status has no {key}")


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size (VmRSS) of a process; this process when `pid` is None."""
    return proc_status_bytes(os.getpid() if pid is None else pid, "VmRSS")


@contextlib.contextmanager
def one_cpu() -> Iterator[int]:
    """Pins this process to a single CPU for the block; yields the CPU number."""
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)


def ms(seconds: float, digits: int = 2) -> str:
    """Seconds shown as milliseconds, for columns headed in ms."""
    return f"{seconds * 1e3:.{digits}f}"


def mib(size: float) -> str:
    return f"{size / 2**20:.1f}"


def rate(per_second: float) -> str:
    return f"{per_second:,.0f}"


def progress(message: str) -> None:
    """A progress line on stderr, so stdout holds only headers and tables."""
    sys.stdout.flush()  # keep the order when both go to one terminal or file
    print(f"  .. {message}", file=sys.stderr, flush=True)


# Where a distribution's curve is kept in bench/results.json (percentiles, 0-100).
CDF_PERCENTILES = (
    0,
    1,
    2,
    5,
    10,
    20,
    25,
    30,
    40,
    50,
    60,
    70,
    75,
    80,
    90,
    95,
    98,
    99,
    99.5,
    99.9,
    100,
)


@dataclass(frozen=True)
class Figure:
    """One measured figure as bench/results.json keeps it: a value in a unit, and for a
    distribution its median (the value), p99, sample count and, when asked, its curve."""

    name: str
    value: float
    unit: str
    p50: float | None = None
    p99: float | None = None
    count: int | None = None
    cdf: tuple[tuple[float, float], ...] | None = None  # (percentile, value)

    @classmethod
    def of(
        cls,
        name: str,
        samples: Sequence[float],
        unit: str,
        scale: float = 1.0,
        curve: bool = False,
    ) -> Figure:
        """The distribution of `samples`, each multiplied by `scale` (e.g. 1e3: s -> ms)."""
        scaled = [sample * scale for sample in samples]
        middle = median(scaled)
        return cls(
            name,
            middle,
            unit,
            p50=middle,
            p99=p99(scaled),
            count=len(scaled),
            cdf=tuple((q, percentile(scaled, q)) for q in CDF_PERCENTILES) if curve else None,
        )

    @classmethod
    def of_stats(cls, name: str, stats: Stats, unit: str, scale: float = 1.0) -> Figure:
        middle = stats.median * scale
        return cls(name, middle, unit, p50=middle, p99=stats.p99 * scale, count=stats.count)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "value": _rounded(self.value)}
        out["unit"] = self.unit
        for key in ("p50", "p99", "count"):
            if getattr(self, key) is not None:
                out[key] = _rounded(getattr(self, key))
        if self.cdf is not None:
            out["cdf"] = [[q, _rounded(value)] for q, value in self.cdf]
        return out


def _rounded(value: float) -> float | None:
    """Six significant digits (more than any figure here is worth); null for NaN or inf,
    which JSON has no spelling for."""
    if isinstance(value, int):
        return value
    return float(f"{value:.6g}") if math.isfinite(value) else None


@dataclass
class Table:
    """A titled table of figures, with notes printed under it; `figures` (and `details`,
    e.g. the commits compared) are what bench/results.json records of it."""

    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)

    def record(self, *figures: Figure) -> None:
        self.figures.extend(figures)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(cell) for cell in cells])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        widths = [
            max([len(str(column)), *(len(row[i]) for row in self.rows)])
            for i, column in enumerate(self.columns)
        ]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
            return "  " + "  ".join([first, *rest]).rstrip()

        out = [self.title, line([str(column) for column in self.columns])]
        out.append(line(["-" * width for width in widths]))
        out.extend(line(row) for row in self.rows)
        out.extend(f"  * {text}" for text in self.notes)
        return "\n".join(out)

"""The server plugin with tracemalloc on, for `make soak SOAK_ARGS=--trace`: each SIGUSR2
writes a snapshot of what Python has allocated to $SOAK_TRACE_DIR/<n>.snapshot, which
the soak compares (warmed up against the end) to name where memory went."""

from __future__ import annotations

import itertools
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

from server_plugin.main import main

FRAMES = 8
_numbers = itertools.count()


def dump_snapshot(signum: int, frame: FrameType | None) -> None:
    path = Path(os.environ["SOAK_TRACE_DIR"]) / f"{next(_numbers)}.snapshot"
    tracemalloc.take_snapshot().dump(str(path.with_suffix(".partial")))
    path.with_suffix(".partial").rename(path)  # whole, or not there yet


if __name__ == "__main__":
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR2, dump_snapshot)
    main()

"""Time from exec to the go-plugin handshake line, for plugin executables side by side.

    python packaging/handshake_time.py [--rounds 10] EXECUTABLE...

Each round starts every executable once, in turn (so a busy machine slows all alike),
with the environment SPIRE gives a NodeAttestor, reads the first stdout line, then
ends the plugin with SIGTERM as SPIRE's unload would. Prints the median and range.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

ENV = {
    "NodeAttestor": "NodeAttestor",
    "PLUGIN_PROTOCOL_VERSIONS": "1",
    "PLUGIN_MIN_PORT": "10000",
    "PLUGIN_MAX_PORT": "25000",
}


def once(argv: list[str]) -> float:
    started = time.monotonic()
    plugin = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **ENV},
    )
    assert plugin.stdout is not None
    line = plugin.stdout.readline()
    elapsed = time.monotonic() - started
    plugin.send_signal(signal.SIGTERM)
    plugin.wait(timeout=30)
    if not line.startswith(b"1|1|unix|"):
        raise SystemExit(f"{argv[0]}: no handshake line, got {line!r}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("executables", nargs="+")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in args.executables}
    for name in args.executables:
        once([name])  # warm the page cache (and any extraction cache) first
    for _ in range(args.rounds):
        for name in args.executables:
            times[name].append(once([name]))
    for name, values in times.items():
        print(
            f"{statistics.median(values) * 1000:6.0f} ms  "
            f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f}, {len(values)} runs)  {name}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

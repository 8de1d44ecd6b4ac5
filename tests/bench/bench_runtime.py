"""Plugin start-up as SPIRE loads it: exec -> handshake line, full load, memory after Configure."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spire_tpm_attestor.runtime.host import AGENT_HOST_SERVICES, SERVER_HOST_SERVICES, PluginProcess
from spire_tpm_attestor.testing.ca import TestCA
from tests.bench.measure import Figure, Stats, Table, mib, ms, progress, rss_bytes

STARTS = 20
BIN = Path(sys.executable).parent
# Configure does not touch the TPM, so an address nobody listens on is fine.
AGENT_PLUGIN_DATA = {"tcti": "swtpm:host=127.0.0.1,port=2321", "ek_algorithm": "rsa2048"}
HANDSHAKE = "exec -> handshake line"


def start_figure(side: str, label: str) -> str:
    return f"{side}: {label}"


def _hcl(options: dict[str, str]) -> str:
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())


def _interpreter_start() -> float:
    """Wall time of `python -c pass` in the same venv: the floor under any handshake."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def _load_once(side: str, plugin_data: str) -> tuple[float, float, float, int, float]:
    """One load like SPIRE's catalog: (handshake s, loaded s, configured s, RSS, exit s)."""
    host_services = AGENT_HOST_SERVICES if side == "agent" else SERVER_HOST_SERVICES
    started = time.perf_counter()
    plugin = PluginProcess.start(
        [str(BIN / f"spire-tpm-attestor-{side}")], host_service_names=host_services
    )
    try:
        loaded = time.perf_counter() - started
        plugin.configure(plugin_data)
        configured = time.perf_counter() - started
        rss = rss_bytes(plugin.process.pid)
    except BaseException:
        plugin.kill()
        raise
    exit_seconds = plugin.stop()
    return plugin.handshake_seconds, loaded, configured, rss, exit_seconds


def run() -> list[Table]:
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as work:
        ca = TestCA.create(Path(work) / "ek-ca")
        plugin_data = {
            "agent": _hcl(AGENT_PLUGIN_DATA),
            "server": _hcl({"ek_ca_path": str(ca.bundle_path)}),
        }
        _interpreter_start()  # warm the page cache
        baseline = Stats.of([_interpreter_start() for _ in range(STARTS)])
        timings = Table(
            f"plugin start, wall time in ms ({STARTS} starts each after one warm-up start)",
            ("figure", "n", "median", "p99", "max", "min"),
        )
        memory = Table(
            "resident memory of the plugin process after Configure (VmRSS, MiB)",
            ("plugin", "n", "median", "max"),
        )
        exits: list[float] = []
        for side in ("agent", "server"):
            progress(f"starting the {side} plugin {STARTS + 1} times")
            _load_once(side, plugin_data[side])  # warm-up: .pyc and page cache
            runs = [_load_once(side, plugin_data[side]) for _ in range(STARTS)]
            for label, samples in (
                (HANDSHAKE, [r[0] for r in runs]),
                ("exec -> Init answered (loaded)", [r[1] for r in runs]),
                ("exec -> Configure answered", [r[2] for r in runs]),
            ):
                stats = Stats.of(samples)
                timings.record(
                    Figure.of(start_figure(side, label), samples, "ms", scale=1e3, curve=True)
                )
                timings.add(
                    start_figure(side, label),
                    stats.count,
                    ms(stats.median, 1),
                    ms(stats.p99, 1),
                    ms(stats.max, 1),
                    ms(stats.min, 1),
                )
            rss = Stats.of([float(r[3]) for r in runs])
            memory.add(side, rss.count, mib(rss.median), mib(rss.max))
            memory.record(Figure.of_stats(f"{side}: RSS after Configure", rss, "MiB", 2**-20))
            exits.extend(r[4] for r in runs)
        timings.add(
            "baseline: `python -c pass`",
            baseline.count,
            ms(baseline.median, 1),
            ms(baseline.p99, 1),
            ms(baseline.max, 1),
            ms(baseline.min, 1),
        )
        timings.record(Figure.of_stats("baseline: `python -c pass`", baseline, "ms", 1e3))
        unload = Stats.of(exits)
        timings.record(Figure.of_stats("unload (Deinit + Shutdown -> exit)", unload, "ms", 1e3))
        timings.note(
            "handshake = Popen() until the go-plugin line is read (PluginProcess.handshake_seconds)"
        )
        timings.note(
            f"unload (Deinit + Shutdown -> exit): median {ms(unload.median, 1)} ms, "
            f"max {ms(unload.max, 1)} ms over {unload.count}"
        )
        return [timings, memory]

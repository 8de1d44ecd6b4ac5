"""Real SPIRE: wall time from `spire-agent run` to the agent SVID, TPM plugins vs join_token.

One spire-server offers both NodeAttestor "tpm" (our server plugin, EK certificate from a
test CA) and SPIRE's built-in "join_token"; agents alternate between the two, each run
from an empty data directory, until each has ROUNDS runs. The clock starts just before
`spire-agent run` is spawned and stops when its log says "Node attestation was
successful" (the agent holds its SVID). Then the same with the single-file executables of
`make dist`, when this tree's build is in the cache (building them takes minutes).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from spire_tpm_attestor.testing.ca import TestCA
from tests.bench.measure import Figure, Skipped, Table, median, ms, progress, require_swtpm
from tests.spire.harness import (
    Daemon,
    Plugin,
    SpireServer,
    attested,
    start_daemon,
    start_server,
    use_join_token,
    wait_until,
    write_agent_config,
)

ROUNDS = 5
POLL = 0.005
TIMEOUT = 120.0
ROOT = Path(__file__).parents[2]
DEFAULT_SPIRE_BIN = Path.home() / ".cache" / "spire-tpm-attestor" / "spire" / "v1.14.5" / "bin"
AGENT = "spire-tpm-attestor-agent"
SERVER = "spire-tpm-attestor-server"


def _build_dist() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_dist", ROOT / "packaging" / "build_dist.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cached_dist() -> Path | None:
    """This tree's `make dist` executables, if the build cache has them."""
    build_dist = _build_dist()
    cached = Path(build_dist.CACHE) / build_dist.build_key()
    if all((cached / name).exists() for name in (AGENT, SERVER)):
        return cached
    return None


def _agent_run(
    spire_bin: Path, workdir: Path, config: Path, join_token: str | None
) -> tuple[float, Daemon]:
    """Start one agent from an empty data directory; seconds until it holds its SVID."""
    shutil.rmtree(workdir / "agent", ignore_errors=True)
    (workdir / "agent").mkdir()
    (workdir / "agent.sock").unlink(missing_ok=True)
    log = workdir / "agent.log"
    log.unlink(missing_ok=True)
    argv = [str(spire_bin / "spire-agent"), "run", "-config", str(config)]
    if join_token:
        argv += ["-joinToken", join_token]
    started = time.perf_counter()
    agent = start_daemon(argv, log)
    try:
        wait_until(attested(agent), agent, TIMEOUT, "agent attestation", interval=POLL)
    finally:
        elapsed = time.perf_counter() - started
        agent.stop()
    return elapsed, agent


def _token(server: SpireServer) -> str:
    out = server.cli("token", "generate", "-ttl", "600")
    assert out.returncode == 0, out.stderr
    return out.stdout.split("Token:", 1)[1].split()[0]


def _interleaved(
    spire_bin: Path, workdir: Path, ek_ca: TestCA, tcti: str, server: Plugin, agent: Plugin
) -> tuple[list[float], list[float]]:
    """(tpm seconds, join_token seconds), ROUNDS each, alternating, one server for both."""
    spire = start_server(spire_bin, workdir, ek_ca, policy="cert", plugin=server, join_token=True)
    try:
        bundle = spire.cli("bundle", "show")
        assert bundle.returncode == 0, bundle.stderr
        (workdir / "bundle.pem").write_text(bundle.stdout)
        tpm_config = write_agent_config(workdir, spire.port, tcti, plugin=agent)
        token_config = workdir / "agent-join-token.conf"
        token_config.write_text(use_join_token(tpm_config.read_text()))
        runs: dict[str, Callable[[], float]] = {
            "tpm": lambda: _agent_run(spire_bin, workdir, tpm_config, None)[0],
            "join_token": lambda: _agent_run(spire_bin, workdir, token_config, _token(spire))[0],
        }
        runs["tpm"]()  # warm-up: page cache, the plugin's imports, swtpm's first keys
        runs["join_token"]()
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(ROUNDS):
            order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
            for name in order:
                samples[name].append(runs[name]())
            progress(
                f"round {round_ + 1}/{ROUNDS}: tpm {ms(samples['tpm'][-1], 0)} ms, "
                f"join_token {ms(samples['join_token'][-1], 0)} ms"
            )
    finally:
        spire.daemon.stop()
    return samples["tpm"], samples["join_token"]


def run() -> list[Table]:
    require_swtpm()
    from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates

    spire_bin = Path(os.environ.get("SPIRE_BIN", DEFAULT_SPIRE_BIN))
    if not (spire_bin / "spire-agent").exists():
        raise Skipped(f"no spire-agent in {spire_bin} (make spire)")
    version = subprocess.run(
        [str(spire_bin / "spire-agent"), "--version"], capture_output=True, text=True, check=False
    )
    table = Table(
        f"spire-agent run -> agent SVID, median of {ROUNDS} interleaved runs each",
        ("plugins", "tpm ms", "join_token ms", "tpm / join_token"),
    )
    flavours: list[tuple[str, Plugin, Plugin] | tuple[str, None, None]] = [
        ("venv console scripts", Plugin.venv("server"), Plugin.venv("agent"))
    ]
    dist = cached_dist()
    if dist is not None:
        flavours.append(
            ("make dist executables", Plugin.pinned(dist / SERVER), Plugin.pinned(dist / AGENT))
        )
    else:
        flavours.append(("make dist executables", None, None))
    # unix socket paths must stay short (spire-server hangs past ~107 characters)
    with tempfile.TemporaryDirectory(prefix="bsp", dir="/tmp") as work:
        ek_ca = TestCA.create(Path(work) / "ek-ca")
        with SWTPM() as simulator:
            provision_ek_certificates(simulator.tcti, ek_ca, algorithms=("rsa2048",))
            for index, (label, server, agent) in enumerate(flavours):
                if server is None or agent is None:
                    table.add(label, "skipped: no dist build", "", "")
                    continue
                progress(label)
                workdir = Path(work) / f"w{index}"
                workdir.mkdir()
                tpm, token = _interleaved(spire_bin, workdir, ek_ca, simulator.tcti, server, agent)
                table.record(
                    Figure.of(f"{label}: spire-agent run -> SVID, tpm", tpm, "ms", 1e3),
                    Figure.of(f"{label}: spire-agent run -> SVID, join_token", token, "ms", 1e3),
                    Figure(f"{label}: tpm / join_token", median(tpm) / median(token), "ratio"),
                )
                table.add(
                    label,
                    ms(median(tpm), 0),
                    ms(median(token), 0),
                    f"{median(tpm) / median(token):.2f}x",
                )
    table.note(f"SPIRE {(version.stdout + version.stderr).strip()}, {spire_bin}")
    table.note(
        "tpm: RSA 2048 EK certificate from a test CA on swtpm, ek_policy = cert, PCRs 0-7"
        " quoted; every run starts from an empty agent data directory"
    )
    table.note(
        "dist: this tree's executables from the build cache, pinned by plugin_checksum"
        if dist is not None
        else "dist: this tree's executables are not in the build cache; run `make dist` first"
    )
    return [table]

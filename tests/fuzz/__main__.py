"""`make fuzz`: the long run, one atheris (libFuzzer) process per target, in sequence.

    python -m tests.fuzz run [--runs N] [--timeout S] [--rss-mb M] [TARGET ...]
    python -m tests.fuzz seed          # (re)write the corpus seeds
    python -m tests.fuzz one TARGET [libFuzzer flags and directories]   # one process

Each target runs until it has executed `--runs` inputs (or for `--max-seconds`), with
libFuzzer's per-input timeout (a hang) and RSS limit (bounded memory). New inputs go to
a scratch corpus (.fuzz/<target>/corpus, outside git), the committed corpus is read as
seeds; a finding is written to .fuzz/<target>/ and fails the run. The figures (inputs,
inputs/s, wall and CPU time, peak RSS) are printed per target and written to
.fuzz/figures.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
SCRATCH = ROOT / ".fuzz"
# The code under test: instrumented for coverage. `cryptography`, protobuf and ijson's
# yajl are native code: libFuzzer sees them through the Python that calls them.
INSTRUMENTED = ("spire_tpm_attestor", "server_plugin", "agent_plugin", "hcl")
STAT = re.compile(r"stat::(\w+):\s*(\d+)")


def one(name: str, flags: list[str]) -> None:
    """Run one target under atheris (the child process of `run`)."""
    import atheris

    logging.disable(logging.CRITICAL)  # a rejection logs; millions of them are noise
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        from tests.fuzz.targets import preload, targets

        preload()
    from tests.fuzz.mutators import Mutation

    target = targets()[name]
    target.setup()

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        return target.mutate(data, Mutation(random.Random(seed), max_size, atheris.Mutate))

    atheris.Setup([sys.argv[0], *flags], target.run, custom_mutator=mutator)
    atheris.Fuzz()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(names: list[str], runs: int, timeout: int, rss_mb: int, max_seconds: int) -> int:
    from tests.fuzz.targets import targets

    figures = {}
    failed = []
    for name in names:
        work = SCRATCH / name
        scratch_corpus = work / "corpus"
        scratch_corpus.mkdir(parents=True, exist_ok=True)
        flags = [
            f"-runs={runs}",
            f"-timeout={timeout}",
            f"-rss_limit_mb={rss_mb}",
            f"-max_total_time={max_seconds}",
            "-max_len=65536",
            "-print_final_stats=1",
            "-reload=0",
            f"-artifact_prefix={work}/",
            str(scratch_corpus),
            str(CORPUS / name),
        ]
        print(f"=== {name} ({targets()[name].doc}): {runs} inputs", flush=True)
        started = time.monotonic()
        cpu_before = _children_cpu()
        log = work / "libfuzzer.log"
        with log.open("w") as out:
            code = subprocess.call(
                [sys.executable, "-m", "tests.fuzz", "one", name, *flags],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        wall = time.monotonic() - started
        cpu = _children_cpu() - cpu_before  # on a shared machine, less than the wall time
        stats = {key: int(value) for key, value in STAT.findall(log.read_text(errors="replace"))}
        executed = stats.get("number_of_executed_units", 0)
        figures[name] = {
            "inputs": executed,
            "inputs_per_s": round(executed / wall) if wall else 0,
            "libfuzzer_exec_per_s": stats.get("average_exec_per_sec", 0),
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "inputs_per_cpu_s": round(executed / cpu) if cpu else 0,
            "peak_rss_mb": stats.get("peak_rss_mb", 0),
            "exit_code": code,
        }
        print(
            f"{name}: {executed} inputs, {figures[name]['inputs_per_s']}/s, {wall:.0f} s "
            f"({cpu:.0f} s CPU, {figures[name]['inputs_per_cpu_s']}/CPU s), "
            f"peak RSS {figures[name]['peak_rss_mb']} MB, exit {code}",
            flush=True,
        )
        if code != 0:
            failed.append(name)
            print(f"{name}: FINDING, see {log} and the artifacts in {work}/", flush=True)
    (SCRATCH / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(
        f"{'target':<18}{'inputs':>10}{'inputs/s':>10}{'wall s':>9}{'CPU s':>8}"
        f"{'inputs/CPU s':>14}{'peak RSS MB':>13}"
    )
    for name, row in figures.items():
        print(
            f"{name:<18}{row['inputs']:>10}{row['inputs_per_s']:>10}{row['wall_s']:>9}"
            f"{row['cpu_s']:>8}{row['inputs_per_cpu_s']:>14}{row['peak_rss_mb']:>13}"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if failed:
        print(f"findings in: {' '.join(failed)}")
    return 1 if failed else 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one(sys.argv[2], sys.argv[3:])
        return
    from tests.fuzz.targets import names

    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    commands = parser.add_subparsers(dest="command", required=True)
    run_command = commands.add_parser("run", help="the long run")
    run_command.add_argument("--runs", type=int, default=1_000_000)
    run_command.add_argument("--timeout", type=int, default=10, help="seconds per input")
    run_command.add_argument("--rss-mb", type=int, default=2048, help="RSS limit")
    run_command.add_argument(
        "--max-seconds", type=int, default=0, help="stop a target after this long (0: never)"
    )
    run_command.add_argument("targets", nargs="*", choices=[*names(), []])
    commands.add_parser("seed", help="write the corpus seeds")
    args = parser.parse_args()
    if args.command == "seed":
        from tests.fuzz.seeds import write_seeds

        print(write_seeds())
        return
    chosen = args.targets or list(names())
    sys.exit(run(chosen, args.runs, args.timeout, args.rss_mb, args.max_seconds))


if __name__ == "__main__":
    main()

"""What SPIRE pays for the server plugin, as a process: `python -m tests.bench.procbench`.

With `--baseline COMMIT`, that commit is checked out into a temporary directory (a
detached git worktree, its protobuf modules generated there) and its plugin runs next to
the current tree's, both as `python -m server_plugin.main` with PYTHONPATH pointing at
their own checkout, so they share this interpreter and its packages. A Go driver
(main.go here) loads each like SPIRE's catalog over go-plugin gRPC and runs batches of
attestations, alternating the two batch by batch; the table gives each one's figures and
the ratio current/baseline. `--profile` instead samples the current plugin with py-spy.
`--h2` instead sets the do-nothing plugin on this tree's grpc.aio runtime beside a
do-nothing plugin that speaks gRPC itself on asyncio + h2 without grpcio
(noop_h2_plugin.py): the floor of each transport, side by side.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bench import results as bench_results
from tests.bench.measure import load_average
from tests.bench.procbench import nodes, report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TRUST_DOMAIN = "example.org"
# What SPIRE's server announces in Init (a19ce94's harness.SERVER_HOST_SERVICES).
SERVER_HOST_SERVICES = [
    "spire.hostservice.server.identityprovider.v1.IdentityProvider",
    "spire.hostservice.server.agentstore.v1.AgentStore",
    "spire.hostservice.common.metrics.v1.Metrics",
]
CONFIGS = ("chain", "allowlist", "noop", "noop-reader", "noop-reader-audit")
LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")
NOOP_FLAGS = {"noop": [], "noop-reader": ["--reader"], "noop-reader-audit": ["--reader", "--audit"]}
H2_CONFIG = "noop-h2"  # --h2: the two do-nothing plugins, each its own variant
H2_VARIANTS = {
    "noop-aio": ["noop_plugin.py"],
    "noop-h2": ["noop_h2_plugin.py"],
    "noop-h2-early": ["noop_h2_plugin.py", "--early-handshake"],
}


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def check_out(commit: str, work: Path) -> tuple[Path, str]:
    """A detached worktree of `commit` under `work`, with its protobuf modules generated;
    removed when this process exits."""
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    path = work / f"baseline-{sha[:10]}"
    git("worktree", "add", "--detach", "--quiet", str(path), sha)
    atexit.register(
        lambda: subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False
        )
    )
    subprocess.run(
        [sys.executable, "-c", "import setup; setup.generate_protos()"], cwd=path, check=True
    )
    return path, sha


def plugin(name: str, checkout: Path) -> dict[str, Any]:
    """The plugin variant that runs `checkout`'s code; cwd is the checkout too, so that
    `-m`'s sys.path[0] is the same tree as PYTHONPATH."""
    env = {"PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": ""}
    found = subprocess.run(
        [sys.executable, "-c", "import server_plugin.main as m; print(m.__file__)"],
        cwd=checkout,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(checkout.resolve()):
        raise SystemExit(f"{name}: server_plugin comes from {found}, not from {checkout}")
    return {
        "name": name,
        "argv": [sys.executable, "-m", "server_plugin.main"],
        "dir": str(checkout),
        "env": env,
    }


def telemetry(port: int) -> str:
    return f'telemetry {{\nPrometheus {{\nhost = "127.0.0.1"\nport = {port}\n}}\n}}'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def observe_variants(flood_port: int, silent_port: int) -> list[dict[str, Any]]:
    """The current tree at each log level, with metrics off and on, and with metrics
    under hostile scrapers (scraper.py): side by side, batch by batch."""
    current = plugin("current", ROOT)
    variants = [
        {**current, "name": level.lower(), "hcl": f'log_level = "{level}"'} for level in LEVELS
    ]
    for level in ("DEBUG", "INFO"):
        name, hcl_text = f"{level.lower()}+metrics", f'log_level = "{level}"\n{telemetry(0)}'
        variants.append({**current, "name": name, "hcl": hcl_text})
    for name, port in (("info+flood", flood_port), ("info+silent", silent_port)):
        variants.append({**current, "name": name, "hcl": f'log_level = "INFO"\n{telemetry(port)}'})
    return variants


def build_driver(work: Path) -> Path:
    driver = work / "procbench-driver"
    subprocess.run(["go", "build", "-o", str(driver), "."], cwd=HERE, check=True)
    return driver


def hcl(**options: object) -> str:
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())


def configs(
    work: Path, wanted: Sequence[str], count: int, keys: int, plugins: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str]:
    """The configurations to run (with their attestations) and the HCL used for starts."""
    report.progress(f"generating {keys} software nodes (RSA-2048 EK and AK)")
    software = [nodes.SoftwareNode.create() for _ in range(keys)]
    ek_keys = [base64.b64encode(node.ek_private_der).decode() for node in software]
    ca = nodes.rsa_ca(work / "ek-ca")
    chain_hcl = hcl(ek_policy="cert", ek_ca_path=str(ca.bundle_path))
    out: list[dict[str, Any]] = []
    for name in wanted:
        if name == "chain":
            report.progress(f"issuing {count} EK certificates (RSA root + intermediate)")
            entries = nodes.chain_nodes(software, ca, count)
            out.append({"name": name, "hcl": chain_hcl, "ek_keys": ek_keys, "nodes": entries})
        elif name == "allowlist":
            hashes = work / "hashes"
            entries = nodes.allowlist_nodes(software, hashes, fillers=1000)
            config = hcl(ek_policy="allowlist", hash_path=str(hashes))
            out.append({"name": name, "hcl": config, "ek_keys": ek_keys, "nodes": entries})
        elif name in NOOP_FLAGS or name == H2_CONFIG:
            # The same payload bytes as the chain case, a fixed 100-byte answer.
            entries = [{**entry, "ek_key": -1} for entry in nodes.chain_nodes(software[:1], ca, 1)]
            config = {
                "name": name,
                "hcl": "",
                "ek_keys": [],
                "nodes": entries,
                "answer": base64.b64encode(bytes(100)).decode(),
            }
            if name in NOOP_FLAGS:  # every variant runs the do-nothing plugin
                noop = [sys.executable, str(HERE / "noop_plugin.py"), *NOOP_FLAGS[name]]
                config["argv"] = {p["name"]: noop for p in plugins}
            out.append(config)
    return out, chain_hcl


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.procbench", description=__doc__)
    parser.add_argument("--baseline", help="commit to compare against, e.g. a19ce94")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--rounds", type=int, default=12, help="batches per plugin")
    parser.add_argument(
        "--processes", type=int, default=3, help="fresh processes per plugin, sharing the rounds"
    )
    parser.add_argument("--batch", type=int, default=200, help="attestations per batch")
    parser.add_argument("--warmup", type=int, default=30, help="attestations before measuring")
    parser.add_argument("--starts", type=int, default=20, help="plugin starts per variant")
    parser.add_argument("--keys", type=int, default=8, help="distinct EK/AK key pairs")
    parser.add_argument(
        "--silent",
        type=int,
        default=1000,
        help="silent streams held open while honest agents attest (0: skip that part)",
    )
    parser.add_argument(
        "--silent-attestations", type=int, default=400, help="honest attestations per phase"
    )
    parser.add_argument("--out", help="default bench/process.json (--observe: bench/observe.json)")
    parser.add_argument(
        "--observe",
        action="store_true",
        help="the current tree at each log level, metrics off, on, and under hostile "
        "scrapers (no baseline, no starts)",
    )
    parser.add_argument(
        "--h2",
        action="store_true",
        help="the do-nothing plugin on grpc.aio beside one on asyncio + h2 without grpcio "
        "(no baseline, no silent streams; default --out bench/process-h2.json)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the current plugin with py-spy instead (no baseline, no starts)",
    )
    args = parser.parse_args(argv)
    default = "observe.json" if args.observe else "process-h2.json" if args.h2 else "process.json"
    args.out = args.out or str(ROOT / "bench" / default)
    wanted = [name for name in args.configs.split(",") if name]
    unknown = set(wanted) - set(CONFIGS)
    if args.h2:
        if args.baseline or args.profile or args.observe:
            parser.error("--h2 runs the two do-nothing plugins of this tree only")
        wanted, unknown, args.silent = [H2_CONFIG], set(), 0
        try:
            import h2  # noqa: F401 - only the plugin process uses it
        except ImportError:
            raise SystemExit("h2 is not installed: make bench-process-h2 installs it") from None
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(sorted(unknown))}")
    if shutil.which("go") is None:
        raise SystemExit("go is not installed: the driver is a Go program")

    work = Path(tempfile.mkdtemp(prefix="procbench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    info = bench_results.machine()
    current = bench_results.commit()
    plugins: list[dict[str, Any]] = []
    commits = {"current": current["sha"] + ("+dirty" if current["dirty"] else "")}
    scrapers = None
    if args.observe:
        if args.baseline or args.profile:
            parser.error("--observe runs the current tree only")
        args.starts = args.silent = 0
        flood_port, silent_port = free_port(), free_port()
        plugins = observe_variants(flood_port, silent_port)
        scrapers = subprocess.Popen(
            [sys.executable, str(HERE / "scraper.py"), str(flood_port), str(silent_port)]
        )
        atexit.register(scrapers.kill)
    elif args.baseline and not args.profile:
        report.progress(f"checking out {args.baseline} into {work}")
        path, sha = check_out(args.baseline, work)
        plugins.append(plugin("baseline", path))
        commits["baseline"] = sha
    if args.h2:
        current = plugin("current", ROOT)
        plugins = [
            {**current, "name": name, "argv": [sys.executable, str(HERE / script), *flags]}
            for name, (script, *flags) in H2_VARIANTS.items()
        ]
    elif not args.observe:
        plugins.append(plugin("current", ROOT))

    report.progress("building the Go driver")
    driver = build_driver(work)
    count = args.warmup + args.rounds * args.batch
    config_list, chain_hcl = configs(work, wanted, count, args.keys, plugins)
    logs = work / "logs"
    logs.mkdir()
    plan: dict[str, Any] = {
        "trust_domain": TRUST_DOMAIN,
        "host_services": SERVER_HOST_SERVICES,
        "plugins": plugins,
        "configs": config_list,
        "rounds": args.rounds,
        "batch": args.batch,
        "warmup": args.warmup,
        "processes": 1 if args.profile else args.processes,
        "starts": 0 if args.profile else args.starts,
        "starts_hcl": "" if args.h2 else chain_hcl,
        "log_dir": str(logs),
    }
    if args.silent and not args.profile and "chain" in wanted:
        plan["silent"] = {
            "config": "chain",
            "streams": args.silent,
            "attestations": args.silent_attestations,
        }
    profiles = work / "profiles"
    if args.profile:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            raise SystemExit("py-spy is not installed: pip install py-spy")
        profiles.mkdir()
        plan["sampler"] = [
            py_spy, "record", "--pid", "{pid}", "--rate", "200", "--format", "raw",
            "--nonblocking", "--threads", "--full-filenames",
            "--output", str(profiles / "{config}.txt"),
        ]  # fmt: skip
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps(plan))
    results_path = work / "results.json"
    started = time.monotonic()
    run = subprocess.run([str(driver), "-plan", str(plan_path), "-out", str(results_path)])
    if scrapers is not None:
        scrapers.kill()
    if run.returncode != 0:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name} (last lines)", file=sys.stderr)
            print("\n".join(log.read_text().splitlines()[-15:]), file=sys.stderr)
        return run.returncode
    info["loadavg_after"] = load_average()
    info["seconds"] = round(time.monotonic() - started, 1)
    results = json.loads(results_path.read_text())
    if args.profile:
        report.print_profiles(profiles, results, Path(args.out).with_name("process-profile"))
        from tests.bench.procbench import steps

        report.progress("timing the attestation steps in-process on the same payloads")
        in_process = {
            config["name"]: steps.cpu_per_attestation(config, TRUST_DOMAIN, args.batch * 5)
            for config in config_list
            if config["name"] in ("chain", "allowlist")
        }
        report.print_decomposition(results, in_process)
        return 0
    names = [p["name"] for p in plugins]
    summary = report.summarize(results, names, (names[0], names[1]) if args.h2 else None)
    report.print_tables(summary, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "what": "server plugin as a process, driven over go-plugin gRPC (tests/bench/procbench)",
        "commits": commits,
        "machine": info,
        "parameters": {
            "rounds": args.rounds,
            "batch": args.batch,
            "warmup": args.warmup,
            "processes": args.processes,
            "starts": args.starts,
            "keys": args.keys,
            "silent": args.silent,
            "silent_attestations": args.silent_attestations,
        },
        "summary": summary,
        "raw": results,
    }
    out.write_text(json.dumps(document, indent=1))
    print(f"\nfigures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

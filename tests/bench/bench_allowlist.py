"""Allowlists of 1,000,000 EKs: documents, HTTP(S) refresh and memory, directory lookups.

Targets (issue #4): in-memory lookups under 50 µs p99, directory lookups under 1 ms p99,
a refresh of 1,000,000 entries under 3 s, 1,000,000 entries under 100 MB RSS.
Synthetic EK hashes (SHA-256 of a counter); one entry in ten carries a name and a label
unless a row says otherwise. Directories are built in a temporary directory and removed.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from server_plugin.allowlist import AllowlistEntry
from server_plugin.allowlist.directory import BucketedDirectory, DirectorySource, FlatDirectory
from server_plugin.allowlist.document import parse_document, render_document
from tests.bench.measure import (
    Figure,
    Stats,
    Table,
    mib,
    proc_status_bytes,
    progress,
    rss_bytes,
)

ENTRIES = 1_000_000
LOOKUPS = 20_000  # half listed, half not
CLI_ADDS = 2_000
METADATA_EVERY = 10
BIN = Path(sys.executable).parent


def ek_hashes(count: int, start: int = 0) -> list[str]:
    return [hashlib.sha256(n.to_bytes(8, "big")).hexdigest() for n in range(start, start + count)]


def entries(hashes: Sequence[str], metadata_every: int) -> list[AllowlistEntry]:
    return [
        AllowlistEntry(h, f"node-{n}", {"rack": f"r{n % 64}"})
        if metadata_every and n % metadata_every == 0
        else AllowlistEntry(h)
        for n, h in enumerate(hashes)
    ]


def probes(hashes: Sequence[str]) -> list[str]:
    """Listed and unlisted hashes, shuffled."""
    rng = random.Random(4)
    sample = rng.sample(list(hashes), LOOKUPS // 2) + ek_hashes(LOOKUPS // 2, start=10**9)
    rng.shuffle(sample)
    return sample


def lookup_stats(lookup: Callable[[str], object], sample: Sequence[str]) -> Stats:
    for pub_hash in sample[:1000]:  # warm-up
        lookup(pub_hash)
    timings = []
    for pub_hash in sample:
        started = time.perf_counter()
        lookup(pub_hash)
        timings.append(time.perf_counter() - started)
    return Stats.of(timings)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def seconds(value: float) -> str:
    return f"{value:.2f}"


# --- the JSON document, parsed in this process ---------------------------------------


def documents(hashes: list[str], sample: list[str]) -> Table:
    table = Table(
        f"JSON document, {ENTRIES:,} entries: parse (one thread) and in-memory lookups",
        ("document", "MiB", "parse s", "lookup p50 µs", "lookup p99 µs"),
    )
    shuffled = list(hashes)
    random.Random(7).shuffle(shuffled)
    for label, order, metadata_every in (
        ("hashes only, shuffled", shuffled, 0),
        ("1 in 10 with metadata, shuffled", shuffled, METADATA_EVERY),
        ("1 in 10 with metadata, sorted (export)", hashes, METADATA_EVERY),
        ("all with metadata, sorted (export)", hashes, 1),
    ):
        progress(f"document: {label}")
        body = render_document(entries(order, metadata_every)).encode()
        gc.collect()
        started = time.perf_counter()
        index = parse_document(body, "bench")
        parsed = time.perf_counter() - started
        stats = lookup_stats(lambda h, index=index: index.lookup(h, "bench"), sample)
        table.add(label, mib(len(body)), seconds(parsed), us(stats.median), us(stats.p99))
        table.record(
            Figure(f"document, {label}: size", len(body) / 2**20, "MiB"),
            Figure(f"document, {label}: parse", parsed, "s"),
            Figure.of_stats(f"document, {label}: lookup", stats, "µs", 1e6),
        )
        del body, index
    table.note("render_document sorts by hash, so 'shuffled' rows shuffle the entries first")
    return table


# --- the HTTP(S) source, in a child process (clean RSS) --------------------------------


def http_source(hashes: list[str], sample: list[str], work: Path) -> Table:
    from tests.integration.http_servers import DocumentServer, Nginx, TLSFiles, publish

    table = Table(
        f"HTTP(S) allowlist source, {ENTRIES:,} entries (1 in 10 with metadata), child process",
        ("figure", "value"),
    )
    root = work / "www"
    root.mkdir()
    progress("HTTP: writing the document")
    body = render_document(entries(hashes, METADATA_EVERY)).encode()
    publish(root / "allowlist.json", body)
    # The next version (one more EK), for a refresh that must download and parse again.
    publish(
        root / "next.json", render_document(entries([*hashes, *ek_hashes(1, 10**8)], 10)).encode()
    )
    del body
    tls = TLSFiles.create(work / "tls")
    nginx: Nginx | None = None
    server: DocumentServer | None = None
    if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):
        nginx = Nginx(work / "nginx", root, tls).start()
        url, ca, served_by = f"{nginx.url}/allowlist.json", str(tls.ca), "nginx over TLS"
    else:
        server = DocumentServer(body=(root / "allowlist.json").read_bytes()).start()
        url, ca, served_by = server.url, "", "Python http.server (no nginx)"
    (work / "sample.json").write_text(json.dumps(sample))
    try:
        progress(f"HTTP: child process loading from {served_by}")
        child = subprocess.run(
            [sys.executable, "-m", "tests.bench.bench_allowlist", url, ca, str(root), str(work)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    finally:
        if nginx is not None:
            nginx.stop()
        if server is not None:
            server.stop()
    figures = json.loads(child.stdout)
    table.record(
        Figure("HTTP: first fetch + parse (200)", figures["first_load"], "s"),
        Figure("HTTP: refresh of a changed document (200)", figures["changed_refresh"], "s"),
        Figure(
            "HTTP: refresh of an unchanged document (304)", figures["unchanged_refresh"] * 1e3, "ms"
        ),
        Figure(
            "HTTP: RSS of the index", (figures["rss_loaded"] - figures["rss_before"]) / 2**20, "MiB"
        ),
        Figure("HTTP: peak RSS (VmHWM)", figures["hwm"] / 2**20, "MiB"),
        Figure(
            "HTTP: lookup",
            figures["lookup_p50"] * 1e6,
            "µs",
            p50=figures["lookup_p50"] * 1e6,
            p99=figures["lookup_p99"] * 1e6,
        ),
    )
    table.add("first fetch + parse (200), s", seconds(figures["first_load"]))
    table.add("refresh of a changed document (200), s", seconds(figures["changed_refresh"]))
    table.add(
        "refresh of an unchanged document (304), ms", f"{figures['unchanged_refresh'] * 1e3:.1f}"
    )
    table.add("RSS before the source (interpreter + imports), MiB", mib(figures["rss_before"]))
    table.add("RSS after load, MiB", mib(figures["rss_loaded"]))
    table.add("  of which the index, MiB", mib(figures["rss_loaded"] - figures["rss_before"]))
    table.add("RSS after the changed refresh, MiB", mib(figures["rss_refreshed"]))
    table.add("peak RSS (VmHWM), MiB", mib(figures["hwm"]))
    table.add("lookup p50, µs", us(figures["lookup_p50"]))
    table.add("lookup p99, µs", us(figures["lookup_p99"]))
    table.note(f"served by {served_by} on loopback; document {mib(figures['bytes'])} MiB")
    table.note("the peak holds the old index and the one being built; the body is streamed")
    return table


def child(url: str, ca: str, root: str, work: str) -> None:
    """Runs in the child: load from `url`, then print the figures as JSON."""
    from server_plugin.allowlist.http import HTTPAllowlist, HTTPSettings

    sample: list[str] = json.loads(Path(work, "sample.json").read_text())
    gc.collect()
    rss_before = rss_bytes()
    settings = HTTPSettings(url=url, ca_path=ca or None, refresh_interval=3600, read_timeout=60)
    started = time.perf_counter()
    source = HTTPAllowlist("bench", settings)
    source.start()
    source.lookup(sample[0])  # waits for the first fetch
    first_load = time.perf_counter() - started
    gc.collect()
    rss_loaded = rss_bytes()
    started = time.perf_counter()
    assert source.refresh()
    unchanged_refresh = time.perf_counter() - started
    os.replace(Path(root, "next.json"), Path(root, "allowlist.json"))
    started = time.perf_counter()
    assert source.refresh()
    changed_refresh = time.perf_counter() - started
    gc.collect()
    stats = lookup_stats(source.lookup, sample)
    figures = {
        "first_load": first_load,
        "unchanged_refresh": unchanged_refresh,
        "changed_refresh": changed_refresh,
        "rss_before": rss_before,
        "rss_loaded": rss_loaded,
        "rss_refreshed": rss_bytes(),
        "hwm": proc_status_bytes(os.getpid(), "VmHWM"),
        "lookup_p50": stats.median,
        "lookup_p99": stats.p99,
        "bytes": os.path.getsize(Path(root, "allowlist.json")),
    }
    source.close()
    print(json.dumps(figures))


# --- directories ------------------------------------------------------------------------


def populate(directory: DirectorySource, hashes: Sequence[str]) -> float:
    """Write every entry (plain writes, as a bulk import would); seconds taken."""
    started = time.perf_counter()
    if isinstance(directory, BucketedDirectory):
        for bucket in range(256):
            os.mkdir(os.path.join(directory.path, f"{bucket:02x}"))
    for n, pub_hash in enumerate(hashes):
        body = (
            json.dumps({"name": f"node-{n}", "labels": {"rack": f"r{n % 64}"}}).encode()
            if n % METADATA_EVERY == 0
            else b""
        )
        fd = os.open(directory.entry_path(pub_hash), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if body:
                os.write(fd, body)
        finally:
            os.close(fd)
    return time.perf_counter() - started


def cli_adds(work: Path) -> float:
    """Seconds per entry of `spire-tpm-attestor allowlist add` (atomic, fsynced)."""
    directory = work / "cli"
    directory.mkdir()
    hashes = "\n".join(ek_hashes(CLI_ADDS, start=10**7)).encode()
    started = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "spire-tpm-attestor"),
            "allowlist",
            "add",
            "--directory",
            str(directory),
            "--layout",
            "bucketed",
        ],
        input=hashes,
        capture_output=True,
        check=True,
    )
    return (time.perf_counter() - started) / CLI_ADDS


def directories(hashes: list[str], sample: list[str], work: Path) -> Table:
    table = Table(
        f"directory allowlists, {ENTRIES:,} entries (1 in 10 with metadata), warm page cache",
        ("layout", "create s", "lookup p50 µs", "lookup p99 µs", "remove s"),
    )
    for layout in (BucketedDirectory, FlatDirectory):
        path = work / layout.kind.replace(" ", "-")
        path.mkdir()
        directory = layout(str(path), "bench")
        progress(f"{layout.kind}: creating {ENTRIES:,} entries")
        created = populate(directory, hashes)
        progress(f"{layout.kind}: {LOOKUPS:,} lookups")
        stats = lookup_stats(directory.lookup, sample)
        started = time.perf_counter()
        shutil.rmtree(path)
        removed = time.perf_counter() - started
        table.add(layout.kind, seconds(created), us(stats.median), us(stats.p99), seconds(removed))
        table.record(
            Figure(f"{layout.kind}: create", created, "s"),
            Figure.of_stats(f"{layout.kind}: lookup", stats, "µs", 1e6),
        )
    progress(f"CLI: adding {CLI_ADDS:,} entries")
    per_add = cli_adds(work)
    table.record(Figure("CLI `allowlist add`, per entry", per_add * 1e3, "ms"))
    table.note(
        "create = one plain write per entry (a bulk import); the CLI's atomic, fsynced "
        f"`allowlist add` took {per_add * 1e3:.2f} ms per entry ({CLI_ADDS:,} from stdin), "
        f"so {ENTRIES:,} would take ~{per_add * ENTRIES / 60:.0f} min on this disk"
    )
    table.note("a lookup opens and reads the entry file (or fails to): no caching")
    return table


def run() -> list[Table]:
    hashes = ek_hashes(ENTRIES)
    sample = probes(hashes)
    tables = [documents(hashes, sample)]
    with tempfile.TemporaryDirectory(prefix="bench-allowlist-") as work:
        tables.append(http_source(hashes, sample, Path(work)))
        tables.append(directories(hashes, sample, Path(work)))
    return tables


if __name__ == "__main__":
    child(*sys.argv[1:])

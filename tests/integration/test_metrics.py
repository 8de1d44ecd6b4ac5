"""The Prometheus endpoint of the real plugin processes: counts that match what happened,
the allowlist's staleness as it grows and resets, and a listener that follows
Configure (never Validate)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_plugin.allowlist import AllowlistEntry
from spire_tpm_attestor.runtime.host import AttestationFailed, PluginProcess, relay_attestation
from spire_tpm_attestor.runtime.metrics_endpoint import RENDER_INTERVAL
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.http_servers import DocumentServer, document, free_port
from tests.integration.plugins import (
    hcl,
    hcl_block,
    log_entries,
    provisioned_hash,
    rpc_error,
    wait_for_log,
)

pytestmark = pytest.mark.swtpm

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def telemetry(port: int = 0) -> str:
    return f'telemetry {{\nPrometheus {{\nhost = "127.0.0.1"\nport = {port}\n}}\n}}'


def configure(plugin: PluginProcess, text: str, port: int = 0) -> int:
    """Configure with `text` and return the port the endpoint serves on (`port` when
    not 0), from the last `serving metrics` line once that port is listening: the stderr
    reader may lag behind the answer, and the same address as before keeps its listener,
    so it logs nothing new."""
    plugin.configure(text)
    deadline = time.monotonic() + 10
    while True:
        lines = [e for e in log_entries(plugin) if e["@message"] == "serving metrics"]
        served = int(lines[-1]["port"]) if lines else 0
        if served and port in (0, served) and listening(served):
            return served
        assert time.monotonic() < deadline, "the plugin logged no endpoint serving"
        time.sleep(0.02)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def fresh_scrape(port: int) -> Samples:
    """A scrape of a page rendered after everything before this call (the endpoint
    renders at most once per RENDER_INTERVAL)."""
    time.sleep(RENDER_INTERVAL + 0.1)
    return scrape(port)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def hashes(
    agent: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> Iterator[tuple[Path, str]]:
    directory = tmp_path / "hashes"
    directory.mkdir()
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, "rsa2048")
    # An ECC AK: created in ms where an RSA AK takes 0.2 s and more, under scrapers more.
    agent.configure(hcl(tcti=bare_swtpm.tcti, ak_algorithm="ecc"))
    yield directory, pub_hash


def test_counters_move_by_exactly_what_happened_while_scraped(
    agent: PluginProcess, server: PluginProcess, hashes: tuple[Path, str]
) -> None:
    directory, pub_hash = hashes
    port = configure(server, hcl(hash_path=str(directory)) + "\n" + telemetry())
    before = scrape(port)
    scrapes = 0
    stop = threading.Event()

    def scraper() -> None:  # scrapes all along, faster than it is answered
        nonlocal scrapes
        while not stop.is_set():
            scrapes += serving(port)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        refused = 0
        for _ in range(3):
            with pytest.raises(AttestationFailed) as failure:
                relay_attestation(agent, server)
            assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
            refused += 1
        (directory / pub_hash).write_text("")
        admitted = 0
        for _ in range(4):
            relay_attestation(agent, server)
            admitted += 1
    finally:
        stop.set()
        thread.join()
    after = fresh_scrape(port)
    assert scrapes > 0

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    attestations = "spire_tpm_attestor_attestations_total"
    assert moved(attestations, decision="admitted", check="") == admitted == 4
    assert moved(attestations, decision="rejected", check="allowlist") == refused == 3
    assert moved("spire_tpm_attestor_attestation_seconds_count", decision="admitted") == 4
    assert moved("spire_tpm_attestor_attestation_seconds_count", decision="rejected") == 3
    assert value(after, "spire_tpm_attestor_pending_challenges") == 0
    assert moved("spire_tpm_attestor_internal_errors_total") == 0


def test_agent_steps_are_timed_per_attestation(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    port = configure(agent, hcl(tcti=swtpm.tcti) + "\n" + telemetry())
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path), pcr_selection={"sha256": [0, 7]}))
    before = scrape(port)
    for _ in range(2):
        relay_attestation(agent, server)
    after = fresh_scrape(port)
    for step in ("open", "ak_create", "ek_read", "activate_credential", "quote"):
        count = "spire_tpm_attestor_agent_step_seconds_count"
        assert value(after, count, step=step) - value(before, count, step=step) == 2, step
        assert value(after, "spire_tpm_attestor_agent_step_seconds_sum", step=step) > 0
    assert not any(name == "spire_tpm_attestor_agent_tpm_errors_total" for name, _ in after)


def test_the_agent_counts_a_tpm_that_fails(agent: PluginProcess, server: PluginProcess) -> None:
    port = configure(
        agent, hcl(tcti=f"swtpm:host=127.0.0.1,port={free_port()}") + "\n" + telemetry()
    )
    with pytest.raises(AttestationFailed) as failure:
        relay_attestation(agent, server)
    assert failure.value.side == "agent"
    assert failure.value.code == grpc.StatusCode.INTERNAL
    samples = fresh_scrape(port)
    assert value(samples, "spire_tpm_attestor_agent_tpm_errors_total", step="open", rc="") >= 1
    assert value(samples, "spire_tpm_attestor_internal_errors_total") >= 1


def eventually(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)  # scrapes well under MAX_SCRAPES_PER_SECOND


def test_an_allowlist_outage_in_metrics_and_in_the_log(server: PluginProcess) -> None:
    endpoint = DocumentServer(body=document(AllowlistEntry("ab" * 32))).start()
    source = 'allowlist "web"'
    try:
        seen = len(log_entries(server))
        port = configure(
            server,
            hcl_block(
                "allowlist",
                "web",
                type="http",
                url=endpoint.url,
                insecure_http=True,
                refresh_interval="500ms",
                max_staleness="4s",
            )
            + "\n"
            + telemetry(),
        )
        age = "spire_tpm_attestor_allowlist_copy_age_seconds"
        wait_for_log(server, lambda e: e["@message"] == "allowlist refreshed", after=seen)
        assert value(fresh_scrape(port), age, source=source) < 2
        assert value(scrape(port), "spire_tpm_attestor_allowlist_entries", source=source) == 1
        assert (
            value(scrape(port), "spire_tpm_attestor_allowlist_max_staleness_seconds", source=source)
            == 4
        )
        endpoint.status = 503  # the endpoint is down
        wait_for_log(
            server, lambda e: e["@message"].startswith("allowlist refresh failed"), after=seen
        )
        first = value(scrape(port), age, source=source)
        eventually(lambda: value(scrape(port), age, source=source) > first + 1, "the copy aging")
        wait_for_log(
            server, lambda e: e["@message"].startswith("allowlist lookups fail closed"), after=seen
        )
        stale_age = value(scrape(port), age, source=source)
        assert stale_age > 4
        failures = value(
            scrape(port),
            "spire_tpm_attestor_allowlist_refresh_failures_total",
            source=source,
            reason="http_status",
        )
        assert failures >= 2  # one per attempt, every 500 ms
        endpoint.status = 200  # recovered
        wait_for_log(server, lambda e: e["@message"] == "allowlist source recovered", after=seen)
        assert value(fresh_scrape(port), age, source=source) < 2
        time.sleep(1.0)  # more refreshes: a healthy source writes no more outage lines
        messages = [e["@message"].split(":")[0].split(";")[0] for e in log_entries(server)[seen:]]
        outage = [
            m
            for m in messages
            if m.startswith(
                (
                    "allowlist refresh failed",
                    "allowlist copy",
                    "allowlist lookups",
                    "allowlist source",
                )
            )
        ]
        assert outage == [
            "allowlist refresh failed (fetch failed)",
            "allowlist copy is getting stale",
            "allowlist lookups fail closed",
            "allowlist source recovered",
        ], messages
    finally:
        endpoint.stop()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_endpoint_follows_configure_and_never_validate(
    server: PluginProcess, tmp_path: Path
) -> None:
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    base = hcl(hash_path=str(hashes))
    first, second = free_port(), free_port()
    assert server.validate(base + "\n" + telemetry(first)) == []
    assert not listening(first)  # Validate starts nothing
    assert configure(server, base + "\n" + telemetry(first), first) == first
    server.configure(base + "\n" + telemetry(first))  # the same address: the same listener
    assert scrape(first)
    # A port that is taken: Configure fails and the endpoint in force stays.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        error = rpc_error(lambda: server.configure(base + "\n" + telemetry(taken.getsockname()[1])))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "telemetry: cannot serve metrics" in (error.details() or "")
    assert scrape(first)
    assert configure(server, base + "\n" + telemetry(second), second) == second
    assert not listening(first)  # the old listener is closed, not leaked
    assert scrape(second)
    server.configure(base)
    assert not listening(second)


def test_silent_and_flooding_scrapers_do_not_hold_up_attestation(
    agent: PluginProcess, server: PluginProcess, hashes: tuple[Path, str]
) -> None:
    directory, pub_hash = hashes
    (directory / pub_hash).write_text("")
    port = configure(server, hcl(hash_path=str(directory)) + "\n" + telemetry())
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            serving(port)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            assert relay_attestation(agent, server).spiffe_id
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for connection in silent:
            connection.close()
    eventually(lambda: serving(port), "the endpoint serving again")


def serving(port: int) -> bool:
    try:
        return bool(scrape(port))
    except OSError:  # turned away: at most MAX_SCRAPES_PER_SECOND, MAX_CONNECTIONS at once
        return False

"""Faults injected into what the real server plugin process depends on, with a real agent
and swtpm: an HTTPS allowlist endpoint that resets connections, trickles its body, answers
500/503, cuts its body short or switches its certificate (at the first fetch and at a
refresh). What an operator relies on: the last good copy is kept until `max_staleness`,
then lookups fail closed (`UNAVAILABLE`, never an admission, never `INTERNAL`); the
outage is logged once per transition; the process lives on and recovers when the
endpoint heals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from server_plugin.allowlist import AllowlistEntry
from spire_tpm_attestor.runtime.host import PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.http_servers import DocumentServer, TLSFiles, document
from tests.integration.plugins import (
    expect_rejection,
    hcl,
    hcl_block,
    log_entries,
    provisioned_hash,
    wait_for_log,
)

pytestmark = pytest.mark.swtpm

MAX_STALENESS = 3.0
REFRESH = {
    "refresh_interval": "200ms",
    "max_staleness": f"{MAX_STALENESS:g}s",
    "connect_timeout": "1s",
    "read_timeout": "1s",
    "fetch_timeout": "1s",
}
INCOMPLETE = "peer closed connection without sending complete message body"
# Each fault, how to bring it on, and words of the reason the plugin logs and answers.
FAULTS: dict[str, tuple[Callable[[DocumentServer, TLSFiles], object], str]] = {
    "reset_in_headers": (
        lambda s, _: setattr(s, "fault", "reset_in_headers"),
        "Server disconnected without sending a response",
    ),
    "reset_in_body": (lambda s, _: setattr(s, "fault", "reset_in_body"), INCOMPLETE),
    "trickle": (
        lambda s, _: setattr(s, "fault", "trickle"),
        "the response took longer than fetch_timeout (1s)",
    ),
    "trickle_headers": (
        lambda s, _: setattr(s, "fault", "trickle_headers"),
        "the response took longer than fetch_timeout (1s)",
    ),
    "short_body": (lambda s, _: setattr(s, "fault", "short_body"), "(received 167 bytes"),
    "short_chunks": (lambda s, _: setattr(s, "fault", "short_chunks"), "incomplete chunked read"),
    "500": (lambda s, _: setattr(s, "status", 500), "HTTP status 500"),
    "503_retry_after": (
        lambda s, _: (setattr(s, "status", 503), s.headers.update({"Retry-After": "3600"})),
        "HTTP status 503",
    ),
    "untrusted_certificate": (
        lambda s, stranger: s.switch_certificate(stranger),
        "CERTIFICATE_VERIFY_FAILED",
    ),
}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.create(tmp_path_factory.mktemp("faults-tls"), name="Inventory")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A certificate for the same address from a CA the server was not told of."""
    return TLSFiles.create(tmp_path_factory.mktemp("stranger-tls"), name="Stranger")


@pytest.fixture(scope="module")
def pub_hash(agent: PluginProcess, ek_ca: TestCA) -> Iterator[str]:
    """One swtpm for the module (a P-256 EK and AK: quick), the agent configured for it."""
    with SWTPM() as simulator:
        value = provisioned_hash(simulator, ek_ca, "ecc256")
        agent.configure(hcl(tcti=simulator.tcti, ek_algorithm="ecc256", ak_algorithm="ecc"))
        yield value


@pytest.fixture
def endpoint(tls: TLSFiles, pub_hash: str) -> Iterator[DocumentServer]:
    running = DocumentServer(tls=tls, body=document(AllowlistEntry(pub_hash, "good-copy")))
    running.body += b" " * 200  # room for a trickle to outlast fetch_timeout
    yield running.start()
    running.stop()


@pytest.fixture(autouse=True)
def never_internal(server: PluginProcess) -> Iterator[None]:
    """Whatever the fault, no error becomes INTERNAL and no source fails by a bug."""
    seen = len(log_entries(server))
    yield
    bugs = [
        entry
        for entry in log_entries(server)[seen:]
        if entry["@message"] in ("unexpected error", "allowlist lookup failed")
    ]
    assert not bugs, bugs


def configure(server: PluginProcess, endpoint: DocumentServer, ca: Path) -> int:
    """The HTTPS allowlist as the only way in; returns the log position before it."""
    seen = len(log_entries(server))
    allowlist = hcl_block(
        "allowlist", "inventory", type="http", url=endpoint.url, ca_path=str(ca), **REFRESH
    )
    server.configure(hcl(ek_policy="allowlist") + "\n" + allowlist)
    return seen


def said(endpoint: DocumentServer, words: str) -> Callable[[dict[str, str]], bool]:
    """A line of the source fetching from `endpoint` (not one of an earlier test's,
    whose source may still be on its way out) that starts with `words`."""
    return lambda entry: (
        entry.get("source", "").endswith(f"({endpoint.url})")
        and entry["@message"].startswith(words)
    )


def outage_lines(
    server: PluginProcess, endpoint: DocumentServer, seen: int
) -> list[tuple[str, str]]:
    """(level, first words) of the lines of the source fetching from `endpoint`, at
    info and above, since `seen`."""
    return [
        (entry["@level"], entry["@message"].split(";")[0].split(":")[0])
        for entry in log_entries(server)[seen:]
        if said(endpoint, "allowlist ")(entry) and entry["@level"] != "debug"
    ]


def heal(endpoint: DocumentServer, tls: TLSFiles) -> None:
    endpoint.fault = None
    endpoint.status = 200
    endpoint.headers.clear()
    if endpoint.tls is not tls:
        endpoint.switch_certificate(tls)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_at_the_first_fetch_fails_closed_until_the_endpoint_heals(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    endpoint: DocumentServer,
    tls: TLSFiles,
    stranger: TLSFiles,
    fault: str,
) -> None:
    bring_on, words = FAULTS[fault]
    bring_on(endpoint, stranger)
    seen = configure(server, endpoint, tls.ca)
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, "no copy of the list yet")
    assert audit["check"] == "allowlist_lookup"
    assert words in audit["reason"], audit
    first = wait_for_log(server, said(endpoint, "allowlist refresh failed"), seen)
    assert words in first["reason"], first

    heal(endpoint, tls)
    wait_for_log(server, said(endpoint, "allowlist source recovered"), seen)
    assert "name:good-copy" in relay_attestation(agent, server).selectors
    assert outage_lines(server, endpoint, seen) == [
        ("warn", "allowlist refresh failed (fetch failed)"),
        ("error", "allowlist lookups fail closed"),
        ("info", "allowlist source recovered"),
        ("info", "allowlist refreshed"),
    ]


@pytest.mark.parametrize("fault", ["trickle", "untrusted_certificate"])
def test_a_fault_at_a_refresh_keeps_the_last_good_copy_until_max_staleness(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    endpoint: DocumentServer,
    tls: TLSFiles,
    stranger: TLSFiles,
    fault: str,
) -> None:
    bring_on, words = FAULTS[fault]
    seen = configure(server, endpoint, tls.ca)
    assert "name:good-copy" in relay_attestation(agent, server).selectors
    endpoint.body += b" "  # a new version, not a 304, meets the fault
    bring_on(endpoint, stranger)
    failed = wait_for_log(server, said(endpoint, "allowlist refresh failed"), seen)
    assert words in failed["reason"], failed
    assert "keeping the last good copy" in failed["@message"]
    # Trickled, reset or untrusted: the last good copy answers until max_staleness...
    assert "name:good-copy" in relay_attestation(agent, server).selectors
    # ...then lookups fail closed, retryably, saying why.
    wait_for_log(server, said(endpoint, "allowlist lookups fail closed"), seen)
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, "max_staleness")
    assert words in audit["reason"], audit

    heal(endpoint, tls)
    wait_for_log(server, said(endpoint, "allowlist source recovered"), seen)
    assert "name:good-copy" in relay_attestation(agent, server).selectors
    assert outage_lines(server, endpoint, seen) == [  # each transition once, however many attempts
        ("info", "allowlist refreshed"),
        ("warn", "allowlist refresh failed (fetch failed)"),
        ("warn", "allowlist copy is getting stale"),
        ("error", "allowlist lookups fail closed"),
        ("info", "allowlist source recovered"),
        ("info", "allowlist refreshed"),  # the new version
    ]


def test_a_certificate_rotated_to_a_new_ca_recovers_when_ca_path_gains_it(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    endpoint: DocumentServer,
    tls: TLSFiles,
    stranger: TLSFiles,
    tmp_path: Path,
) -> None:
    """The endpoint moves to a certificate of a new CA before the SPIRE server trusts
    it: refreshes fail (the last good copy answers meanwhile) until the operator adds the
    new CA to the ca_path file, which is reloaded without a restart."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls.ca.read_bytes())
    seen = configure(server, endpoint, ca)
    assert "name:good-copy" in relay_attestation(agent, server).selectors
    endpoint.switch_certificate(stranger)
    failed = wait_for_log(server, said(endpoint, "allowlist refresh failed"), seen)
    assert "CERTIFICATE_VERIFY_FAILED" in failed["reason"], failed
    ca.write_bytes(tls.ca.read_bytes() + stranger.ca.read_bytes())
    wait_for_log(server, said(endpoint, "allowlist source recovered"), seen)
    assert "name:good-copy" in relay_attestation(agent, server).selectors


def test_a_deny_list_rewritten_in_place_never_lets_its_eks_through(
    agent: PluginProcess, server: PluginProcess, pub_hash: str, ek_ca: TestCA, tmp_path: Path
) -> None:
    """`>` then a slow write (not a rename): the file is empty, then half written, for
    longer than the reload's settle time. Neither loads, so the last good deny list
    stays in force throughout; the finished file then loads."""
    revoked = tmp_path / "revoked.json"
    listed = document(AllowlistEntry(pub_hash), AllowlistEntry("ab" * 32))
    revoked.write_bytes(listed)
    server.configure(
        hcl(ek_ca_path=str(ek_ca.bundle_path))
        + "\n"
        + hcl_block("denylist", "revoked", type="file", path=str(revoked))
    )
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "on the deny list")
    seen = len(log_entries(server))
    with revoked.open("wb") as rewrite:
        failed = wait_for_log(server, lambda e: e["@message"].startswith("reload failed"), seen)
        assert "not valid JSON" in failed["reason"] or "empty" in failed["reason"], failed
        expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "on the deny list")
        seen = len(log_entries(server))
        rewrite.write(listed[: len(listed) // 2])
        rewrite.flush()
        wait_for_log(server, lambda e: e["@message"].startswith("reload failed"), seen)
        expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "on the deny list")
        seen = len(log_entries(server))
        rewrite.write(listed[len(listed) // 2 :])
    wait_for_log(server, lambda e: e["@message"] == "reloaded", seen)
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "on the deny list")

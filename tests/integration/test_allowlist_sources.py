"""Allowlist and deny-list sources through the real server plugin, against swtpm.

Directories (flat, bucketed), local document files, and HTTP(S) endpoints (nginx over
TLS, and a tiny Python server for the misbehaving cases), consulted in order, with
deny lists beating every allow, and outages failing closed after max_staleness.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from server_plugin.allowlist import AllowlistEntry
from spire_tpm_attestor.runtime.host import (
    AttestationFailed,
    AttestationResult,
    PluginProcess,
    relay_attestation,
)
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.http_servers import DocumentServer, Nginx, TLSFiles, document, publish
from tests.integration.plugins import (
    AgentConversation,
    ServerConversation,
    audit_line_after,
    audit_lines,
    expect_rejection,
    hcl,
    hcl_block,
    log_entries,
    provisioned_hash,
    rpc_error,
    wait_for_log,
)

pytestmark = pytest.mark.swtpm

NOT_LISTED = "not in the allowlist"


@pytest.fixture
def pub_hash(agent: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA) -> str:
    """The EK hash of a fresh swtpm with an RSA EK certificate; the agent uses that TPM."""
    value = provisioned_hash(bare_swtpm, ek_ca, "rsa2048")
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    return value


def write_entry(path: Path, body: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


def bucketed(root: Path, pub_hash: str) -> Path:
    return root / pub_hash[:2] / pub_hash


def settle(
    agent: PluginProcess, server: PluginProcess, done: Callable[[AttestationResult | None], bool]
) -> AttestationResult | None:
    """Attest until `done(result or None when refused)`; for lists refreshed in the
    background, whose changes land at a time of their own."""
    deadline = time.monotonic() + 30
    while True:
        try:
            result: AttestationResult | None = relay_attestation(agent, server)
        except AttestationFailed:
            result = None
        if done(result):
            return result
        assert time.monotonic() < deadline, "the change never took effect"
        time.sleep(0.1)


# --- directories ----------------------------------------------------------------------


def test_bucketed_directory_admits_listed_eks_with_their_metadata(
    agent: PluginProcess, server: PluginProcess, pub_hash: str, tmp_path: Path
) -> None:
    root = tmp_path / "racks"
    root.mkdir()
    write_entry(root / pub_hash)  # the flat place does not count in a bucketed layout
    server.configure(hcl_block("allowlist", "racks", type="bucketed_directory", path=str(root)))
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, NOT_LISTED)
    assert audit["check"] == "allowlist"

    write_entry(bucketed(root, pub_hash), '{"name": "r7-n1", "labels": {"rack": "r7"}}')
    result = relay_attestation(agent, server)
    assert {"name:r7-n1", "label:rack:r7", f"pub_hash:{pub_hash}"} <= set(result.selectors)


def test_sources_are_consulted_in_order_hash_path_first(
    agent: PluginProcess, server: PluginProcess, pub_hash: str, tmp_path: Path
) -> None:
    flat, racks, extra = tmp_path / "flat", tmp_path / "racks", tmp_path / "extra"
    for directory in (flat, racks, extra):
        directory.mkdir()
    write_entry(bucketed(racks, pub_hash), '{"name": "from-racks"}')
    write_entry(extra / pub_hash, '{"name": "from-extra"}')
    server.configure(
        "\n".join(
            [
                hcl(hash_path=str(flat), agent_path_template="{{ .Name }}"),
                hcl_block("allowlist", "racks", type="bucketed_directory", path=str(racks)),
                hcl_block("allowlist", "extra", type="directory", path=str(extra)),
            ]
        )
    )
    assert relay_attestation(agent, server).spiffe_id.endswith("/from-racks")
    write_entry(flat / pub_hash, '{"name": "from-hash-path"}')
    assert relay_attestation(agent, server).spiffe_id.endswith("/from-hash-path")


class StalledEntry:
    """An entry file that is a FIFO: a lookup that opens it waits, as a read from a
    stalled NFS server does, until the test releases it (as an empty entry)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self._path = path
        self._writer: int | None = None

    def wait_for_reader(self) -> None:
        """Returns once the server has opened the entry (its read now waits for data)."""
        deadline = time.monotonic() + 20
        while self._writer is None:
            try:  # without a reader, a non-blocking open for writing fails (ENXIO)
                self._writer = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                assert error.errno == errno.ENXIO, error
                assert time.monotonic() < deadline, "the server never read the entry"
                time.sleep(0.01)

    def release(self) -> None:
        """The read ends on an empty entry: the EK is listed."""
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None


@pytest.mark.parametrize(
    "stalled", ["allowlist entry, for the payload", "deny entry, for the answer"]
)
def test_a_stalled_directory_read_stalls_no_other_stream(
    agent: PluginProcess, server: PluginProcess, pub_hash: str, tmp_path: Path, stalled: str
) -> None:
    """Directory entries are read off the server's event loop: while one stream's read
    waits, another stream is answered, and then the first completes. (Were the entry read
    on the loop, no other stream would be answered until the read returned.)"""
    listed, revoked = tmp_path / "listed", tmp_path / "revoked"
    listed.mkdir()
    revoked.mkdir()
    server.configure(
        "\n".join(
            [
                hcl(ek_policy="allowlist"),
                hcl_block("allowlist", "racks", type="bucketed_directory", path=str(listed)),
                hcl_block("denylist", "revoked", type="directory", path=str(revoked)),
            ]
        )
    )
    node, spire = AgentConversation(agent), ServerConversation(server)
    payload = node.payload()
    blocked: Callable[[], object]
    if stalled.startswith("allowlist"):
        stall = StalledEntry(bucketed(listed, pub_hash))
        blocked = lambda: spire.send_payload(payload)  # noqa: E731
    else:
        write_entry(bucketed(listed, pub_hash))
        answer = node.answer(spire.send_payload(payload).challenge)
        stall = StalledEntry(revoked / pub_hash)  # deny-listed while the agent answered
        blocked = lambda: spire.send_answer(answer)  # noqa: E731
    outcome: list[object] = []

    def wait_for_blocked() -> None:
        try:
            outcome.append(blocked())
        except grpc.RpcError as error:
            outcome.append(error)

    waiting = threading.Thread(target=wait_for_blocked, daemon=True)
    waiting.start()
    try:
        stall.wait_for_reader()
        other = ServerConversation(server, timeout=10)
        try:
            error = rpc_error(lambda: other.send_payload(b"not a payload"))
        finally:
            other.close()
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    finally:
        stall.release()
        waiting.join(timeout=30)
    try:
        if stalled.startswith("allowlist"):
            challenge = outcome[0].challenge  # type: ignore[attr-defined]
            attributes = spire.send_answer(node.answer(challenge)).agent_attributes
            assert attributes.spiffe_id.endswith(f"/tpm/{pub_hash}")
        else:
            assert isinstance(outcome[0], grpc.RpcError)
            assert outcome[0].code() == grpc.StatusCode.PERMISSION_DENIED
            assert "on the deny list" in str(outcome[0].details())
    finally:
        node.close()
        spire.close()


# --- deny lists -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "bucketed_directory", "file"])
def test_deny_list_beats_certificate_and_allowlist(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    ek_ca: TestCA,
    tmp_path: Path,
    kind: str,
) -> None:
    allow = tmp_path / "allow"
    write_entry(allow / pub_hash)
    revoked = tmp_path / "revoked"
    if kind == "file":
        revoked = tmp_path / "revoked.json"
        revoked.write_text(json.dumps({"version": 1, "entries": []}))
    else:
        revoked.mkdir()
    config = "\n".join(
        [
            hcl(
                ek_policy="cert_and_allowlist",
                ek_ca_path=str(ek_ca.bundle_path),
                hash_path=str(allow),
            ),
            hcl_block("denylist", "revoked", type=kind, path=str(revoked)),
        ]
    )
    server.configure(config)
    assert relay_attestation(agent, server).spiffe_id  # not denied yet: fully trusted

    if kind == "file":
        revoked.write_text(json.dumps({"version": 1, "entries": [{"pub_hash": pub_hash}]}))
        server.configure(config)  # (hot reload of the file has its own test)
    elif kind == "bucketed_directory":
        write_entry(bucketed(revoked, pub_hash))
    else:
        write_entry(revoked / pub_hash)
    audit = expect_rejection(
        agent, server, grpc.StatusCode.PERMISSION_DENIED, f"EK {pub_hash} is on the deny list"
    )
    assert (audit["check"], audit["ek_hash"]) == ("denylist", pub_hash)


@pytest.mark.parametrize("failure", ["bad_entry", "directory_gone"])
def test_a_deny_list_that_cannot_answer_rejects(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    ek_ca: TestCA,
    tmp_path: Path,
    failure: str,
) -> None:
    revoked = tmp_path / "revoked"
    revoked.mkdir()
    server.configure(
        "\n".join(
            [
                hcl(ek_ca_path=str(ek_ca.bundle_path)),
                hcl_block("denylist", "revoked", type="directory", path=str(revoked)),
            ]
        )
    )
    assert relay_attestation(agent, server).spiffe_id
    if failure == "bad_entry":
        write_entry(revoked / pub_hash, "{not json")
    else:
        revoked.rmdir()  # e.g. an NFS mount that went away
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, "deny list lookup failed")
    assert audit["check"] == "denylist_lookup"


def test_deny_list_file_reloads_without_a_restart(
    agent: PluginProcess, server: PluginProcess, pub_hash: str, ek_ca: TestCA, tmp_path: Path
) -> None:
    revoked = tmp_path / "revoked.json"
    revoked.write_text(json.dumps({"version": 1, "entries": []}))
    server.configure(
        "\n".join(
            [
                hcl(ek_ca_path=str(ek_ca.bundle_path)),
                hcl_block("denylist", "revoked", type="file", path=str(revoked)),
            ]
        )
    )
    assert relay_attestation(agent, server).spiffe_id
    seen = len(log_entries(server))
    publish(revoked, document(AllowlistEntry(pub_hash)))
    wait_for_log(server, lambda e: e["@message"] == "reloaded", after=seen)
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "on the deny list")

    seen = len(log_entries(server))
    revoked.write_text("{broken")  # a bad file keeps the last good deny list
    failed = wait_for_log(server, lambda e: e["@message"].startswith("reload failed"), after=seen)
    assert "not valid JSON" in failed["reason"]
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "on the deny list")


# --- HTTP(S) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    publish(root / "allowlist.json", document())
    return root


@pytest.fixture
def nginx(tls: TLSFiles, web_root: Path, tmp_path: Path) -> Iterator[Nginx]:
    running = Nginx(tmp_path / "nginx", web_root, tls).start()
    yield running
    running.stop()


def http_block(url: str, **options: object) -> str:
    settings: dict[str, object] = {
        "type": "http",
        "url": url,
        "refresh_interval": "200ms",
        "read_timeout": "2s",
        "connect_timeout": "2s",
    }
    if url.startswith("http://"):
        settings["insecure_http"] = True  # the plain-HTTP test server on loopback
    settings.update(options)
    return hcl_block("allowlist", "inventory", **settings)


def test_http_allowlist_over_tls_follows_additions_and_removals(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    nginx: Nginx,
    tls: TLSFiles,
    web_root: Path,
) -> None:
    listed = AllowlistEntry(pub_hash, "inv-7", {"rack": "r9"})
    served = web_root / "allowlist.json"
    server.configure(http_block(f"{nginx.url}/allowlist.json", ca_path=str(tls.ca)))
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, NOT_LISTED)
    assert audit["check"] == "allowlist"

    publish(served, document(listed))
    result = settle(agent, server, lambda r: r is not None)
    assert result is not None
    assert {"name:inv-7", "label:rack:r9"} <= set(result.selectors)

    publish(served, document())
    settle(agent, server, lambda r: r is None)
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, NOT_LISTED)
    # Unchanged, the list is now confirmed by conditional requests.
    nginx.statuses(including="304")  # (fails if none comes)


def test_http_outage_uses_the_last_good_copy_then_fails_closed(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    nginx: Nginx,
    tls: TLSFiles,
    web_root: Path,
) -> None:
    publish(web_root / "allowlist.json", document(AllowlistEntry(pub_hash)))
    server.configure(
        http_block(f"{nginx.url}/allowlist.json", ca_path=str(tls.ca), max_staleness="4s")
    )
    assert relay_attestation(agent, server).spiffe_id
    seen = len(log_entries(server))
    nginx.stop()
    wait_for_log(server, lambda e: "fetch failed" in e["@message"], after=seen)
    # The endpoint is down (the plugin saw it): the last good copy still admits...
    assert relay_attestation(agent, server).spiffe_id
    # ...until it is older than max_staleness; then lookups fail closed, retryably.
    settle(agent, server, lambda r: r is None)
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, "max_staleness")
    assert audit["check"] == "allowlist_lookup"


def test_http_endpoint_that_requires_a_client_certificate(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    tls: TLSFiles,
    web_root: Path,
    tmp_path: Path,
) -> None:
    publish(web_root / "allowlist.json", document(AllowlistEntry(pub_hash)))
    nginx = Nginx(tmp_path / "mtls", web_root, tls, require_client_certificate=True).start()
    try:
        url = f"{nginx.url}/allowlist.json"
        server.configure(http_block(url, ca_path=str(tls.ca)))
        audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, "HTTP status 400")
        assert audit["check"] == "allowlist_lookup"
        server.configure(
            http_block(
                url,
                ca_path=str(tls.ca),
                client_certificate_path=str(tls.client_certificate),
                client_key_path=str(tls.client_key),
            )
        )
        assert relay_attestation(agent, server).spiffe_id
    finally:
        nginx.stop()


@pytest.mark.parametrize(
    ("misbehave", "reason"),
    [
        (lambda s: setattr(s, "body", b"<html>502 Bad Gateway</html>"), "not valid JSON"),
        (lambda s: setattr(s, "body", b'{"version": 2, "entries": []}'), "unsupported version 2"),
        (lambda s: setattr(s, "body", s.body + b" " * 70000), "max_body_bytes"),
        (lambda s: setattr(s, "delay", 3.0), "ReadTimeout"),
    ],
    ids=["garbage", "wrong_version", "oversized", "slow"],
)
def test_bad_responses_keep_the_last_good_copy(
    agent: PluginProcess,
    server: PluginProcess,
    pub_hash: str,
    misbehave: Callable[[DocumentServer], object],
    reason: str,
) -> None:
    endpoint = DocumentServer(body=document(AllowlistEntry(pub_hash, "good-copy"))).start()
    try:
        server.configure(http_block(endpoint.url, read_timeout="500ms", max_body_bytes=65536))
        assert "name:good-copy" in relay_attestation(agent, server).selectors
        seen = len(log_entries(server))
        misbehave(endpoint)
        refused = wait_for_log(server, lambda e: "refresh failed" in e["@message"], after=seen)
        assert reason in refused["reason"], refused
        assert "name:good-copy" in relay_attestation(agent, server).selectors

        # The same response to a server with no good copy: fail closed, retryably.
        server.configure(http_block(endpoint.url, read_timeout="500ms", max_body_bytes=65536))
        seen = len(audit_lines(server))
        with pytest.raises(AttestationFailed) as failure:
            relay_attestation(agent, server)
        assert failure.value.code == grpc.StatusCode.UNAVAILABLE
        assert "no copy of the list yet" in failure.value.details
        assert audit_line_after(server, seen)["check"] == "allowlist_lookup"
    finally:
        endpoint.stop()


def test_http_deny_list(
    agent: PluginProcess, server: PluginProcess, pub_hash: str, ek_ca: TestCA
) -> None:
    endpoint = DocumentServer(body=document(AllowlistEntry(pub_hash))).start()
    try:
        server.configure(
            "\n".join(
                [
                    hcl(ek_ca_path=str(ek_ca.bundle_path)),
                    hcl_block(
                        "denylist", "revoked", type="http", url=endpoint.url, insecure_http=True
                    ),
                ]
            )
        )
        audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "deny list")
        assert audit["check"] == "denylist"
    finally:
        endpoint.stop()

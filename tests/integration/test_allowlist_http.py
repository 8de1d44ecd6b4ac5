"""The HTTP(S) allowlist source against servers on loopback, driven directly (no plugin)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest

from server_plugin.allowlist import AllowlistEntry, AllowlistError
from server_plugin.allowlist.document import DocumentError
from server_plugin.allowlist.http import (
    FetchError,
    HTTPAllowlist,
    HTTPSettings,
    failure_reason,
    http_error_reason,
)
from tests.integration.http_servers import (
    DocumentServer,
    Nginx,
    TLSFiles,
    document,
    json_body,
    publish,
)
from tests.integration.plugins import hcl, hcl_block, start_plugin
from tests.unit.test_allowlist_document import ek_hash

NODE = AllowlistEntry(ek_hash(1), "node-1", {"rack": "r1"})
OTHER = AllowlistEntry(ek_hash(2))


def eventually(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server() -> Iterator[DocumentServer]:
    running = DocumentServer(body=document(NODE)).start()
    yield running
    running.stop()


@pytest.fixture
def sources() -> Iterator[list[HTTPAllowlist]]:
    opened: list[HTTPAllowlist] = []
    yield opened
    for source in opened:
        source.close()


def open_source(
    sources: list[HTTPAllowlist],
    settings: HTTPSettings,
    clock: Callable[[], float] = time.monotonic,
) -> HTTPAllowlist:
    source = HTTPAllowlist('allowlist "test"', settings, clock)
    sources.append(source)
    source.start()
    return source


def quick(url: str, **options: object) -> HTTPSettings:
    """Refreshes are driven by hand (refresh()): the background interval is long."""
    settings = HTTPSettings(url=url, refresh_interval=3600, max_staleness=60, read_timeout=2)
    return replace(settings, **options)  # type: ignore[arg-type]


def test_lookup_returns_entries_with_metadata(
    server: DocumentServer, sources: list[HTTPAllowlist]
) -> None:
    source = open_source(sources, quick(server.url))
    assert source.lookup(NODE.pub_hash) == replace(NODE, source=source.describe())
    assert source.lookup(OTHER.pub_hash) is None


def test_conditional_requests_get_304_and_keep_the_copy(
    server: DocumentServer, sources: list[HTTPAllowlist]
) -> None:
    source = open_source(sources, quick(server.url))
    assert source.lookup(NODE.pub_hash) is not None
    assert source.refresh() is True
    assert server.requests[-1]["If-None-Match"] == server.etag
    assert source.lookup(NODE.pub_hash) is not None
    server.body = document(OTHER)  # a new ETag: the next refresh takes the new list
    assert source.refresh() is True
    assert source.lookup(NODE.pub_hash) is None
    assert source.lookup(OTHER.pub_hash) is not None


@pytest.mark.parametrize(
    ("misbehave", "reason"),
    [
        (lambda s: setattr(s, "body", b"<html>oops</html>"), "not valid JSON"),
        (lambda s: setattr(s, "body", json_body({"version": 2, "entries": []})), "version 2"),
        (
            lambda s: setattr(s, "body", json_body({"version": 1, "entries": [{"pub_hash": "x"}]})),
            "entry 0: pub_hash",
        ),
        (lambda s: setattr(s, "body", document(NODE, OTHER) + b" " * 5000), "max_body_bytes"),
        (
            lambda s: (
                setattr(s, "body", document(NODE, OTHER) + b" " * 5000),
                setattr(s, "chunked", True),
            ),
            "max_body_bytes",
        ),
        (lambda s: setattr(s, "delay", 1.0), "ReadTimeout"),
        (lambda s: setattr(s, "status", 500), "HTTP status 500"),
        (lambda s: setattr(s, "body", b"[" * 4000), "nested too deeply"),
    ],
    ids=[
        "garbage",
        "wrong_version",
        "bad_entry",
        "oversized",
        "oversized_chunked",
        "slow",
        "500",
        "deeply_nested",
    ],
)
def test_bad_responses_keep_the_last_good_copy_and_say_why(
    server: DocumentServer,
    sources: list[HTTPAllowlist],
    caplog: pytest.LogCaptureFixture,
    misbehave: Callable[[DocumentServer], object],
    reason: str,
) -> None:
    source = open_source(sources, quick(server.url, max_body_bytes=4096, read_timeout=0.3))
    assert source.lookup(NODE.pub_hash) is not None
    misbehave(server)  # a changed body has a new ETag: it is not answered 304
    assert source.refresh() is False
    assert reason in caplog.records[-1].__dict__["reason"], caplog.records[-1].__dict__
    assert "keeping the last good copy" in caplog.records[-1].getMessage()
    assert source.lookup(NODE.pub_hash) is not None  # the last good copy
    assert source.lookup(OTHER.pub_hash) is None  # and nothing of the refused one


def test_an_unexpected_error_in_a_refresh_does_not_stop_refreshing(
    server: DocumentServer, sources: list[HTTPAllowlist], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fetch = HTTPAllowlist._fetch

    def broken(self: HTTPAllowlist, snapshot: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(HTTPAllowlist, "_fetch", broken)
    source = open_source(sources, quick(server.url))
    # The first attempt is over (lookups do not wait for it) and says what went wrong.
    with pytest.raises(AllowlistError, match="no copy of the list yet: unexpected error"):
        source.lookup(NODE.pub_hash)
    assert source._thread.is_alive()
    monkeypatch.setattr(HTTPAllowlist, "_fetch", real_fetch)
    assert source.refresh() is True
    assert source.lookup(NODE.pub_hash) is not None


def test_with_no_good_copy_lookups_fail_closed(
    server: DocumentServer, sources: list[HTTPAllowlist]
) -> None:
    server.body = json_body({"version": 9})
    source = open_source(sources, quick(server.url))
    with pytest.raises(AllowlistError, match="no copy of the list yet: unsupported version 9"):
        source.lookup(NODE.pub_hash)


def test_outage_uses_the_last_good_copy_until_max_staleness(
    server: DocumentServer, sources: list[HTTPAllowlist]
) -> None:
    clock = Clock()
    source = open_source(sources, quick(server.url, max_staleness=60), clock)
    assert source.lookup(NODE.pub_hash) is not None
    server.stop()
    clock.now += 30
    assert source.refresh() is False
    assert source.lookup(NODE.pub_hash) is not None  # 30 s old: still good
    clock.now += 31
    with pytest.raises(AllowlistError, match=r"confirmed 61s ago, more than max_staleness \(60s\)"):
        source.lookup(NODE.pub_hash)
    with pytest.raises(AllowlistError):
        source.lookup(OTHER.pub_hash)  # an absent EK is no longer a clean "absent" either


def test_an_outage_is_logged_by_its_transitions_not_its_attempts(
    server: DocumentServer, sources: list[HTTPAllowlist], caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    source = open_source(sources, quick(server.url, max_staleness=60), clock)
    assert source.lookup(NODE.pub_hash) is not None
    caplog.set_level(logging.DEBUG, logger="server_plugin.allowlist.http")
    seen = len(caplog.records)
    server.status = 503
    clock.now += 10
    for _ in range(5):  # attempts, each counted but not each a warning
        assert source.refresh() is False
    clock.now += 21  # 31 s without a good copy: more than half of max_staleness
    source.check_staleness()
    assert source.refresh() is False
    clock.now += 30  # 61 s: lookups fail closed
    source.check_staleness()
    source.check_staleness()
    with pytest.raises(AllowlistError, match="max_staleness"):
        source.lookup(NODE.pub_hash)
    server.status = 200
    clock.now += 5
    assert source.refresh() is True
    assert source.lookup(NODE.pub_hash) is not None
    records = [r for r in caplog.records[seen:] if r.levelno >= logging.INFO]
    assert [(r.levelname, r.getMessage().split(":")[0].split(";")[0]) for r in records] == [
        ("WARNING", "allowlist refresh failed (fetch failed)"),
        ("WARNING", "allowlist copy is getting stale"),
        ("ERROR", "allowlist lookups fail closed"),
        ("INFO", "allowlist source recovered"),
    ]
    first, stale, closed, recovered = (r.__dict__ for r in records)
    assert first["reason"] == "HTTP status 503"
    assert (stale["age_seconds"], stale["max_staleness_seconds"]) == ("31", "60")
    assert "raise max_staleness" in records[2].getMessage()
    assert closed["age_seconds"] == "61"
    assert recovered["down_seconds"] == "56"  # from the first failure to the recovery
    again = [r for r in caplog.records[seen:] if r.getMessage() == "allowlist refresh failed again"]
    assert len(again) == 5


def test_a_source_that_never_loaded_says_at_once_that_it_fails_closed(
    server: DocumentServer, sources: list[HTTPAllowlist], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server_plugin.allowlist.http")
    server.status = 503
    source = open_source(sources, quick(server.url))
    with pytest.raises(AllowlistError, match="no copy of the list yet"):
        source.lookup(NODE.pub_hash)
    assert source.refresh() is False
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "allowlist refresh failed (fetch failed); no copy of the list yet"),
        (
            "ERROR",
            "allowlist lookups fail closed: no copy of the list has loaded; attestations "
            "that need this source are refused (UNAVAILABLE) until a refresh succeeds: make "
            "the URL serve a good document",
        ),
    ]


def test_a_304_confirms_the_copy_as_fresh(
    server: DocumentServer, sources: list[HTTPAllowlist]
) -> None:
    clock = Clock()
    source = open_source(sources, quick(server.url, max_staleness=60), clock)
    assert source.lookup(NODE.pub_hash) is not None
    clock.now += 50
    assert source.refresh() is True  # answered 304
    clock.now += 50
    assert source.lookup(NODE.pub_hash) is not None  # 50 s after the 304, not 100


def test_bearer_token_is_sent_and_reread_when_its_file_changes(
    tls: TLSFiles, sources: list[HTTPAllowlist], tmp_path: Path
) -> None:
    server = DocumentServer(tls=tls, body=document(NODE), token="first").start()
    try:
        token = tmp_path / "token"
        token.write_text("first\n")
        source = open_source(
            sources, quick(server.url, ca_path=str(tls.ca), bearer_token_path=str(token))
        )
        assert source.lookup(NODE.pub_hash) is not None
        assert server.requests[-1]["Authorization"] == "Bearer first"
        server.token = "second"
        token.write_text("second\n")
        eventually(
            lambda: source.refresh() and server.requests[-1]["Authorization"] == "Bearer second",
            "the new token",
        )
    finally:
        server.stop()


def test_refreshes_reuse_the_kept_alive_connection(
    server: DocumentServer, sources: list[HTTPAllowlist]
) -> None:
    source = open_source(sources, quick(server.url))
    assert source.lookup(NODE.pub_hash) is not None
    assert source.refresh() is True
    server.body = document(OTHER)
    assert source.refresh() is True
    assert source.lookup(OTHER.pub_hash) is not None
    assert len(server.connections) == 3
    assert len(set(server.connections)) == 1, server.connections


def test_the_client_is_rebuilt_when_its_tls_material_changes(
    tls: TLSFiles, sources: list[HTTPAllowlist], tmp_path: Path
) -> None:
    server = DocumentServer(tls=tls, body=document(NODE)).start()
    try:
        ca = tmp_path / "ca.pem"
        ca.write_bytes(tls.ca.read_bytes())
        source = open_source(sources, quick(server.url, ca_path=str(ca)))
        assert source.lookup(NODE.pub_hash) is not None
        assert source.refresh() is True
        assert len(set(server.connections)) == 1, "one TLS connection, kept alive"
        first = source._http
        ca.write_bytes(tls.ca.read_bytes() + b"\n")  # the same CA, reloaded all the same
        eventually(lambda: source.refresh() and source._http is not first, "a new client")
        assert len(set(server.connections)) == 2, server.connections
        assert first is not None and first.is_closed
    finally:
        server.stop()


def test_tls_to_a_server_outside_ca_path_fails(
    tls: TLSFiles, sources: list[HTTPAllowlist], tmp_path: Path
) -> None:
    other = TLSFiles.create(tmp_path / "other", name="Other")
    server = DocumentServer(tls=tls, body=document(NODE)).start()
    try:
        source = open_source(sources, quick(server.url, ca_path=str(other.ca)))
        with pytest.raises(AllowlistError, match="CERTIFICATE_VERIFY_FAILED"):
            source.lookup(NODE.pub_hash)
    finally:
        server.stop()


@pytest.fixture
def nginx(tls: TLSFiles, tmp_path: Path) -> Iterator[Nginx]:
    root = tmp_path / "www"
    root.mkdir()
    publish(root / "allowlist.json", document(NODE))
    running = Nginx(tmp_path / "nginx", root, tls).start()
    yield running
    running.stop()


def test_nginx_answers_refreshes_with_304_until_the_file_changes(
    nginx: Nginx, tls: TLSFiles, sources: list[HTTPAllowlist]
) -> None:
    source = open_source(sources, quick(f"{nginx.url}/allowlist.json", ca_path=str(tls.ca)))
    assert source.lookup(NODE.pub_hash) is not None
    assert source.refresh() is True
    assert source.refresh() is True
    publish(nginx.root / "allowlist.json", document(OTHER))
    assert source.refresh() is True
    assert source.lookup(NODE.pub_hash) is None
    assert source.lookup(OTHER.pub_hash) is not None
    assert nginx.statuses(4) == ["200", "304", "304", "200"], nginx.access_log()


def test_plugin_exits_within_two_seconds_with_a_refresh_in_flight(
    tls: TLSFiles, tmp_path: Path
) -> None:
    # A refresh stuck on a slow endpoint and a watched CA file must not hold up Shutdown.
    stuck = DocumentServer(delay=30).start()
    try:
        with start_plugin("server") as plugin:
            plugin.configure(
                "\n".join(
                    [
                        hcl(ek_ca_path=str(tls.ca)),
                        hcl_block(
                            "allowlist",
                            "slow",
                            type="http",
                            url=stuck.url,
                            read_timeout="1m",
                            insecure_http=True,
                        ),
                    ]
                )
            )
            eventually(lambda: len(stuck.requests) > 0, "the refresh to start")
            elapsed = plugin.stop()
            assert plugin.process.returncode == 0, "exited by itself, not killed"
            assert elapsed < 2.0
    finally:
        stuck.stop()


def test_validate_and_a_rejected_configure_make_no_request(server: DocumentServer) -> None:
    """Reading a configuration is inert: only the committed one fetches (or watches)."""
    allowlist = hcl_block("allowlist", "web", type="http", url=server.url, insecure_http=True)
    with start_plugin("server") as plugin:
        assert plugin.validate(allowlist) == []
        with pytest.raises(grpc.RpcError) as rejected:
            plugin.configure(allowlist + "\n" + hcl(ek_policy="cert"))  # needs ek_ca_path
        assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        time.sleep(1.0)  # the refresh thread used to fetch at once
        assert server.requests == []
        plugin.configure(allowlist)
        eventually(lambda: len(server.requests) == 1, "the committed configuration's fetch")


def test_failures_are_counted_by_reason() -> None:
    assert http_error_reason(httpx.ReadTimeout("slow")) == "timeout"
    assert http_error_reason(httpx.ConnectError("refused")) == "connection"
    assert failure_reason(FetchError("HTTP status 503", "http_status")) == "http_status"
    assert failure_reason(DocumentError("not valid JSON")) == "document"
    assert failure_reason(RuntimeError("a bug")) == "unexpected"

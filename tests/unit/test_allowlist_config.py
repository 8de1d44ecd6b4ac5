"""Allowlist and deny-list blocks in the server configuration: sources, order, problems."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server_plugin.allowlist.directory import BucketedDirectory, FlatDirectory
from server_plugin.allowlist.file import DocumentFile
from server_plugin.allowlist.http import HTTPAllowlist
from server_plugin.config import ServerConfig, build_server_config
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig
from spire_tpm_attestor.testing.ca import TestCA
from tests.integration.plugins import hcl, hcl_block

CORE = CoreConfig("example.org")
EMPTY_DOCUMENT = '{"version": 1, "entries": []}'


def build(text: str) -> ServerConfig:
    return build_server_config(text, CORE)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigProblems) as error:
        build(text)
    return error.value.problems


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    for name in ("flat", "racks", "revoked"):
        (tmp_path / name).mkdir()
    (tmp_path / "revoked.json").write_text(EMPTY_DOCUMENT)
    return {name: str(tmp_path / name) for name in ("flat", "racks", "revoked", "revoked.json")}


def test_sources_in_order_and_deny_lists(dirs: dict[str, str]) -> None:
    config = build(
        "\n".join(
            [
                hcl_block("allowlist", "zz", type="directory", path=dirs["racks"]),
                hcl(hash_path=dirs["flat"]),
                hcl_block("allowlist", "aa", type="bucketed_directory", path=dirs["racks"]),
                hcl_block(
                    "allowlist",
                    "web",
                    type="http",
                    url="http://127.0.0.1:9/a.json",
                    insecure_http=True,
                ),
                hcl_block("denylist", "revoked", type="file", path=dirs["revoked.json"]),
                hcl_block("denylist", "dir", type="directory", path=dirs["revoked"]),
            ]
        )
    )
    try:
        assert [type(s) for s in config.allowlist] == [
            FlatDirectory,  # hash_path first, then the blocks as written
            FlatDirectory,
            BucketedDirectory,
            HTTPAllowlist,
        ]
        assert [s.describe() for s in config.allowlist[:3]] == [
            f"hash_path (directory {dirs['flat']})",
            f'allowlist "zz" (directory {dirs["racks"]})',
            f'allowlist "aa" (bucketed directory {dirs["racks"]})',
        ]
        assert [type(s) for s in config.denylist] == [DocumentFile, FlatDirectory]
        assert config.ek_policy == "allowlist"  # any allow source serves ek_policy "allowlist"
    finally:
        config.close()


def test_a_single_bucketed_block_is_an_allowlist(dirs: dict[str, str]) -> None:
    config = build(
        hcl(ek_policy="allowlist", agent_path_template="{{ .Name }}")
        + "\n"
        + hcl_block("allowlist", "racks", type="bucketed_directory", path=dirs["racks"])
    )
    config.close()


def test_a_deny_list_alone_trusts_nothing(dirs: dict[str, str]) -> None:
    problems = problems_of(hcl_block("denylist", "r", type="directory", path=dirs["revoked"]))
    assert "configure ek_ca_path (EK CA certificates), an allowlist, or both" in problems


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({}, "allowlist.x.type: required, one of directory, bucketed_directory, file, http"),
        ({"type": "ldap"}, "allowlist.x.type: 'ldap' is not one of"),
        ({"type": "directory"}, "allowlist.x.path: required for type 'directory'"),
        ({"type": "directory", "path": "/nonexistent"}, "/nonexistent is not a directory"),
        ({"type": "directory", "path": "/", "pth": "x"}, "allowlist.x.pth: unknown option"),
        ({"type": "file", "path": "/nonexistent.json"}, "cannot read /nonexistent.json"),
        ({"type": "http"}, "allowlist.x.url: required for type 'http'"),
        ({"type": "http", "url": "ftp://h/a"}, "allowlist.x.url: 'ftp://h/a' is not an http"),
        # Found by `make fuzz`: urlsplit raises on an unclosed IPv6 bracket.
        ({"type": "http", "url": "https://h:844[/a"}, "allowlist.x.url: 'https://h:844[/a' is not"),
        (
            {"type": "http", "url": "http://h/a", "bearer_token_path": "/t"},
            "allowlist.x.bearer_token_path: needs an https:// url",
        ),
        # Plain HTTP lets a man in the middle map its own EK to any name and labels.
        ({"type": "http", "url": "http://h/a"}, "allowlist.x.url: is plain http://"),
        (
            {"type": "http", "url": "http://h/a", "insecure_http": "yes"},
            "allowlist.x.insecure_http:",
        ),
        (
            {"type": "http", "url": "https://h/a", "insecure_http": True},
            "allowlist.x.insecure_http: only applies to an http:// url",
        ),
        (
            {"type": "http", "url": "https://h/a", "client_certificate_path": "/c"},
            "client_certificate_path and client_key_path go together",
        ),
        (
            {"type": "http", "url": "https://h/a", "refresh_interval": "1m", "max_staleness": "5s"},
            "allowlist.x.max_staleness: must be at least refresh_interval",
        ),
        ({"type": "http", "url": "https://h/a", "read_timeout": "10"}, "is not a duration"),
        ({"type": "http", "url": "https://h/a", "max_body_bytes": 0}, "max_body_bytes: 0 is"),
        (
            {"type": "http", "url": "https://h/a", "ca_path": "/nonexistent.pem"},
            'allowlist "x": TLS material or bearer token unusable',
        ),
    ],
)
def test_block_problems_are_named(block: dict[str, object], expected: str, ek_ca: TestCA) -> None:
    ca_path = hcl(ek_ca_path=str(ek_ca.bundle_path))
    problems = problems_of(ca_path + "\n" + hcl_block("allowlist", "x", **block))
    assert any(expected in problem for problem in problems), problems


def test_unlabeled_block_is_a_problem(dirs: dict[str, str]) -> None:
    problems = problems_of(f"allowlist {{\n{hcl(type='directory', path=dirs['racks'])}\n}}")
    assert 'allowlist: expected labeled blocks: allowlist "label" { ... }' in problems


@pytest.mark.parametrize("kind", ["allowlist", "denylist"])
def test_plain_http_needs_insecure_http(kind: str, ek_ca: TestCA, tmp_path: Path) -> None:
    block = {"type": "http", "url": "http://127.0.0.1:9/a.json"}
    ca_path = hcl(ek_ca_path=str(ek_ca.bundle_path))
    problems = problems_of(ca_path + "\n" + hcl_block(kind, "x", **block))
    # The only problem: the rest of the configuration is sound.
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{kind}.x.url: is plain http://"), problems
    config = build(
        hcl_block(kind, "x", **block, insecure_http=True) + "\n" + hcl(hash_path=str(tmp_path))
    )
    try:
        assert any(isinstance(s, HTTPAllowlist) for s in [*config.allowlist, *config.denylist])
    finally:
        config.close()


def test_building_sources_watches_and_fetches_nothing_until_started(
    dirs: dict[str, str],
) -> None:
    from server_plugin.reload import WATCHES
    from tests.integration.http_servers import DocumentServer

    server = DocumentServer().start()
    revoked = str(Path(dirs["revoked.json"]).parent)
    config = build(
        "\n".join(
            [
                hcl_block("allowlist", "web", type="http", url=server.url, insecure_http=True),
                hcl_block("denylist", "revoked", type="file", path=dirs["revoked.json"]),
            ]
        )
    )
    try:
        time.sleep(0.5)
        assert server.requests == []
        assert revoked not in WATCHES.watched()
        config.start()
        assert revoked in WATCHES.watched()
        deadline = time.monotonic() + 10
        while not server.requests:
            assert time.monotonic() < deadline, "no fetch after start()"
            time.sleep(0.02)
    finally:
        config.close()
        server.stop()
    assert revoked not in WATCHES.watched()

"""Reloading: values that follow their files, keep the last good value, and stop on close."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server_plugin.allowlist import AllowlistError
from server_plugin.allowlist.file import DocumentFile
from server_plugin.ca_bundle import CABundle
from server_plugin.reload import WATCHES, Reloading
from spire_tpm_attestor.runtime.config import ConfigProblems
from spire_tpm_attestor.x509 import Certificate
from tests.unit.x509_builders import make_ca

SETTLE = 0.05


def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def read_int(path: Path) -> int:
    return int(path.read_text())


@pytest.fixture
def closing() -> Iterator[list[Reloading[Any]]]:
    opened: list[Reloading[Any]] = []
    yield opened
    for value in opened:
        value.close()


def watch(
    closing: list[Reloading[Any]], paths: list[Path], load: Callable[[], Any]
) -> Reloading[Any]:
    value: Reloading[Any] = Reloading("test", [str(p) for p in paths], load, SETTLE)
    closing.append(value)
    value.start()
    return value


def test_file_rewritten_in_place_is_reloaded(tmp_path: Path, closing: list[Reloading[Any]]) -> None:
    path = tmp_path / "value"
    path.write_text("1")
    value = watch(closing, [path], lambda: read_int(path))
    assert value.value == 1
    path.write_text("2")
    eventually(lambda: value.value == 2, "the rewritten file")


def test_file_replaced_by_rename_is_reloaded(tmp_path: Path, closing: list[Reloading[Any]]) -> None:
    path = tmp_path / "value"
    path.write_text("1")
    value = watch(closing, [path], lambda: read_int(path))
    (tmp_path / ".value.tmp").write_text("2")
    os.replace(tmp_path / ".value.tmp", path)
    eventually(lambda: value.value == 2, "the renamed file")


def test_kubernetes_style_symlink_swap_is_reloaded(
    tmp_path: Path, closing: list[Reloading[Any]]
) -> None:
    # A ConfigMap mount: value -> ..data/value, ..data -> ..v1; an update swaps ..data.
    for version, content in (("..v1", "1"), ("..v2", "2")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "value").write_text(content)
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "value").symlink_to("..data/value")
    path = tmp_path / "value"
    value = watch(closing, [path], lambda: read_int(path))
    assert value.value == 1
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    eventually(lambda: value.value == 2, "the swapped ..data symlink")


def test_directory_gaining_a_file_is_reloaded(
    tmp_path: Path, closing: list[Reloading[Any]]
) -> None:
    def load() -> list[str]:
        return sorted(os.listdir(tmp_path))

    value = watch(closing, [tmp_path], load)
    assert value.value == []
    (tmp_path / "new.pem").write_text("x")
    eventually(lambda: value.value == ["new.pem"], "the new file")


@pytest.mark.parametrize("mount", ["plain", "kubernetes"])
def test_writes_beside_a_watched_file_neither_reload_nor_log(
    tmp_path: Path,
    closing: list[Reloading[Any]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    mount: str,
) -> None:
    # A TLS CA file in a web root whose access log changes on every request.
    if mount == "plain":
        (tmp_path / "ca.pem").write_text("1")
    else:
        (tmp_path / "..v1").mkdir()
        (tmp_path / "..v1" / "ca.pem").write_text("1")
        (tmp_path / "..data").symlink_to("..v1")
        (tmp_path / "ca.pem").symlink_to("..data/ca.pem")
    ca = tmp_path / "ca.pem"
    value = watch(closing, [ca], lambda: read_int(ca))
    value.start()
    settled: list[float] = []
    monkeypatch.setattr(value, "_settled", lambda: settled.append(time.monotonic()))
    caplog.set_level(logging.DEBUG, logger="server_plugin")
    with open(tmp_path / "access.log", "a") as access_log:
        for request in range(500):
            access_log.write(f"GET /allowlist.json {request}\n")
            access_log.flush()
            (tmp_path / f"upload-{request}").write_text("x")
    time.sleep(10 * SETTLE)  # longer than a settle: a reload now would be a reload apart
    assert settled == []
    # The control: a change to the file itself is seen, after every event before it.
    if mount == "plain":
        ca.write_text("2")
    else:
        (tmp_path / "..v2").mkdir()
        (tmp_path / "..v2" / "ca.pem").write_text("2")
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    eventually(lambda: len(settled) == 1, "the change to the CA file")
    time.sleep(10 * SETTLE)
    assert len(settled) == 1
    assert [r for r in caplog.records if r.name.startswith("server_plugin")] == []


def test_bad_reload_keeps_the_last_good_value_and_logs_why(
    tmp_path: Path, closing: list[Reloading[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "value"
    path.write_text("1")
    value = watch(closing, [path], lambda: read_int(path))
    caplog.set_level(logging.INFO, logger="server_plugin.reload")
    path.write_text("not a number")
    eventually(
        lambda: any("keeping the last good value" in r.message for r in caplog.records),
        "the warning",
    )
    assert value.value == 1
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "invalid literal" in warning.__dict__["reason"]
    path.write_text("3")  # fixed: the next good state is taken
    eventually(lambda: value.value == 3, "the fixed file")


def test_reload_without_a_change_does_not_load(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("1")
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        return read_int(path)

    value = Reloading("test", [str(path)], load, SETTLE)
    try:
        path.read_text()  # an open/read is not a change
        assert value.reload() is False
        assert len(loads) == 1
    finally:
        value.close()


def test_initial_load_errors_reach_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("bad")
    with pytest.raises(ValueError):
        Reloading("test", [str(path)], lambda: read_int(path), SETTLE)
    assert str(tmp_path) not in WATCHES.watched()


def test_close_stops_watching_and_shared_watches_survive(tmp_path: Path) -> None:
    first_path, second_path = tmp_path / "a", tmp_path / "b"
    first_path.write_text("1")
    second_path.write_text("1")
    first = Reloading("a", [str(first_path)], lambda: read_int(first_path), SETTLE)
    second = Reloading("b", [str(second_path)], lambda: read_int(second_path), SETTLE)
    first.start()
    second.start()
    try:
        assert WATCHES.watched().count(str(tmp_path)) == 1  # one watch, two users
        first.close()
        assert str(tmp_path) in WATCHES.watched()
        first_path.write_text("2")
        second_path.write_text("2")
        eventually(lambda: second.value == 2, "the file still watched")
        assert first.reload() is False
        assert first.value == 1
    finally:
        second.close()
    assert str(tmp_path) not in WATCHES.watched()


# --- CA bundles: removing trust material takes it away ------------------------------


def ca_names(value: Reloading[list[Certificate]]) -> list[str]:
    return sorted(cert.subject_common_name or "" for cert in value.value)


def ca_bundle(closing: list[Reloading[Any]], paths: list[Path]) -> Reloading[list[Certificate]]:
    value = Reloading(
        "ek_ca_path",
        [str(p) for p in paths],
        CABundle("ek_ca_path", [str(p) for p in paths]),
        SETTLE,
    )
    closing.append(value)
    value.start()
    return value


def test_a_removed_ca_file_is_no_longer_trusted(
    tmp_path: Path, closing: list[Reloading[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_bytes(make_ca("CA A").pem)
    b.write_bytes(make_ca("CA B").pem)
    value = ca_bundle(closing, [a, b])
    assert ca_names(value) == ["CA A", "CA B"]
    caplog.set_level(logging.INFO)
    b.unlink()
    eventually(lambda: ca_names(value) == ["CA A"], "CA B to go")
    warning = next(r for r in caplog.records if "was removed" in r.message)
    assert warning.levelno == logging.WARNING and str(b) in warning.message
    a.unlink()  # nothing left: nothing is trusted
    eventually(lambda: value.value == [], "CA A to go")
    assert any(
        r.levelno == logging.ERROR and "nothing is trusted" in r.message for r in caplog.records
    )
    b.write_bytes(make_ca("CA B2").pem)  # and a path coming back is trusted again
    eventually(lambda: ca_names(value) == ["CA B2"], "CA B2")


def test_an_emptied_ca_directory_trusts_nothing(
    tmp_path: Path, closing: list[Reloading[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / "a.pem").write_bytes(make_ca("CA A").pem)
    (cas / "b.pem").write_bytes(make_ca("CA B").pem)
    value = ca_bundle(closing, [cas])
    assert ca_names(value) == ["CA A", "CA B"]
    caplog.set_level(logging.INFO)
    (cas / "a.pem").unlink()
    eventually(lambda: ca_names(value) == ["CA B"], "CA A to go")
    (cas / "b.pem").unlink()
    eventually(lambda: value.value == [], "the directory to empty")
    assert any("holds no certificates" in r.message for r in caplog.records)


def test_a_malformed_ca_file_keeps_only_its_own_last_good_certificates(
    tmp_path: Path, closing: list[Reloading[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    cas = tmp_path / "cas"
    cas.mkdir()
    a, b = cas / "a.pem", cas / "b.pem"
    a.write_bytes(make_ca("CA A").pem)
    b.write_bytes(make_ca("CA B").pem)
    value = ca_bundle(closing, [cas])
    caplog.set_level(logging.INFO)
    # In one burst: A is half written, B is removed. A keeps its CA; B's is gone.
    a.write_bytes(make_ca("CA A").pem[:100])
    b.unlink()
    eventually(lambda: ca_names(value) == ["CA A"], "CA B to go")
    failure = next(r for r in caplog.records if "keeping the last good value" in r.message)
    assert str(a) in failure.__dict__["reason"]
    (cas / "new.pem").write_bytes(b"garbage")  # a new file that never loaded adds nothing
    eventually(
        lambda: any(str(cas / "new.pem") in r.__dict__.get("reason", "") for r in caplog.records),
        "new.pem to be read",
    )
    assert ca_names(value) == ["CA A"]


@pytest.mark.parametrize("layout", ["missing file", "empty directory"])
def test_at_configure_a_missing_or_empty_ca_path_is_a_problem(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "ca"
    if layout == "empty directory":
        path.mkdir()
    with pytest.raises(ConfigProblems, match="ek_ca_path") as raised:
        Reloading("ek_ca_path", [str(path)], CABundle("ek_ca_path", [str(path)]), SETTLE)
    assert str(path) in raised.value.problems[0]
    assert str(tmp_path) not in WATCHES.watched()


# --- file documents: a deleted one fails closed --------------------------------------


def test_a_deleted_file_document_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    listed = "ab" * 32
    path.write_text(json.dumps({"version": 1, "entries": [{"pub_hash": listed}]}))
    source = DocumentFile(str(path), 'denylist "revoked"')
    try:
        assert source.lookup(listed) is not None
        path.write_text('{"version": 1, "entries": [')  # half written: the last good copy
        assert source.lookup(listed) is not None
        path.unlink()
        with pytest.raises(AllowlistError, match="was removed"):
            source.lookup(listed)
        with pytest.raises(AllowlistError, match="was removed"):
            source.lookup("cd" * 32)
    finally:
        source.close()


@pytest.mark.parametrize("seen_by", ["a lookup", "the watcher"])
def test_a_deleted_file_document_put_back_broken_stays_untrusted(
    tmp_path: Path, seen_by: str
) -> None:
    path = tmp_path / "revoked.json"
    listed, other = "ab" * 32, "cd" * 32
    path.write_text(json.dumps({"version": 1, "entries": [{"pub_hash": listed}]}))
    source = DocumentFile(str(path), 'denylist "revoked"')
    if seen_by == "the watcher":
        source.start()
    try:
        assert source.lookup(listed) is not None
        path.unlink()
        if seen_by == "a lookup":
            with pytest.raises(AllowlistError, match="was removed"):
                source.lookup(listed)
        else:
            eventually(lambda: source._index.value is None, "the deletion to be reloaded")
        path.write_text('{"version": 1, "entries": [')  # put back broken
        source._index.reload()  # fails: the last good value is "removed", not the old list
        for pub_hash in (listed, other):
            with pytest.raises(AllowlistError, match="no good copy has loaded since"):
                source.lookup(pub_hash)
        path.write_text(json.dumps({"version": 1, "entries": [{"pub_hash": other}]}))
        if seen_by == "a lookup":
            assert source._index.reload() is True
        else:
            eventually(lambda: source._index.value is not None, "the good copy to be reloaded")
        assert source.lookup(listed) is None
        assert source.lookup(other) is not None
    finally:
        source.close()


# --- building a server configuration watches nothing until it is started -------------


def test_a_server_configuration_watches_its_files_only_once_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server_plugin.config import build_server_config
    from spire_tpm_attestor.runtime.config import CoreConfig

    watched: list[str] = []
    monkeypatch.setattr(WATCHES, "add", lambda directory, *_: watched.append(directory))
    monkeypatch.setattr(WATCHES, "remove", lambda directory, *_: watched.remove(directory))
    for name in ("ek", "devid", "pcr"):
        (tmp_path / name).mkdir()
    (tmp_path / "ek" / "ca.pem").write_bytes(make_ca("EK CA").pem)
    (tmp_path / "devid" / "ca.pem").write_bytes(make_ca("DevID CA").pem)
    (tmp_path / "pcr" / "policy.json").write_text(json.dumps({"sha256": {"0": "00" * 32}}))
    text = "\n".join(
        [
            f'ek_ca_path = "{tmp_path / "ek" / "ca.pem"}"',
            f'devid_ca_path = "{tmp_path / "devid" / "ca.pem"}"',
            f'pcr_policy_path = "{tmp_path / "pcr" / "policy.json"}"',
        ]
    )
    core = CoreConfig("example.org")
    threads = threading.active_count()
    with pytest.raises(ConfigProblems):
        build_server_config(text + "\nmax_pending_challenges = 0", core)
    config = build_server_config(text, core)
    assert (watched, threading.active_count()) == ([], threads)
    config.start()
    assert sorted(watched) == [str(tmp_path / name) for name in ("devid", "ek", "pcr")]
    config.close()
    assert watched == []

"""Reloading: values that follow their files, keep the last good value, and stop on close."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server_plugin.reload import WATCHES, Reloading

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

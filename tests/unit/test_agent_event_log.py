"""The agent's read of the firmware event log: bounded, and never an attestation error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_plugin.config import build_agent_config
from agent_plugin.event_log import DEFAULT_EVENT_LOG_PATH, read_event_log
from spire_tpm_attestor import wire
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig


def test_a_log_within_the_limit_is_sent_as_read(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"\x01" * 100)
    assert read_event_log(str(path), 100) == (b"\x01" * 100, "")


def test_each_absence_says_why(tmp_path: Path) -> None:
    path = tmp_path / "log"
    assert read_event_log(str(path), 100) == (b"", f"there is no event log at {path}")
    assert read_event_log("", 100)[1].startswith("event_log_path is empty")
    path.write_bytes(b"")
    assert read_event_log(str(path), 100) == (b"", f"the event log at {path} is empty")
    path.write_bytes(bytes(101))
    assert read_event_log(str(path), 100) == (
        b"",
        f"the event log at {path} is larger than max_event_log_size (100 bytes)",
    )
    assert "cannot be read" in read_event_log(str(tmp_path), 100)[1]  # a directory


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_log_is_absent(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"log")
    path.chmod(0)
    assert "Permission denied" in read_event_log(str(path), 100)[1]


def test_options_and_their_bounds() -> None:
    core = CoreConfig("example.org")
    config = build_agent_config("", core)
    assert (config.event_log_path, config.max_event_log_size) == (DEFAULT_EVENT_LOG_PATH, 1 << 20)
    config = build_agent_config('event_log_path = ""\nmax_event_log_size = 4096', core)
    assert (config.event_log_path, config.max_event_log_size) == ("", 4096)
    with pytest.raises(ConfigProblems, match=r"max_event_log_size: .* is outside"):
        build_agent_config(f"max_event_log_size = {wire.MAX_EVENT_LOG + 1}", core)

"""Reading a configuration opens nothing, in the real server process: Validate and a
rejected Configure start no watcher thread and add no inotify watch for the CA bundles,
the PCR and event log policy files or a `file` allowlist; only the committed Configure watches them.

The watcher thread (watchdog's Observer) outlives its last watch, so a watch started and
closed again while a configuration was read still shows as one more thread."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from spire_tpm_attestor.runtime.host import PluginProcess
from spire_tpm_attestor.testing.ca import TestCA
from tests.integration.plugins import hcl, hcl_block, start_plugin


def inotify_watches(process: PluginProcess) -> int:
    """The inotify watches the process holds, from its fdinfo (one `inotify wd:` line each)."""
    fdinfo = Path(f"/proc/{process.process.pid}/fdinfo")
    count = 0
    for fd in os.listdir(fdinfo):
        try:
            text = (fdinfo / fd).read_text()
        except OSError:
            continue  # closed meanwhile
        count += text.count("inotify wd:")
    return count


def threads(process: PluginProcess) -> int:
    return len(os.listdir(f"/proc/{process.process.pid}/task"))


def idle(process: PluginProcess) -> PluginProcess:
    """`process`, once its last request's gRPC worker is idle again: the reply leaves
    before the worker says so, and a request arriving in between gets a new worker
    thread, which would count as a watcher here."""
    time.sleep(0.2)
    return process


@pytest.fixture
def watched_files(tmp_path: Path) -> str:
    """Plugin data naming one file of each kind the server watches, each in its own
    directory."""
    ek_ca = TestCA.create(tmp_path / "ek", name="EK")
    devid_ca = TestCA.create(tmp_path / "devid", name="DevID")
    (tmp_path / "pcr").mkdir()
    policy = tmp_path / "pcr" / "policy.hcl"
    policy.write_text(f'sha256 {{\n"0" = "{"00" * 32}"\n}}\n')
    (tmp_path / "eventlog").mkdir()
    event_log_policy = tmp_path / "eventlog" / "policy.hcl"
    event_log_policy.write_text("require_secure_boot = true\n")
    (tmp_path / "lists").mkdir()
    document = tmp_path / "lists" / "revoked.json"
    document.write_text('{"version": 1, "entries": []}')
    return "\n".join(
        [
            hcl(
                ek_ca_path=str(ek_ca.root_path),
                devid_ca_path=str(devid_ca.root_path),
                pcr_policy_path=str(policy),
                event_log_policy_path=str(event_log_policy),
            ),
            hcl_block("denylist", "revoked", type="file", path=str(document)),
        ]
    )


def test_validate_and_a_rejected_configure_watch_nothing(watched_files: str) -> None:
    with start_plugin("server") as server:
        idle(server).validate(hcl(hash_path="/"))  # gRPC starts its worker thread
        before = threads(idle(server))
        assert idle(server).validate(watched_files) == []
        with pytest.raises(grpc.RpcError) as rejected:
            idle(server).configure(watched_files + "\n" + hcl(max_pending_challenges=0))
        assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (threads(idle(server)), inotify_watches(server)) == (before, 0)
        server.configure(watched_files)
        # One per directory: ek, devid, pcr, eventlog, lists.
        assert inotify_watches(server) == 5
        assert threads(server) > before

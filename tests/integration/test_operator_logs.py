"""What an operator reads from the real plugin processes: a peer that ends a stream is
not a fault, libraries stay quiet, and a watcher ignores the files it does not serve."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server_plugin.allowlist import AllowlistEntry
from spire_tpm_attestor.runtime.host import PluginProcess
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.http_servers import DocumentServer, TLSFiles, document
from tests.integration.plugins import (
    AgentConversation,
    ServerConversation,
    audit_lines,
    hcl,
    hcl_block,
    log_entries,
    wait_for_log,
)

pytestmark = pytest.mark.swtpm

PEER_ENDED = "stream ended by the peer"


def entries_after(plugin: PluginProcess, seen: int, settle: float = 0.5) -> list[dict[str, str]]:
    """The plugin's log lines after the first `seen`, once it has had time to write more."""
    time.sleep(settle)
    return log_entries(plugin)[seen:]


def test_an_agent_stream_that_spire_cancels_ends_with_one_debug_line(
    agent: PluginProcess, swtpm: SWTPM
) -> None:
    agent.configure(hcl(tcti=swtpm.tcti, log_level="DEBUG"))
    seen = len(log_entries(agent))
    node = AgentConversation(agent)
    try:
        node.payload()  # the agent now waits for the server's challenge...
        node.cancel()  # ...which never comes: SPIRE refused the node, or unloads the plugin
    finally:
        node.close()
    wait_for_log(agent, lambda e: e["@message"] == PEER_ENDED, after=seen)
    lines = entries_after(agent, seen)
    assert [e for e in lines if e["@level"] in ("warn", "error")] == []
    assert [e for e in lines if "exception" in e] == []
    assert [e["@level"] for e in lines if e["@message"] == PEER_ENDED] == ["debug"]


def test_a_server_stream_the_agent_leaves_mid_challenge_has_its_audit_line_and_no_error(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path), log_level="DEBUG"))
    node = AgentConversation(agent)
    try:
        payload = node.payload()
    finally:
        node.close()
    seen, seen_audit = len(log_entries(server)), len(audit_lines(server))
    spire = ServerConversation(server)
    try:
        assert spire.send_payload(payload).HasField("challenge")
        spire.cancel()  # the agent went away with its challenge
    finally:
        spire.close()
    wait_for_log(server, lambda e: e["@message"] == PEER_ENDED, after=seen)
    lines = entries_after(server, seen)
    assert len(audit_lines(server)) == seen_audit + 1
    assert [e for e in lines if e["@level"] == "error" or "exception" in e] == []
    assert [e["@level"] for e in lines if e["@message"] == PEER_ENDED] == ["debug"]


def test_library_loggers_stay_at_warn_unless_turned_up(server: PluginProcess) -> None:
    endpoint = DocumentServer(body=document(AllowlistEntry("ab" * 32))).start()
    try:
        source = hcl_block("allowlist", "web", type="http", url=endpoint.url, insecure_http=True)
        for library_level, chatty in (("WARN", False), ("DEBUG", True)):
            seen = len(log_entries(server))
            server.configure(
                f'{source}\nlog_level = "DEBUG"\nlibrary_log_level = "{library_level}"'
            )
            wait_for_log(server, lambda e: e["@message"] == "allowlist refreshed", after=seen)
            modules = {e["@module"].split(".")[0] for e in entries_after(server, seen)}
            # httpx writes an INFO line per request, httpcore a DEBUG line per step.
            assert ({"httpx", "httpcore"} <= modules) is chatty, modules
    finally:
        endpoint.stop()


def test_writes_beside_the_tls_ca_file_neither_log_nor_reload(
    server: PluginProcess, tmp_path: Path
) -> None:
    tls = TLSFiles.create(tmp_path / "tls")
    web_root = tmp_path / "www"  # the CA file sits beside a busy access log
    web_root.mkdir()
    ca = web_root / "ca.pem"
    ca.write_bytes(tls.ca.read_bytes())
    endpoint = DocumentServer(tls=tls, body=document(AllowlistEntry("ab" * 32))).start()
    try:
        seen = len(log_entries(server))
        server.configure(
            hcl_block("allowlist", "web", type="http", url=endpoint.url, ca_path=str(ca))
            + '\nlog_level = "DEBUG"'
        )
        wait_for_log(server, lambda e: e["@message"] == "allowlist refreshed", after=seen)
        seen = len(entries_after(server, 0))
        with open(web_root / "access.log", "a") as access_log:
            for request in range(1000):
                access_log.write(f'127.0.0.1 "GET /allowlist.json" 200 {request}\n')
                access_log.flush()
        assert entries_after(server, seen, settle=1.0) == []
        # The control: the CA file itself is seen (so the silence above means something).
        ca.write_bytes(tls.ca.read_bytes() + b"\n")
        reloaded = wait_for_log(server, lambda e: e["@message"] == "reloaded", after=seen)
        assert reloaded["what"] == 'allowlist "web" TLS'
    finally:
        endpoint.stop()

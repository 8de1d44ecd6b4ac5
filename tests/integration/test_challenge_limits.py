"""Streams that stall, end early or race a deny list, against the real server plugin."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

from spire_tpm_attestor import wire
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2_grpc as server_pb2_grpc
from spire_tpm_attestor.runtime.host import PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from tests.integration.plugins import (
    AgentConversation,
    ServerConversation,
    audit_line_after,
    audit_lines,
    hcl,
    hcl_block,
    rpc_error,
)

pytestmark = pytest.mark.swtpm


def payload_and_hash(agent: PluginProcess) -> tuple[bytes, str]:
    node = AgentConversation(agent)
    try:
        payload = node.payload()
    finally:
        node.close()
    ek = parse_tpm2b_public(wire.decode_payload(payload).ek_public)
    return payload, ek_hash(ek.public_key())


def thread_count(plugin: PluginProcess) -> int:
    return len(os.listdir(f"/proc/{plugin.process.pid}/task"))


def silent_streams_time_out(server: PluginProcess, payload: bytes, count: int) -> None:
    """Open `count` streams that take a challenge and never answer; see each one end."""
    seen = len(audit_lines(server))
    silent = [ServerConversation(server) for _ in range(count)]
    try:
        for stream in silent:
            assert stream.send_payload(payload).HasField("challenge")
        extra = ServerConversation(server)
        try:
            full = rpc_error(lambda: extra.send_payload(payload))
        finally:
            extra.close()
        assert full.code() == grpc.StatusCode.UNAVAILABLE, full.details()
        assert "too many attestations in progress" in (full.details() or "")
        started = time.monotonic()
        for stream in silent:
            error = rpc_error(stream.receive)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
            assert "no challenge_response arrived within 1s" in (error.details() or "")
        assert time.monotonic() - started < 10  # the server's limit, not the client's 60 s
    finally:
        for stream in silent:
            stream.close()
    lines = [audit_line_after(server, seen + n) for n in range(count + 1)]
    checks = sorted(line.get("check", "") for line in lines)
    assert checks == ["challenge_timeout"] * count + ["max_pending_challenges"], lines


def test_a_silent_stream_times_out_and_frees_its_worker(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    # An ECC AK (~3 ms to create, against ~0.2 s and more under load for RSA): the
    # honest attestations must fit in the 1 s challenge_timeout on a busy machine.
    agent.configure(hcl(tcti=swtpm.tcti, ak_algorithm="ecc"))
    server.configure(
        hcl(ek_ca_path=str(ek_ca.bundle_path), challenge_timeout="1s", max_pending_challenges=2)
    )
    payload, pub_hash = payload_and_hash(agent)

    def attest() -> None:
        seen = len(audit_lines(server))
        assert relay_attestation(agent, server).spiffe_id.endswith(pub_hash)
        assert audit_line_after(server, seen)["decision"] == "admitted"

    silent_streams_time_out(server, payload, 2)
    attest()  # the timed-out streams gave their slots back
    settled = thread_count(server)
    # A second round reuses the idle workers: no thread is left behind by a stream.
    silent_streams_time_out(server, payload, 2)
    attest()
    deadline = time.monotonic() + 5
    while thread_count(server) > settled:
        assert time.monotonic() < deadline, "a timed-out stream left a thread behind"
        time.sleep(0.05)


SILENT_STREAMS = 1000


def test_silent_streams_hold_no_thread_and_keep_no_honest_agent_out(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    """Half the streams say nothing, half hold a challenge and never answer; meanwhile an
    honest agent is admitted, every silent stream is still open, and the plugin has
    not grown a thread per stream. (Its latency meanwhile: make bench-process.)"""
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))  # default max_pending_challenges
    payload, pub_hash = payload_and_hash(agent)
    threads_before = thread_count(server)

    async def scenario() -> tuple[int, list[bool]]:
        address = f"unix:{server.handshake.address}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = server_pb2_grpc.NodeAttestorStub(channel)
            calls = [stub.Attest() for _ in range(SILENT_STREAMS)]
            try:
                await asyncio.gather(*(call.wait_for_connection() for call in calls))
                challenged = calls[: SILENT_STREAMS // 2]
                for call in challenged:
                    await call.write(server_pb2.AttestRequest(payload=payload))
                for call in challenged:
                    assert (await call.read()).HasField("challenge")
                threads = thread_count(server)
                seen = len(audit_lines(server))
                result = await asyncio.to_thread(relay_attestation, agent, server)
                assert result.spiffe_id.endswith(pub_hash)
                assert audit_line_after(server, seen)["decision"] == "admitted"
                return threads, [call.done() for call in calls]
            finally:
                for call in calls:
                    call.cancel()

    threads, ended = asyncio.run(scenario())
    assert not any(ended), f"{sum(ended)} silent streams were ended by the plugin"
    # A waiting stream is a suspended coroutine: a handful of threads, not one per stream.
    assert threads < threads_before + 16, (threads_before, threads)


def test_a_stream_without_a_payload_times_out(server: PluginProcess, ek_ca: TestCA) -> None:
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path), challenge_timeout="1s"))
    seen = len(audit_lines(server))
    spire = ServerConversation(server)
    try:
        error = rpc_error(spire.receive)
    finally:
        spire.close()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    assert audit_line_after(server, seen)["check"] == "payload_timeout"


def test_an_ek_deny_listed_while_the_agent_answers_is_rejected(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> None:
    revoked = tmp_path / "revoked"
    revoked.mkdir()
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(
        hcl(ek_ca_path=str(ek_ca.bundle_path))
        + "\n"
        + hcl_block("denylist", "revoked", type="directory", path=str(revoked))
    )
    node, spire = AgentConversation(agent), ServerConversation(server)
    try:
        payload = node.payload()
        ek = parse_tpm2b_public(wire.decode_payload(payload).ek_public)
        pub_hash = ek_hash(ek.public_key())
        answer = node.answer(spire.send_payload(payload).challenge)
        (revoked / pub_hash).write_text("")  # revoked after its challenge went out
        seen = len(audit_lines(server))
        error = rpc_error(lambda: spire.send_answer(answer))
    finally:
        node.close()
        spire.close()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    assert f"EK {pub_hash} is on the deny list" in (error.details() or "")
    audit = audit_line_after(server, seen)
    assert (audit["decision"], audit["check"], audit["ek_hash"]) == (
        "rejected",
        "denylist",
        pub_hash,
    )


@pytest.mark.parametrize("ending", ["wrong_request", "cancelled", "half_closed"])
def test_a_stream_that_ends_early_writes_one_audit_line(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, ending: str
) -> None:
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    payload, pub_hash = payload_and_hash(agent)
    seen = len(audit_lines(server))
    spire = ServerConversation(server)
    try:
        assert spire.send_payload(payload).HasField("challenge")
        if ending == "wrong_request":
            error = rpc_error(lambda: spire.send_payload(payload))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        elif ending == "half_closed":
            spire.close_requests()
            error = rpc_error(spire.receive)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "stream ended before the challenge_response" in (error.details() or "")
    finally:
        spire.close()
    audit = audit_line_after(server, seen)
    # A cancel may reach the server while it waits for the answer, or before it resumes.
    checks = (
        {"challenge_response", "stream_ended"} if ending == "cancelled" else {"challenge_response"}
    )
    assert (audit["decision"], audit["ek_hash"]) == ("rejected", pub_hash)
    assert audit["check"] in checks, audit
    time.sleep(0.3)
    assert len(audit_lines(server)) == seen + 1, audit_lines(server)[seen:]

"""Helpers for end-to-end tests: the real plugin processes, configured per test."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.pb import spire_agent_nodeattestor_pb2 as agent_pb2
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.runtime.host import (
    AGENT_HOST_SERVICES,
    SERVER_HOST_SERVICES,
    AttestationFailed,
    PluginProcess,
    RequestQueue,
    relay_attestation,
)
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates

BIN = Path(sys.executable).parent


def start_plugin(side: str) -> PluginProcess:
    host_services = AGENT_HOST_SERVICES if side == "agent" else SERVER_HOST_SERVICES
    return PluginProcess.start(
        [str(BIN / f"spire-tpm-attestor-{side}")], host_service_names=host_services
    )


def hcl(**options: object) -> str:
    """Plugin data as HCL text (values written as JSON literals, which HCL v1 accepts)."""
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())


def log_entries(plugin: PluginProcess) -> list[dict[str, str]]:
    return [json.loads(line) for line in list(plugin.stderr_lines)]


def hcl_block(kind: str, label: str, **options: object) -> str:
    """A labeled block, e.g. `allowlist "racks" { type = "directory" ... }`."""
    return f'{kind} "{label}" {{\n{hcl(**options)}\n}}'


def audit_lines(server: PluginProcess) -> list[dict[str, str]]:
    entries = log_entries(server)
    return [entry for entry in entries if entry.get("@module") == "spire_tpm_attestor.audit"]


def audit_line_after(server: PluginProcess, seen: int) -> dict[str, str]:
    """The first audit line after the `seen` earlier ones, once the stderr reader has it."""
    deadline = time.monotonic() + 10
    while len(lines := audit_lines(server)) <= seen:
        assert time.monotonic() < deadline, "the server plugin wrote no audit line"
        time.sleep(0.02)
    return lines[seen]


def wait_for_log(
    plugin: PluginProcess,
    matches: Callable[[dict[str, str]], bool],
    after: int = 0,
    timeout: float = 30,
) -> dict[str, str]:
    """The first log entry from index `after` on that `matches`, waiting until it comes."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in log_entries(plugin)[after:]:
            if matches(entry):
                return entry
        assert time.monotonic() < deadline, "the plugin did not log the expected line"
        time.sleep(0.02)


def provisioned_hash(swtpm: SWTPM, ca: TestCA, algorithm: str) -> str:
    """Provision one EK certificate and return the EK hash the server should compute."""
    certificate: x509.Certificate = provision_ek_certificates(
        swtpm.tcti, ca, algorithms=(algorithm,)
    )[algorithm]
    return ek_hash(certificate.public_key())


def expect_rejection(
    agent: PluginProcess, server: PluginProcess, code: grpc.StatusCode, words: str
) -> dict[str, str]:
    """Attest, expect the server to refuse, and return the audit line of the decision."""
    seen = len(audit_lines(server))
    with pytest.raises(AttestationFailed) as failure:
        relay_attestation(agent, server)
    assert failure.value.side == "server"
    assert failure.value.code == code, failure.value
    assert words in failure.value.details, failure.value.details
    return rejection_line(server, failure.value, seen)


def rejection_line(server: PluginProcess, failure: AttestationFailed, seen: int) -> dict[str, str]:
    """The audit line of this very refusal, from the `seen`-th line on: an earlier
    attestation's line may still be on its way through the stderr reader."""
    deadline = time.monotonic() + 10
    while True:
        for audit in audit_lines(server)[seen:]:
            if audit["decision"] == "rejected" and audit["reason"] == failure.details:
                return audit
        assert time.monotonic() < deadline, "the server plugin logged no such rejection"
        time.sleep(0.02)


class AgentConversation:
    """The agent side of a hand-driven attestation, so a test can stand in the middle."""

    def __init__(self, agent: PluginProcess) -> None:
        self._requests: RequestQueue[agent_pb2.Challenge] = RequestQueue()
        self._stream = agent.agent_stub().AidAttestation(iter(self._requests), timeout=60)

    def payload(self) -> bytes:
        return bytes(next(self._stream).payload)

    def answer(self, challenge: bytes) -> bytes:
        self._requests.put(agent_pb2.Challenge(challenge=challenge))
        return bytes(next(self._stream).challenge_response)

    def cancel(self) -> None:
        """As SPIRE ends a stream it gives up on: cancelled, the requests left open."""
        self._stream.cancel()

    def close(self) -> None:
        self._requests.close()
        self._stream.cancel()


class ServerConversation:
    """The server side of a hand-driven attestation: the test plays spire-server."""

    def __init__(self, server: PluginProcess, timeout: float = 60) -> None:
        self._requests: RequestQueue[server_pb2.AttestRequest] = RequestQueue()
        self._stream = server.server_stub().Attest(iter(self._requests), timeout=timeout)

    def send(self, request: server_pb2.AttestRequest) -> server_pb2.AttestResponse:
        self._requests.put(request)
        response: server_pb2.AttestResponse = next(self._stream)
        return response

    def send_payload(self, payload: bytes) -> server_pb2.AttestResponse:
        return self.send(server_pb2.AttestRequest(payload=payload))

    def send_answer(self, answer: bytes) -> server_pb2.AttestResponse:
        return self.send(server_pb2.AttestRequest(challenge_response=answer))

    def close_requests(self) -> None:
        """Half-close: no more requests, but the responses can still be read."""
        self._requests.close()

    def cancel(self) -> None:
        """As SPIRE ends a stream it gives up on: cancelled, the requests left open."""
        self._stream.cancel()

    def receive(self) -> server_pb2.AttestResponse:
        """The next response, without sending anything (e.g. to see a silent stream end)."""
        response: server_pb2.AttestResponse = next(self._stream)
        return response

    def close(self) -> None:
        self._requests.close()
        self._stream.cancel()


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """Run `call` and return the gRPC error it raised (failing the test if none)."""
    try:
        call()
    except grpc.RpcError as error:
        return error
    raise AssertionError("expected the plugin to answer with an error status")

"""The server's audit lines: one per decision, always within SPIRE's 64 KiB line limit."""

from __future__ import annotations

import asyncio
import io
import logging
from types import SimpleNamespace
from typing import Any

import grpc.aio
import pytest

from server_plugin import attestation
from server_plugin.plugin import (
    AuditLine,
    RequestReader,
    ServerNodeAttestor,
    fit,
    joined_selectors,
)
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.runtime.logs import HCLogFormatter
from spire_tpm_attestor.runtime.plugin import ConfigHolder

SPIRE_LINE_LIMIT = 64 * 1024


class Stream:
    """The Attest stream as the servicer sees it: `read` and `write` on the context."""

    def __init__(self, *requests: server_pb2.AttestRequest) -> None:
        self._requests = list(requests)
        self.written: list[server_pb2.AttestResponse] = []

    async def read(self) -> object:
        return self._requests.pop(0) if self._requests else grpc.aio.EOF

    async def write(self, response: server_pb2.AttestResponse) -> None:
        self.written.append(response)


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "spire_tpm_attestor.audit"]


def test_an_admission_with_huge_selectors_fits_one_spire_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    selectors = [f"label:k{n}:{'ü' * 200}\U0001f600" for n in range(5000)]
    attributes = server_pb2.AgentAttributes(
        spiffe_id="spiffe://example.org/spire/agent/" + "é" * 100_000,
        selector_values=selectors,
    )
    with caplog.at_level(logging.INFO):
        AuditLine().admitted(attributes)
    (record,) = audit_records(caplog)
    line = HCLogFormatter().format(record).encode()
    assert len(line) < SPIRE_LINE_LIMIT
    assert record.selectors.startswith(selectors[0] + ",")  # type: ignore[attr-defined]
    assert record.selectors.endswith("more)")  # type: ignore[attr-defined]
    assert record.spiffe_id.endswith("…(truncated)")  # type: ignore[attr-defined]


def test_short_fields_are_left_alone() -> None:
    assert fit("reason") == "reason"
    assert joined_selectors(["a", "b"]) == "a,b"


def test_an_unexpected_error_still_writes_one_audit_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(data: bytes) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(attestation, "decode_payload", broken)
    holder: ConfigHolder[Any] = ConfigHolder()
    holder.swap(
        SimpleNamespace(challenge_timeout=5.0, max_pending_challenges=4, close=lambda: None)
    )
    servicer = ServerNodeAttestor(holder)
    stream = Stream(server_pb2.AttestRequest(payload=b"payload"))
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError):
        asyncio.run(servicer._attest(RequestReader(stream), stream.write))
    (record,) = audit_records(caplog)
    assert (record.decision, record.check) == ("rejected", "internal")  # type: ignore[attr-defined]


def test_a_lone_surrogate_cannot_make_logging_fail() -> None:
    # A non-UTF-8 file name decoded with surrogateescape, logged as a field.
    record = logging.LogRecord("t", logging.INFO, "", 0, "reload failed", None, None)
    record.path = "/etc/spire/\udcff.pem"
    line = HCLogFormatter().format(record)
    assert line.isascii()
    assert "\\udcff" in line
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(HCLogFormatter())
    handler.handleError = lambda record: pytest.fail("logging raised")  # type: ignore[method-assign]
    handler.emit(record)

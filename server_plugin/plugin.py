"""The server NodeAttestor service (spire.plugin.server.nodeattestor.v1).

`Attest` is a thin state machine: payload, one challenge, one response, result.
Every stream that gets as far as a decision writes exactly one structured audit line.

It runs on the runtime's event loop (`grpc.aio`). The checks and what they need
(cryptography, the allowlist sources) are imported on the first Configure, not before
the go-plugin handshake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc.aio

from server_plugin import metrics
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2_grpc as server_pb2_grpc
from spire_tpm_attestor.runtime.config import CoreConfig
from spire_tpm_attestor.runtime.plugin import ConfigHolder, PluginSpec, peer_ended, run_guarded
from spire_tpm_attestor.runtime.status import (
    DeadlineExceeded,
    InvalidArgument,
    PluginError,
    Unavailable,
)

if TYPE_CHECKING:
    from server_plugin.config import ServerConfig

P = ParamSpec("P")
T = TypeVar("T")

SERVICE_NAME = "spire.plugin.server.nodeattestor.v1.NodeAttestor"
audit = logging.getLogger("spire_tpm_attestor.audit")

# SPIRE drops plugin log lines over 64 KiB; these bound the JSON-escaped size of the audit
# fields that carry agent-influenced text, with room to spare for the rest of the line.
MAX_SELECTORS_FIELD = 32 * 1024
MAX_TEXT_FIELD = 8 * 1024


def escaped_length(value: str) -> int:
    """The length of `value` inside a JSON line written with ensure_ascii."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return len(value)  # nothing to escape
    return len(json.dumps(value)) - 2


def fit(value: str, budget: int = MAX_TEXT_FIELD) -> str:
    """`value`, cut so that its escaped form stays within `budget`, marked when cut."""
    if len(value) * 12 <= budget or escaped_length(value) <= budget:
        return value  # (12: the longest escape of one character, a surrogate pair)
    marker = "…(truncated)"
    room = budget - escaped_length(marker)
    used = 0
    for end, character in enumerate(value):
        used += escaped_length(character)
        if used > room:
            return value[:end] + marker
    return value


def joined_selectors(selectors: Sequence[str], budget: int = MAX_SELECTORS_FIELD) -> str:
    """The selectors comma-joined, whole selectors only, within `budget`; says how many
    were left out."""
    kept: list[str] = []
    used = 0
    for index, selector in enumerate(selectors):
        cost = escaped_length(selector) + 1
        # Keep room for the note on what was left out.
        if used + cost > budget - 64:
            kept.append(f"…({len(selectors) - index} more)")
            break
        kept.append(selector)
        used += cost
    return ",".join(kept)


class AuditLine:
    """The one audit line of an attestation, and its count in the metrics; `written`
    says whether it is out."""

    def __init__(self) -> None:
        self.ek_hash = ""
        self.written = False
        self._started = time.perf_counter()

    def _decided(self, decision: str, check: str) -> None:
        self.written = True
        metrics.ATTESTATIONS.inc(decision=decision, check=check)
        metrics.ATTESTATION_SECONDS.observe(time.perf_counter() - self._started, decision=decision)

    def rejected(self, check: str, reason: str, ek_hash: str = "") -> None:
        self._decided("rejected", check)
        if audit.isEnabledFor(logging.WARNING):  # fit() is work; skip it when not written
            audit.warning(
                "attestation rejected",
                extra={
                    "decision": "rejected",
                    "check": check,
                    "reason": fit(reason),
                    "ek_hash": self.ek_hash or ek_hash,
                },
            )

    def admitted(
        self, attributes: server_pb2.AgentAttributes, ek_certificate_ignored: str | None = None
    ) -> None:
        self._decided("admitted", "")
        if audit.isEnabledFor(logging.INFO):  # as is joining the selectors
            fields = {
                "decision": "admitted",
                "ek_hash": self.ek_hash,
                "spiffe_id": fit(attributes.spiffe_id),
                "selectors": joined_selectors(list(attributes.selector_values)),
            }
            if ek_certificate_ignored is not None:
                # Admitted by EK hash; the certificate sent could not be read.
                fields["ek_certificate"] = fit(f"ignored: {ek_certificate_ignored}")
            audit.info("attestation admitted", extra=fields)


class RequestReader:
    """Reads the Attest request stream with a time limit on each message.

    A read is an await on the stream under `asyncio.timeout`: a stream waiting for its
    next message is a suspended coroutine and a timer on the event loop, never a thread.
    """

    def __init__(self, context: Any) -> None:
        self._context = context

    async def next(self, expected: str, timeout: float, check: str) -> bytes:
        from server_plugin.checks import Rejected

        try:
            async with asyncio.timeout(timeout):
                request = await self._context.read()
        except TimeoutError:
            raise Rejected(
                check, DeadlineExceeded(f"no {expected} arrived within {timeout:g}s")
            ) from None
        if request is grpc.aio.EOF:  # the peer closed its side, or cancelled (seen as EOF)
            peer_ended(f"reading the {expected}")
            raise Rejected(expected, InvalidArgument(f"stream ended before the {expected}"))
        kind = request.WhichOneof("request")
        if kind != expected:
            raise Rejected(
                expected, InvalidArgument(f"expected {expected}, got {kind or 'an empty request'}")
            )
        data: bytes = getattr(request, expected)
        return data


class PendingCount:
    """Attestations in progress (from the stream's start until the agent's answer is in).

    Waiting holds no thread, only the stream's memory (see MAX_PENDING_CHALLENGES_LIMIT
    in server_plugin.config), so this is a memory bound. Only the event loop counts."""

    def __init__(self) -> None:
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def enter(self, limit: int) -> PendingSlot | None:
        if self._count >= limit:
            return None
        self._count += 1
        return PendingSlot(self)

    def leave(self) -> None:
        self._count -= 1


class PendingSlot:
    def __init__(self, count: PendingCount) -> None:
        self._count: PendingCount | None = count

    def release(self) -> None:
        """Idempotent: the answer's arrival and the stream's end both release."""
        count, self._count = self._count, None
        if count is not None:
            count.leave()


async def run_step(waits: bool, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`step`, on a worker thread when it may wait on I/O (a certificate service, a
    directory on a stalled NFS mount), so that it stalls no other stream; on the loop
    otherwise, where CPU work is cheapest."""
    if waits:
        return await asyncio.to_thread(step, *args, **kwargs)
    return step(*args, **kwargs)


class ServerNodeAttestor(server_pb2_grpc.NodeAttestorServicer):
    def __init__(self, holder: ConfigHolder[ServerConfig]) -> None:
        self._holder = holder
        self.pending = PendingCount()  # per process: it outlives reconfigurations

    async def Attest(  # noqa: N802 - gRPC method name
        self, request_iterator: Any, context: Any
    ) -> None:
        await run_guarded(context, self._attest(RequestReader(context), context.write))

    async def _attest(
        self,
        reader: RequestReader,
        send: Callable[[server_pb2.AttestResponse], Awaitable[None]],
    ) -> None:
        config = self._holder.get()
        line = AuditLine()
        # Beyond the cap a stream is refused at once: what silent peers can hold is bounded.
        slot = self.pending.enter(config.max_pending_challenges)
        if slot is None:
            error = Unavailable(
                "too many attestations in progress "
                f"(max_pending_challenges = {config.max_pending_challenges})"
            )
            line.rejected("max_pending_challenges", error.message)
            raise error
        try:
            await self._decide(config, reader, send, line, slot)
        finally:
            slot.release()

    async def _decide(
        self,
        config: ServerConfig,
        reader: RequestReader,
        send: Callable[[server_pb2.AttestResponse], Awaitable[None]],
        line: AuditLine,
        slot: PendingSlot,
    ) -> None:
        from server_plugin import attestation
        from server_plugin.checks import Rejected

        try:
            payload = await reader.next("payload", config.challenge_timeout, "payload_timeout")
            decoded = attestation.decode_payload(payload)
            evidence = await run_step(
                config.payload_check_waits, attestation.check_payload, config, decoded
            )
            line.ek_hash = evidence.pub_hash
            challenge, pending = attestation.issue_challenge(config, evidence)
            await send(server_pb2.AttestResponse(challenge=challenge))
            answer_data = await reader.next(
                "challenge_response", config.challenge_timeout, "challenge_timeout"
            )
            slot.release()  # what is left is bounded work
            answer = attestation.decode_response(answer_data)
            # The deny list as it is now, not as it was when the challenge went out.
            current = self._holder.get()
            attested = await run_step(
                current.answer_check_waits, attestation.verify_response, current, pending, answer
            )
            attributes = attestation.agent_attributes(config, attested)
            line.admitted(attributes, attested.evidence.ek_certificate_ignored)
            await send(server_pb2.AttestResponse(agent_attributes=attributes))
        except Rejected as rejected:
            line.rejected(rejected.check, rejected.error.message, rejected.ek_hash)
            raise rejected.error from None
        except PluginError as error:
            line.rejected("plugin", error.message)
            raise
        except Exception as exc:
            line.rejected("internal", f"internal error ({type(exc).__name__}); see the plugin log")
            raise
        finally:
            if not line.written:  # e.g. the peer went away while a response was on its way
                line.rejected("stream_ended", "the stream ended before a decision")


def build_config(hcl_text: str, core: CoreConfig) -> ServerConfig:
    """Imported here, on the first Configure: the handshake line waits only for the
    runtime, and a configuration loads only the modules it uses."""
    from server_plugin.config import build_server_config

    return build_server_config(hcl_text, core)


def start_config(config: ServerConfig) -> None:
    config.start()


def validation_notes(config: ServerConfig) -> tuple[str, ...]:
    return config.notes


def register(server: Any, holder: ConfigHolder[ServerConfig]) -> None:
    servicer = ServerNodeAttestor(holder)
    metrics.sample_from(holder.current, lambda: servicer.pending.count)
    server_pb2_grpc.add_NodeAttestorServicer_to_server(servicer, server)


SPEC = PluginSpec(
    name="server",
    service_name=SERVICE_NAME,
    build_config=build_config,
    register_service=register,
    start_config=start_config,
    validation_notes=validation_notes,
)

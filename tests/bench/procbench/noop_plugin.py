"""A server NodeAttestor that does nothing, on the project's own plugin runtime.

The floor under the real plugin: the same interpreter, grpc server (and gRPC experiments,
`runtime.grpc_environment`), go-plugin services, logging and Configure path
(`spire_tpm_attestor.runtime.plugin.serve`), and an `Attest` that reads the payload,
sends a fixed 300-byte challenge, reads the answer and admits every node with one
selector, with no checks, no audit line and no thread per read.
`--reader` reads through the real plugin's `RequestReader` (at a19ce94 a thread per read;
since the grpc.aio runtime an `asyncio.timeout` per read), `--audit` also writes the real
plugin's audit line: the differences between the three price those two parts of
`server_plugin.plugin` without a profiler. The same file serves both runtimes: a
synchronous servicer on the thread-pool runtime, an `async` one on the grpc.aio runtime.

Run as a script with PYTHONPATH pointing at the checkout whose runtime is measured:
`python tests/bench/procbench/noop_plugin.py` (the procbench driver does this).
"""

from __future__ import annotations

try:  # the runtime's choice of gRPC experiments, made before grpc is imported
    from spire_tpm_attestor.runtime.grpc_environment import choose_grpc_experiments
except ImportError:  # older runtimes (a19ce94) make none
    pass
else:
    choose_grpc_experiments()

import sys
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio

from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2_grpc as server_pb2_grpc
from spire_tpm_attestor.runtime import plugin as runtime
from spire_tpm_attestor.runtime.config import CoreConfig
from spire_tpm_attestor.runtime.plugin import PluginSpec, serve

SERVICE_NAME = "spire.plugin.server.nodeattestor.v1.NodeAttestor"
CHALLENGE = bytes(300)
READER = "--reader" in sys.argv[1:]
AUDIT = "--audit" in sys.argv[1:]
TIMEOUT = 60.0  # the server plugin's default challenge_timeout
ASYNC_RUNTIME = hasattr(runtime, "run_guarded")  # the grpc.aio runtime
try:  # a runtime that applies each configuration's log levels and telemetry
    from spire_tpm_attestor.runtime.observability import Observability
except ImportError:  # older runtimes (a19ce94) have none
    Observability = None  # type: ignore[assignment,misc]


class NoConfig:
    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        if Observability is not None:
            self.observability = Observability()  # the defaults: INFO, no metrics

    def close(self) -> None:
        pass


class NoopNodeAttestor(server_pb2_grpc.NodeAttestorServicer):
    def __init__(self, holder: Any) -> None:
        self._holder = holder

    def Attest(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[server_pb2.AttestRequest], context: grpc.ServicerContext
    ) -> Iterator[server_pb2.AttestResponse]:
        config: NoConfig = self._holder.get()
        if READER:
            from server_plugin.plugin import RequestReader

            reader = RequestReader(request_iterator)
            reader.next("payload", TIMEOUT, "payload_timeout")
            yield server_pb2.AttestResponse(challenge=CHALLENGE)
            reader.next("challenge_response", TIMEOUT, "challenge_timeout")
        else:
            if next(request_iterator, None) is None:
                return
            yield server_pb2.AttestResponse(challenge=CHALLENGE)
            if next(request_iterator, None) is None:
                return
        yield server_pb2.AttestResponse(agent_attributes=attributes_for(config))


def attributes_for(config: NoConfig) -> server_pb2.AgentAttributes:
    attributes = server_pb2.AgentAttributes(
        spiffe_id=f"spiffe://{config.trust_domain}/spire/agent/noop/node",
        selector_values=["noop:1"],
    )
    if AUDIT:
        from server_plugin.plugin import AuditLine

        line = AuditLine()
        line.ek_hash = "00" * 32
        line.admitted(attributes)
    return attributes


class AsyncNoopNodeAttestor(server_pb2_grpc.NodeAttestorServicer):
    def __init__(self, holder: Any) -> None:
        self._holder = holder

    async def Attest(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        config: NoConfig = self._holder.get()
        if READER:
            from server_plugin.plugin import RequestReader

            reader = RequestReader(context)
            await reader.next("payload", TIMEOUT, "payload_timeout")
            await context.write(server_pb2.AttestResponse(challenge=CHALLENGE))
            await reader.next("challenge_response", TIMEOUT, "challenge_timeout")
        else:
            if await context.read() is grpc.aio.EOF:
                return
            await context.write(server_pb2.AttestResponse(challenge=CHALLENGE))
            if await context.read() is grpc.aio.EOF:
                return
        await context.write(server_pb2.AttestResponse(agent_attributes=attributes_for(config)))


def build_config(hcl: str, core: CoreConfig) -> NoConfig:
    return NoConfig(core.trust_domain)


def register(server: Any, holder: Any) -> None:
    servicer = AsyncNoopNodeAttestor(holder) if ASYNC_RUNTIME else NoopNodeAttestor(holder)
    server_pb2_grpc.add_NodeAttestorServicer_to_server(servicer, server)


SPEC = PluginSpec(
    name="noop",
    service_name=SERVICE_NAME,
    build_config=build_config,
    register_service=register,
)

if __name__ == "__main__":
    serve(SPEC)

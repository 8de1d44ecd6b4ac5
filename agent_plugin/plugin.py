"""The agent NodeAttestor service (spire.plugin.agent.nodeattestor.v1)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from agent_plugin.config import AgentConfig, build_agent_config
from spire_tpm_attestor.pb import spire_agent_nodeattestor_pb2 as agent_pb2
from spire_tpm_attestor.pb import spire_agent_nodeattestor_pb2_grpc as agent_pb2_grpc
from spire_tpm_attestor.runtime.plugin import ConfigHolder, PluginSpec, stream_guarded
from spire_tpm_attestor.runtime.status import PluginError

SERVICE_NAME = "spire.plugin.agent.nodeattestor.v1.NodeAttestor"


class NotImplementedYet(PluginError):
    code = grpc.StatusCode.UNIMPLEMENTED


class AgentNodeAttestor(agent_pb2_grpc.NodeAttestorServicer):
    def __init__(self, holder: ConfigHolder[AgentConfig]) -> None:
        self._holder = holder

    def AidAttestation(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[agent_pb2.Challenge], context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.PayloadOrChallengeResponse]:
        return stream_guarded(context, self._attest(request_iterator))

    def _attest(
        self, challenges: Iterator[agent_pb2.Challenge]
    ) -> Iterator[agent_pb2.PayloadOrChallengeResponse]:
        next(challenges, None)
        self._holder.get()
        raise NotImplementedYet("node attestation is not implemented yet")
        yield  # pragma: no cover - makes this a generator


def register(server: grpc.Server, holder: ConfigHolder[AgentConfig]) -> None:
    agent_pb2_grpc.add_NodeAttestorServicer_to_server(AgentNodeAttestor(holder), server)


SPEC = PluginSpec(
    name="agent",
    service_name=SERVICE_NAME,
    build_config=build_agent_config,
    register_service=register,
)

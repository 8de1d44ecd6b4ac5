"""The server NodeAttestor service (spire.plugin.server.nodeattestor.v1)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from server_plugin.config import ServerConfig, build_server_config
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2_grpc as server_pb2_grpc
from spire_tpm_attestor.runtime.plugin import ConfigHolder, PluginSpec, stream_guarded
from spire_tpm_attestor.runtime.status import PluginError

SERVICE_NAME = "spire.plugin.server.nodeattestor.v1.NodeAttestor"


class NotImplementedYet(PluginError):
    code = grpc.StatusCode.UNIMPLEMENTED


class ServerNodeAttestor(server_pb2_grpc.NodeAttestorServicer):
    def __init__(self, holder: ConfigHolder[ServerConfig]) -> None:
        self._holder = holder

    def Attest(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[server_pb2.AttestRequest], context: grpc.ServicerContext
    ) -> Iterator[server_pb2.AttestResponse]:
        return stream_guarded(context, self._attest(request_iterator))

    def _attest(
        self, challenges: Iterator[server_pb2.AttestRequest]
    ) -> Iterator[server_pb2.AttestResponse]:
        next(challenges, None)
        self._holder.get()
        raise NotImplementedYet("node attestation is not implemented yet")
        yield  # pragma: no cover - makes this a generator


def register(server: grpc.Server, holder: ConfigHolder[ServerConfig]) -> None:
    server_pb2_grpc.add_NodeAttestorServicer_to_server(ServerNodeAttestor(holder), server)


SPEC = PluginSpec(
    name="server",
    service_name=SERVICE_NAME,
    build_config=build_server_config,
    register_service=register,
)

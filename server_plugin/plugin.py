"""The server NodeAttestor service (spire.plugin.server.nodeattestor.v1).

`Attest` is a thin state machine: payload, one challenge, one response, result.
Every decision is written to the log as one structured audit line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from server_plugin import attestation
from server_plugin.checks import Rejected
from server_plugin.config import ServerConfig, build_server_config
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2_grpc as server_pb2_grpc
from spire_tpm_attestor.runtime.plugin import ConfigHolder, PluginSpec, stream_guarded
from spire_tpm_attestor.runtime.status import InvalidArgument

SERVICE_NAME = "spire.plugin.server.nodeattestor.v1.NodeAttestor"
audit = logging.getLogger("spire_tpm_attestor.audit")


def next_request(requests: Iterator[server_pb2.AttestRequest], expected: str) -> bytes:
    request = next(requests, None)
    if request is None:
        raise InvalidArgument(f"stream ended before the {expected}")
    kind = request.WhichOneof("request")
    if kind != expected:
        raise InvalidArgument(f"expected {expected}, got {kind or 'an empty request'}")
    data: bytes = getattr(request, expected)
    return data


class ServerNodeAttestor(server_pb2_grpc.NodeAttestorServicer):
    def __init__(self, holder: ConfigHolder[ServerConfig]) -> None:
        self._holder = holder

    def Attest(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[server_pb2.AttestRequest], context: grpc.ServicerContext
    ) -> Iterator[server_pb2.AttestResponse]:
        return stream_guarded(context, self._attest(request_iterator))

    def _attest(
        self, requests: Iterator[server_pb2.AttestRequest]
    ) -> Iterator[server_pb2.AttestResponse]:
        payload = next_request(requests, "payload")
        config = self._holder.get()
        pub_hash = ""
        try:
            evidence = attestation.check_payload(config, attestation.decode_payload(payload))
            pub_hash = evidence.pub_hash
            challenge, pending = attestation.issue_challenge(config, evidence)
            yield server_pb2.AttestResponse(challenge=challenge)
            answer = attestation.decode_response(next_request(requests, "challenge_response"))
            attested = attestation.verify_response(pending, answer)
            attributes = attestation.agent_attributes(config, attested)
        except Rejected as rejected:
            audit.warning(
                "attestation rejected",
                extra={
                    "decision": "rejected",
                    "check": rejected.check,
                    "reason": rejected.error.message,
                    "ek_hash": pub_hash or rejected.ek_hash,
                },
            )
            raise rejected.error from None
        audit.info(
            "attestation admitted",
            extra={
                "decision": "admitted",
                "ek_hash": pub_hash,
                "spiffe_id": attributes.spiffe_id,
                "selectors": ",".join(attributes.selector_values),
            },
        )
        yield server_pb2.AttestResponse(agent_attributes=attributes)


def register(server: grpc.Server, holder: ConfigHolder[ServerConfig]) -> None:
    server_pb2_grpc.add_NodeAttestorServicer_to_server(ServerNodeAttestor(holder), server)


SPEC = PluginSpec(
    name="server",
    service_name=SERVICE_NAME,
    build_config=build_server_config,
    register_service=register,
)

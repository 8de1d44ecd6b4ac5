"""The agent NodeAttestor service (spire.plugin.agent.nodeattestor.v1).

`AidAttestation` is a thin state machine: send the payload (EK, EK certificate,
AK, DevID), answer the server's one challenge (activate the credential; quote the PCRs
it asks for; certify the DevID key with the AK and sign both nonces with it; add the
firmware event log if asked), done.
The TPM is opened per attestation, by one attestation at a time, and every object is
flushed when the stream ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from agent_plugin.config import AgentConfig, build_agent_config
from agent_plugin.event_log import read_event_log
from agent_plugin.metrics import step
from agent_plugin.tpm import TPMAccessError, TPMSession, TPMUnresponsive
from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.pb import spire_agent_nodeattestor_pb2 as agent_pb2
from spire_tpm_attestor.pb import spire_agent_nodeattestor_pb2_grpc as agent_pb2_grpc
from spire_tpm_attestor.runtime.plugin import (
    ConfigHolder,
    PluginSpec,
    StreamEnded,
    stream_guarded,
)
from spire_tpm_attestor.runtime.status import Internal, InvalidArgument, Unavailable

SERVICE_NAME = "spire.plugin.agent.nodeattestor.v1.NodeAttestor"
log = logging.getLogger("agent_plugin")

# One attestation uses the TPM at a time. A TPM without a resource manager (swtpm,
# /dev/tpm0) has about three object slots, and a stream SPIRE cancelled flushes its
# objects only once its thread sees the cancel (~0.1 s later): the next attestation waits
# for that instead of failing with "out of memory for object contexts".
TPM_TURN = threading.Lock()
TPM_TURN_TIMEOUT = 30.0


def build_payload(tpm: TPMSession, config: AgentConfig) -> attestation_pb2.Payload:
    # Keys under the SRK first, the EK last: the SRK then never shares the TPM's object
    # slots (three on swtpm) with the EK, the AK and the DevID key at once.
    with step("ak_create"):
        ak_public = tpm.create_ak(config.ak_algorithm, config.ak_handle)
    devid = config.devid
    devid_public = b""
    if devid is not None:
        with step("devid_load"):
            devid_public = tpm.load_devid(devid.public, devid.private, devid.parent_handle)
    with step("ek_read"):
        ek = tpm.read_ek(config.ek_algorithm, config.ek_handle, config.ek_cert_path)
    log.debug(
        "evidence ready",
        extra={
            "ek_algorithm": ek.algorithm,
            "ek_certificate": str(ek.certificate is not None),
            "ek_intermediates": len(ek.intermediates),
        },
    )
    return attestation_pb2.Payload(
        version=wire.PROTOCOL_VERSION,
        ek_public=ek.public,
        ek_certificate=ek.certificate or b"",
        ek_intermediates=ek.intermediates,
        ak_public=ak_public,
        devid_certificates=devid.certificates if devid else (),
        devid_public=devid_public,
    )


def answer_challenge(
    tpm: TPMSession, challenge: attestation_pb2.Challenge, config: AgentConfig
) -> attestation_pb2.ChallengeResponse:
    with step("activate_credential"):
        secret = tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
    response = attestation_pb2.ChallengeResponse(version=wire.PROTOCOL_VERSION, secret=secret)
    selection = [(bank.hash_alg, list(bank.indices)) for bank in challenge.pcr_selection]
    if any(indices for _, indices in selection):  # quote only what the server asks for
        with step("quote"):
            quote = tpm.quote(selection, challenge.nonce)
        response.quote = quote.attest
        response.quote_signature = quote.signature
        response.pcr_values.extend(
            attestation_pb2.PCRValue(hash_alg=v.hash_alg, index=v.index, digest=v.digest)
            for v in quote.pcr_values
        )
    if config.devid is not None:
        with step("devid_certify"):
            response.devid_certify, response.devid_certify_signature = tpm.certify_devid(
                challenge.nonce
            )
            response.agent_nonce, response.devid_signature = tpm.sign_with_devid(challenge.nonce)
    if challenge.want_event_log:
        with step("event_log_read"):
            response.event_log, response.event_log_absent = read_event_log(
                config.event_log_path, config.max_event_log_size
            )
    return response


def decode_challenge(message: agent_pb2.Challenge | None) -> attestation_pb2.Challenge:
    if message is None:  # SPIRE has no challenge to send: the server decided already
        raise StreamEnded("stream ended before the server's challenge")
    try:
        return wire.decode_challenge(message.challenge)
    except wire.WireError as exc:
        raise InvalidArgument(str(exc)) from None


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
        config = self._holder.get()
        if not TPM_TURN.acquire(blocking=False):
            log.debug("waiting for another attestation to release the TPM")
            if not TPM_TURN.acquire(timeout=TPM_TURN_TIMEOUT):
                raise Unavailable(
                    f"the TPM is still in use by another attestation after {TPM_TURN_TIMEOUT:g}s"
                )
        try:
            with step("open"):
                session = TPMSession.open(
                    config.tcti,
                    require_encryption=not config.allow_unencrypted_sessions,
                    timeout=config.tpm_timeout,
                )
            with session as tpm:
                payload = build_payload(tpm, config)
                yield agent_pb2.PayloadOrChallengeResponse(payload=wire.encode(payload))
                challenge = decode_challenge(next(challenges, None))
                response = answer_challenge(tpm, challenge, config)
        except TPMUnresponsive as exc:  # transient: SPIRE tries again later
            raise Unavailable(f"TPM: {exc}") from None
        except TPMAccessError as exc:
            raise Internal(f"TPM: {exc}") from None
        finally:
            TPM_TURN.release()
        # Yield only after the session is closed: gRPC may not resume this generator
        # for a while, and a TPM without a resource manager has few object slots.
        yield agent_pb2.PayloadOrChallengeResponse(challenge_response=wire.encode(response))


def register(server: grpc.Server, holder: ConfigHolder[AgentConfig]) -> None:
    agent_pb2_grpc.add_NodeAttestorServicer_to_server(AgentNodeAttestor(holder), server)


SPEC = PluginSpec(
    name="agent",
    service_name=SERVICE_NAME,
    build_config=build_agent_config,
    register_service=register,
)

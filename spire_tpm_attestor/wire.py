"""Our attestation messages on the wire (docs/protocol.md): decode with every limit checked.

The agent and server exchange protobuf messages inside SPIRE's opaque byte fields.
Decoding rejects unknown versions and oversized fields before anything else looks
at the content, so later checks only ever see bounded input.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from spire_tpm_attestor.eventlog import Limits
from spire_tpm_attestor.pb import attestation_pb2

PROTOCOL_VERSION = 1
NONCE_SIZE = 32
SECRET_SIZE = 32

MAX_MESSAGE = 64 * 1024
# The firmware event log rides in the challenge response, so only that message may be
# larger. Real logs are tens of KiB (up to ~1 MiB with GRUB measuring every command);
# the whole AttestRequest stays well under the 4 MiB that grpcio (this plugin's
# receiving side) and grpc-go (the SPIRE server, receiving from the SPIRE agent) accept
# by default. go-plugin's host side accepts up to 2 GiB.
MAX_EVENT_LOG = 2 * 1024 * 1024
# What the server parses: any log an agent may send.
EVENT_LOG_LIMITS = Limits(max_size=MAX_EVENT_LOG)
MAX_EVENT_LOG_ABSENT = 512  # the agent's reason for sending no log
MAX_CHALLENGE_RESPONSE = MAX_MESSAGE + MAX_EVENT_LOG
MAX_TPM_PUBLIC = 1024
MAX_CERTIFICATE = 8 * 1024
MAX_CHAIN_CERTIFICATES = 8
MAX_TPM_BLOB = 1024
MAX_SECRET = 64
MAX_PCR_VALUES = 4 * 24
MAX_DIGEST = 64
MAX_ALG_ID = 0xFFFF  # TPM_ALG_ID is a UINT16; the protobuf field a uint32

Payload = attestation_pb2.Payload
Challenge = attestation_pb2.Challenge
ChallengeResponse = attestation_pb2.ChallengeResponse
PCRValue = attestation_pb2.PCRValue
PCRBankSelection = attestation_pb2.PCRBankSelection

M = TypeVar("M", bound=Message)


class WireError(ValueError):
    """A message that is malformed, oversized or of an unknown version."""


def _decode(data: bytes, message: M, what: str, limit: int = MAX_MESSAGE) -> M:
    if not data:
        raise WireError(f"{what} is empty")
    if len(data) > limit:
        raise WireError(f"{what} is {len(data)} bytes; the limit is {limit}")
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise WireError(f"{what} is not a valid protobuf message: {exc}") from None
    version = getattr(message, "version")  # noqa: B009 - every message has one
    if version != PROTOCOL_VERSION:
        raise WireError(
            f"{what} has protocol version {version}; this plugin speaks {PROTOCOL_VERSION}"
        )
    return message


def _limit(value: Sized, limit: int, field: str) -> None:
    if len(value) > limit:
        raise WireError(f"{field} is too large ({len(value)} > {limit})")


def _require(value: Sized, field: str) -> None:
    if not len(value):
        raise WireError(f"{field} is missing")


def _exact(value: Sized, size: int, field: str) -> None:
    if len(value) != size:
        raise WireError(f"{field} must be {size} bytes, got {len(value)}")


def _limit_chain(chain: Sized, field: str) -> None:
    _limit(chain, MAX_CHAIN_CERTIFICATES, f"{field} count")
    for certificate in chain:  # type: ignore[attr-defined]
        _limit(certificate, MAX_CERTIFICATE, field)


def decode_payload(data: bytes) -> attestation_pb2.Payload:
    payload = _decode(data, attestation_pb2.Payload(), "attestation payload")
    _require(payload.ek_public, "ek_public")
    _limit(payload.ek_public, MAX_TPM_PUBLIC, "ek_public")
    _require(payload.ak_public, "ak_public")
    _limit(payload.ak_public, MAX_TPM_PUBLIC, "ak_public")
    _limit(payload.ek_certificate, MAX_CERTIFICATE, "ek_certificate")
    _limit_chain(payload.ek_intermediates, "ek_intermediates")
    _limit_chain(payload.devid_certificates, "devid_certificates")
    _limit(payload.devid_public, MAX_TPM_PUBLIC, "devid_public")
    if bool(payload.devid_certificates) != bool(payload.devid_public):
        raise WireError("devid_certificates and devid_public come together")
    return payload


def decode_challenge(data: bytes) -> attestation_pb2.Challenge:
    challenge = _decode(data, attestation_pb2.Challenge(), "challenge")
    _require(challenge.credential_blob, "credential_blob")
    _limit(challenge.credential_blob, MAX_TPM_BLOB, "credential_blob")
    _require(challenge.encrypted_secret, "encrypted_secret")
    _limit(challenge.encrypted_secret, MAX_TPM_BLOB, "encrypted_secret")
    _exact(challenge.nonce, NONCE_SIZE, "nonce")
    _limit(challenge.pcr_selection, 8, "pcr_selection banks")
    for bank in challenge.pcr_selection:
        if bank.hash_alg > MAX_ALG_ID:  # the agent hands it to the TPM as a TPM_ALG_ID
            raise WireError(f"pcr_selection hash_alg {bank.hash_alg} is not a TPM_ALG_ID")
        if any(index > 23 for index in bank.indices) or len(set(bank.indices)) != len(bank.indices):
            raise WireError("pcr_selection indices must be distinct and within 0..23")
    return challenge


def decode_challenge_response(data: bytes) -> attestation_pb2.ChallengeResponse:
    response = _decode(
        data, attestation_pb2.ChallengeResponse(), "challenge response", MAX_CHALLENGE_RESPONSE
    )
    _require(response.secret, "secret")
    _limit(response.secret, MAX_SECRET, "secret")
    for field in (
        "quote",
        "quote_signature",
        "devid_certify",
        "devid_certify_signature",
        "devid_signature",
    ):
        _limit(getattr(response, field), MAX_TPM_BLOB, field)
    _limit(response.pcr_values, MAX_PCR_VALUES, "pcr_values")
    for value in response.pcr_values:
        _limit(value.digest, MAX_DIGEST, "pcr digest")
    if response.agent_nonce:
        _exact(response.agent_nonce, NONCE_SIZE, "agent_nonce")
    _limit(response.event_log, MAX_EVENT_LOG, "event_log")
    _limit(response.event_log_absent, MAX_EVENT_LOG_ABSENT, "event_log_absent")
    rest = len(data) - len(response.event_log)
    if rest > MAX_MESSAGE:  # only the event log may exceed the ordinary limit
        raise WireError(
            f"challenge response is {rest} bytes besides its event log; the limit is {MAX_MESSAGE}"
        )
    return response


def devid_signed_data(server_nonce: bytes, agent_nonce: bytes) -> bytes:
    """What the DevID key signs (hashed with SHA-256): both nonces, so the agent never
    signs a value the server alone chose."""
    return server_nonce + agent_nonce


def encode(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)

"""Every size limit decode_challenge_response enforces, one field at a time; what
decode_challenge refuses before the agent hands it to its TPM."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2

Change = Callable[[attestation_pb2.ChallengeResponse], None]


def good_response() -> attestation_pb2.ChallengeResponse:
    return attestation_pb2.ChallengeResponse(
        version=wire.PROTOCOL_VERSION,
        secret=bytes(wire.SECRET_SIZE),
        quote=bytes(wire.MAX_TPM_BLOB),
        quote_signature=bytes(wire.MAX_TPM_BLOB),
        devid_certify=bytes(wire.MAX_TPM_BLOB),
        devid_certify_signature=bytes(wire.MAX_TPM_BLOB),
        devid_signature=bytes(wire.MAX_TPM_BLOB),
        pcr_values=[
            attestation_pb2.PCRValue(digest=bytes(wire.MAX_DIGEST))
            for _ in range(wire.MAX_PCR_VALUES)
        ],
        agent_nonce=bytes(wire.NONCE_SIZE),
    )


def test_a_response_at_every_limit_decodes() -> None:
    assert wire.decode_challenge_response(wire.encode(good_response())).secret


def _set(field: str, size: int) -> Change:
    return lambda response: setattr(response, field, bytes(size))


def _more_pcr_values(response: attestation_pb2.ChallengeResponse) -> None:
    response.pcr_values.add(digest=bytes(32))


def _long_digest(response: attestation_pb2.ChallengeResponse) -> None:
    response.pcr_values[5].digest = bytes(wire.MAX_DIGEST + 1)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_set("quote", wire.MAX_TPM_BLOB + 1), "quote is too large"),
        (_set("quote_signature", wire.MAX_TPM_BLOB + 1), "quote_signature is too large"),
        (_set("devid_certify", wire.MAX_TPM_BLOB + 1), "devid_certify is too large"),
        (
            _set("devid_certify_signature", wire.MAX_TPM_BLOB + 1),
            "devid_certify_signature is too large",
        ),
        (_set("devid_signature", wire.MAX_TPM_BLOB + 1), "devid_signature is too large"),
        (_more_pcr_values, "pcr_values is too large (97 > 96)"),
        (_long_digest, "pcr digest is too large (65 > 64)"),
        (_set("agent_nonce", wire.NONCE_SIZE - 1), "agent_nonce must be 32 bytes, got 31"),
        (_set("agent_nonce", wire.NONCE_SIZE + 1), "agent_nonce must be 32 bytes, got 33"),
        (_set("secret", wire.MAX_SECRET + 1), "secret is too large (65 > 64)"),
        (_set("secret", 0), "secret is missing"),
    ],
)
def test_each_oversized_field_is_refused(change: Change, words: str) -> None:
    response = good_response()
    change(response)
    with pytest.raises(wire.WireError, match=words.replace("(", r"\(").replace(")", r"\)")):
        wire.decode_challenge_response(wire.encode(response))


def test_only_the_event_log_may_exceed_the_ordinary_message_limit() -> None:
    response = good_response()
    response.event_log = bytes(wire.MAX_EVENT_LOG)
    response.event_log_absent = "x" * wire.MAX_EVENT_LOG_ABSENT
    assert len(wire.decode_challenge_response(wire.encode(response)).event_log) == (
        wire.MAX_EVENT_LOG
    )
    response.event_log = bytes(wire.MAX_EVENT_LOG + 1)
    with pytest.raises(wire.WireError, match="event_log is too large"):
        wire.decode_challenge_response(wire.encode(response))


def test_the_absence_reason_is_bounded() -> None:
    response = good_response()
    response.event_log_absent = "x" * (wire.MAX_EVENT_LOG_ABSENT + 1)
    with pytest.raises(wire.WireError, match="event_log_absent is too large"):
        wire.decode_challenge_response(wire.encode(response))


def test_unknown_fields_do_not_ride_on_the_event_log_allowance() -> None:
    response = good_response()
    unknown_field_99 = b"\x9a\x06" + b"\x80\x80\x04" + bytes(65536)  # tag 99, 64 KiB
    with pytest.raises(wire.WireError, match="besides its event log"):
        wire.decode_challenge_response(wire.encode(response) + unknown_field_99)


def test_a_challenge_bank_that_is_no_tpm_alg_id_is_refused() -> None:
    """A server's bank id beyond UINT16 would overflow tpm2-pytss's TPM_ALG_ID (an
    INTERNAL on the agent); it is malformed input (found by tests/fuzz)."""
    from agent_plugin.plugin import decode_challenge
    from spire_tpm_attestor.pb import spire_agent_nodeattestor_pb2 as agent_pb2
    from spire_tpm_attestor.runtime.status import InvalidArgument

    challenge = attestation_pb2.Challenge(
        version=wire.PROTOCOL_VERSION,
        credential_blob=b"blob",
        encrypted_secret=b"secret",
        nonce=bytes(wire.NONCE_SIZE),
        pcr_selection=[attestation_pb2.PCRBankSelection(hash_alg=0xFFFF, indices=[7])],
    )
    wire.decode_challenge(wire.encode(challenge))  # the largest TPM_ALG_ID is one
    challenge.pcr_selection[0].hash_alg = 0x1000B
    with pytest.raises(InvalidArgument, match="not a TPM_ALG_ID"):
        decode_challenge(agent_pb2.Challenge(challenge=wire.encode(challenge)))

"""PCR quotes and the PCR policy end to end: the real plugin processes against swtpm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.host import PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.platform_setup import (
    SHA256,
    Exchange,
    extend_pcr,
    intercept,
    read_pcrs,
)
from tests.integration.plugins import expect_rejection, hcl, log_entries, wait_for_log

pytestmark = pytest.mark.swtpm

FIRMWARE = [*range(8)]
ZERO = bytes(32)


def pcr_selectors(selectors: list[str]) -> dict[int, bytes]:
    values = {}
    for selector in selectors:
        if selector.startswith("pcr:"):
            _, bank, index, value = selector.split(":")
            assert bank == "sha256"
            values[int(index)] = bytes.fromhex(value)
    return values


def configure(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, **options: object
) -> None:
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path), **options))


@pytest.mark.parametrize("ak_algorithm", ["rsa", "ecc"])  # RSASSA and ECDSA quotes
def test_quoted_pcrs_become_selectors_equal_to_pcr_read(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, ak_algorithm: str
) -> None:
    extend_pcr(swtpm.tcti, 7, b"secure boot policy")
    extend_pcr(swtpm.tcti, 16, b"debug measurement")
    # Nine PCRs: more than one TPM2_PCR_Read returns.
    configure(agent, server, swtpm, ek_ca, pcr_selection={"sha256": [*FIRMWARE, 16]})
    agent.configure(hcl(tcti=swtpm.tcti, ak_algorithm=ak_algorithm))
    result = relay_attestation(agent, server)
    quoted = pcr_selectors(result.selectors)
    assert quoted == read_pcrs(swtpm.tcti, [*FIRMWARE, 16])
    assert quoted[7] != ZERO and quoted[16] != ZERO and quoted[0] == ZERO


def test_without_a_selection_nothing_is_quoted(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    configure(agent, server, swtpm, ek_ca)
    exchange = intercept(agent, server)
    assert exchange.challenge is not None and exchange.response is not None
    assert not exchange.challenge.pcr_selection
    assert not exchange.response.quote and not exchange.response.pcr_values
    assert exchange.attributes is not None
    assert not pcr_selectors(list(exchange.attributes.selector_values))


def test_policy_admits_any_of_the_allowed_values(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    extend_pcr(swtpm.tcti, 7, b"firmware 2")
    actual = read_pcrs(swtpm.tcti, [7])[7].hex()
    other_firmware = "ab" * 32
    policy = {"sha256": {"0": ZERO.hex(), "7": [other_firmware, actual]}}
    configure(agent, server, swtpm, ek_ca, pcr_policy=policy)
    result = relay_attestation(agent, server)
    # The policy's PCRs are quoted (and reported) without being in pcr_selection.
    assert pcr_selectors(result.selectors) == {0: ZERO, 7: bytes.fromhex(actual)}


def test_policy_mismatch_names_the_pcr_and_the_value_seen(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    extend_pcr(swtpm.tcti, 7, b"unknown firmware")
    seen = read_pcrs(swtpm.tcti, [7])[7].hex()
    policy = {"sha256": {"0": [ZERO.hex()], "7": ["ab" * 32, "cd" * 32]}}
    configure(agent, server, swtpm, ek_ca, pcr_selection={"sha256": FIRMWARE}, pcr_policy=policy)
    audit = expect_rejection(
        agent,
        server,
        grpc.StatusCode.PERMISSION_DENIED,
        f"PCR sha256:7 is {seen}, which pcr_policy does not allow",
    )
    assert audit["check"] == "pcr_policy"


def replace_policy(server: PluginProcess, path: Path, text: str, outcome: str) -> None:
    """Replace the policy file as an operator should (a rename, never a half-written
    file) and wait for the server's log line on it: `reloaded` or `reload failed`."""
    seen = len(log_entries(server))
    path.with_suffix(".new").write_text(text)
    os.replace(path.with_suffix(".new"), path)
    wait_for_log(
        server,
        lambda e: e.get("what") == "pcr_policy_path" and e["@message"].startswith(outcome),
        after=seen,
    )


def test_policy_file_is_reloaded_when_it_changes(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> None:
    extend_pcr(swtpm.tcti, 7, b"firmware 1")
    firmware_1 = read_pcrs(swtpm.tcti, [7])[7].hex()
    policy_file = tmp_path / "pcr-policy.json"
    policy_file.write_text(json.dumps({"sha256": {"7": [firmware_1]}}))
    configure(agent, server, swtpm, ek_ca, pcr_policy_path=str(policy_file))
    assert relay_attestation(agent, server).spiffe_id

    # The fleet moves to firmware 2: the operator replaces the allowed value.
    replace_policy(server, policy_file, json.dumps({"sha256": {"7": ["ab" * 32]}}), "reloaded")
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "pcr_policy")
    # A broken edit keeps the last good policy rather than opening (or closing) the door.
    replace_policy(server, policy_file, "{ not valid", "reload failed")
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "pcr_policy")
    # HCL works as well as JSON, with both firmware versions allowed.
    hcl_policy = f'sha256 {{ "7" = ["ab{"ab" * 31}", "{firmware_1}"] }}'
    replace_policy(server, policy_file, hcl_policy, "reloaded")
    assert relay_attestation(agent, server).spiffe_id


# -- a man in the middle rewrites the quote --------------------------------------------


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def _change_value(response: attestation_pb2.ChallengeResponse) -> None:
    response.pcr_values[7].digest = bytes(32 * [0x11])


def _change_digest(response: attestation_pb2.ChallengeResponse) -> None:
    response.quote = _flip_last(response.quote)  # pcrDigest is the last field of a quote


def _add_unquoted_value(response: attestation_pb2.ChallengeResponse) -> None:
    response.pcr_values.add(hash_alg=SHA256, index=20, digest=ZERO)


def _repeat_a_value(response: attestation_pb2.ChallengeResponse) -> None:
    response.pcr_values.append(response.pcr_values[0])


def _drop_quote(response: attestation_pb2.ChallengeResponse) -> None:
    response.ClearField("quote")


def _quote_fewer(challenge: attestation_pb2.Challenge) -> None:
    challenge.pcr_selection[0].indices.remove(7)


RESPONSE_TAMPERING = [
    ("value changed", _change_value, "PCR values do not match the quoted pcrDigest"),
    ("digest changed", _change_digest, "signature does not verify"),
    ("value the quote does not cover", _add_unquoted_value, "is not covered by the quote"),
    ("quote removed", _drop_quote, "the agent sent none"),
]


def _denied(exchange: Exchange, words: str, code: grpc.StatusCode) -> None:
    assert exchange.error is not None, "the server admitted a tampered attestation"
    assert exchange.error.code() == code, exchange.error.details()
    assert words in (exchange.error.details() or ""), exchange.error.details()


@pytest.mark.parametrize(
    ("change", "words"), [(change, words) for _, change, words in RESPONSE_TAMPERING]
)
def test_tampered_response_is_denied(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    change: object,
    words: str,
) -> None:
    configure(agent, server, swtpm, ek_ca, pcr_selection={"sha256": FIRMWARE})
    exchange = intercept(agent, server, response=change)  # type: ignore[arg-type]
    _denied(exchange, words, grpc.StatusCode.PERMISSION_DENIED)


def test_repeated_pcr_value_is_malformed(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    configure(agent, server, swtpm, ek_ca, pcr_selection={"sha256": FIRMWARE})
    exchange = intercept(agent, server, response=_repeat_a_value)
    _denied(exchange, "is reported twice", grpc.StatusCode.INVALID_ARGUMENT)


def test_quote_of_fewer_pcrs_than_asked_is_denied(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    # The selection is taken from the signed quote, not from what the agent was told.
    configure(agent, server, swtpm, ek_ca, pcr_selection={"sha256": FIRMWARE})
    exchange = intercept(agent, server, challenge=_quote_fewer)
    _denied(exchange, "requested PCR sha256:7 was not quoted", grpc.StatusCode.PERMISSION_DENIED)


def test_quote_over_an_old_nonce_is_denied(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    configure(agent, server, swtpm, ek_ca, pcr_selection={"sha256": FIRMWARE})
    earlier = intercept(agent, server)
    assert earlier.challenge is not None and earlier.attributes is not None
    old_nonce = earlier.challenge.nonce

    def replay_nonce(challenge: attestation_pb2.Challenge) -> None:
        challenge.nonce = old_nonce

    exchange = intercept(agent, server, challenge=replay_nonce)
    _denied(exchange, "extraData does not match the nonce", grpc.StatusCode.PERMISSION_DENIED)


def test_quote_signed_by_another_ak_is_denied(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    from agent_plugin.tpm import TPMSession

    configure(agent, server, swtpm, ek_ca, pcr_selection={"sha256": FIRMWARE})

    def quote_elsewhere(response: attestation_pb2.ChallengeResponse) -> None:
        # Another TPM in the same (initial) state quotes the same PCRs over the same nonce.
        nonce = challenges[-1].nonce
        with SWTPM() as other, TPMSession(other.tcti) as tpm:
            tpm.create_ak("rsa")
            quote = tpm.quote([("sha256", FIRMWARE)], nonce)
        assert [v.digest for v in quote.pcr_values] == [v.digest for v in response.pcr_values]
        response.quote, response.quote_signature = quote.attest, quote.signature

    challenges: list[attestation_pb2.Challenge] = []
    exchange = intercept(agent, server, challenge=challenges.append, response=quote_elsewhere)
    _denied(exchange, "signature does not verify", grpc.StatusCode.PERMISSION_DENIED)

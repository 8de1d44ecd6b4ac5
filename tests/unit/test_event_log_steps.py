"""The server's event log step in-process: challenge, replay, facts, policy, options.

A `SoftwareTPM` whose PCRs hold what a generated log replays to answers the challenge,
so `issue_challenge` -> `verify_response` -> `agent_attributes` run as the Attest stream
calls them. Each negative test names the check that must refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_plugin.attestation import (
    PendingChallenge,
    agent_attributes,
    check_payload,
    issue_challenge,
    verify_response,
)
from server_plugin.config import ServerConfig, build_server_config
from server_plugin.event_log_policy import EventLogPolicy
from server_plugin.evidence_config import EventLogOptions
from server_plugin.reload import WATCHES
from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig
from spire_tpm_attestor.runtime.status import InvalidArgument, PermissionDenied
from tests.eventlog_builder import SHA1, SHA256, BuiltLog, uefi_log
from tests.unit.server_builders import TestCA, bundle, der, fixed, rejected, server_config
from tests.unit.software_tpm import SoftwareTPM

FIRMWARE = frozenset((SHA256, index) for index in range(8))


def node_for(log: BuiltLog, ek_ca: TestCA, **pcrs: bytes) -> tuple[SoftwareTPM, bytes]:
    """A TPM that measured `log` (plus `pcrs`, e.g. pcr10=...) and its payload."""
    values = {(bank, pcr): value for bank in log.pcrs for pcr, value in log.pcrs[bank].items()}
    values.update({(SHA256, int(name[3:])): value for name, value in pcrs.items()})
    tpm = SoftwareTPM(pcrs=values, event_log=log.data)
    certificate = der(ek_ca.issue_ek_certificate(tpm.ek_key.public_key()))
    return tpm, wire.encode(tpm.payload(certificate, [der(ek_ca.intermediate_certificate)]))


def config_for(
    ek_ca: TestCA, policy: EventLogPolicy | None = None, **options: object
) -> ServerConfig:
    event_log = EventLogOptions(policy_file=fixed(policy) if policy else None)
    return server_config(ek_ca=bundle(ek_ca), event_log=event_log, **options)  # type: ignore[arg-type]


def exchange(
    config: ServerConfig, tpm: SoftwareTPM, payload: bytes
) -> tuple[attestation_pb2.Challenge, PendingChallenge, attestation_pb2.ChallengeResponse]:
    evidence = check_payload(config, wire.decode_payload(payload))
    data, pending = issue_challenge(config, evidence)
    challenge = wire.decode_challenge(data)
    return challenge, pending, tpm.answer(challenge)


def attest(config: ServerConfig, tpm: SoftwareTPM, payload: bytes) -> list[str]:
    _, pending, response = exchange(config, tpm, payload)
    attested = verify_response(config, pending, response)
    return list(agent_attributes(config, attested).selector_values)


@pytest.fixture(scope="module")
def log() -> BuiltLog:
    return uefi_log().build()


def test_the_challenge_asks_for_the_log_and_the_firmware_pcrs(ek_ca: TestCA, log: BuiltLog) -> None:
    tpm, payload = node_for(log, ek_ca)
    challenge, pending, _ = exchange(config_for(ek_ca), tpm, payload)
    assert challenge.want_event_log
    assert pending.pcr_request == pending.event_log_pcrs == FIRMWARE


def test_the_policy_pcrs_are_quoted_too(ek_ca: TestCA, log: BuiltLog) -> None:
    tpm, payload = node_for(log, ek_ca)
    options = EventLogOptions(
        selection=frozenset({(SHA1, 0)}),
        policy_file=fixed(
            EventLogPolicy(require_secure_boot=True, allowed_boot_applications=frozenset())
        ),
    )
    config = server_config(ek_ca=bundle(ek_ca), event_log=options)
    _, pending, _ = exchange(config, tpm, payload)
    assert pending.event_log_pcrs == {(SHA1, 0), (SHA256, 7), (SHA256, 4)}


def test_without_the_option_no_log_is_asked_for(ek_ca: TestCA, log: BuiltLog) -> None:
    tpm, payload = node_for(log, ek_ca)
    challenge, pending, response = exchange(server_config(ek_ca=bundle(ek_ca)), tpm, payload)
    assert not challenge.want_event_log and not response.event_log
    assert pending.event_log_pcrs is None


def test_the_log_becomes_selectors(ek_ca: TestCA, log: BuiltLog) -> None:
    tpm, payload = node_for(log, ek_ca)
    selectors = attest(config_for(ek_ca), tpm, payload)
    assert "secureboot:enabled" in selectors
    assert "firmware:version:Test Firmware 1.2.3" in selectors
    assert sum(s.startswith("boot:app:") for s in selectors) == 3


def test_other_quoted_pcrs_are_not_replayed(ek_ca: TestCA, log: BuiltLog) -> None:
    """IMA extends PCR 10, which the firmware log knows nothing of: quoting it for
    pcr_selection must not make the log mismatch."""
    tpm, payload = node_for(log, ek_ca, pcr10=b"\x10" * 32)
    config = config_for(ek_ca, pcr_selection={(SHA256, 10)})
    selectors = attest(config, tpm, payload)
    assert f"pcr:sha256:10:{'10' * 32}" in selectors and "secureboot:enabled" in selectors


def test_a_malformed_log_is_invalid_argument_with_the_offset(ek_ca: TestCA, log: BuiltLog) -> None:
    tpm, payload = node_for(log, ek_ca)
    config = config_for(ek_ca)
    _, pending, response = exchange(config, tpm, payload)
    response.event_log = log.data[:100]
    refusal = rejected("event_log", InvalidArgument, verify_response, config, pending, response)
    assert "event log is malformed at byte offset" in refusal.error.message


def test_a_log_that_does_not_replay_is_denied_naming_the_pcr(ek_ca: TestCA, log: BuiltLog) -> None:
    tpm, payload = node_for(log, ek_ca, pcr7=b"\x07" * 32)
    config = config_for(ek_ca)
    _, pending, response = exchange(config, tpm, payload)
    refusal = rejected(
        "event_log_replay", PermissionDenied, verify_response, config, pending, response
    )
    assert "event log does not match PCR sha256:7" in refusal.error.message


def test_no_log_is_admitted_without_a_policy(ek_ca: TestCA, log: BuiltLog) -> None:
    tpm, payload = node_for(log, ek_ca)
    tpm.event_log = b""
    selectors = attest(config_for(ek_ca), tpm, payload)
    assert not any(s.startswith(("secureboot:", "boot:", "firmware:")) for s in selectors)


def test_the_policy_of_the_challenge_applies(ek_ca: TestCA) -> None:
    """Like pcr_policy: the policy in force when the challenge went out judges the answer
    (it chose the PCRs quoted)."""
    log = uefi_log(secure_boot=False).build()
    tpm, payload = node_for(log, ek_ca)
    strict = config_for(ek_ca, EventLogPolicy(require_secure_boot=True))
    _, pending, response = exchange(strict, tpm, payload)
    lenient = config_for(ek_ca)
    refusal = rejected(
        "event_log_policy", PermissionDenied, verify_response, lenient, pending, response
    )
    assert refusal.error.message == (
        "event log policy rule require_secure_boot: Secure Boot is disabled"
    )


def test_secure_boot_rules_need_pcr_7_proven(ek_ca: TestCA) -> None:
    """A SHA-1 format log cannot prove the SHA-256 bank: its facts may not pass a rule."""
    log = uefi_log(sha1_format=True).build()
    tpm, payload = node_for(log, ek_ca)
    config = config_for(ek_ca, EventLogPolicy(allowed_pk=frozenset()))
    _, pending, response = exchange(config, tpm, payload)
    refusal = rejected(
        "event_log_policy", PermissionDenied, verify_response, config, pending, response
    )
    assert "allowed_pk: the event log does not prove PCR 7" in refusal.error.message


def test_boot_applications_need_pcr_4_proven_in_sha256(ek_ca: TestCA) -> None:
    log = uefi_log(sha1_format=True).build()
    tpm, payload = node_for(log, ek_ca)
    options = EventLogOptions(
        selection=frozenset((SHA1, index) for index in range(8)),
        policy_file=fixed(EventLogPolicy(allowed_boot_applications=frozenset())),
    )
    config = server_config(ek_ca=bundle(ek_ca), event_log=options)
    _, pending, response = exchange(config, tpm, payload)
    refusal = rejected(
        "event_log_policy", PermissionDenied, verify_response, config, pending, response
    )
    assert "does not prove PCR 4 in the sha256 bank" in refusal.error.message


# -- options ---------------------------------------------------------------------------------


def build(ek_ca: TestCA, text: str) -> ServerConfig:
    return build_server_config(
        f'ek_ca_path = "{ek_ca.bundle_path}"\n{text}', CoreConfig("example.org")
    )


def problems(ek_ca: TestCA, text: str) -> list[str]:
    with pytest.raises(ConfigProblems) as raised:
        build(ek_ca, text).close()
    return raised.value.problems


def test_event_log_true_replays_pcrs_0_to_7(ek_ca: TestCA) -> None:
    config = build(ek_ca, "event_log = true")
    assert config.event_log is not None and config.event_log.selection == FIRMWARE
    assert build(ek_ca, "event_log = false").event_log is None
    assert build(ek_ca, "").event_log is None


def test_event_log_block_chooses_the_pcrs(ek_ca: TestCA) -> None:
    config = build(ek_ca, "event_log { pcr_selection { sha1 = [0, 7] } }")
    assert config.event_log is not None
    assert config.event_log.selection == {(SHA1, 0), (SHA1, 7)}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('event_log = "yes"', "event_log: expected true, false or a block"),
        ("event_log { pcr_selection { md5 = [0] } }", "unknown PCR bank 'md5'"),
        ("event_log { banks = 1 }", "event_log.banks: unknown option"),
        ('event_log = false\nevent_log_policy_path = "/x"', "event_log_policy_path needs"),
        ('event_log_policy_path = "/nonexistent/policy.hcl"', "event_log_policy_path: "),
    ],
)
def test_bad_event_log_options_are_named(ek_ca: TestCA, text: str, problem: str) -> None:
    assert any(problem in found for found in problems(ek_ca, text)), problems(ek_ca, text)


def test_the_policy_file_asks_for_the_log_and_is_watched_only_once_started(
    ek_ca: TestCA, tmp_path: Path
) -> None:
    policy = tmp_path / "event-log-policy.json"
    policy.write_text(json.dumps({"require_secure_boot": True}))
    config = build(ek_ca, f'event_log_policy_path = "{policy}"')
    try:
        assert config.event_log is not None
        assert config.event_log.policy() == EventLogPolicy(require_secure_boot=True)
        assert str(tmp_path) not in WATCHES.watched()
        config.start()
        assert str(tmp_path) in WATCHES.watched()
    finally:
        config.close()
    assert str(tmp_path) not in WATCHES.watched()

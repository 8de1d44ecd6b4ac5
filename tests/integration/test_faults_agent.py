"""Faults on the agent's TPM, through the real agent plugin process and swtpm: the
simulator killed or stalled between the payload and the challenge, and during the
quote. The agent answers each with UNAVAILABLE naming the TPM within `tpm_timeout`,
never hangs, and attests again once the TPM answers (a stalled TPM's objects are
flushed when it does: swtpm has three object slots and no resource manager)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from spire_tpm_attestor.runtime.host import AttestationFailed, PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.bus_tap import BusTap, Trap
from tests.integration.plugins import AgentConversation, ServerConversation, hcl, rpc_error

pytestmark = pytest.mark.swtpm

TPM_TIMEOUT = 1.0
# Far above TPM_TIMEOUT and far below the streams' own 60 s: "answered, not hung".
NO_HANG = 20.0
TPM2_CC_QUOTE = 0x158


def configure(agent: PluginProcess, server: PluginProcess, tcti: str, ek_ca: TestCA) -> None:
    # ECC keys only: an RSA key can take swtpm longer than TPM_TIMEOUT to make.
    agent.configure(
        hcl(tcti=tcti, tpm_timeout=f"{TPM_TIMEOUT:g}s", ek_algorithm="ecc256", ak_algorithm="ecc")
    )
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path), pcr_selection={"sha256": [0, 7]}))


@contextmanager
def challenged(
    agent: PluginProcess, server: PluginProcess
) -> Iterator[tuple[AgentConversation, bytes]]:
    """An agent stream past its payload, and the server's challenge to it."""
    conversation = AgentConversation(agent)
    server_side = ServerConversation(server)
    try:
        yield conversation, bytes(server_side.send_payload(conversation.payload()).challenge)
    finally:
        server_side.close()
        conversation.close()


def unavailable_answer(conversation: AgentConversation, challenge: bytes) -> str:
    """The agent's answer is UNAVAILABLE, well before the stream's own deadline."""
    started = time.monotonic()
    error = rpc_error(lambda: conversation.answer(challenge))
    assert time.monotonic() - started < NO_HANG
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    details = str(error.details())
    assert details.startswith("TPM: "), details
    return details


def unavailable_attestation(agent: PluginProcess, server: PluginProcess) -> str:
    """A whole attestation ends with the agent's UNAVAILABLE, well before its deadline."""
    started = time.monotonic()
    with pytest.raises(AttestationFailed) as failure:
        relay_attestation(agent, server)
    assert time.monotonic() - started < NO_HANG
    assert (failure.value.side, failure.value.code) == ("agent", grpc.StatusCode.UNAVAILABLE)
    return failure.value.details


def test_a_tpm_that_dies_before_the_challenge_is_unavailable_until_it_is_back(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
) -> None:
    configure(agent, server, swtpm.tcti, ek_ca)
    with challenged(agent, server) as (conversation, challenge):
        swtpm.kill()
        details = unavailable_answer(conversation, challenge)
    assert "IO failure" in details, details
    swtpm.restart()  # the same ports, the same state: the same configuration works again
    assert relay_attestation(agent, server).spiffe_id


def test_a_tpm_that_stops_answering_before_the_challenge_times_out(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
) -> None:
    configure(agent, server, swtpm.tcti, ek_ca)
    with challenged(agent, server) as (conversation, challenge):
        swtpm.pause()
        try:
            details = unavailable_answer(conversation, challenge)
        finally:
            swtpm.resume()
    assert f"no answer from the TPM at {swtpm.tcti}" in details, details
    assert f"within {TPM_TIMEOUT:g}s" in details, details
    # Its objects were flushed once it answered: three slots would not hold another AK.
    for _ in range(2):
        assert relay_attestation(agent, server).spiffe_id


def test_a_tpm_that_stops_answering_during_the_quote_times_out(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    with BusTap(swtpm) as tap:
        configure(agent, server, tap.tcti, ek_ca)
        trap = tap.trap(Trap(TPM2_CC_QUOTE))
        details = unavailable_attestation(agent, server)
        assert trap.reached.is_set()
        assert details.startswith("TPM: quoting the PCRs: no answer from the TPM"), details
        trap.release.set()  # the TPM answers the quote at last
        for _ in range(2):
            assert relay_attestation(agent, server).spiffe_id


def test_a_tpm_that_dies_during_the_quote_is_unavailable(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    with BusTap(swtpm) as tap:
        configure(agent, server, tap.tcti, ek_ca)
        tap.trap(Trap(TPM2_CC_QUOTE, cut=swtpm.kill))
        details = unavailable_attestation(agent, server)
        assert details.startswith("TPM: quoting the PCRs: "), details
        assert "IO failure" in details
        swtpm.restart()
        assert relay_attestation(agent, server).spiffe_id

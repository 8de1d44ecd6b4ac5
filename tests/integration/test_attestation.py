"""Node attestation end to end: the real agent and server plugin processes against swtpm."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from spire_tpm_attestor import wire
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.host import (
    AttestationFailed,
    AttestationResult,
    PluginProcess,
    relay_attestation,
)
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from tests.integration.plugins import (
    AgentConversation,
    ServerConversation,
    audit_line_after,
    audit_lines,
    expect_rejection,
    hcl,
    log_entries,
    provisioned_hash,
    rpc_error,
    wait_for_log,
)
from tests.integration.tpm_state import leftover_handles

pytestmark = pytest.mark.swtpm  # the simulator fixtures skip where swtpm is missing

EK_ALGORITHMS = ("rsa2048", "ecc256", "ecc384")
POLICIES = ("cert", "allowlist", "cert_or_allowlist", "cert_and_allowlist")


@pytest.fixture
def hashes(tmp_path: Path) -> Path:
    directory = tmp_path / "hashes"
    directory.mkdir()
    return directory


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("algorithm", EK_ALGORITHMS)
def test_attestation_admits_a_genuine_tpm(
    agent: PluginProcess,
    server: PluginProcess,
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    hashes: Path,
    algorithm: str,
    policy: str,
) -> None:
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, algorithm)
    (hashes / pub_hash).write_text('{"name": "rack1-node7", "labels": {"rack": "r1"}}')
    agent.configure(hcl(tcti=bare_swtpm.tcti, ek_algorithm=algorithm))
    # Under "allowlist" the certificate plays no part: no CA is configured at all.
    ca = {} if policy == "allowlist" else {"ek_ca_path": str(ek_ca.bundle_path)}
    server.configure(hcl(ek_policy=policy, hash_path=str(hashes), **ca))

    seen = len(audit_lines(server))
    result = relay_attestation(agent, server)

    assert result.spiffe_id == f"spiffe://example.org/spire/agent/tpm/{pub_hash}"
    assert result.challenge_rounds == 1
    assert result.can_reattest is True
    assert f"pub_hash:{pub_hash}" in result.selectors
    assert "name:rack1-node7" in result.selectors
    assert "label:rack:r1" in result.selectors
    root_fingerprint = hashlib.sha256(ek_ca.root_certificate.public_bytes(Encoding.DER)).hexdigest()
    cert_selectors = {
        "ek:manufacturer:id:53575450",
        "ek:model:swtpm",
        "ek:version:id:20191023",
        "ek:issuer:cn:"
        + str(
            ek_ca.intermediate_certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[
                0
            ].value
        ),
        f"ek:ca:fingerprint:{root_fingerprint}",
    }
    if policy == "allowlist":
        assert not any(s.startswith("ek:") for s in result.selectors)
    else:
        assert cert_selectors <= set(result.selectors), result.selectors
    audit = audit_line_after(server, seen)
    assert (audit["decision"], audit["ek_hash"]) == ("admitted", pub_hash)


@pytest.mark.parametrize("ak_algorithm", ["rsa", "ecc"])
def test_ak_algorithms(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, ak_algorithm: str
) -> None:
    agent.configure(hcl(tcti=swtpm.tcti, ak_algorithm=ak_algorithm))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    assert relay_attestation(agent, server).spiffe_id.startswith("spiffe://example.org/")


def test_agent_path_template_and_options(
    agent: PluginProcess, server: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA, hashes: Path
) -> None:
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, "ecc256")
    (hashes / pub_hash).write_text('{"name": "node-7"}')
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    server.configure(
        hcl(
            hash_path=str(hashes),
            plugin_name="tpm_prod",
            can_reattest=False,
            agent_path_template="{{ .PluginName }}/{{ .Name }}/{{ .PubHash }}",
        )
    )
    result = relay_attestation(agent, server)
    assert result.spiffe_id == f"spiffe://example.org/spire/agent/tpm_prod/node-7/{pub_hash}"
    assert result.can_reattest is False


def test_ek_not_in_allowlist_is_denied(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, hashes: Path
) -> None:
    (hashes / ("0" * 64)).write_text("")
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(hash_path=str(hashes)))
    audit = expect_rejection(
        agent, server, grpc.StatusCode.PERMISSION_DENIED, "not in the allowlist"
    )
    assert audit["check"] == "allowlist"


def test_ek_certificate_from_another_ca_is_denied(
    agent: PluginProcess, server: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> None:
    rogue = TestCA.create(tmp_path / "rogue", name="Rogue TPM")
    provision_ek_certificates(bare_swtpm.tcti, rogue)
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    for policy in ("cert", "cert_or_allowlist"):
        hashes = tmp_path / policy
        hashes.mkdir()
        server.configure(
            hcl(ek_policy=policy, ek_ca_path=str(ek_ca.bundle_path), hash_path=str(hashes))
        )
        expect_rejection(
            agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain to ek_ca_path"
        )


def test_ek_certificate_for_another_key_is_denied(
    agent: PluginProcess, server: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA, hashes: Path
) -> None:
    # A genuine certificate, but for a key other than the EK the challenge is encrypted to.
    provision_ek_certificates(bare_swtpm.tcti, ek_ca, foreign_key=True)
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    audit = expect_rejection(
        agent,
        server,
        grpc.StatusCode.PERMISSION_DENIED,
        "EK certificate key differs from the EK public area",
    )
    assert audit["check"] == "ek_cert_key"


@pytest.mark.parametrize("policy", ["allowlist", "cert_or_allowlist"])
def test_ek_certificate_for_another_key_is_denied_even_when_the_ek_is_allowlisted(
    agent: PluginProcess,
    server: PluginProcess,
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    hashes: Path,
    policy: str,
) -> None:
    # The certificate chains and the EK itself is allow-listed: the mismatch alone denies.
    provision_ek_certificates(bare_swtpm.tcti, ek_ca, algorithms=("rsa2048",), foreign_key=True)
    agent.configure(hcl(tcti=bare_swtpm.tcti, ek_algorithm="rsa2048"))
    ek = parse_tpm2b_public(payload_from_agent(agent).ek_public)
    pub_hash = ek_hash(ek.public_key())
    (hashes / pub_hash).write_text("")
    server.configure(
        hcl(ek_policy=policy, ek_ca_path=str(ek_ca.bundle_path), hash_path=str(hashes))
    )
    audit = expect_rejection(
        agent,
        server,
        grpc.StatusCode.PERMISSION_DENIED,
        "EK certificate key differs from the EK public area",
    )
    assert (audit["check"], audit["ek_hash"]) == ("ek_cert_key", pub_hash)


@pytest.fixture
def admitted_setup(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> tuple[PluginProcess, PluginProcess]:
    agent.configure(hcl(tcti=swtpm.tcti))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    return agent, server


def test_wrong_secret_is_denied(admitted_setup: tuple[PluginProcess, PluginProcess]) -> None:
    agent, server = admitted_setup
    node, spire = AgentConversation(agent), ServerConversation(server)
    try:
        challenge = spire.send_payload(node.payload()).challenge
        answer = wire.decode_challenge_response(node.answer(challenge))
        answer.secret = bytes(b ^ 0x01 for b in answer.secret)
        error = rpc_error(lambda: spire.send_answer(wire.encode(answer)))
    finally:
        node.close()
        spire.close()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "wrong secret" in (error.details() or "")


def test_response_replayed_from_an_earlier_stream_is_denied(
    admitted_setup: tuple[PluginProcess, PluginProcess],
) -> None:
    agent, server = admitted_setup
    node, spire = AgentConversation(agent), ServerConversation(server)
    try:
        payload = node.payload()
        old_answer = node.answer(spire.send_payload(payload).challenge)
        assert spire.send_answer(old_answer).HasField("agent_attributes")
    finally:
        node.close()
        spire.close()
    # An eavesdropper replays the whole recorded exchange on a new stream.
    replay = ServerConversation(server)
    try:
        assert replay.send_payload(payload).HasField("challenge")
        error = rpc_error(lambda: replay.send_answer(old_answer))
    finally:
        replay.close()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "wrong secret" in (error.details() or "")


def test_oversized_quote_in_the_answer_is_invalid_argument(
    admitted_setup: tuple[PluginProcess, PluginProcess],
) -> None:
    agent, server = admitted_setup
    node, spire = AgentConversation(agent), ServerConversation(server)
    try:
        challenge = spire.send_payload(node.payload()).challenge
        answer = wire.decode_challenge_response(node.answer(challenge))
        answer.quote = bytes(wire.MAX_TPM_BLOB + 1)
        seen = len(audit_lines(server))
        error = rpc_error(lambda: spire.send_answer(wire.encode(answer)))
    finally:
        node.close()
        spire.close()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "quote is too large" in (error.details() or "")
    assert audit_line_after(server, seen)["check"] == "challenge_response"
    assert relay_attestation(agent, server).spiffe_id  # still serving


def test_payload_where_the_answer_belongs_is_invalid(
    admitted_setup: tuple[PluginProcess, PluginProcess],
) -> None:
    agent, server = admitted_setup
    payload = payload_from_agent(agent)
    spire = ServerConversation(server)
    try:
        spire.send_payload(payload.SerializeToString())
        error = rpc_error(lambda: spire.send_payload(payload.SerializeToString()))
    finally:
        spire.close()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected challenge_response" in (error.details() or "")


def payload_from_agent(agent: PluginProcess) -> attestation_pb2.Payload:
    node = AgentConversation(agent)
    try:
        return wire.decode_payload(node.payload())
    finally:
        node.close()


def send_to_server(server: PluginProcess, payload: bytes) -> grpc.RpcError:
    spire = ServerConversation(server)
    try:
        return rpc_error(lambda: spire.send_payload(payload))
    finally:
        spire.close()


def tampered(payload: attestation_pb2.Payload, **fields: bytes) -> bytes:
    copy = attestation_pb2.Payload()
    copy.CopyFrom(payload)
    for name, value in fields.items():
        setattr(copy, name, value)
    return copy.SerializeToString()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda p: tampered(p, ek_public=p.ek_public[:-10]), "EK public area"),
        (lambda p: tampered(p, ak_public=p.ak_public[:40]), "AK public area"),
        (lambda p: tampered(p, ak_public=p.ak_public + b"\x00"), "AK public area"),
        (lambda p: tampered(p, ek_public=b"\x00" * 2000), "ek_public is too large"),
        (lambda p: tampered(p, ek_certificate=os.urandom(9000)), "ek_certificate is too large"),
        (lambda p: tampered(p, ek_certificate=p.ek_certificate[:100]), "EK certificate cannot"),
        (lambda p: b"\xff" * 64, "not a valid protobuf message"),
        (lambda p: b"garbage payload", "not a valid protobuf message"),
        (lambda p: attestation_pb2.Payload(version=7).SerializeToString(), "protocol version 7"),
    ],
)
def test_malformed_payloads_are_invalid_argument_and_the_server_stays_up(
    admitted_setup: tuple[PluginProcess, PluginProcess], change: object, words: str
) -> None:
    agent, server = admitted_setup
    payload = payload_from_agent(agent)
    error = send_to_server(server, change(payload))  # type: ignore[operator]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert words in (error.details() or "")
    assert server.process.poll() is None
    assert relay_attestation(agent, server).spiffe_id  # still serving


@pytest.mark.parametrize("entry", ["directory", "bad_json", "bad_labels"])
def test_unreadable_allowlist_entry_rejects_rather_than_admits(
    agent: PluginProcess,
    server: PluginProcess,
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    hashes: Path,
    entry: str,
) -> None:
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, "rsa2048")
    if entry == "directory":
        (hashes / pub_hash).mkdir()  # exists, but cannot be read as an entry
    elif entry == "bad_json":
        (hashes / pub_hash).write_text("{not json")
    else:
        (hashes / pub_hash).write_text('{"labels": {"rack": 7}}')
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    server.configure(hcl(hash_path=str(hashes)))
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, "allowlist lookup failed")
    assert audit["check"] == "allowlist_lookup"


def test_an_attestation_waits_for_a_cancelled_one_to_release_the_tpm(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA
) -> None:
    """swtpm, like /dev/tpm0, has about three object slots, and a stream SPIRE cancelled
    holds its EK and AK until its thread sees the cancel: the next attestation waits for
    them to be flushed rather than failing with "out of memory for object contexts"."""
    agent.configure(hcl(tcti=swtpm.tcti, log_level="DEBUG"))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    seen = len(log_entries(agent))
    cancelled = AgentConversation(agent)
    outcome: list[object] = []

    def attest() -> None:
        try:
            outcome.append(relay_attestation(agent, server))
        except AttestationFailed as failure:
            outcome.append(failure)

    following = threading.Thread(target=attest, daemon=True)
    try:
        cancelled.payload()  # its EK and AK stay loaded until the stream ends
        following.start()
        wait_for_log(  # (on the old code the next attestation failed at once instead)
            agent,
            lambda e: (
                e["@message"] == "waiting for another attestation to release the TPM"
                or bool(outcome)
            ),
            after=seen,
        )
    finally:
        cancelled.cancel()
    following.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], AttestationResult), outcome
    assert leftover_handles(swtpm.tcti) == []


def test_agent_leaves_no_tpm_objects_once_it_has_answered(
    admitted_setup: tuple[PluginProcess, PluginProcess], swtpm: SWTPM
) -> None:
    # swtpm, like /dev/tpm0, has no resource manager and three object slots: the agent
    # must flush before its answer leaves, not whenever gRPC next resumes its stream.
    agent, server = admitted_setup
    for _ in range(5):
        node, spire = AgentConversation(agent), ServerConversation(server)
        try:
            node.answer(spire.send_payload(node.payload()).challenge)
            assert leftover_handles(swtpm.tcti) == []
        finally:
            node.close()
            spire.close()

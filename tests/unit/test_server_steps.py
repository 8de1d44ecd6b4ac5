"""The server's attestation steps in-process: payload, challenge, answer, attributes.

A `SoftwareTPM` plays the agent's TPM with software keys, so each step of
`server_plugin.attestation` runs exactly as the Attest stream calls it, without swtpm
and in milliseconds. Each negative test changes one thing in an otherwise good exchange
and names the check that must refuse it. EK trust by `ek_policy` is in
test_ek_policy_matrix.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server_plugin.attestation import (
    Evidence,
    PendingChallenge,
    agent_attributes,
    check_payload,
    decode_payload,
    decode_response,
    issue_challenge,
    verify_response,
)
from server_plugin.config import ServerConfig
from server_plugin.pcr_policy import parse_pcr_policy
from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.status import InvalidArgument, PermissionDenied, PluginError
from spire_tpm_attestor.tpm.constants import TPM_ALG, TPMA_OBJECT
from tests.unit.server_builders import TestCA, bundle, der, listing, rejected, server_config
from tests.unit.software_tpm import IntegrityError, SoftwareTPM, activate, devid_signature
from tests.unit.tpm_builders import AK_ATTRIBUTES, marshal_public, software_ak, tpm_sign

SHA1, SHA256 = TPM_ALG.SHA1, TPM_ALG.SHA256
PCR7 = b"\x07" * 32
Payload = attestation_pb2.Payload
Response = attestation_pb2.ChallengeResponse


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Node:
    """One agent's TPM (with a DevID) and a server that checks all of it: EK certificate,
    DevID, PCRs 0 and 7."""

    tpm: SoftwareTPM
    config: ServerConfig
    payload: Payload
    ek_ca: TestCA
    rogue_ca: TestCA
    devid_ca: TestCA

    @property
    def pub_hash(self) -> str:
        return self.tpm.pub_hash

    def evidence(self) -> Evidence:
        return check_payload(self.config, self.payload)

    def challenge(self) -> tuple[attestation_pb2.Challenge, PendingChallenge]:
        """A challenge as the agent receives it (decoded with every wire limit)."""
        data, pending = issue_challenge(self.config, self.evidence())
        return wire.decode_challenge(data), pending

    def exchange(self) -> tuple[PendingChallenge, Response]:
        """A challenge and the TPM's honest answer to it."""
        challenge, pending = self.challenge()
        return pending, self.tpm.answer(challenge)


@pytest.fixture
def node(ek_ca: TestCA, rogue_ca: TestCA, devid_ca: TestCA) -> Node:
    tpm = SoftwareTPM(devid_key=p256(), pcrs={(SHA256, 7): PCR7})
    assert tpm.devid_key is not None
    devid = devid_ca.issue_devid_certificate(tpm.devid_key.public_key(), "node-7")
    config = server_config(
        ek_policy="cert",
        ek_ca=bundle(ek_ca),
        devid_ca=bundle(devid_ca),
        require_devid=True,
        pcr_selection={(SHA256, 0), (SHA256, 7)},
    )
    payload = tpm.payload(
        der(ek_ca.issue_ek_certificate(tpm.ek_key.public_key())),
        ek_intermediates=[der(ek_ca.intermediate_certificate)],
        devid_certificates=[der(devid), der(devid_ca.intermediate_certificate)],
    )
    return Node(tpm, config, payload, ek_ca, rogue_ca, devid_ca)


# -- the whole exchange ---------------------------------------------------------------------


def test_an_honest_node_is_attested_with_every_fact(node: Node) -> None:
    pending, response = node.exchange()
    attested = verify_response(node.config, pending, decode_response(wire.encode(response)))
    assert attested.pcr_values == {(SHA256, 0): bytes(32), (SHA256, 7): PCR7}
    attributes = agent_attributes(node.config, attested)
    assert attributes.spiffe_id == f"spiffe://example.org/spire/agent/tpm/{node.pub_hash}"
    anchor = hashlib.sha256(der(node.ek_ca.root_certificate)).hexdigest()
    assert {
        f"pub_hash:{node.pub_hash}",
        "ek:manufacturer:id:53575450",
        f"ek:ca:fingerprint:{anchor}",
        f"pcr:sha256:7:{PCR7.hex()}",
        "devid:subject:cn:node-7",
        "devid:issuer:cn:Unit DevID EK Intermediate CA",
    } <= set(attributes.selector_values), attributes.selector_values


# -- payload -----------------------------------------------------------------------------------


def _truncate_ek(payload: Payload, node: Node) -> None:
    payload.ek_public = payload.ek_public[:-4]


def _signing_key_as_ek(payload: Payload, node: Node) -> None:
    payload.ek_public = node.tpm.ak_public  # well formed, but not a decryption key


def _truncate_ak(payload: Payload, node: Node) -> None:
    payload.ak_public = payload.ak_public[:-4]


def _unrestricted_ak(payload: Payload, node: Node) -> None:
    # A signing key that would sign anything, including forged quotes.
    payload.ak_public = marshal_public(
        node.tpm.ak_key.public_key(),
        attributes=AK_ATTRIBUTES & ~TPMA_OBJECT.RESTRICTED,
        scheme=(TPM_ALG.ECDSA, TPM_ALG.SHA256),
    )


def _garbage_ek_certificate(payload: Payload, node: Node) -> None:
    payload.ek_certificate = b"\x30\x03abc"


def _garbage_intermediate(payload: Payload, node: Node) -> None:
    payload.ek_intermediates[0] = b"\x30\x03abc"


def _no_devid(payload: Payload, node: Node) -> None:
    payload.ClearField("devid_certificates")
    payload.ClearField("devid_public")


def _devid_from_another_ca(payload: Payload, node: Node) -> None:
    assert node.tpm.devid_key is not None
    other = node.rogue_ca.issue_devid_certificate(node.tpm.devid_key.public_key(), "node-7")
    payload.devid_certificates[:] = [der(other), der(node.rogue_ca.intermediate_certificate)]


def _devid_certificate_for_another_key(payload: Payload, node: Node) -> None:
    other = node.devid_ca.issue_devid_certificate(p256().public_key(), "node-7")
    payload.devid_certificates[0] = der(other)


def _devid_outside_the_tpm(payload: Payload, node: Node) -> None:
    assert node.tpm.devid_key is not None  # the same key, claimed without fixedTPM
    payload.devid_public = marshal_public(
        node.tpm.devid_key.public_key(), attributes=TPMA_OBJECT.SIGN_ENCRYPT
    )


@pytest.mark.parametrize(
    ("change", "check", "status"),
    [
        (_truncate_ek, "ek_public", InvalidArgument),
        (_signing_key_as_ek, "ek_template", PermissionDenied),
        (_truncate_ak, "ak_public", InvalidArgument),
        (_unrestricted_ak, "ak_attributes", PermissionDenied),
        (_garbage_ek_certificate, "ek_certificate", InvalidArgument),
        (_garbage_intermediate, "ek_intermediates", InvalidArgument),
        (_no_devid, "devid_required", PermissionDenied),
        (_devid_from_another_ca, "devid_cert_chain", PermissionDenied),
        (_devid_certificate_for_another_key, "devid_cert_key", PermissionDenied),
        (_devid_outside_the_tpm, "devid_key_attributes", PermissionDenied),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
def test_payload_check_refuses(
    node: Node,
    change: Callable[[Payload, Node], None],
    check: str,
    status: type[PluginError],
) -> None:
    node.evidence()  # the unchanged payload passes
    change(node.payload, node)
    refusal = rejected(check, status, check_payload, node.config, node.payload)
    if check not in ("ek_public", "ek_template"):  # once the EK is read, the audit names it
        assert refusal.ek_hash == node.pub_hash


def test_malformed_payload_bytes() -> None:
    rejected("payload", InvalidArgument, decode_payload, b"\xff\xff")


def test_devid_is_ignored_without_a_devid_ca(node: Node) -> None:
    config = replace(node.config, devid=replace(node.config.devid, bundle=None, required=False))
    assert check_payload(config, node.payload).devid is None
    assert node.evidence().devid is not None


# -- challenge -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(65537, 2048) for _ in range(2)]


@pytest.mark.parametrize("ek_kind", ["ecc", "rsa"])
def test_challenge_is_for_this_ek_and_this_ak_only(
    ek_kind: str, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    tpm, other = (
        SoftwareTPM(ek_key=key) for key in (rsa_keys if ek_kind == "rsa" else [p256(), p256()])
    )
    config = server_config(ek_policy="allowlist", allowlist=[listing(tpm.pub_hash)])
    data, pending = issue_challenge(config, check_payload(config, tpm.payload()))
    challenge = wire.decode_challenge(data)
    blobs = (challenge.credential_blob, challenge.encrypted_secret)
    assert len(pending.secret) == wire.SECRET_SIZE
    assert activate(tpm.ek_key, tpm.ek, tpm.ak.name(), *blobs) == pending.secret
    # Bound to the AK's Name: activating it for any other key fails the integrity check.
    with pytest.raises(IntegrityError):
        activate(tpm.ek_key, tpm.ek, other.ak.name(), *blobs)
    # Encrypted to the EK: another TPM's EK cannot recover the seed.
    with pytest.raises((IntegrityError, ValueError)):
        activate(other.ek_key, other.ek, tpm.ak.name(), *blobs)


def test_each_challenge_is_fresh(node: Node) -> None:
    evidence = node.evidence()
    (first, one), (second, two) = (issue_challenge(node.config, evidence) for _ in range(2))
    assert wire.decode_challenge(first).nonce == one.nonce
    assert len(one.nonce) == wire.NONCE_SIZE
    assert one.nonce != two.nonce and one.secret != two.secret
    assert first != second


def test_challenge_asks_for_the_selection_and_every_policy_pcr(node: Node) -> None:
    policy = parse_pcr_policy(
        {"sha256": {"7": PCR7.hex(), "10": "aa" * 32}, "sha1": {"16": "00" * 20}}
    )
    config = replace(node.config, pcr=replace(node.config.pcr, inline_policy=policy))
    data, pending = issue_challenge(config, node.evidence())
    assert list(wire.decode_challenge(data).pcr_selection) == [
        attestation_pb2.PCRBankSelection(hash_alg=SHA1, indices=[16]),
        attestation_pb2.PCRBankSelection(hash_alg=SHA256, indices=[0, 7, 10]),
    ]
    assert pending.pcr_policy is policy
    assert pending.pcr_request == {(SHA1, 16), (SHA256, 0), (SHA256, 7), (SHA256, 10)}


def test_no_pcrs_configured_asks_for_no_quote(node: Node) -> None:
    config = replace(node.config, pcr=replace(node.config.pcr, selection=frozenset()))
    data, pending = issue_challenge(config, node.evidence())
    assert not wire.decode_challenge(data).pcr_selection and not pending.pcr_request


# -- answer ------------------------------------------------------------------------------------


def _wrong_secret(response: Response, node: Node, nonce: bytes) -> None:
    response.secret = bytes(len(response.secret))


def _secret_off_by_one_bit(response: Response, node: Node, nonce: bytes) -> None:
    response.secret = response.secret[:-1] + bytes([response.secret[-1] ^ 1])


def _no_quote(response: Response, node: Node, nonce: bytes) -> None:
    response.ClearField("quote")


def _quote_edited(response: Response, node: Node, nonce: bytes) -> None:
    response.quote = response.quote[:-1] + bytes([response.quote[-1] ^ 1])


def _pcr_value_edited(response: Response, node: Node, nonce: bytes) -> None:
    response.pcr_values[1].digest = bytes(32)  # PCR 7 reported as zeros: digest mismatch


def _quote_of_fewer_pcrs(response: Response, node: Node, nonce: bytes) -> None:
    response.ClearField("pcr_values")  # a genuine quote, of PCR 0 only
    node.tpm.quote(response, nonce, [(SHA256, [0])])


def _quote_by_another_key(response: Response, node: Node, nonce: bytes) -> None:
    response.quote_signature = tpm_sign(p256(), response.quote, TPM_ALG.ECDSA)


def _no_devid_certify(response: Response, node: Node, nonce: bytes) -> None:
    response.ClearField("devid_certify")


def _certify_of_another_key(response: Response, node: Node, nonce: bytes) -> None:
    # The AK certifies a key it does hold, but not the DevID the certificate is for.
    other = software_ak(p256()).name()
    response.devid_certify, response.devid_certify_signature = node.tpm.certify(nonce, other)


def _devid_signature_by_a_foreign_key(response: Response, node: Node, nonce: bytes) -> None:
    response.devid_signature = devid_signature(p256(), nonce, response.agent_nonce)


def _agent_nonce_changed(response: Response, node: Node, nonce: bytes) -> None:
    response.agent_nonce = bytes(32)


def _no_devid_signature(response: Response, node: Node, nonce: bytes) -> None:
    response.ClearField("devid_signature")


ANSWER_CHANGES = [
    (_wrong_secret, "credential_activation"),
    (_secret_off_by_one_bit, "credential_activation"),
    (_no_quote, "pcr_quote"),
    (_quote_edited, "pcr_quote"),
    (_pcr_value_edited, "pcr_quote"),
    (_quote_of_fewer_pcrs, "pcr_quote"),
    (_quote_by_another_key, "pcr_quote"),
    (_no_devid_certify, "devid_residency"),
    (_certify_of_another_key, "devid_residency"),
    (_devid_signature_by_a_foreign_key, "devid_signature"),
    (_agent_nonce_changed, "devid_signature"),
    (_no_devid_signature, "devid_signature"),
]


@pytest.mark.parametrize(
    ("change", "check"),
    ANSWER_CHANGES,
    ids=[change.__name__.strip("_") for change, _ in ANSWER_CHANGES],
)
def test_answer_check_refuses(
    node: Node, change: Callable[[Response, Node, bytes], None], check: str
) -> None:
    pending, response = node.exchange()
    verify_response(node.config, pending, response)  # the unchanged answer passes
    change(response, node, pending.nonce)
    rejected(check, PermissionDenied, verify_response, node.config, pending, response)


def _replayed(part: str, earlier: Response, response: Response) -> None:
    """Put `part` of an earlier, genuine answer (to another challenge) into `response`."""
    fields = {
        "whole": [field.name for field in Response.DESCRIPTOR.fields],
        "quote": ["quote", "quote_signature", "pcr_values"],
        "devid_certify": ["devid_certify", "devid_certify_signature"],
        "devid_signature": ["agent_nonce", "devid_signature"],
    }[part]
    for name in fields:
        response.ClearField(name)
        if name == "pcr_values":
            response.pcr_values.extend(earlier.pcr_values)
        else:
            setattr(response, name, getattr(earlier, name))


@pytest.mark.parametrize(
    ("part", "check"),
    [
        ("whole", "credential_activation"),  # an old secret
        ("quote", "pcr_quote"),  # over the old nonce
        ("devid_certify", "devid_residency"),
        ("devid_signature", "devid_signature"),
    ],
)
def test_a_replayed_answer_is_stale(node: Node, part: str, check: str) -> None:
    _, earlier = node.exchange()
    pending, response = node.exchange()
    _replayed(part, earlier, response)
    rejected(check, PermissionDenied, verify_response, node.config, pending, response)


def test_a_response_to_another_stream_is_stale(node: Node) -> None:
    # Same node, two streams at once: each answer fits only its own challenge.
    (first, first_answer), (second, second_answer) = node.exchange(), node.exchange()
    verify_response(node.config, first, first_answer)
    verify_response(node.config, second, second_answer)
    rejected(
        "credential_activation",
        PermissionDenied,
        verify_response,
        node.config,
        first,
        second_answer,
    )


def with_policy(config: ServerConfig, allowed: bytes) -> ServerConfig:
    policy = parse_pcr_policy({"sha256": {"7": allowed.hex()}})
    return replace(config, pcr=replace(config.pcr, inline_policy=policy))


@pytest.mark.parametrize(
    ("allowed", "admitted"), [(PCR7, True), (b"\x08" * 32, False)], ids=["match", "mismatch"]
)
def test_pcr_policy(node: Node, allowed: bytes, admitted: bool) -> None:
    node.config = with_policy(node.config, allowed)
    pending, response = node.exchange()
    if admitted:
        assert verify_response(node.config, pending, response).pcr_values[(SHA256, 7)] == PCR7
        return
    refusal = rejected(
        "pcr_policy", PermissionDenied, verify_response, node.config, pending, response
    )
    assert f"PCR sha256:7 is {PCR7.hex()}" in str(refusal)


def test_the_pcr_policy_of_the_challenge_applies(node: Node) -> None:
    # The policy in force when the challenge was issued judges the answer, even if the
    # configuration changed while the agent was answering.
    node.config = with_policy(node.config, b"\x08" * 32)
    pending, response = node.exchange()
    relaxed = with_policy(node.config, PCR7)
    rejected("pcr_policy", PermissionDenied, verify_response, relaxed, pending, response)


def test_an_ek_deny_listed_while_answering_is_refused(node: Node) -> None:
    pending, response = node.exchange()
    later = replace(node.config, denylist=[listing(node.pub_hash)])
    rejected("denylist", PermissionDenied, verify_response, later, pending, response)

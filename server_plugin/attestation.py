"""The server's side of one node attestation, as steps the Attest stream calls in order.

payload -> `check_payload` (EK, AK, EK trust) -> `issue_challenge` -> response ->
`verify_response` -> `agent_attributes`. Each step uses the named checks in
`server_plugin.checks`; nothing here talks gRPC.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from server_plugin.allowlist import AllowlistEntry
from server_plugin.checks import (
    Rejected,
    VerifiedEKCertificate,
    denied,
    ek_hash_of,
    load_ek_certificate,
    look_up_allowlist,
    malformed,
    parse_ek_public,
    verify_activated_secret,
    verify_ak_public,
    verify_ek_chain,
    verify_eks_match,
)
from server_plugin.config import ServerConfig
from spire_tpm_attestor import ekcert, wire
from spire_tpm_attestor.identity import TemplateError, agent_spiffe_id, selector_safe
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.pb.spire_server_nodeattestor_pb2 import AgentAttributes
from spire_tpm_attestor.tpm.credential import make_credential
from spire_tpm_attestor.tpm.errors import TPMStructureError
from spire_tpm_attestor.tpm.structures import PublicArea


@dataclass(frozen=True)
class Evidence:
    """What the payload established about the node before any challenge."""

    pub_hash: str
    ek: PublicArea
    ak: PublicArea
    ek_certificate: VerifiedEKCertificate | None
    allowlist_entry: AllowlistEntry | None


@dataclass(frozen=True)
class PendingChallenge:
    """What this stream expects back; it lives only as long as the stream."""

    evidence: Evidence
    secret: bytes
    nonce: bytes


def decode_payload(data: bytes) -> attestation_pb2.Payload:
    try:
        return wire.decode_payload(data)
    except wire.WireError as exc:
        raise malformed("payload", str(exc)) from None


def decode_response(data: bytes) -> attestation_pb2.ChallengeResponse:
    try:
        return wire.decode_challenge_response(data)
    except wire.WireError as exc:
        raise malformed("challenge_response", str(exc)) from None


def check_payload(config: ServerConfig, payload: attestation_pb2.Payload) -> Evidence:
    ek = parse_ek_public(payload.ek_public)
    pub_hash = ek_hash_of(ek)
    ak = verify_ak_public(payload.ak_public)
    certificate = load_ek_certificate(payload.ek_certificate) if payload.ek_certificate else None
    if certificate is not None:
        # Under every policy: a certificate we report facts from must be this EK's.
        verify_eks_match(certificate, ek)
    verified, entry = establish_ek_trust(
        config, pub_hash, certificate, list(payload.ek_intermediates)
    )
    return Evidence(pub_hash, ek, ak, verified, entry)


def establish_ek_trust(
    config: ServerConfig,
    pub_hash: str,
    certificate: ekcert.EKCertificate | None,
    intermediates: Sequence[bytes],
) -> tuple[VerifiedEKCertificate | None, AllowlistEntry | None]:
    """Apply `ek_policy` to the EK certificate chain and the allowlist."""
    entry = look_up_allowlist(config.allowlist, pub_hash) if config.allowlist else None
    verified: VerifiedEKCertificate | None = None
    cert_failure: Rejected | None = None
    if not config.ek_ca_bundle:
        cert_failure = denied("ek_cert_chain", "no EK CA is configured")
    elif certificate is None:
        cert_failure = denied("ek_certificate", "the agent sent no EK certificate")
    else:
        try:
            verified = verify_ek_chain(certificate, intermediates, config.ek_ca_bundle)
        except Rejected as rejected:
            cert_failure = rejected
    not_listed = denied("allowlist", f"EK {pub_hash} is not in the allowlist")

    policy = config.ek_policy
    if policy == "cert" and verified is None:
        raise _first(cert_failure)
    if policy == "allowlist" and entry is None:
        raise not_listed
    if policy == "cert_and_allowlist":
        if verified is None:
            raise _first(cert_failure)
        if entry is None:
            raise not_listed
    if policy == "cert_or_allowlist" and verified is None and entry is None:
        reason = _first(cert_failure).error.message
        raise denied("ek_trust", f"EK is neither certified ({reason}) nor in the allowlist")
    return verified, entry


def _first(failure: Rejected | None) -> Rejected:
    return failure or denied("ek_trust", "EK is not trusted")


def issue_challenge(evidence: Evidence) -> tuple[bytes, PendingChallenge]:
    """Encrypt a fresh secret to the EK, bound to the AK's Name; add a fresh nonce."""
    secret = os.urandom(wire.SECRET_SIZE)
    nonce = os.urandom(wire.NONCE_SIZE)
    try:
        credential_blob, encrypted_secret = make_credential(evidence.ek, evidence.ak.name(), secret)
    except (TPMStructureError, ValueError) as exc:
        raise malformed(
            "make_credential", f"cannot encrypt a challenge to this EK: {exc}"
        ) from None
    challenge = attestation_pb2.Challenge(
        version=wire.PROTOCOL_VERSION,
        credential_blob=credential_blob,
        encrypted_secret=encrypted_secret,
        nonce=nonce,
    )
    return wire.encode(challenge), PendingChallenge(evidence, secret, nonce)


def verify_response(pending: PendingChallenge, response: attestation_pb2.ChallengeResponse) -> None:
    verify_activated_secret(pending.secret, response.secret)


def agent_facts(config: ServerConfig, evidence: Evidence) -> dict[str, str | None]:
    """The values agent_path_template may use."""
    certificate = evidence.ek_certificate.certificate if evidence.ek_certificate else None
    entry = evidence.allowlist_entry
    return {
        "PluginName": config.plugin_name,
        "PubHash": evidence.pub_hash,
        "EKCertSerial": format(certificate.serial_number, "x") if certificate else None,
        "Name": entry.name if entry else None,
    }


def selectors(evidence: Evidence) -> list[str]:
    values = [f"pub_hash:{evidence.pub_hash}"]
    if evidence.ek_certificate is not None:
        certificate = evidence.ek_certificate.certificate
        for kind, value in (
            ("ek:manufacturer", certificate.tcg_manufacturer),
            ("ek:model", certificate.tcg_model),
            ("ek:version", certificate.tcg_version),
            ("ek:issuer:cn", certificate.issuer_common_name),
            ("ek:ca:fingerprint", evidence.ek_certificate.anchor_fingerprint),
        ):
            if value:
                values.append(f"{kind}:{selector_safe(value)}")
    entry = evidence.allowlist_entry
    if entry is not None:
        if entry.name:
            values.append(f"name:{selector_safe(entry.name)}")
        for key, value in sorted(entry.labels.items()):
            values.append(f"label:{selector_safe(key)}:{selector_safe(value)}")
    return values


def agent_attributes(config: ServerConfig, evidence: Evidence) -> AgentAttributes:
    try:
        path = config.agent_path_template.render(agent_facts(config, evidence))
    except TemplateError as exc:
        raise denied("agent_path_template", str(exc)) from None
    return AgentAttributes(
        spiffe_id=agent_spiffe_id(config.trust_domain, path),
        selector_values=selectors(evidence),
        can_reattest=config.can_reattest,
    )

"""The server's side of one node attestation, as steps the Attest stream calls in order.

payload -> `check_payload` (EK, AK, EK trust, DevID certificate) -> `issue_challenge`
(secret, nonce, PCR selection, whether to send the event log) -> response ->
`verify_response` (secret, quote, PCR policy, event log replay and policy, DevID
residency and signature) -> `agent_attributes`. Each step uses the named
checks in `server_plugin.checks` and `server_plugin.evidence_checks`; nothing here talks
gRPC.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from server_plugin.allowlist import AllowlistEntry
from server_plugin.checks import (
    Rejected,
    VerifiedEKCertificate,
    check,
    check_denylist,
    denied,
    download_ek_certificate,
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
from server_plugin.config import ALLOWLIST_SUFFICES, ServerConfig
from server_plugin.event_log_policy import EventLogPolicy, ProvenBoot
from server_plugin.evidence_checks import (
    VerifiedDevID,
    check_event_log_policy,
    check_pcr_policy,
    pcr_selectors,
    verify_devid_chain,
    verify_devid_public,
    verify_devid_residency,
    verify_devid_signature,
    verify_event_log,
    verify_pcr_quote,
)
from server_plugin.pcr_policy import PCRKey, PCRPolicy, bank_selections
from spire_tpm_attestor import eventlog, wire
from spire_tpm_attestor.identity import TemplateError, agent_spiffe_id, selector_safe
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.pb.spire_server_nodeattestor_pb2 import AgentAttributes
from spire_tpm_attestor.runtime.status import InvalidArgument, Unavailable
from spire_tpm_attestor.tpm.credential import make_credential
from spire_tpm_attestor.tpm.structures import PublicArea
from spire_tpm_attestor.x509 import Certificate


@dataclass(frozen=True)
class Evidence:
    """What the payload established about the node before any challenge."""

    pub_hash: str
    ek: PublicArea
    ak: PublicArea
    ek_certificate: VerifiedEKCertificate | None
    allowlist_entry: AllowlistEntry | None
    devid: VerifiedDevID | None
    ek_certificate_ignored: str | None = None  # why a certificate sent was set aside


@dataclass(frozen=True)
class PendingChallenge:
    """What this stream expects back; it lives only as long as the stream."""

    evidence: Evidence
    secret: bytes
    nonce: bytes
    pcr_request: frozenset[PCRKey]
    pcr_policy: PCRPolicy | None  # as it was when the challenge was issued
    # The PCRs the event log is replayed against; None when the log was not asked for.
    event_log_pcrs: frozenset[PCRKey] | None = None
    event_log_policy: EventLogPolicy | None = None  # as it was when the challenge was issued


@dataclass(frozen=True)
class Attested:
    """Everything the response proved: the payload's evidence, the quoted PCRs and what
    the event log shows of them."""

    evidence: Evidence
    pcr_values: dict[PCRKey, bytes]
    boot: ProvenBoot | None = None


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
    try:
        check_denylist(config.denylist, pub_hash)  # a denied EK goes no further, under any policy
        ak = verify_ak_public(payload.ak_public)
        certificate, unreadable = read_ek_certificate(config, payload.ek_certificate, ek)
        verified, entry = establish_ek_trust(
            config, ek, pub_hash, certificate, list(payload.ek_intermediates), unreadable
        )
        devid = establish_devid(config, payload)
    except Rejected as rejected:
        rejected.ek_hash = pub_hash
        raise
    ignored = unreadable.error.message if unreadable else None
    return Evidence(pub_hash, ek, ak, verified, entry, devid, ignored)


def read_ek_certificate(
    config: ServerConfig, data: bytes, ek: PublicArea
) -> tuple[Certificate | None, Rejected | None]:
    """The EK certificate the agent sent (None if none), proven to be this EK's.

    Under the policies an allowlist can satisfy, a certificate that cannot be read does
    not refuse: it is set aside, returned as the second value, and the EK hash (taken
    from the EK public area the challenge is encrypted to) decides. A certificate for
    another key refuses under every policy: we report facts from it only if it is this
    EK's, and it is no honest mistake.
    """
    if not data:
        return None, None
    try:
        certificate = load_ek_certificate(data)
        verify_eks_match(certificate, ek)
    except Rejected as rejected:
        if config.ek_policy in ALLOWLIST_SUFFICES and isinstance(rejected.error, InvalidArgument):
            return None, rejected
        raise
    return certificate, None


def establish_devid(config: ServerConfig, payload: attestation_pb2.Payload) -> VerifiedDevID | None:
    """Check the DevID certificate and public area now; residency comes with the response."""
    if not payload.devid_certificates:
        if config.devid.required:
            raise denied("devid_required", "require_devid is set and the agent sent no DevID")
        return None
    if config.devid.bundle is None:
        return None  # this server does not verify DevIDs: the node gets no DevID facts
    certificate = verify_devid_chain(payload.devid_certificates, config.devid.bundle.value)
    return VerifiedDevID(certificate, verify_devid_public(payload.devid_public, certificate))


def establish_ek_trust(
    config: ServerConfig,
    ek: PublicArea,
    pub_hash: str,
    certificate: Certificate | None,
    intermediates: Sequence[bytes],
    unreadable: Rejected | None = None,
) -> tuple[VerifiedEKCertificate | None, AllowlistEntry | None]:
    """Apply `ek_policy` to the EK certificate chain and the allowlist; `unreadable` is
    why a certificate sent was set aside.

    With `ek_cert_download`, an EK the agent sent no (readable) certificate for gets
    the one its manufacturer publishes, when the policy still needs a certificate."""
    entry = look_up_allowlist(config.allowlist, pub_hash) if config.allowlist else None
    download = config.ek_cert_download
    # Under cert_or_allowlist a listed EK needs no certificate: nothing to download.
    needs_certificate = config.ek_policy != "cert_or_allowlist" or entry is None
    downloaded = None
    if certificate is None and download is not None and config.ek_ca_bundle and needs_certificate:
        certificate = downloaded = download_ek_certificate(download, ek, pub_hash)
        if certificate is not None:
            verify_eks_match(certificate, ek)
    verified: VerifiedEKCertificate | None = None
    cert_failure: Rejected | None = None
    if not config.ek_ca_bundle:
        cert_failure = denied("ek_cert_chain", "no EK CA is configured")
    elif certificate is None:
        cert_failure = unreadable or denied(
            "ek_certificate",
            "the agent sent no EK certificate"
            + (" and its manufacturer publishes none" if download is not None else ""),
        )
    else:
        try:
            verified = verify_ek_chain(
                certificate,
                intermediates,
                config.ek_ca_bundle,
                config.ek_aia_fetch,
                enforce_expiry=config.enforce_ek_cert_expiry,
            )
        except Rejected as rejected:
            cert_failure = rejected
    if download is not None and downloaded is not None and verified is not None:
        download.keep(pub_hash, downloaded)
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
        if cert_failure is not None and isinstance(cert_failure.error, Unavailable):
            raise cert_failure  # a certificate source was down: the agent should retry
        reason = _first(cert_failure).error.message
        raise denied("ek_trust", f"EK is neither certified ({reason}) nor in the allowlist")
    return verified, entry


def _first(failure: Rejected | None) -> Rejected:
    return failure or denied("ek_trust", "EK is not trusted")


def issue_challenge(config: ServerConfig, evidence: Evidence) -> tuple[bytes, PendingChallenge]:
    """Encrypt a fresh secret to the EK, bound to the AK's Name; add a fresh nonce and the
    PCRs to quote (`pcr_selection`, every PCR the PCR policy names and, when the event
    log is wanted, the PCRs it is replayed against and those its policy reads)."""
    secret = os.urandom(wire.SECRET_SIZE)
    nonce = os.urandom(wire.NONCE_SIZE)
    with check("make_credential", "cannot encrypt a challenge to this EK"):
        credential_blob, encrypted_secret = make_credential(evidence.ek, evidence.ak.name(), secret)
    policy = config.pcr.policy()
    requested = config.pcr.selection | (policy.pcrs() if policy else frozenset())
    log_pcrs: frozenset[PCRKey] | None = None
    log_policy: EventLogPolicy | None = None
    if config.event_log is not None:
        log_policy = config.event_log.policy()
        log_pcrs = config.event_log.selection | (log_policy.pcrs() if log_policy else frozenset())
        requested |= log_pcrs
    challenge = attestation_pb2.Challenge(
        version=wire.PROTOCOL_VERSION,
        credential_blob=credential_blob,
        encrypted_secret=encrypted_secret,
        nonce=nonce,
        pcr_selection=bank_selections(requested),
        want_event_log=log_pcrs is not None,
    )
    pending = PendingChallenge(evidence, secret, nonce, requested, policy, log_pcrs, log_policy)
    return wire.encode(challenge), pending


def verify_response(
    config: ServerConfig, pending: PendingChallenge, response: attestation_pb2.ChallengeResponse
) -> Attested:
    """`config` is the configuration current when the answer arrived (it may have been
    swapped since the challenge was issued)."""
    evidence = pending.evidence
    # Again: the EK may have been deny-listed while the agent was answering.
    check_denylist(config.denylist, evidence.pub_hash)
    # The secret first: it is what binds the AK, which signs every other proof, to the EK.
    verify_activated_secret(pending.secret, response.secret)
    pcr_values: dict[PCRKey, bytes] = {}
    if pending.pcr_request:
        pcr_values = verify_pcr_quote(evidence.ak, response, pending.nonce, pending.pcr_request)
        if pending.pcr_policy is not None:
            check_pcr_policy(pending.pcr_policy, pcr_values)
    boot: ProvenBoot | None = None
    if pending.event_log_pcrs is not None:
        if response.event_log:
            # Only the PCRs asked for the log: others (IMA's PCR 10, say) are not in it.
            quoted = {key: pcr_values[key] for key in pending.event_log_pcrs}
            boot = verify_event_log(response.event_log, quoted)
        if pending.event_log_policy is not None:
            check_event_log_policy(pending.event_log_policy, boot, response.event_log_absent)
    if evidence.devid is not None:
        verify_devid_residency(evidence.ak, response, pending.nonce, evidence.devid.public)
        verify_devid_signature(evidence.devid.public, response, pending.nonce)
    return Attested(evidence, pcr_values, boot)


def agent_facts(config: ServerConfig, evidence: Evidence) -> dict[str, str | None]:
    """The values agent_path_template may use."""
    certificate = evidence.ek_certificate.certificate if evidence.ek_certificate else None
    entry = evidence.allowlist_entry
    return {
        "PluginName": config.plugin_name,
        "PubHash": evidence.pub_hash,
        "EKCertSerial": format(certificate.serial_number, "x") if certificate else None,
        "Name": entry.name if entry else None,
        **(evidence.devid.facts() if evidence.devid else {}),
    }


def selectors(attested: Attested) -> list[str]:
    evidence = attested.evidence
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
    if evidence.devid is not None:
        for kind, value in evidence.devid.selectors():
            if value:
                values.append(f"{kind}:{selector_safe(value)}")
    values.extend(pcr_selectors(attested.pcr_values))
    if attested.boot is not None:
        values.extend(eventlog.selectors(attested.boot.facts))
    return values


def agent_attributes(config: ServerConfig, attested: Attested) -> AgentAttributes:
    try:
        path = config.agent_path_template.render(agent_facts(config, attested.evidence))
    except TemplateError as exc:
        raise denied("agent_path_template", str(exc)) from None
    return AgentAttributes(
        spiffe_id=agent_spiffe_id(config.trust_domain, path),
        selector_values=selectors(attested),
        can_reattest=config.can_reattest,
    )

"""The server's checks of the evidence beyond EK and AK: platform state (PCR quotes,
the firmware event log) and device identity (DevID).

Like `server_plugin.checks`: each check is a free function named for what it proves,
returning what it established or raising `Rejected` that names it. Malformed evidence
is INVALID_ARGUMENT; evidence that is well formed but does not prove what it claims,
or is missing where the policy needs it, is PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from server_plugin.checks import check, denied, malformed, proof
from server_plugin.event_log_policy import EventLogPolicy, ProvenBoot
from server_plugin.pcr_policy import PCRKey, PCRPolicy, pcr_label
from spire_tpm_attestor import eventlog, wire
from spire_tpm_attestor.errors import NotProven
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.tpm.constants import TPM_ALG, TPMA_OBJECT, alg_name
from spire_tpm_attestor.tpm.structures import (
    PublicArea,
    parse_signature,
    parse_tpm2b_public,
    public_key_equals,
)
from spire_tpm_attestor.tpm.verify import verify_certify, verify_quote, verify_signature
from spire_tpm_attestor.x509 import Certificate, load_certificate, verify_chain

# A DevID is a TPM-generated, non-migratable signing key (TCG "TPM 2.0 Keys for Device
# Identity and Attestation"). The attributes alone are only a claim: TPM2_LoadExternal
# loads a public-only area claiming them. What makes them true is the AK's TPM2_Certify
# of the key (verify_devid_residency): the TPM certifies only an object it holds and can
# authorize, which a public-only object is not, and the certified Name covers these
# attributes. An imported key cannot claim fixedTPM/fixedParent at all.
_DEVID_REQUIRED_ATTRIBUTES = (
    TPMA_OBJECT.FIXED_TPM,
    TPMA_OBJECT.FIXED_PARENT,
    TPMA_OBJECT.SENSITIVE_DATA_ORIGIN,
    TPMA_OBJECT.SIGN_ENCRYPT,
)


# --- PCRs -----------------------------------------------------------------------------


def reported_pcr_values(values: Iterable[attestation_pb2.PCRValue]) -> dict[PCRKey, bytes]:
    """The PCR values as reported (not yet verified), each PCR at most once."""
    reported: dict[PCRKey, bytes] = {}
    for value in values:
        key = (value.hash_alg, value.index)
        if key in reported:
            raise malformed("pcr_values", f"PCR {alg_name(key[0])}:{key[1]} is reported twice")
        reported[key] = bytes(value.digest)
    return reported


def verify_pcr_quote(
    ak: PublicArea,
    response: attestation_pb2.ChallengeResponse,
    nonce: bytes,
    requested: frozenset[PCRKey],
) -> dict[PCRKey, bytes]:
    """The AK quoted, over our nonce, at least the PCRs we asked for, with these values.

    Returns the verified values of the requested PCRs.
    """
    if not response.quote or not response.quote_signature:
        raise denied("pcr_quote", "the server asked for a PCR quote and the agent sent none")
    values = reported_pcr_values(response.pcr_values)
    with proof("pcr_quote", "PCR quote"):
        verify_quote(
            ak, response.quote, response.quote_signature, nonce, values, required=requested
        )
    return {key: values[key] for key in requested}


def check_pcr_policy(policy: PCRPolicy, values: dict[PCRKey, bytes]) -> None:
    """Every PCR the policy names holds one of the values it allows."""
    violation = policy.violation(values)
    if violation is not None:
        raise denied("pcr_policy", violation)


def pcr_selectors(values: dict[PCRKey, bytes]) -> list[str]:
    return [f"pcr:{pcr_label(key)}:{values[key].hex()}" for key in sorted(values)]


# --- the firmware event log -------------------------------------------------------------


def verify_event_log(log: bytes, quoted: Mapping[PCRKey, bytes]) -> ProvenBoot:
    """The log parses and replays to the `quoted` (verified) PCR values; its facts come
    from the events of those PCRs alone."""
    with check("event_log", "event log rejected"):
        parsed = eventlog.parse(log, wire.EVENT_LOG_LIMITS)
    with check("event_log_replay", "event log rejected"):
        verified = eventlog.verify(parsed, quoted)
    return ProvenBoot(eventlog.derive_facts(verified.events), verified.pcrs)


def check_event_log_policy(policy: EventLogPolicy, boot: ProvenBoot | None, absent: str) -> None:
    """The proven boot (or its absence, for the agent's reason `absent`) meets every rule."""
    refusal = policy.refusal(boot, absent)
    if refusal is not None:
        raise denied("event_log_policy", f"event log policy rule {refusal}")


# --- DevID ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedDevID:
    """A DevID certificate that chains to devid_ca_path and certifies `public`."""

    certificate: Certificate
    public: PublicArea

    def facts(self) -> dict[str, str | None]:
        """The DevID fields agent_path_template may use."""
        return {
            "DevIDSubjectCN": self.certificate.subject_common_name,
            "DevIDSerialNumber": format(self.certificate.serial_number, "x"),
            "DevIDFingerprint": self.certificate.sha256_fingerprint,
        }

    def selectors(self) -> list[tuple[str, str | None]]:
        certificate = self.certificate
        return [
            ("devid:subject:cn", certificate.subject_common_name),
            ("devid:issuer:cn", certificate.issuer_common_name),
            ("devid:serialnumber", format(certificate.serial_number, "x")),
            ("devid:fingerprint", certificate.sha256_fingerprint),
        ]


def verify_devid_chain(certificates: Sequence[bytes], bundle: Sequence[Certificate]) -> Certificate:
    """The DevID leaf (first) chains, through the others, to a CA of devid_ca_path."""
    if not certificates:
        raise malformed("devid_certificates", "DevID certificate cannot be parsed: none was sent")
    with check("devid_certificates", "DevID certificate cannot be parsed"):
        leaf, *intermediates = [load_certificate(der) for der in certificates]
    if leaf.is_ca:
        raise denied("devid_cert_chain", "the DevID certificate is a CA certificate")
    usage = leaf.key_usage
    if usage is not None and not usage.digital_signature:
        raise denied("devid_cert_chain", "the DevID certificate does not allow digitalSignature")
    with check(
        "devid_cert_chain",
        "DevID certificate does not chain to devid_ca_path",
        every_failure=NotProven,
    ):
        verify_chain(leaf, intermediates, bundle, datetime.now(UTC))
    return leaf


def verify_devid_public(data: bytes, certificate: Certificate) -> PublicArea:
    """The DevID public area is a TPM-resident signing key, and the certificate's key."""
    with check("devid_public", "DevID public area"):
        area = parse_tpm2b_public(data)
    for attribute in _DEVID_REQUIRED_ATTRIBUTES:
        if not area.has(attribute):
            raise denied(
                "devid_key_attributes",
                f"DevID key is not a TPM-resident key: {attribute.name} is not set",
            )
    if area.has(TPMA_OBJECT.DECRYPT):
        raise denied("devid_key_attributes", "DevID key is also a decryption key")
    with check("devid_public", "DevID key cannot be read"):
        same = public_key_equals(area, certificate.public_key())
    if not same:
        raise denied("devid_cert_key", "DevID certificate key differs from the DevID public area")
    return area


def verify_devid_residency(
    ak: PublicArea, response: attestation_pb2.ChallengeResponse, nonce: bytes, devid: PublicArea
) -> None:
    """The AK (bound to the EK by credential activation) certified, over our nonce, that
    the DevID key is loaded in its TPM."""
    if not response.devid_certify or not response.devid_certify_signature:
        raise denied("devid_residency", "the agent sent a DevID but no TPM2_Certify of it")
    with proof("devid_residency", "DevID certification"):
        verify_certify(ak, response.devid_certify, response.devid_certify_signature, nonce, devid)


def verify_devid_signature(
    devid: PublicArea, response: attestation_pb2.ChallengeResponse, nonce: bytes
) -> None:
    """The DevID key signed SHA-256(our nonce || the agent's own fresh nonce)."""
    if not response.devid_signature or not response.agent_nonce:
        raise denied("devid_signature", "the agent sent a DevID but no DevID signature")
    with proof("devid_signature", "DevID signature"):
        signature = parse_signature(response.devid_signature)
        if signature.hash_alg != TPM_ALG.SHA256:
            raise NotProven(f"signed with {alg_name(signature.hash_alg)}, not SHA256")
        verify_signature(devid, wire.devid_signed_data(nonce, response.agent_nonce), signature)

"""Each check the server makes, as a free function named for what it proves.

A check returns what it established or raises `Rejected` naming itself, so the
Attest stream stays a thin state machine and the audit log can say exactly which
check failed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from server_plugin.allowlist import AllowlistEntry, AllowlistError, AllowlistSource
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.errors import MalformedInput, NotProven
from spire_tpm_attestor.runtime.status import (
    InvalidArgument,
    PermissionDenied,
    PluginError,
    Unavailable,
)
from spire_tpm_attestor.tpm.keys import check_ak_public, check_ek_template
from spire_tpm_attestor.tpm.structures import PublicArea, parse_tpm2b_public
from spire_tpm_attestor.x509 import (
    Certificate,
    check_certificate_matches_public_area,
    load_certificate,
    verify_chain,
)


class Rejected(Exception):
    """A check failed; `error` is what SPIRE is told, `check` names the check."""

    def __init__(self, check: str, error: PluginError) -> None:
        super().__init__(f"{check}: {error.message}")
        self.check = check
        self.error = error
        self.ek_hash = ""  # set once the EK is known, for the audit line


def malformed(check: str, message: str) -> Rejected:
    return Rejected(check, InvalidArgument(message))


def denied(check: str, message: str) -> Rejected:
    return Rejected(check, PermissionDenied(message))


def parse_public_area(data: bytes, field: str, label: str) -> PublicArea:
    """A TPM2B_PUBLIC from the agent, parsed strictly; malformed input is INVALID_ARGUMENT."""
    try:
        return parse_tpm2b_public(data)
    except MalformedInput as exc:
        raise malformed(field, f"{label} public area: {exc}") from None


def parse_ek_public(data: bytes) -> PublicArea:
    """The EK public area is well formed and shaped like a TCG EK (restricted decrypt key)."""
    area = parse_public_area(data, "ek_public", "EK")
    try:
        check_ek_template(area)
    except (MalformedInput, NotProven) as exc:
        raise denied("ek_template", f"EK public area is not an endorsement key: {exc}") from None
    return area


def verify_ak_public(data: bytes) -> PublicArea:
    """The AK is a genuine TPM attestation key: fixed, TPM-generated, restricted signing."""
    area = parse_public_area(data, "ak_public", "AK")
    try:
        check_ak_public(area)
    except (MalformedInput, NotProven) as exc:
        raise denied("ak_attributes", f"AK rejected: {exc}") from None
    return area


def ek_hash_of(ek: PublicArea) -> str:
    """The EK hash that names this TPM: SHA-256 of the EK's DER SubjectPublicKeyInfo."""
    try:
        return ek_hash(ek.public_key())
    except (MalformedInput, ValueError) as exc:
        raise malformed("ek_public", f"EK public key is invalid: {exc}") from None


def load_ek_certificate(data: bytes) -> Certificate:
    try:
        return load_certificate(data)
    except (MalformedInput, ValueError) as exc:
        raise malformed("ek_certificate", f"EK certificate cannot be parsed: {exc}") from None


def verify_eks_match(certificate: Certificate, ek: PublicArea) -> None:
    """The EK certificate certifies the very key that the challenge is encrypted to."""
    try:
        check_certificate_matches_public_area(certificate, ek)
    except NotProven:
        raise denied("ek_cert_key", "EK certificate key differs from the EK public area") from None
    except (MalformedInput, ValueError) as exc:
        raise malformed("ek_certificate", f"EK certificate key cannot be read: {exc}") from None


@dataclass(frozen=True)
class VerifiedEKCertificate:
    certificate: Certificate
    anchor_fingerprint: str


def verify_ek_chain(
    certificate: Certificate,
    intermediates: Sequence[bytes],
    bundle: Sequence[Certificate],
) -> VerifiedEKCertificate:
    """The EK certificate chains to a configured manufacturer/organisation CA."""
    try:
        extra = [load_certificate(der) for der in intermediates]
    except (MalformedInput, ValueError) as exc:
        raise malformed("ek_intermediates", f"EK intermediate cannot be parsed: {exc}") from None
    try:
        chain = verify_chain(certificate, extra, bundle, datetime.now(UTC))
    except (NotProven, MalformedInput, ValueError) as exc:
        raise denied(
            "ek_cert_chain", f"EK certificate does not chain to ek_ca_path: {exc}"
        ) from None
    anchor = chain[-1]
    return VerifiedEKCertificate(certificate, hashlib.sha256(anchor.der).hexdigest())


def _look_up(
    sources: Sequence[AllowlistSource], pub_hash: str, check: str, what: str
) -> AllowlistEntry | None:
    """The first source, in order, that knows this EK hash; a lookup error rejects."""
    for source in sources:
        try:
            entry = source.lookup(pub_hash)
        except AllowlistError as exc:
            raise Rejected(check, Unavailable(f"{what} lookup failed: {exc}")) from None
        if entry is not None:
            return entry
    return None


def look_up_allowlist(sources: Sequence[AllowlistSource], pub_hash: str) -> AllowlistEntry | None:
    """The allowlist entry for this EK; any lookup error rejects (never admits)."""
    return _look_up(sources, pub_hash, "allowlist_lookup", "allowlist")


def check_denylist(sources: Sequence[AllowlistSource], pub_hash: str) -> None:
    """The EK is on no deny list; a deny-list lookup that fails rejects too (never passes)."""
    entry = _look_up(sources, pub_hash, "denylist_lookup", "deny list")
    if entry is not None:
        raise denied("denylist", f"EK {pub_hash} is on the deny list {entry.source}")


def verify_activated_secret(expected: bytes, returned: bytes) -> None:
    """The agent recovered our secret, so the AK lives in the TPM that holds the EK."""
    if not hmac.compare_digest(expected, returned):
        raise denied("credential_activation", "credential activation failed: wrong secret")

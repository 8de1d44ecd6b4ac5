"""Each check the server makes, as a free function named for what it proves.

A check returns what it established or raises `Rejected` naming itself, so the
Attest stream stays a thin state machine and the audit log can say exactly which
check failed. The core's errors become rejections in one place, `check`: the branch
of the error tree picks the status (through the one table in
`spire_tpm_attestor.runtime.status`), the check's name and message frame it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from server_plugin.allowlist import AllowlistEntry, AllowlistSource
from server_plugin.ek_sources import AIAFetch, EKCertDownload
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.errors import AttestorError, MalformedInput, NotProven
from spire_tpm_attestor.runtime.status import (
    InvalidArgument,
    PermissionDenied,
    PluginError,
    status_of,
)
from spire_tpm_attestor.tpm.keys import check_ak_public, check_ek_template
from spire_tpm_attestor.tpm.structures import PublicArea, parse_tpm2b_public
from spire_tpm_attestor.x509 import (
    Certificate,
    Expired,
    certificate_matches_public_area,
    load_certificate,
    verify_chain,
)
from spire_tpm_attestor.x509.chain import MAX_CHAIN_DEPTH


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


@contextmanager
def check(
    name: str,
    message: str,
    *,
    if_malformed: str | None = None,
    every_failure: type[AttestorError] | None = None,
) -> Iterator[None]:
    """Turn an error of the core raised inside into `Rejected` naming check `name`.

    The status comes from the error's branch (MalformedInput -> INVALID_ARGUMENT,
    NotProven -> PERMISSION_DENIED, SourceUnavailable -> UNAVAILABLE); the message is
    `message: <error>`, or `if_malformed: <error>` for MalformedInput when given.
    `every_failure` files every error under one branch, for checks that judge their
    input as a whole (an AK whose key is not a valid point is no genuine AK).
    """
    try:
        yield
    except AttestorError as exc:
        prefix = if_malformed if if_malformed and isinstance(exc, MalformedInput) else message
        status = status_of(every_failure or type(exc))
        raise Rejected(name, status(f"{prefix}: {exc}")) from None


def proof(name: str, what: str) -> AbstractContextManager[None]:
    """`check` for evidence: unparseable is malformed, not verifying is not proven."""
    return check(name, f"{what} does not verify", if_malformed=f"{what} is malformed")


def parse_public_area(data: bytes, field: str, label: str) -> PublicArea:
    """A TPM2B_PUBLIC from the agent, parsed strictly; malformed input is INVALID_ARGUMENT."""
    with check(field, f"{label} public area"):
        return parse_tpm2b_public(data)


def parse_ek_public(data: bytes) -> PublicArea:
    """The EK public area is well formed and shaped like a TCG EK (restricted decrypt key)."""
    area = parse_public_area(data, "ek_public", "EK")
    with check("ek_template", "EK public area is not an endorsement key", every_failure=NotProven):
        check_ek_template(area)
    return area


def verify_ak_public(data: bytes) -> PublicArea:
    """The AK is a genuine TPM attestation key: fixed, TPM-generated, restricted signing."""
    area = parse_public_area(data, "ak_public", "AK")
    with check("ak_attributes", "AK rejected", every_failure=NotProven):
        check_ak_public(area)
    return area


def ek_hash_of(ek: PublicArea) -> str:
    """The EK hash that names this TPM: SHA-256 of the EK's DER SubjectPublicKeyInfo."""
    with check("ek_public", "EK public key is invalid"):
        return ek_hash(ek.public_key())


def load_ek_certificate(data: bytes) -> Certificate:
    with check("ek_certificate", "EK certificate cannot be parsed"):
        return load_certificate(data)


def verify_eks_match(certificate: Certificate, ek: PublicArea) -> None:
    """The EK certificate certifies the very key that the challenge is encrypted to."""
    with check("ek_certificate", "EK certificate key cannot be read"):
        same = certificate_matches_public_area(certificate, ek)
    if not same:
        raise denied("ek_cert_key", "EK certificate key differs from the EK public area")


@dataclass(frozen=True)
class VerifiedEKCertificate:
    certificate: Certificate
    anchor_fingerprint: str


def _ek_chain(
    certificate: Certificate,
    intermediates: Sequence[Certificate],
    bundle: Sequence[Certificate],
    enforce_expiry: bool,
) -> list[Certificate]:
    try:
        return verify_chain(
            certificate, intermediates, bundle, datetime.now(UTC), enforce_expiry=enforce_expiry
        )
    except Expired as exc:  # name the option that would accept it
        raise Expired(f'{exc} (ek_cert_expiry = "enforce")') from None


def verify_ek_chain(
    certificate: Certificate,
    intermediates: Sequence[bytes],
    bundle: Sequence[Certificate],
    aia: AIAFetch | None = None,
    *,
    enforce_expiry: bool = True,
) -> VerifiedEKCertificate:
    """The EK certificate chains to a configured manufacturer/organisation CA; past
    their notAfter, the certificates of the chain count only without `enforce_expiry`.

    With `aia`, a chain that does not verify is retried with the issuer its top
    certificate's caIssuers URL serves, link by link: fetched certificates are
    intermediates, never anchors."""
    with check("ek_intermediates", "EK intermediate cannot be parsed"):
        extra = [load_certificate(der) for der in intermediates]
    top, asked = certificate, set[bytes]()
    while True:
        try:
            with check(
                "ek_cert_chain",
                "EK certificate does not chain to ek_ca_path",
                every_failure=NotProven,
            ):
                chain = _ek_chain(certificate, extra, bundle, enforce_expiry)
            break
        except Rejected:
            if aia is None or top.der in asked or len(asked) >= MAX_CHAIN_DEPTH:
                raise
            asked.add(top.der)
            with check("ek_aia_fetch", "EK issuer certificate cannot be fetched"):
                fetched = aia.issuers(top)
            if not fetched:
                raise
            known = {cert.der for cert in extra}
            extra.extend(cert for cert in fetched if cert.der not in known)
            top = fetched[0]
    anchor = chain[-1]
    return VerifiedEKCertificate(certificate, anchor.sha256_fingerprint)


def download_ek_certificate(
    download: EKCertDownload, ek: PublicArea, pub_hash: str
) -> Certificate | None:
    """The EK certificate the TPM's manufacturer publishes, if any (verified later
    exactly like one from NV)."""
    with check("ek_cert_download", "EK certificate cannot be downloaded"):
        return download.certificate(ek, pub_hash)


def _look_up(
    sources: Sequence[AllowlistSource], pub_hash: str, check_name: str, what: str
) -> AllowlistEntry | None:
    """The first source, in order, that knows this EK hash; a lookup error rejects."""
    for source in sources:
        with check(check_name, f"{what} lookup failed"):
            entry = source.lookup(pub_hash)
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

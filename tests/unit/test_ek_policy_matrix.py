"""EK trust, the whole `ek_policy` matrix, in-process with software keys.

Every policy against every kind of EK certificate and every allowlist answer. The rules
under test, from the README: a deny-listed EK is refused first, under any policy; a
certificate the agent sends must be this EK's, under any policy; an allowlist lookup that
fails refuses (it never admits); then the policy decides between "certified" (the
certificate chains to ek_ca_path) and "listed" (an allowlist source knows the EK). A
certificate that cannot be read is refused where a certificate is required, and set
aside where the allowlist alone may admit.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from server_plugin.attestation import check_payload
from server_plugin.config import ALLOWLIST_SUFFICES, EK_POLICIES, build_server_config
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig
from spire_tpm_attestor.runtime.status import (
    InvalidArgument,
    PermissionDenied,
    PluginError,
    Unavailable,
)
from tests.unit.server_builders import (
    MemoryAllowlist,
    TestCA,
    broken,
    bundle,
    der,
    listing,
    rejected,
    server_config,
)
from tests.unit.software_tpm import SoftwareTPM
from tests.unit.x509_builders import make_ca, make_ek_cert

CERTIFICATES = ("valid", "other_ca", "none", "other_key", "unreadable")
ANSWERS = ("listed", "not_listed", "lookup_error", "deny_listed", "deny_lookup_error")

ADMITS: dict[str, Callable[[bool, bool], bool]] = {
    "cert": lambda certified, listed: certified,
    "allowlist": lambda certified, listed: listed,
    "cert_or_allowlist": lambda certified, listed: certified or listed,
    "cert_and_allowlist": lambda certified, listed: certified and listed,
}
CERTIFICATE_FAILURE = {"other_ca": "ek_cert_chain", "none": "ek_certificate"}
DAY = datetime.timedelta(days=1)


def expected_rejection(
    policy: str, certificate: str, answer: str
) -> tuple[str, type[PluginError]] | None:
    """The check that refuses this EK and its status, or None when it is admitted."""
    if answer == "deny_listed":
        return "denylist", PermissionDenied
    if answer == "deny_lookup_error":
        return "denylist_lookup", Unavailable
    if certificate == "other_key":
        return "ek_cert_key", PermissionDenied
    if certificate == "unreadable" and policy not in ALLOWLIST_SUFFICES:
        return "ek_certificate", InvalidArgument
    if answer == "lookup_error":
        return "allowlist_lookup", Unavailable
    certified, listed = certificate == "valid", answer == "listed"
    if ADMITS[policy](certified, listed):
        return None
    if policy == "cert_or_allowlist":
        return "ek_trust", PermissionDenied
    if policy != "allowlist" and not certified:
        return CERTIFICATE_FAILURE[certificate], PermissionDenied
    return "allowlist", PermissionDenied


def test_the_rules_cover_every_policy() -> None:
    assert set(ADMITS) == set(EK_POLICIES)


def ek_certificate(kind: str, tpm: SoftwareTPM, ek_ca: TestCA, rogue_ca: TestCA) -> bytes:
    if kind == "none":
        return b""
    if kind == "unreadable":
        return b"\x30\x03\x02\x01\x01"  # a SEQUENCE, but no certificate
    issuer = rogue_ca if kind == "other_ca" else ek_ca
    key = tpm.ek_key.public_key()
    if kind == "other_key":  # a genuine certificate from the trusted CA, for another EK
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return der(issuer.issue_ek_certificate(key))


def sources(kind: str, pub_hash: str) -> tuple[list[MemoryAllowlist], list[MemoryAllowlist]]:
    """(allowlist, denylist) for this kind of answer about the EK `pub_hash`."""
    other = listing("ab" * 32)  # every list knows some other EK
    allowlist = {
        "listed": [other, listing(pub_hash, name="node-1")],
        "lookup_error": [broken()],
    }.get(kind, [other])
    denylist = {"deny_listed": [listing(pub_hash)], "deny_lookup_error": [broken()]}.get(kind, [])
    return allowlist, denylist


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("certificate", CERTIFICATES)
@pytest.mark.parametrize("policy", EK_POLICIES)
def test_ek_policy(
    policy: str, certificate: str, answer: str, ek_ca: TestCA, rogue_ca: TestCA
) -> None:
    tpm = SoftwareTPM()
    pub_hash = tpm.pub_hash
    allowlist, denylist = sources(answer, pub_hash)
    config = server_config(
        ek_policy=policy, ek_ca=bundle(ek_ca), allowlist=allowlist, denylist=denylist
    )
    payload = tpm.payload(
        ek_certificate(certificate, tpm, ek_ca, rogue_ca),
        ek_intermediates=[der(ek_ca.intermediate_certificate)],
    )
    expected = expected_rejection(policy, certificate, answer)
    if expected is not None:
        refusal = rejected(*expected, check_payload, config, payload)
        assert refusal.ek_hash == pub_hash  # the audit line names the EK
        return
    evidence = check_payload(config, payload)
    assert evidence.pub_hash == pub_hash
    if certificate == "valid":
        assert evidence.ek_certificate is not None
        assert evidence.ek_certificate.certificate.der == payload.ek_certificate
        root = der(ek_ca.root_certificate)
        assert evidence.ek_certificate.anchor_fingerprint == hashlib.sha256(root).hexdigest()
    else:
        assert evidence.ek_certificate is None
    if certificate == "unreadable":
        assert evidence.ek_certificate_ignored == (
            "EK certificate cannot be parsed: certificate: not a SEQUENCE of three elements"
        )
    else:
        assert evidence.ek_certificate_ignored is None
    if answer == "listed":
        assert evidence.allowlist_entry is not None
        assert (evidence.allowlist_entry.pub_hash, evidence.allowlist_entry.name) == (
            pub_hash,
            "node-1",
        )
    else:
        assert evidence.allowlist_entry is None


# -- around the matrix --------------------------------------------------------------------


def test_an_emptied_ca_bundle_certifies_nothing(ek_ca: TestCA) -> None:
    # ek_ca_path whose files were removed since Configure: no certificate is trusted.
    tpm = SoftwareTPM()
    payload = tpm.payload(der(ek_ca.issue_ek_certificate(tpm.ek_key.public_key())))
    config = server_config(ek_policy="cert", ek_ca=[])
    refusal = rejected("ek_cert_chain", PermissionDenied, check_payload, config, payload)
    assert "no EK CA is configured" in str(refusal)
    listed = listing(tpm.pub_hash)
    config = server_config(ek_policy="cert_or_allowlist", ek_ca=[], allowlist=[listed])
    assert check_payload(config, payload).ek_certificate is None


def test_either_way_names_why_the_certificate_failed(rogue_ca: TestCA, ek_ca: TestCA) -> None:
    tpm = SoftwareTPM()
    payload = tpm.payload(der(rogue_ca.issue_ek_certificate(tpm.ek_key.public_key())))
    config = server_config(ek_policy="cert_or_allowlist", ek_ca=bundle(ek_ca), allowlist=[])
    refusal = rejected("ek_trust", PermissionDenied, check_payload, config, payload)
    assert "does not chain to ek_ca_path" in str(refusal) and "nor in the allowlist" in str(refusal)


@pytest.mark.parametrize(
    ("order", "admitted"),
    [(("listed", "broken"), True), (("broken", "listed"), False)],
    ids=["first-source-answers", "first-source-fails"],
)
def test_allowlist_sources_are_asked_in_order(order: tuple[str, str], admitted: bool) -> None:
    tpm = SoftwareTPM()
    pub_hash = tpm.pub_hash
    made = {"listed": listing(pub_hash, source="first"), "broken": broken()}
    config = server_config(ek_policy="allowlist", allowlist=[made[kind] for kind in order])
    if admitted:
        entry = check_payload(config, tpm.payload()).allowlist_entry
        assert entry is not None and entry.source == "first"
    else:
        rejected("allowlist_lookup", Unavailable, check_payload, config, tpm.payload())


def test_an_unreadable_certificate_names_itself_when_nothing_else_admits(ek_ca: TestCA) -> None:
    tpm = SoftwareTPM()
    payload = tpm.payload(b"\x30\x03\x02\x01\x01")
    config = server_config(ek_policy="cert_or_allowlist", ek_ca=bundle(ek_ca), allowlist=[])
    refusal = rejected("ek_trust", PermissionDenied, check_payload, config, payload)
    assert "EK certificate cannot be parsed: certificate: not a SEQUENCE" in str(refusal)


def test_expired_ek_certificates_count_only_with_ek_cert_expiry_ignore(ek_ca: TestCA) -> None:
    tpm = SoftwareTPM()
    now = datetime.datetime.now(datetime.UTC)
    expired = make_ek_cert(
        tpm.ek_key.public_key(), ek_ca.intermediate, not_before=now - 9 * DAY, not_after=now - DAY
    )
    payload = tpm.payload(der(expired), ek_intermediates=[der(ek_ca.intermediate_certificate)])
    enforcing = server_config(ek_policy="cert", ek_ca=bundle(ek_ca))
    refusal = rejected("ek_cert_chain", PermissionDenied, check_payload, enforcing, payload)
    assert str(refusal).endswith('has expired (ek_cert_expiry = "enforce")')
    ignoring = dataclasses.replace(enforcing, enforce_ek_cert_expiry=False)
    assert check_payload(ignoring, payload).ek_certificate is not None
    # Never a signature: the same certificate from another CA is refused all the same.
    forged = make_ek_cert(
        tpm.ek_key.public_key(),
        make_ca("Test TPM EK Intermediate CA"),
        not_before=now - 9 * DAY,
        not_after=now - DAY,
    )
    rejected("ek_cert_chain", PermissionDenied, check_payload, ignoring, tpm.payload(der(forged)))


def test_ek_cert_expiry_option(ek_ca: TestCA) -> None:
    core = CoreConfig("example.org")
    base = f'ek_ca_path = "{ek_ca.root_path}"\n'
    for text, enforced in ((base, True), (base + 'ek_cert_expiry = "ignore"', False)):
        config = build_server_config(text, core)
        config.close()
        assert config.enforce_ek_cert_expiry == enforced
    with pytest.raises(ConfigProblems, match="ek_cert_expiry: 'never' is not one of"):
        build_server_config(base + 'ek_cert_expiry = "never"', core)

"""The event log policy: what a node's measured boot must show to be admitted.

Written in HCL or JSON (`event_log_policy_path`), every rule optional:

    require_event_log         = true            # the agent must send a log at all
    require_secure_boot       = true            # the SecureBoot variable is 1
    allowed_pk                = ["<sha256>"]    # every PK certificate is one of these
    allowed_kek               = ["<sha256>"]    # ... every KEK certificate
    allowed_db                = ["<sha256>"]    # ... every db certificate
    required_dbx              = ["<sha256>"]    # revocations dbx must hold
    allowed_boot_applications = ["<sha256>"]    # every boot application (PCR 4) is one of these

Fingerprints are SHA-256 of a certificate's DER; dbx entries are EFI_CERT_SHA256 hashes
or the fingerprints of revoked certificates; boot applications are their SHA-256
Authenticode digests as the firmware measured them. Each rule reads only events the
quote proves (`spire_tpm_attestor.eventlog.verify`): the Secure Boot rules need PCR 7
proven, the boot application rule PCR 4 proven in the SHA-256 bank; when it is not, the
rule fails rather than pass on nothing. Any rule other than `require_event_log` fails
too when there is no log. A refusal names the rule that failed.

Parsing is pure and strict: unknown rules, wrong types and malformed fingerprints are
errors naming the entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from spire_tpm_attestor.eventlog import BootFacts, SignatureDatabase
from spire_tpm_attestor.eventlog.facts import BOOT_APPLICATION_PCR, SECURE_BOOT_PCR
from spire_tpm_attestor.runtime.config import (
    ConfigProblems,
    ConfigReader,
    Option,
    declare,
    read_hcl_file,
)
from spire_tpm_attestor.tpm.constants import TPM_ALG

MAX_POLICY_FILE: Final = 1024 * 1024
_SHA256_HEX: Final = 64

PCRKey = tuple[int, int]

POLICY_RULES = declare(
    Option(
        "require_event_log",
        "boolean",
        "refuses when the agent sent no log (the refusal quotes the agent's reason)",
        default=False,
    ),
    Option(
        "require_secure_boot",
        "boolean",
        "refuses when the SecureBoot variable (measured into PCR 7 before its separator) is "
        "not 1, or is not measured",
        default=False,
    ),
    *(
        Option(
            f"allowed_{variable.lower()}",
            "strings",
            f"SHA-256 certificate fingerprints; refuses when a certificate in {variable} is "
            "not listed, or the variable is not measured",
        )
        for variable in ("PK", "KEK", "db")
    ),
    Option(
        "required_dbx",
        "strings",
        "SHA-256 values; refuses when dbx lacks one of these revocations (EFI_CERT_SHA256 "
        "entries, or fingerprints of revoked certificates), or is not measured",
    ),
    Option(
        "allowed_boot_applications",
        "strings",
        "SHA-256 digests; refuses when a boot application the firmware started (PCR 4) is "
        "not listed",
    ),
)


class EventLogPolicyError(ValueError):
    """A policy is malformed; the message names every offending entry."""


@dataclass(frozen=True)
class ProvenBoot:
    """What a verified event log shows: its facts and the PCRs the quote proved it for."""

    facts: BootFacts
    pcrs: Mapping[int, frozenset[int]]  # PCR -> banks in which the log replays to the quote


@dataclass(frozen=True)
class Refusal:
    rule: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.reason}"


@dataclass(frozen=True)
class EventLogPolicy:
    require_event_log: bool = False
    require_secure_boot: bool = False
    allowed_pk: frozenset[str] | None = None
    allowed_kek: frozenset[str] | None = None
    allowed_db: frozenset[str] | None = None
    required_dbx: tuple[str, ...] = ()
    allowed_boot_applications: frozenset[str] | None = None

    def _secure_boot_rules(self) -> bool:
        return (
            self.require_secure_boot
            or self.allowed_pk is not None
            or self.allowed_kek is not None
            or self.allowed_db is not None
            or bool(self.required_dbx)
        )

    def pcrs(self) -> frozenset[PCRKey]:
        """The PCRs the rules read, which the challenge must have quoted."""
        needed: set[PCRKey] = set()
        if self._secure_boot_rules():
            needed.add((TPM_ALG.SHA256, SECURE_BOOT_PCR))
        if self.allowed_boot_applications is not None:
            needed.add((TPM_ALG.SHA256, BOOT_APPLICATION_PCR))
        return frozenset(needed)

    def refusal(self, boot: ProvenBoot | None, absent: str) -> Refusal | None:
        """The first rule `boot` breaks (None when it complies); `absent` is the agent's
        reason for sending no log."""
        if boot is None:
            rule = self._first_rule()
            if rule is None:
                return None
            why = absent or "it gave no reason (an agent that predates event logs?)"
            return Refusal(rule, f"the agent sent no event log: {why}")
        facts = boot.facts
        if self._secure_boot_rules() and SECURE_BOOT_PCR not in boot.pcrs:
            return Refusal(
                self._first_secure_boot_rule(),
                f"the event log does not prove PCR {SECURE_BOOT_PCR} (not quoted, or no "
                "quoted bank of it is in the log)",
            )
        if self.require_secure_boot and facts.secure_boot is not True:
            state = "disabled" if facts.secure_boot is False else "not measured (state unknown)"
            return Refusal("require_secure_boot", f"Secure Boot is {state}")
        for rule, name, database, allowed in (
            ("allowed_pk", "PK", facts.pk, self.allowed_pk),
            ("allowed_kek", "KEK", facts.kek, self.allowed_kek),
            ("allowed_db", "db", facts.db, self.allowed_db),
        ):
            if allowed is not None:
                refusal = _only_allowed(rule, name, database, allowed)
                if refusal is not None:
                    return refusal
        if self.required_dbx:
            refusal = _revocations_present(facts.dbx, self.required_dbx)
            if refusal is not None:
                return refusal
        if self.allowed_boot_applications is not None:
            return _boot_applications_allowed(boot, self.allowed_boot_applications)
        return None

    def _first_rule(self) -> str | None:
        """The rule a missing log breaks first, if any."""
        if self.require_event_log:
            return "require_event_log"
        if self._secure_boot_rules():
            return self._first_secure_boot_rule()
        if self.allowed_boot_applications is not None:
            return "allowed_boot_applications"
        return None

    def _first_secure_boot_rule(self) -> str:
        for rule, present in (
            ("require_secure_boot", self.require_secure_boot),
            ("allowed_pk", self.allowed_pk is not None),
            ("allowed_kek", self.allowed_kek is not None),
            ("allowed_db", self.allowed_db is not None),
        ):
            if present:
                return rule
        return "required_dbx"


def _only_allowed(
    rule: str, name: str, database: SignatureDatabase | None, allowed: frozenset[str]
) -> Refusal | None:
    if database is None:
        return Refusal(rule, f"{name} is not measured in the proven event log")
    for fingerprint in database.certificates:
        if fingerprint not in allowed:
            return Refusal(rule, f"{name} certificate {fingerprint} is not allowed")
    return None


def _revocations_present(dbx: SignatureDatabase | None, required: Iterable[str]) -> Refusal | None:
    if dbx is None:
        return Refusal("required_dbx", "dbx is not measured in the proven event log")
    present = set(dbx.hashes) | set(dbx.certificates)
    for entry in required:
        if entry not in present:
            return Refusal("required_dbx", f"dbx lacks the revocation {entry}")
    return None


def _boot_applications_allowed(boot: ProvenBoot, allowed: frozenset[str]) -> Refusal | None:
    rule = "allowed_boot_applications"
    if TPM_ALG.SHA256 not in boot.pcrs.get(BOOT_APPLICATION_PCR, ()):
        return Refusal(
            rule,
            f"the event log does not prove PCR {BOOT_APPLICATION_PCR} in the sha256 bank "
            "(boot application digests are SHA-256)",
        )
    for digest in boot.facts.boot_applications:
        if digest not in allowed:
            return Refusal(rule, f"boot application {digest} is not allowed")
    return None


def _fingerprints(reader: ConfigReader, name: str) -> list[str] | None:
    if not reader.has(name):
        return None
    values = []
    for text in reader.string_list(name):
        value = text.strip().lower().replace(":", "")
        if len(value) != _SHA256_HEX or any(c not in "0123456789abcdef" for c in value):
            reader.problem(f"{reader.key(name)}: {text!r} is not a SHA-256 (64 hex digits)")
            continue
        values.append(value)
    return values


def _allowed(reader: ConfigReader, name: str) -> frozenset[str] | None:
    values = _fingerprints(reader, name)
    return None if values is None else frozenset(values)


def parse_event_log_policy(document: Any, where: str = "event_log_policy") -> EventLogPolicy:
    """The policy in a parsed HCL/JSON document (see the module docstring)."""
    if not isinstance(document, dict):
        raise EventLogPolicyError(
            f"{where}: expected a set of rules, got {type(document).__name__}"
        )
    problems: list[str] = []
    reader = ConfigReader(document, problems, POLICY_RULES, prefix=f"{where}: ")
    policy = EventLogPolicy(
        require_event_log=reader.boolean("require_event_log"),
        require_secure_boot=reader.boolean("require_secure_boot"),
        allowed_pk=_allowed(reader, "allowed_pk"),
        allowed_kek=_allowed(reader, "allowed_kek"),
        allowed_db=_allowed(reader, "allowed_db"),
        required_dbx=tuple(_fingerprints(reader, "required_dbx") or ()),
        allowed_boot_applications=_allowed(reader, "allowed_boot_applications"),
    )
    reader.finish()
    if problems:
        raise EventLogPolicyError("; ".join(problems))
    return policy


def load_event_log_policy_file(path: str) -> EventLogPolicy:
    """The policy in an HCL or JSON file."""
    try:
        document = read_hcl_file(path, MAX_POLICY_FILE)
    except ConfigProblems as exc:
        raise EventLogPolicyError(str(exc)) from None
    return parse_event_log_policy(document, Path(path).name)

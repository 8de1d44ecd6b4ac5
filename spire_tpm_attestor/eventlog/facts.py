"""Boot facts from verified events: Secure Boot state and keys, authorities, firmware, apps.

Pass only events the quote proves (`replay.verify(...).events`: PCRs that were quoted and
match, each event keeping only the digests of the banks that proved its PCR). Event data
counts only where the spec makes the digest a hash of it (variables, CRTM version,
actions) and those digests match the data; otherwise the event is skipped and
`BootFacts.problems` says why. Boot application digests are the SHA-256 digests
themselves, so they count only when the SHA-256 bank proved PCR 4.
Secure Boot configuration counts only from PCR 7 before its EV_SEPARATOR, i.e. from the
firmware before anything it loaded could add events; the first measurement of each
variable wins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from spire_tpm_attestor.eventlog.events import Event, EventType
from spire_tpm_attestor.eventlog.replay import HASH_FUNCTIONS
from spire_tpm_attestor.eventlog.uefi import (
    EFI_CERT_SHA256,
    EFI_CERT_X509,
    EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE,
    GUID_SIZE,
    Variable,
    decode_signature_lists,
    decode_ucs2,
    decode_variable,
    der_length,
)
from spire_tpm_attestor.tpm.constants import TPM_ALG

SECURE_BOOT_PCR: Final = 7
CRTM_PCR: Final = 0
BOOT_APPLICATION_PCR: Final = 4
EXIT_BOOT_SERVICES_PCR: Final = 5
EXIT_BOOT_SERVICES: Final = b"Exit Boot Services Invocation"
MAX_PROBLEMS: Final = 32
_X509: Final = EFI_CERT_X509.bytes_le
_SHA256: Final = EFI_CERT_SHA256.bytes_le

# Secure Boot configuration variables and the vendor GUID each must carry.
_SECURE_BOOT_VARIABLES: Final = {
    "SecureBoot": EFI_GLOBAL_VARIABLE,
    "PK": EFI_GLOBAL_VARIABLE,
    "KEK": EFI_GLOBAL_VARIABLE,
    "db": EFI_IMAGE_SECURITY_DATABASE,
    "dbx": EFI_IMAGE_SECURITY_DATABASE,
}
_VARIABLE_EVENTS: Final = frozenset(
    {
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        EventType.EV_EFI_VARIABLE_BOOT,
        EventType.EV_EFI_VARIABLE_BOOT2,
        EventType.EV_EFI_VARIABLE_AUTHORITY,
    }
)


@dataclass(frozen=True)
class SignatureDatabase:
    """A measured PK, KEK, db or dbx (a sequence of EFI_SIGNATURE_LISTs)."""

    digest: str  # SHA-256 of the variable data, lowercase hex
    certificates: tuple[str, ...]  # SHA-256 of each X.509 entry (DER), in order, unique
    hashes: tuple[str, ...]  # EFI_CERT_SHA256 entries, lowercase hex, in order, unique
    entries: int  # entries of every type, as stored


@dataclass(frozen=True)
class Authority:
    """An EV_EFI_VARIABLE_AUTHORITY: what verified a boot component."""

    variable: str  # where the authority came from: db, Shim, MokListRT, SbatLevel, ...
    certificate: str | None  # SHA-256 of the certificate (DER) when the data is one
    digest: str  # SHA-256 of the logged data (EFI_SIGNATURE_DATA or certificate)


@dataclass(frozen=True)
class BootFacts:
    secure_boot: bool | None = None  # None: not measured, or measured without data
    pk: SignatureDatabase | None = None
    kek: SignatureDatabase | None = None
    db: SignatureDatabase | None = None
    dbx: SignatureDatabase | None = None
    authorities: tuple[Authority, ...] = ()  # in log order, repeats removed
    firmware_version: str | None = None  # EV_S_CRTM_VERSION
    boot_applications: tuple[str, ...] = ()  # SHA-256 bank digests on PCR 4, in order
    exit_boot_services: bool = False  # "Exit Boot Services Invocation" seen on PCR 5
    variables: tuple[str, ...] = ()  # names of the EFI variables measured, in order, unique
    problems: tuple[str, ...] = field(default=(), compare=False)


def data_matches_digests(event: Event) -> bool:
    """Every digest of a known algorithm is the hash of the event data (and one exists)."""
    checked = False
    for alg, digest in event.digests.items():
        hash_function = HASH_FUNCTIONS.get(alg)
        if hash_function is None:
            continue
        if hash_function(event.data).digest() != digest:
            return False
        checked = True
    return checked


def _hex_sha256(data: memoryview | bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signature_database(data: memoryview) -> tuple[SignatureDatabase, str | None]:
    lists, problem = decode_signature_lists(data)
    certificates: dict[str, None] = {}
    hashes: dict[str, None] = {}
    for signature_list in lists:
        if signature_list.type == _X509:
            for entry in signature_list.entries:
                certificates[_hex_sha256(entry)] = None
        elif signature_list.type == _SHA256:
            for entry in signature_list.entries:
                if len(entry) == 32:
                    hashes[entry.hex()] = None
    database = SignatureDatabase(
        digest=_hex_sha256(data),
        certificates=tuple(certificates),
        hashes=tuple(hashes),
        entries=sum(len(signature_list.entries) for signature_list in lists),
    )
    return database, problem


def authority(variable: Variable) -> Authority:
    """The certificate in authority data: EFI_SIGNATURE_DATA (owner GUID + DER) or bare DER."""
    data = variable.data
    certificate = None
    if der_length(data) is not None:
        certificate = _hex_sha256(data)
    elif len(data) > GUID_SIZE and der_length(data[GUID_SIZE:]) is not None:
        certificate = _hex_sha256(data[GUID_SIZE:])
    return Authority(variable.name, certificate, _hex_sha256(data))


class _Collector:
    def __init__(self) -> None:
        self.secure_boot: bool | None = None
        self.firmware_version: str | None = None
        self.exit_boot_services = False
        self.seen: set[str] = set()  # Secure Boot variables and CRTM version already taken
        self.databases: dict[str, SignatureDatabase] = {}
        self.authorities: dict[tuple[str | None, str], Authority] = {}
        self.boot_applications: list[str] = []
        self.variables: dict[str, None] = {}
        self.problems: list[str] = []
        self.separated = False  # PCR 7's EV_SEPARATOR seen

    def problem(self, event: Event, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{event.describe()}: {text}")

    def bound_variable(self, event: Event) -> Variable | None:
        if not data_matches_digests(event):
            self.problem(event, "event data does not match its digests; ignored")
            return None
        variable = decode_variable(event.data)
        if isinstance(variable, str):
            self.problem(event, variable)
            return None
        if variable.problem:
            self.problem(event, f"{variable.name}: {variable.problem}")
        self.variables.setdefault(variable.name, None)
        return variable

    def configuration(self, event: Event) -> None:
        variable = self.bound_variable(event)
        if variable is None or variable.name not in _SECURE_BOOT_VARIABLES:
            return
        name = variable.name
        if variable.vendor != _SECURE_BOOT_VARIABLES[name]:
            self.problem(event, f"{name} with vendor GUID {variable.vendor}; ignored")
        elif self.separated:
            self.problem(event, f"{name} measured after PCR 7's separator; ignored")
        elif name in self.seen:
            pass  # the first measurement is the one the firmware made
        elif name == "SecureBoot":
            self.seen.add(name)
            if len(variable.data) == 1 and variable.data[0] in (0, 1):
                self.secure_boot = variable.data[0] == 1
            elif len(variable.data):  # no data at all: state unknown, not a problem
                self.problem(event, f"SecureBoot holds {variable.data.hex()}, not 0 or 1")
        else:
            self.seen.add(name)
            database, problem = signature_database(variable.data)
            if problem:
                self.problem(event, f"{name}: {problem}")
            self.databases[name] = database

    def event(self, event: Event) -> None:
        kind = event.type
        if event.pcr == SECURE_BOOT_PCR:
            if kind == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG:
                self.configuration(event)
            elif kind == EventType.EV_EFI_VARIABLE_AUTHORITY:
                variable = self.bound_variable(event)
                if variable is not None:
                    found = authority(variable)
                    self.authorities.setdefault((found.certificate, found.digest), found)
            elif kind == EventType.EV_SEPARATOR:
                self.separated = True
            return
        if kind in _VARIABLE_EVENTS:
            self.bound_variable(event)
        elif kind == EventType.EV_S_CRTM_VERSION and event.pcr == CRTM_PCR:
            if "crtm" in self.seen:
                return
            if not data_matches_digests(event):
                self.problem(event, "event data does not match its digests; ignored")
                return
            self.seen.add("crtm")
            self.firmware_version = decode_ucs2(event.data) or None
        elif (
            kind == EventType.EV_EFI_BOOT_SERVICES_APPLICATION and event.pcr == BOOT_APPLICATION_PCR
        ):
            digest = event.digests.get(TPM_ALG.SHA256)
            if digest is not None:
                self.boot_applications.append(digest.hex())
        elif (
            kind == EventType.EV_EFI_ACTION
            and event.pcr == EXIT_BOOT_SERVICES_PCR
            and len(event.data) <= len(EXIT_BOOT_SERVICES) + 1  # some add a NUL
            and event.data.tobytes().rstrip(b"\x00") == EXIT_BOOT_SERVICES
            and data_matches_digests(event)
        ):
            self.exit_boot_services = True


def derive_facts(events: Iterable[Event]) -> BootFacts:
    """Boot facts from events a quote proved (see the module docstring)."""
    collector = _Collector()
    for event in events:
        if event.extended:
            collector.event(event)
    return BootFacts(
        secure_boot=collector.secure_boot,
        pk=collector.databases.get("PK"),
        kek=collector.databases.get("KEK"),
        db=collector.databases.get("db"),
        dbx=collector.databases.get("dbx"),
        authorities=tuple(collector.authorities.values()),
        firmware_version=collector.firmware_version,
        boot_applications=tuple(collector.boot_applications),
        exit_boot_services=collector.exit_boot_services,
        variables=tuple(collector.variables),
        problems=tuple(collector.problems),
    )

"""Writes TCG firmware event logs for tests, with the PCR values they replay to.

`EventLogBuilder` writes either format (crypto-agile with any set of banks, or SHA-1)
event by event; `uefi_log` writes the log a UEFI machine with Secure Boot would, with
options for each quirk real firmware has. `BuiltLog` carries the bytes, the PCR values
the log must replay to, and the digests each PCR is extended with per bank, in order, so
that a TPM (swtpm) can be brought to the same state with TPM2_PCR_Extend.

The writer is deliberately independent of `spire_tpm_attestor.eventlog`: it computes the
expected PCR values from its own list of extends.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SHA1, SHA256, SHA384, SHA512, SM3_256 = 0x0004, 0x000B, 0x000C, 0x000D, 0x0012
HASHES = {
    SHA1: hashlib.sha1,
    SHA256: hashlib.sha256,
    SHA384: hashlib.sha384,
    SHA512: hashlib.sha512,
}
SIZES = {SHA1: 20, SHA256: 32, SHA384: 48, SHA512: 64, SM3_256: 32}

EV_NO_ACTION = 0x03
EV_SEPARATOR = 0x04
EV_EVENT_TAG = 0x06
EV_POST_CODE = 0x01
EV_S_CRTM_VERSION = 0x08
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
SHIM_LOCK = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
OWNER = uuid.UUID("0f0e0d0c-0b0a-0908-0706-050403020100")  # a test SignatureOwner

WINDOWS_TRAILER_PCR = 0xFFFFFFFF
PCRKey = tuple[int, int]


@dataclass(frozen=True)
class LogEvent:
    pcr: int
    type: int
    data: bytes
    digests: dict[int, bytes]  # as written in the log, in order
    extended: bool  # whether the firmware extended the PCR with it


@dataclass(frozen=True)
class BuiltLog:
    data: bytes
    sha1_format: bool
    banks: tuple[int, ...]  # banks the events carry digests for
    declared: tuple[int, ...]  # banks the Spec ID header declares (crypto-agile)
    startup_locality: int | None  # PCR 0's starting value (3, or 4 for an H-CRTM)
    events: tuple[LogEvent, ...]
    # bank -> PCR -> digests extended into it, in order (what swtpm must be given)
    extends: dict[int, dict[int, list[bytes]]]
    # bank -> PCR -> value after the extends, for every PCR the log touches
    pcrs: dict[int, dict[int, bytes]]

    def quoted(
        self, banks: Iterable[int] = (SHA256,), pcrs: Iterable[int] | None = None
    ) -> dict[PCRKey, bytes]:
        """Quoted values as the server keys them: (bank, PCR) -> value."""
        wanted = range(8) if pcrs is None else pcrs
        out: dict[PCRKey, bytes] = {}
        for bank in banks:
            for pcr in wanted:
                out[bank, pcr] = self.pcr_value(bank, pcr)
        return out

    def pcr_value(self, bank: int, pcr: int) -> bytes:
        value = self.pcrs.get(bank, {}).get(pcr)
        if value is not None:
            return value
        return reset_value(pcr, SIZES[bank], self.startup_locality)


def reset_value(pcr: int, size: int, locality: int | None) -> bytes:
    if pcr == 0 and locality:
        return bytes(size - 1) + bytes([locality])
    return bytes(size)


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def variable_data(vendor: uuid.UUID, name: str, value: bytes) -> bytes:
    """UEFI_VARIABLE_DATA."""
    encoded = utf16(name)
    return vendor.bytes_le + struct.pack("<QQ", len(name), len(value)) + encoded + value


def signature_list(
    signature_type: uuid.UUID, entries: Sequence[bytes], owner: uuid.UUID = OWNER
) -> bytes:
    """One EFI_SIGNATURE_LIST whose entries all have the size of the first."""
    if not entries:
        return b""
    size = 16 + len(entries[0])
    assert all(len(entry) == len(entries[0]) for entry in entries)
    body = b"".join(owner.bytes_le + entry for entry in entries)
    return signature_type.bytes_le + struct.pack("<III", 28 + len(body), 0, size) + body


def signature_database(certificates: Sequence[bytes] = (), sha256: Sequence[bytes] = ()) -> bytes:
    """EFI_SIGNATURE_LISTs as stored in PK, KEK, db, dbx: one list per certificate."""
    lists = [signature_list(EFI_CERT_X509, [der]) for der in certificates]
    lists.append(signature_list(EFI_CERT_SHA256, list(sha256)))
    return b"".join(lists)


@functools.cache
def make_certificate(common_name: str) -> bytes:
    """A self-signed P-256 certificate (DER), one per name for the test session."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


@dataclass
class EventLogBuilder:
    """Writes one log. `banks` are the digests every event carries; `declared` the header's."""

    banks: tuple[int, ...] = (SHA1, SHA256)
    sha1_format: bool = False
    declared: tuple[int, ...] | None = None
    vendor_info: bytes = b""
    vendor_info_size: int | None = None  # what the header claims; None = len(vendor_info)
    events: list[LogEvent] = field(default_factory=list)
    startup_locality: int | None = None
    trailing: bytes = b""

    def __post_init__(self) -> None:
        if self.sha1_format:
            self.banks = (SHA1,)
            self.declared = (SHA1,)
        if self.declared is None:
            self.declared = self.banks

    # --- generic -------------------------------------------------------------------

    def add(
        self,
        pcr: int,
        event_type: int,
        data: bytes,
        *,
        measured: bytes | None = None,
        digests: Mapping[int, bytes] | None = None,
        omit: Iterable[int] = (),
    ) -> EventLogBuilder:
        """An extended event: each bank's digest is the hash of `measured` (default: data)."""
        content = data if measured is None else measured
        written = {
            bank: HASHES[bank](content).digest() if bank in HASHES else bytes(SIZES[bank])
            for bank in self.banks
            if bank not in omit
        }
        written.update(digests or {})
        extended = pcr != WINDOWS_TRAILER_PCR
        self.events.append(LogEvent(pcr, event_type, data, written, extended))
        return self

    def no_action(self, data: bytes, pcr: int = 0) -> EventLogBuilder:
        zero = {bank: bytes(SIZES[bank]) for bank in self.banks}
        self.events.append(LogEvent(pcr, EV_NO_ACTION, data, zero, extended=False))
        return self

    # --- the events firmware writes ------------------------------------------------------

    def startup_locality_event(self, locality: int) -> EventLogBuilder:
        self.startup_locality = locality
        return self.no_action(b"StartupLocality\x00" + bytes([locality]))

    def hcrtm(self, image: bytes = b"h-crtm image") -> EventLogBuilder:
        """The H-CRTM measurement; PCR 0 starts at 4 (with or without StartupLocality)."""
        if self.startup_locality is None:
            self.startup_locality = 4
        return self.add(0, EV_EFI_HCRTM_EVENT, b"HCRTM", measured=image)

    def crtm_version(self, text: str) -> EventLogBuilder:
        return self.add(0, EV_S_CRTM_VERSION, utf16(text) + b"\x00\x00")

    def firmware_blob(self, pcr: int, image: bytes, base: int = 0xFF000000) -> EventLogBuilder:
        return self.add(
            pcr, EV_EFI_PLATFORM_FIRMWARE_BLOB, struct.pack("<QQ", base, len(image)), measured=image
        )

    def variable(
        self, pcr: int, event_type: int, vendor: uuid.UUID, name: str, value: bytes
    ) -> EventLogBuilder:
        return self.add(pcr, event_type, variable_data(vendor, name, value))

    def secure_boot(self, enabled: bool | None) -> EventLogBuilder:
        """The SecureBoot variable; None measures it with no data (state unknown)."""
        value = b"" if enabled is None else bytes([int(enabled)])
        return self.variable(
            7, EV_EFI_VARIABLE_DRIVER_CONFIG, EFI_GLOBAL_VARIABLE, "SecureBoot", value
        )

    def database(self, name: str, value: bytes) -> EventLogBuilder:
        vendor = EFI_GLOBAL_VARIABLE if name in ("PK", "KEK") else EFI_IMAGE_SECURITY_DATABASE
        return self.variable(7, EV_EFI_VARIABLE_DRIVER_CONFIG, vendor, name, value)

    def separators(self, pcrs: Iterable[int] = range(8)) -> EventLogBuilder:
        for pcr in pcrs:
            self.add(pcr, EV_SEPARATOR, b"\x00\x00\x00\x00")
        return self

    def authority(
        self, certificate: bytes | None, *, owner: bool = True, name: str = "db", raw: bytes = b""
    ) -> EventLogBuilder:
        """EV_EFI_VARIABLE_AUTHORITY: EFI_SIGNATURE_DATA, a bare certificate, or raw data."""
        value = raw if certificate is None else (OWNER.bytes_le if owner else b"") + certificate
        vendor = EFI_IMAGE_SECURITY_DATABASE if name == "db" else SHIM_LOCK
        return self.variable(7, EV_EFI_VARIABLE_AUTHORITY, vendor, name, value)

    def boot_application(
        self, image: bytes, path: bytes = b"\\EFI\\BOOT\\BOOTX64.EFI"
    ) -> EventLogBuilder:
        """EV_EFI_BOOT_SERVICES_APPLICATION: the digest is of the image, not the event."""
        data = struct.pack("<QQQQ", 0x1000, len(image), 0, len(path)) + path
        return self.add(4, EV_EFI_BOOT_SERVICES_APPLICATION, data, measured=image)

    def efi_action(self, pcr: int, text: str) -> EventLogBuilder:
        return self.add(pcr, EV_EFI_ACTION, text.encode("ascii"))

    def exit_boot_services(self) -> EventLogBuilder:
        self.efi_action(5, "Exit Boot Services Invocation")
        return self.efi_action(5, "Exit Boot Services Returned with Success")

    def windows_trailer(self, event_type: int = EV_NO_ACTION) -> EventLogBuilder:
        """The event Windows ends its logs with, on PCR 0xFFFFFFFF (never extended)."""
        return self.add(WINDOWS_TRAILER_PCR, event_type, b"WBCL")

    def padding(self, size: int) -> EventLogBuilder:
        self.trailing += bytes(size)
        return self

    # --- output --------------------------------------------------------------------

    def _spec_id(self) -> bytes:
        assert self.declared is not None
        vendor_size = (
            len(self.vendor_info) if self.vendor_info_size is None else self.vendor_info_size
        )
        body = (
            b"Spec ID Event03\x00"
            + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(self.declared))
            + b"".join(struct.pack("<HH", bank, SIZES[bank]) for bank in self.declared)
            + bytes([vendor_size])
            + self.vendor_info
        )
        return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(body)) + body

    def _event(self, event: LogEvent) -> bytes:
        if self.sha1_format:
            digest = event.digests.get(SHA1, bytes(20))
            head = struct.pack("<II", event.pcr, event.type) + digest
        else:
            digests = b"".join(
                struct.pack("<H", bank) + value for bank, value in event.digests.items()
            )
            head = struct.pack("<III", event.pcr, event.type, len(event.digests)) + digests
        return head + struct.pack("<I", len(event.data)) + event.data

    def encode(self, events: Sequence[LogEvent] | None = None) -> bytes:
        chosen = self.events if events is None else events
        header = b"" if self.sha1_format else self._spec_id()
        return header + b"".join(self._event(event) for event in chosen) + self.trailing

    def build(self) -> BuiltLog:
        extends: dict[int, dict[int, list[bytes]]] = {bank: {} for bank in self.banks}
        for event in self.events:
            if not event.extended or event.type == EV_NO_ACTION:
                continue
            for bank, digest in event.digests.items():
                extends.setdefault(bank, {}).setdefault(event.pcr, []).append(digest)
        pcrs: dict[int, dict[int, bytes]] = {}
        for bank, per_pcr in extends.items():
            if bank not in HASHES:
                continue
            values = pcrs.setdefault(bank, {})
            if self.startup_locality:
                values[0] = reset_value(0, SIZES[bank], self.startup_locality)
            for pcr, digests in per_pcr.items():
                value = values.get(pcr, bytes(SIZES[bank]))
                for digest in digests:
                    value = HASHES[bank](value + digest).digest()
                values[pcr] = value
        assert self.declared is not None
        return BuiltLog(
            data=self.encode(),
            sha1_format=self.sha1_format,
            banks=self.banks,
            declared=self.declared,
            startup_locality=self.startup_locality,
            events=tuple(self.events),
            extends=extends,
            pcrs=pcrs,
        )


# --- whole logs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """The Secure Boot keys and boot chain of a test machine."""

    pk: bytes = field(default_factory=lambda: make_certificate("test PK"))
    kek: bytes = field(default_factory=lambda: make_certificate("test KEK"))
    db: tuple[bytes, ...] = field(
        default_factory=lambda: (make_certificate("test db 1"), make_certificate("test db 2"))
    )
    shim_vendor: bytes = field(default_factory=lambda: make_certificate("test shim vendor"))
    db_hashes: tuple[bytes, ...] = (hashlib.sha256(b"allowed image").digest(),)
    dbx_hashes: tuple[bytes, ...] = tuple(
        hashlib.sha256(b"revoked %d" % n).digest() for n in range(3)
    )
    firmware_version: str = "Test Firmware 1.2.3"
    boot_applications: tuple[bytes, ...] = (b"shim image", b"grub image", b"kernel image")

    @property
    def db_variable(self) -> bytes:
        return signature_database(self.db, self.db_hashes)

    @property
    def dbx_variable(self) -> bytes:
        return signature_database((), self.dbx_hashes)


def expected_selectors(machine: Machine) -> list[str]:
    """The selectors `uefi_log(machine=machine)` must yield, in order, from the machine alone."""
    return [
        "secureboot:enabled",
        f"secureboot:pk:{fingerprint(machine.pk)}",
        f"secureboot:kek:{fingerprint(machine.kek)}",
        *(f"secureboot:db:{fingerprint(der)}" for der in machine.db),
        f"secureboot:authority:{fingerprint(machine.db[0])}",
        f"secureboot:authority:{fingerprint(machine.shim_vendor)}",
        f"secureboot:dbx:{hashlib.sha256(machine.dbx_variable).hexdigest()}",
        f"secureboot:dbx_count:{len(machine.dbx_hashes)}",
        f"firmware:version:{machine.firmware_version}",
        *(f"boot:app:{hashlib.sha256(image).hexdigest()}" for image in machine.boot_applications),
    ]


def uefi_log(
    *,
    banks: tuple[int, ...] = (SHA1, SHA256),
    declared: tuple[int, ...] | None = None,
    sha1_format: bool = False,
    secure_boot: bool | None = True,
    measure_secure_boot: bool = True,
    locality: int | None = None,
    hcrtm: bool = False,
    exit_boot_services: bool = True,
    windows_trailer: bool = False,
    padding: int = 0,
    vendor_info: bytes = b"",
    vendor_info_size: int | None = None,
    machine: Machine | None = None,
    extra_dbx_hashes: int = 0,
    gpt_entries: int = 4,
) -> EventLogBuilder:
    """The log a UEFI machine booting shim -> GRUB -> Linux writes (PCRs 0-7)."""
    machine = machine or Machine()
    log = EventLogBuilder(
        banks=banks,
        sha1_format=sha1_format,
        declared=declared,
        vendor_info=vendor_info,
        vendor_info_size=vendor_info_size,
    )
    if locality is not None:
        log.startup_locality_event(locality)
    if hcrtm:
        log.hcrtm()
    log.crtm_version(machine.firmware_version)
    log.firmware_blob(0, b"firmware volume 1")
    log.firmware_blob(0, b"firmware volume 2", base=0xFF800000)
    log.add(1, EV_EFI_HANDOFF_TABLES, struct.pack("<Q", 1) + bytes(24), measured=b"SMBIOS")
    log.variable(1, EV_EFI_VARIABLE_BOOT, EFI_GLOBAL_VARIABLE, "BootOrder", b"\x01\x00\x00\x00")
    log.variable(
        1,
        EV_EFI_VARIABLE_BOOT,
        EFI_GLOBAL_VARIABLE,
        "Boot0001",
        b"\x01\x00\x00\x00" + utf16("Linux\x00"),
    )
    if measure_secure_boot:
        log.secure_boot(secure_boot)
    log.database("PK", signature_database([machine.pk]))
    log.database("KEK", signature_database([machine.kek]))
    log.database("db", machine.db_variable)
    dbx = machine.dbx_hashes + tuple(
        hashlib.sha256(b"more revoked %d" % n).digest() for n in range(extra_dbx_hashes)
    )
    log.database("dbx", signature_database((), dbx))
    log.add(
        2,
        EV_EFI_PLATFORM_FIRMWARE_BLOB,
        struct.pack("<QQ", 0xC0000, 0x10000),
        measured=b"option rom",
    )
    log.efi_action(4, "Calling EFI Application from Boot Option")
    log.separators(range(8))
    gpt = b"EFI PART" + bytes(84) + struct.pack("<Q", gpt_entries) + bytes(128 * gpt_entries)
    log.add(5, EV_EFI_GPT_EVENT, gpt)
    shim, grub, *rest = machine.boot_applications
    log.authority(machine.db[0])  # db certificate verified shim (EFI_SIGNATURE_DATA)
    log.boot_application(shim)
    log.authority(machine.shim_vendor, owner=False, name="Shim")  # shim vendor cert, bare DER
    log.authority(None, name="SbatLevel", raw=b"sbat,1,2024010000\n")  # not a certificate
    log.boot_application(grub)
    for image in rest:
        log.authority(machine.shim_vendor, owner=False, name="Shim")  # repeated authority
        log.boot_application(image)
    if exit_boot_services:
        log.exit_boot_services()
    if windows_trailer:
        log.windows_trailer()
    if padding:
        log.padding(padding)
    return log


def sample_logs() -> dict[str, BuiltLog]:
    """One log per format, bank set and quirk; the differential and replay tests use all."""
    logs = {
        "crypto-agile sha1+sha256": uefi_log(),
        "crypto-agile sha256 only": uefi_log(banks=(SHA256,)),
        "crypto-agile four banks": uefi_log(banks=(SHA1, SHA256, SHA384, SHA512)),
        "sha1 format": uefi_log(sha1_format=True),
        "sha1 format, locality 3": uefi_log(sha1_format=True, locality=3),
        "secure boot off": uefi_log(secure_boot=False),
        "secure boot without data": uefi_log(secure_boot=None),
        "startup locality 3": uefi_log(locality=3),
        "h-crtm, locality 4": uefi_log(locality=4, hcrtm=True),
        "h-crtm without locality event": uefi_log(hcrtm=True),
        "no ExitBootServices": uefi_log(exit_boot_services=False),
        "bank declared, not logged": uefi_log(banks=(SHA256,), declared=(SHA1, SHA256)),
        "windows trailer": uefi_log(windows_trailer=True),
        "zero padding": uefi_log(padding=512),
        "spec id vendor data": uefi_log(vendor_info=b"vendor"),
        "spec id vendor data overrun": uefi_log(vendor_info=b"ab", vendor_info_size=9),
    }
    fewer = uefi_log()
    fewer.add(8, EV_EFI_ACTION, b"grub_cmd linux /vmlinuz", omit=(SHA1,))
    logs["event with fewer digests"] = fewer
    return {name: builder.build() for name, builder in logs.items()}


def bench_log(events: int = 100, size: int = 60 * 1024) -> BuiltLog:
    """A log shaped like a real one: ~`size` bytes, `events` events, SHA-1 + SHA-256.

    The bulk is where real logs have it: dbx (revoked hashes), a GPT event, db
    certificates; the count is made up with PCR 0/1/2 firmware and option-ROM events.
    """
    builder = uefi_log(extra_dbx_hashes=200, gpt_entries=128)
    fillers = events - len(builder.events)
    if fillers < 0:
        raise ValueError(f"a UEFI log has at least {len(builder.events)} events")
    base = len(builder.encode())
    per_event = max(0, (size - base) // max(fillers, 1) - 60)  # minus head and digests
    tail = builder.events[-5:]  # keep ExitBootServices last
    del builder.events[-5:]
    for n in range(fillers):
        builder.add(n % 3, EV_EFI_PLATFORM_FIRMWARE_BLOB, bytes([n % 251]) * per_event)
    builder.events.extend(tail)
    return builder.build()

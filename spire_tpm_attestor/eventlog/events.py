"""What a parsed TCG firmware event log is made of: event types, events and the log.

Names follow the TCG PC Client Platform Firmware Profile (PFP) specification.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple


class EventType(IntEnum):
    """TCG event types (PFP §10.4.1); a log may carry others, kept as plain ints."""

    EV_PREBOOT_CERT = 0x00000000
    EV_POST_CODE = 0x00000001
    EV_UNUSED = 0x00000002
    EV_NO_ACTION = 0x00000003
    EV_SEPARATOR = 0x00000004
    EV_ACTION = 0x00000005
    EV_EVENT_TAG = 0x00000006
    EV_S_CRTM_CONTENTS = 0x00000007
    EV_S_CRTM_VERSION = 0x00000008
    EV_CPU_MICROCODE = 0x00000009
    EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
    EV_TABLE_OF_DEVICES = 0x0000000B
    EV_COMPACT_HASH = 0x0000000C
    EV_IPL = 0x0000000D
    EV_IPL_PARTITION_DATA = 0x0000000E
    EV_NONHOST_CODE = 0x0000000F
    EV_NONHOST_CONFIG = 0x00000010
    EV_NONHOST_INFO = 0x00000011
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
    EV_EFI_EVENT_BASE = 0x80000000
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2


def event_type_name(event_type: int) -> str:
    """`EV_SEPARATOR`, or `0x12345678` for a type this module does not name."""
    try:
        return EventType(event_type).name
    except ValueError:
        return f"0x{event_type:08x}"


# Windows ends its logs with an event on this PCR index; it is never extended anywhere.
WINDOWS_TRAILER_PCR: Final = 0xFFFFFFFF
# PCRs a PC Client TPM implements (PFP §3.3.4); events on other indices are malformed.
PCR_COUNT: Final = 24


class LogFormat(IntEnum):
    SHA1 = 1  # TCG_PCR_EVENT only (TPM 1.2 style, also written by some UEFI/Windows)
    CRYPTO_AGILE = 2  # Spec ID Event03 header, then TCG_PCR_EVENT2


class Event(NamedTuple):
    """One log entry. `digests` and `data` are views into the log's bytes (no copies)."""

    number: int  # position in the log, 0 for the first event (the Spec ID header, if any)
    offset: int  # byte offset of the event in the log
    pcr: int
    type: int
    digests: Mapping[int, memoryview]  # TPM_ALG id -> digest, in the order logged
    data: memoryview

    @property
    def extended(self) -> bool:
        """Whether the firmware extended a PCR with this event (EV_NO_ACTION never)."""
        return self.type != EventType.EV_NO_ACTION and self.pcr != WINDOWS_TRAILER_PCR

    def describe(self) -> str:
        """`event 12 (EV_SEPARATOR on PCR 7) at offset 0x4a0`, for messages."""
        return (
            f"event {self.number} ({event_type_name(self.type)} on PCR {self.pcr}) "
            f"at offset 0x{self.offset:x}"
        )


@dataclass(frozen=True)
class SpecID:
    """The TCG_EfiSpecIDEvent header of a crypto-agile log (PFP §10.4.5.1)."""

    platform_class: int
    version: tuple[int, int, int]  # major, minor, errata
    uintn_size: int
    algorithms: Mapping[int, int]  # TPM_ALG id -> digest size, in header order
    vendor_info: memoryview


@dataclass(frozen=True)
class EventLog:
    """A parsed log: the events in order, and what the parser tolerated on the way.

    `events` excludes the Spec ID header event but includes EV_NO_ACTION events and
    the Windows trailer; `Event.extended` says which ones count.
    """

    format: LogFormat
    algorithms: Mapping[int, int]  # banks the log declares: TPM_ALG id -> digest size
    events: tuple[Event, ...]
    spec_id: SpecID | None
    # Locality of TPM2_Startup from the StartupLocality event (3), or 4 for an H-CRTM;
    # None when the log says nothing (PCR 0 then starts at zero).
    startup_locality: int | None
    size: int  # bytes parsed, trailing padding included
    quirks: tuple[str, ...]  # irregularities tolerated, one sentence each

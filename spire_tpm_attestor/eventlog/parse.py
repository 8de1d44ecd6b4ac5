"""Parse a TCG firmware event log, crypto-agile or SHA-1 format, without copying it.

Formats (TCG PC Client Platform Firmware Profile, PFP §10.2-10.4), all little-endian:

* SHA-1 format: a sequence of TCG_PCR_EVENT
  (pcrIndex u32, eventType u32, SHA-1 digest[20], eventSize u32, event[eventSize]).
* Crypto-agile: one TCG_PCR_EVENT whose event is the TCG_EfiSpecIDEvent ("Spec ID
  Event03"), declaring the banks and their digest sizes, then TCG_PCR_EVENT2
  (pcrIndex u32, eventType u32, TPML_DIGEST_VALUES {count u32, {alg u16, digest}[count]},
  eventSize u32, event[eventSize]).

What real firmware writes and this parser tolerates, each noted in `EventLog.quirks`:
events carrying fewer digests than the header declares; Spec ID vendor data longer than
the event (the event size frames the event); a Windows trailer event on PCR 0xFFFFFFFF;
trailing zero padding; an H-CRTM event without a StartupLocality event.

Everything else that does not fit is `MalformedEventLog` naming the byte offset and the
reason. Work and memory are bounded by `Limits` for any input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.eventlog.events import (
    PCR_COUNT,
    WINDOWS_TRAILER_PCR,
    Event,
    EventLog,
    EventType,
    LogFormat,
    SpecID,
)
from spire_tpm_attestor.tpm.constants import TPM_ALG, alg_name

SPEC_ID_SIGNATURE: Final = b"Spec ID Event03\x00"
STARTUP_LOCALITY_SIGNATURE: Final = b"StartupLocality\x00"
H_CRTM_LOCALITY: Final = 4

# Digest sizes of the algorithms whose sizes are fixed by their definition; a header
# declaring another size for one of them is malformed.
KNOWN_DIGEST_SIZES: Final[dict[int, int]] = {
    TPM_ALG.SHA1: 20,
    TPM_ALG.SHA256: 32,
    TPM_ALG.SHA384: 48,
    TPM_ALG.SHA512: 64,
    TPM_ALG.SM3_256: 32,
}
MAX_ALGORITHMS: Final = 16  # banks a Spec ID header may declare
MAX_DIGEST_SIZE: Final = 64
MAX_QUIRKS: Final = 16

_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_EVENT1_HEAD = struct.Struct("<II20xI")  # pcrIndex, eventType, (SHA-1 digest), eventSize
_EVENT1_HEAD_SIZE: Final = _EVENT1_HEAD.size  # 32
_EVENT2_HEAD = struct.Struct("<III")  # pcrIndex, eventType, digest count
_SPEC_ID_FIXED = struct.Struct("<16sIBBBBI")  # signature .. numberOfAlgorithms
_ALG_SIZE = struct.Struct("<HH")


class MalformedEventLog(MalformedInput):
    """The log does not parse; `offset` is the byte where the problem was found."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"event log is malformed at byte offset {offset} (0x{offset:x}): {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Bounds on what `parse` accepts, so that any input costs bounded time and memory."""

    max_size: int = 1 << 20  # bytes; the agent's default max_event_log_size
    max_events: int = 20_000  # a firmware log holds tens to hundreds; GRUB adds thousands
    max_event_size: int = 256 << 10  # the largest real events are dbx and db (tens of KiB)


DEFAULT_LIMITS: Final = Limits()


class _Quirks:
    """Tolerated irregularities: the first message of each kind, with a repeat count."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}
        self._count: dict[str, int] = {}

    def note(self, kind: str, message: str) -> None:
        if kind not in self._first:
            if len(self._first) >= MAX_QUIRKS:
                return
            self._first[kind] = message
            self._count[kind] = 0
        self._count[kind] += 1

    def result(self) -> tuple[str, ...]:
        return tuple(
            message if self._count[kind] == 1 else f"{message} (and {self._count[kind] - 1} more)"
            for kind, message in self._first.items()
        )


def parse(log: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> EventLog:
    """Parse a firmware event log; raises `MalformedEventLog` if it is not one."""
    data = bytes(log)  # one copy at most (none for bytes); every event is a view into it
    size = len(data)
    if size == 0:
        raise MalformedEventLog(0, "the log is empty")
    if size > limits.max_size:
        raise MalformedEventLog(0, f"the log is {size} bytes, over the limit of {limits.max_size}")
    content_end = _content_end(data)
    if content_end == 0:
        raise MalformedEventLog(0, f"the log is {size} zero bytes")
    view = memoryview(data)
    if size < _EVENT1_HEAD_SIZE:
        raise MalformedEventLog(0, f"{size} bytes are too short for a first event")
    _, event_type, event_size = _EVENT1_HEAD.unpack_from(data, 0)
    if (
        event_type == EventType.EV_NO_ACTION
        and event_size >= len(SPEC_ID_SIGNATURE)
        and data[_EVENT1_HEAD_SIZE : _EVENT1_HEAD_SIZE + len(SPEC_ID_SIGNATURE)]
        == SPEC_ID_SIGNATURE
    ):
        return _parse_crypto_agile(data, view, content_end, limits)
    return _parse_sha1(data, view, content_end, limits)


def _content_end(data: bytes) -> int:
    """The offset after the last non-zero byte: what follows an event boundary there is
    zero padding. One pass from the end, in C, without a copy."""
    end = len(data)
    block = 4096
    while end >= block and data.count(0, end - block, end) == block:
        end -= block
    while end > 0 and data[end - 1] == 0:
        end -= 1
    return end


def _check_pcr(offset: int, pcr: int, quirks: _Quirks, number: int) -> None:
    if pcr == WINDOWS_TRAILER_PCR:
        quirks.note(
            "trailer",
            f"event {number} is on PCR 0xFFFFFFFF (a Windows trailer); it extends nothing",
        )
    elif pcr >= PCR_COUNT:
        raise MalformedEventLog(offset, f"event {number} is on PCR {pcr}, which does not exist")


def _event_data(
    data: bytes, view: memoryview, offset: int, size_at: int, limits: Limits, number: int
) -> tuple[memoryview, int]:
    """The event data whose u32 size is at `size_at`, and the offset after it."""
    if size_at + 4 > len(data):
        raise MalformedEventLog(offset, f"event {number} is truncated before its event size")
    (event_size,) = _U32.unpack_from(data, size_at)
    start = size_at + 4
    if event_size > limits.max_event_size:
        raise MalformedEventLog(
            offset,
            f"event {number} declares {event_size} bytes of event data, over the limit of "
            f"{limits.max_event_size}",
        )
    end = start + event_size
    if end > len(data):
        raise MalformedEventLog(
            offset,
            f"event {number} declares {event_size} bytes of event data, "
            f"only {len(data) - start} remain",
        )
    return view[start:end], end


def _padding(data: bytes, offset: int, content_end: int, quirks: _Quirks) -> bool:
    """Whether the rest of the log from the event boundary `offset` is zero padding."""
    if offset >= content_end:
        quirks.note("padding", f"{len(data) - offset} bytes of zero padding end the log")
        return True
    return False


def _startup_locality(event: Event, current: int | None, quirks: _Quirks) -> int | None:
    """The locality a StartupLocality EV_NO_ACTION event declares, else `current`."""
    if (
        event.type != EventType.EV_NO_ACTION
        or event.pcr != 0
        or len(event.data) < len(STARTUP_LOCALITY_SIGNATURE) + 1
        or event.data[: len(STARTUP_LOCALITY_SIGNATURE)].tobytes() != STARTUP_LOCALITY_SIGNATURE
    ):
        return current
    locality = event.data[len(STARTUP_LOCALITY_SIGNATURE)]
    if current is not None:
        if locality != current:
            raise MalformedEventLog(
                event.offset,
                f"a second StartupLocality event says locality {locality}, the first {current}",
            )
        quirks.note("locality-twice", f"{event.describe()} repeats the StartupLocality event")
    return locality


def _finish_locality(events: list[Event], locality: int | None, quirks: _Quirks) -> int | None:
    """An H-CRTM (TPM2_HashStart at locality 4) resets PCR 0 to 4 before extending it."""
    if locality is None and any(
        e.type == EventType.EV_EFI_HCRTM_EVENT and e.pcr == 0 for e in events
    ):
        quirks.note(
            "hcrtm",
            "an H-CRTM event without a StartupLocality event: PCR 0 starts at 4",
        )
        return H_CRTM_LOCALITY
    return locality


def _parse_sha1(data: bytes, view: memoryview, content_end: int, limits: Limits) -> EventLog:
    quirks = _Quirks()
    events: list[Event] = []
    locality: int | None = None
    offset = 0
    size = len(data)
    sha1 = int(TPM_ALG.SHA1)
    while offset < size:
        number = len(events)
        if number and _padding(data, offset, content_end, quirks):
            break
        if number >= limits.max_events:
            raise MalformedEventLog(offset, f"more than {limits.max_events} events")
        if offset + _EVENT1_HEAD_SIZE > size:
            raise MalformedEventLog(
                offset, f"event {number} is truncated: {size - offset} bytes remain"
            )
        pcr, event_type, _ = _EVENT1_HEAD.unpack_from(data, offset)
        if pcr >= PCR_COUNT:
            _check_pcr(offset, pcr, quirks, number)
        digest = view[offset + 8 : offset + 28]
        event_data, end = _event_data(data, view, offset, offset + 28, limits, number)
        event = Event(number, offset, pcr, event_type, {sha1: digest}, event_data)
        events.append(event)
        if event_type == EventType.EV_NO_ACTION:
            locality = _startup_locality(event, locality, quirks)
        offset = end
    return EventLog(
        format=LogFormat.SHA1,
        algorithms={sha1: 20},
        events=tuple(events),
        spec_id=None,
        startup_locality=_finish_locality(events, locality, quirks),
        size=size,
        quirks=quirks.result(),
    )


def _parse_spec_id(data: bytes, view: memoryview, quirks: _Quirks) -> tuple[SpecID, int]:
    """The Spec ID header event at offset 0, and the offset of the first TCG_PCR_EVENT2."""
    pcr, _, event_size = _EVENT1_HEAD.unpack_from(data, 0)
    start = _EVENT1_HEAD_SIZE
    end = start + event_size
    if end > len(data):
        raise MalformedEventLog(
            0, f"the Spec ID event declares {event_size} bytes, only {len(data) - start} remain"
        )
    if pcr != 0:
        quirks.note("spec-id-pcr", f"the Spec ID event is on PCR {pcr}, not 0")
    if event_size < _SPEC_ID_FIXED.size:
        raise MalformedEventLog(start, f"the Spec ID event is only {event_size} bytes")
    _, platform_class, minor, major, errata, uintn_size, count = _SPEC_ID_FIXED.unpack_from(
        data, start
    )
    if not 0 < count <= MAX_ALGORITHMS:
        raise MalformedEventLog(
            start + 24, f"the Spec ID event declares {count} algorithms (1-{MAX_ALGORITHMS})"
        )
    at = start + _SPEC_ID_FIXED.size
    if at + count * _ALG_SIZE.size > end:
        raise MalformedEventLog(
            at, f"the Spec ID event declares {count} algorithms but is only {event_size} bytes"
        )
    algorithms: dict[int, int] = {}
    for _ in range(count):
        alg, digest_size = _ALG_SIZE.unpack_from(data, at)
        if alg in algorithms:
            raise MalformedEventLog(at, f"the Spec ID event declares {alg_name(alg)} twice")
        expected = KNOWN_DIGEST_SIZES.get(alg)
        if expected is not None and digest_size != expected:
            raise MalformedEventLog(
                at,
                f"the Spec ID event declares {digest_size}-byte {alg_name(alg)} digests, "
                f"not {expected}",
            )
        if not 0 < digest_size <= MAX_DIGEST_SIZE:
            raise MalformedEventLog(
                at, f"the Spec ID event declares {digest_size}-byte {alg_name(alg)} digests"
            )
        algorithms[alg] = digest_size
        at += _ALG_SIZE.size
    if at == end:
        quirks.note("vendor-missing", "the Spec ID event has no vendorInfoSize byte")
        vendor = view[at:at]
    else:
        vendor_size = data[at]
        vendor_end = at + 1 + vendor_size
        if vendor_end > end:
            quirks.note(
                "vendor-overrun",
                f"the Spec ID vendor data declares {vendor_size} bytes, the event holds "
                f"{end - at - 1}; the event size wins",
            )
            vendor_end = end
        elif vendor_end < end:
            quirks.note(
                "spec-id-trailing", f"{end - vendor_end} bytes follow the Spec ID vendor data"
            )
        vendor = view[at + 1 : vendor_end]
    spec_id = SpecID(
        platform_class=platform_class,
        version=(major, minor, errata),
        uintn_size=uintn_size,
        algorithms=algorithms,
        vendor_info=vendor,
    )
    return spec_id, end


def _parse_crypto_agile(
    data: bytes, view: memoryview, content_end: int, limits: Limits
) -> EventLog:
    quirks = _Quirks()
    spec_id, offset = _parse_spec_id(data, view, quirks)
    algorithms = spec_id.algorithms
    declared = len(algorithms)
    events: list[Event] = []
    append = events.append
    locality: int | None = None
    size = len(data)
    # The per-event loop is the hot path: locals only, the checks inline.
    unpack_head = _EVENT2_HEAD.unpack_from
    unpack_u16 = _U16.unpack_from
    unpack_u32 = _U32.unpack_from
    head_size = _EVENT2_HEAD.size
    max_events = limits.max_events
    max_event_size = limits.max_event_size
    no_action = EventType.EV_NO_ACTION
    number = 0  # the Spec ID header is event 0
    while offset < size:
        if _padding(data, offset, content_end, quirks):
            break
        number += 1
        if number > max_events:
            raise MalformedEventLog(offset, f"more than {max_events} events")
        if offset + head_size > size:
            raise MalformedEventLog(
                offset, f"event {number} is truncated: {size - offset} bytes remain"
            )
        pcr, event_type, count = unpack_head(data, offset)
        if pcr >= PCR_COUNT:
            _check_pcr(offset, pcr, quirks, number)
        if count > declared:
            raise MalformedEventLog(
                offset,
                f"event {number} carries {count} digests, the Spec ID event declares "
                f"{declared} algorithms",
            )
        at = offset + head_size
        digests: dict[int, memoryview] = {}
        for _ in range(count):
            if at + 2 > size:
                raise MalformedEventLog(offset, f"event {number} is truncated in its digests")
            (alg,) = unpack_u16(data, at)
            digest_size = algorithms.get(alg)
            if digest_size is None:
                raise MalformedEventLog(
                    at,
                    f"event {number} carries a {alg_name(alg)} digest, an algorithm the Spec ID "
                    "event does not declare",
                )
            if alg in digests:
                raise MalformedEventLog(at, f"event {number} carries two {alg_name(alg)} digests")
            at += 2
            end = at + digest_size
            if end > size:
                raise MalformedEventLog(offset, f"event {number} is truncated in its digests")
            digests[alg] = view[at:end]
            at = end
        if count < declared and event_type != no_action:
            quirks.note(
                "fewer-digests",
                f"event {number} carries {count} of the {declared} digests the Spec ID event "
                "declares",
            )
        if at + 4 > size:
            raise MalformedEventLog(offset, f"event {number} is truncated before its event size")
        (event_size,) = unpack_u32(data, at)
        at += 4
        end = at + event_size
        if event_size > max_event_size or end > size:
            _event_data(data, view, offset, at - 4, limits, number)  # raises, saying why
        event = Event(number, offset, pcr, event_type, digests, view[at:end])
        append(event)
        if event_type == no_action:
            locality = _startup_locality(event, locality, quirks)
        offset = end
    return EventLog(
        format=LogFormat.CRYPTO_AGILE,
        algorithms=algorithms,
        events=tuple(events),
        spec_id=spec_id,
        startup_locality=_finish_locality(events, locality, quirks),
        size=size,
        quirks=quirks.result(),
    )

"""Parsing TCG firmware event logs: both formats, the quirks of real firmware, bad input."""

from __future__ import annotations

import random
import struct

import pytest

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.eventlog import (
    EventType,
    Limits,
    LogFormat,
    MalformedEventLog,
    derive_facts,
    parse,
    replay,
    restrict,
    selectors,
)
from tests.eventlog_builder import (
    EV_EFI_ACTION,
    EV_EVENT_TAG,
    EV_POST_CODE,
    SHA1,
    SHA256,
    SHA384,
    SHA512,
    SM3_256,
    EventLogBuilder,
    uefi_log,
)


def test_crypto_agile_log_with_two_banks() -> None:
    built = uefi_log().build()
    log = parse(built.data)
    assert log.format is LogFormat.CRYPTO_AGILE
    assert dict(log.algorithms) == {SHA1: 20, SHA256: 32}
    assert log.spec_id is not None and log.spec_id.version == (2, 0, 0)
    assert len(log.events) == len(built.events)
    assert log.quirks == ()
    assert log.startup_locality is None
    for event, written in zip(log.events, built.events, strict=True):
        assert (event.pcr, event.type, bytes(event.data)) == (
            written.pcr,
            written.type,
            written.data,
        )
        assert {alg: bytes(d) for alg, d in event.digests.items()} == written.digests
    # Offsets point at each event: the first follows the Spec ID header event.
    assert log.events[0].number == 1
    assert struct.unpack_from("<I", built.data, log.events[1].offset)[0] == log.events[1].pcr


def test_events_are_views_into_the_log() -> None:
    built = uefi_log().build()
    log = parse(built.data)
    assert all(isinstance(event.data, memoryview) for event in log.events)
    assert all(event.data.obj is log.events[0].data.obj for event in log.events)


def test_four_banks() -> None:
    built = uefi_log(banks=(SHA1, SHA256, SHA384, SHA512)).build()
    log = parse(built.data)
    assert dict(log.algorithms) == {SHA1: 20, SHA256: 32, SHA384: 48, SHA512: 64}
    assert replay(log).values == built.pcrs


def test_sha1_format_log() -> None:
    built = uefi_log(sha1_format=True).build()
    log = parse(built.data)
    assert log.format is LogFormat.SHA1
    assert log.spec_id is None
    assert dict(log.algorithms) == {SHA1: 20}
    assert log.events[0].number == 0 and log.events[0].type == EventType.EV_S_CRTM_VERSION
    assert replay(log).values == built.pcrs


def test_sha1_format_log_with_startup_locality() -> None:
    built = uefi_log(sha1_format=True, locality=3).build()
    log = parse(built.data)
    assert log.startup_locality == 3
    assert replay(log).values == built.pcrs


def test_no_action_events_are_kept_but_not_extended() -> None:
    log = parse(uefi_log(locality=3).build().data)
    first = log.events[0]
    assert first.type == EventType.EV_NO_ACTION and not first.extended
    assert first not in restrict(log, dict.fromkeys(range(24), log.algorithms))


@pytest.mark.parametrize("locality", [0, 3, 4])
def test_startup_locality(locality: int) -> None:
    built = uefi_log(locality=locality).build()
    log = parse(built.data)
    assert log.startup_locality == locality
    values = replay(log).values
    assert values == built.pcrs


def test_hcrtm_with_startup_locality_4() -> None:
    built = uefi_log(locality=4, hcrtm=True).build()
    log = parse(built.data)
    assert log.startup_locality == 4
    assert log.quirks == ()
    assert replay(log).values == built.pcrs


def test_hcrtm_without_startup_locality_starts_pcr0_at_4() -> None:
    built = uefi_log(hcrtm=True).build()
    log = parse(built.data)
    assert log.startup_locality == 4
    assert any("H-CRTM" in quirk for quirk in log.quirks)
    assert replay(log).values == built.pcrs


def test_two_contradicting_startup_locality_events() -> None:
    log = EventLogBuilder()
    log.startup_locality_event(3).startup_locality_event(0)
    with pytest.raises(MalformedEventLog, match="second StartupLocality"):
        parse(log.build().data)


def test_events_with_fewer_digests_than_declared() -> None:
    builder = uefi_log()
    builder.add(8, EV_EFI_ACTION, b"grub command", omit=(SHA1,))
    built = builder.build()
    log = parse(built.data)
    assert list(log.events[-1].digests) == [SHA256]
    assert any("carries 1 of the 2 digests" in quirk for quirk in log.quirks)
    result = replay(log)
    assert result.value(SHA1, 8) is None  # the log cannot say
    assert result.value(SHA256, 8) == built.pcrs[SHA256][8]


def test_bank_declared_but_not_logged() -> None:
    built = uefi_log(banks=(SHA256,), declared=(SHA1, SHA256)).build()
    log = parse(built.data)
    assert dict(log.algorithms) == {SHA1: 20, SHA256: 32}
    result = replay(log)
    assert result.values[SHA256] == built.pcrs[SHA256]
    assert result.value(SHA1, 7) is None and result.value(SHA256, 7) is not None


def test_bank_the_log_does_not_declare_has_no_values() -> None:
    log = parse(uefi_log().build().data)
    assert replay(log).value(SHA384, 0) is None


def test_unknown_declared_algorithm_is_carried_but_not_replayed() -> None:
    built = uefi_log(banks=(SHA256, SM3_256)).build()
    log = parse(built.data)
    assert dict(log.algorithms) == {SHA256: 32, SM3_256: 32}
    result = replay(log)
    assert result.value(SM3_256, 0) is None
    assert result.values[SHA256] == built.pcrs[SHA256]


@pytest.mark.parametrize("event_type", [EventType.EV_NO_ACTION, EV_EVENT_TAG])
def test_windows_trailer_is_ignored(event_type: int) -> None:
    builder = uefi_log()
    builder.windows_trailer(event_type)
    built = builder.build()
    log = parse(built.data)
    assert log.events[-1].pcr == 0xFFFFFFFF and not log.events[-1].extended
    assert any("0xFFFFFFFF" in quirk for quirk in log.quirks)
    assert replay(log).values == built.pcrs


@pytest.mark.parametrize("sha1_format", [False, True])
def test_trailing_zero_padding(sha1_format: bool) -> None:
    built = uefi_log(sha1_format=sha1_format, padding=4096).build()
    log = parse(built.data)
    assert len(log.events) == len(built.events)
    assert log.size == len(built.data)
    assert any("4096 bytes of zero padding" in quirk for quirk in log.quirks)
    assert replay(log).values == built.pcrs


def test_spec_id_vendor_data() -> None:
    log = parse(uefi_log(vendor_info=b"vendor!").build().data)
    assert log.spec_id is not None and bytes(log.spec_id.vendor_info) == b"vendor!"
    assert log.quirks == ()


def test_spec_id_vendor_data_overrunning_the_event_is_tolerated() -> None:
    built = uefi_log(vendor_info=b"ab", vendor_info_size=9).build()
    log = parse(built.data)
    assert log.spec_id is not None and bytes(log.spec_id.vendor_info) == b"ab"
    assert any("vendor data declares 9 bytes" in quirk for quirk in log.quirks)
    assert replay(log).values == built.pcrs


def test_spec_id_algorithms_overrunning_the_event_are_an_error() -> None:
    data = bytearray(uefi_log().build().data)
    struct.pack_into("<I", data, 32 + 24, 9)  # numberOfAlgorithms
    with pytest.raises(MalformedEventLog, match="declares 9 algorithms but is only") as raised:
        parse(bytes(data))
    assert raised.value.offset == 32 + 28


def test_quirks_are_bounded_and_counted() -> None:
    builder = uefi_log()
    for _ in range(50):
        builder.add(8, EV_POST_CODE, b"x", omit=(SHA1,))
    quirks = parse(builder.build().data).quirks
    assert any("(and 49 more)" in quirk for quirk in quirks)


# --- malformed input ------------------------------------------------------------------


def _agile_header() -> bytes:
    return EventLogBuilder().encode([])


@pytest.mark.parametrize(
    ("data", "offset", "words"),
    [
        (b"", 0, "empty"),
        (bytes(100), 0, "zero bytes"),
        (b"\x01" * 10, 0, "too short"),
        (b"garbage!" * 100, 0, "does not exist"),
        (_agile_header() + b"\x01\x00\x00", None, "truncated"),
        (_agile_header() + struct.pack("<III", 30, 1, 0), None, "PCR 30"),
        (_agile_header() + struct.pack("<III", 0, 1, 3), None, "carries 3 digests"),
        (
            _agile_header() + struct.pack("<IIIH", 0, 1, 1, SHA384) + bytes(60),
            None,
            "does not declare",
        ),
        (
            _agile_header()
            + struct.pack("<IIIH", 0, 1, 2, SHA256)
            + bytes(32)
            + struct.pack("<H", SHA256)
            + bytes(40),
            None,
            "two SHA256 digests",
        ),
        (
            _agile_header() + struct.pack("<IIIH", 0, 1, 1, SHA256) + bytes(10),
            None,
            "truncated in its digests",
        ),
        (_agile_header() + struct.pack("<IIII", 0, 1, 0, 1000) + b"x", None, "only 1 remain"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed(data: bytes, offset: int | None, words: str) -> None:
    with pytest.raises(MalformedEventLog, match=words) as raised:
        parse(data)
    error = raised.value
    assert isinstance(error, MalformedInput)  # the malformed-input branch of the tree
    expected = len(_agile_header()) if offset is None else offset
    assert error.offset >= expected - 2  # digests errors name the digest's own offset
    assert f"offset {error.offset}" in str(error)


def test_offset_names_the_bad_event() -> None:
    built = uefi_log().build()
    log = parse(built.data)
    bad = log.events[5]
    data = bytearray(built.data)
    struct.pack_into("<I", data, bad.offset, 99)  # its PCR index
    with pytest.raises(MalformedEventLog) as raised:
        parse(bytes(data))
    assert raised.value.offset == bad.offset
    assert "event 6 is on PCR 99" in raised.value.reason


def test_spec_id_with_known_algorithm_of_wrong_size() -> None:
    data = bytearray(uefi_log().build().data)
    struct.pack_into("<HH", data, 32 + 28, SHA256, 20)
    with pytest.raises(MalformedEventLog, match="20-byte SHA256 digests, not 32"):
        parse(bytes(data))


def test_limits() -> None:
    data = uefi_log().build().data
    with pytest.raises(MalformedEventLog, match="over the limit"):
        parse(data, Limits(max_size=len(data) - 1))
    with pytest.raises(MalformedEventLog, match="more than 5 events"):
        parse(data, Limits(max_events=5))
    with pytest.raises(MalformedEventLog, match="bytes of event data, over the limit of 100"):
        parse(data, Limits(max_event_size=100))
    with pytest.raises(MalformedEventLog, match="more than 5 events"):
        parse(uefi_log(sha1_format=True).build().data, Limits(max_events=5))


def test_oversized_log_is_refused_by_its_size() -> None:
    data = b"\x01" * ((1 << 20) + 1)
    with pytest.raises(MalformedEventLog, match="over the limit of 1048576"):
        parse(data)


def test_huge_event_count_is_refused_at_the_limit() -> None:
    """1 MiB of minimal (16-byte, no digest) events: refused at the event limit (the time
    this takes is measured by the event-log bench, not asserted here)."""
    header = _agile_header()
    event = struct.pack("<IIII", 1, EV_POST_CODE, 0, 0)
    data = header + event * (((1 << 20) - len(header)) // len(event))
    with pytest.raises(MalformedEventLog, match="more than 20000 events"):
        parse(data)


def test_the_largest_accepted_log_parses_replays_and_yields_facts() -> None:
    header = _agile_header()
    event = struct.pack("<IIII", 1, EV_POST_CODE, 0, 30) + bytes(30)
    data = header + event * 20_000
    assert len(data) < 1 << 20
    log = parse(data)
    replay(log)
    derive_facts(restrict(log, dict.fromkeys(range(24), log.algorithms)))
    assert len(log.events) == 20_000


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        position = rng.randrange(len(buffer)) if buffer else 0
        if choice < 0.4 and buffer:
            buffer[position] = rng.randrange(256)
        elif choice < 0.6 and len(buffer) >= 4:
            position = rng.randrange(len(buffer) - 3)
            value = rng.choice([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)])
            struct.pack_into("<I", buffer, position, value)
        elif choice < 0.8:
            del buffer[position:]
        elif choice < 0.9:
            buffer[position:position] = rng.randbytes(rng.randint(1, 64))
        else:
            end = min(len(buffer), position + rng.randint(1, 64))
            del buffer[position:end]
    return bytes(buffer)


@pytest.mark.parametrize("sha1_format", [False, True])
def test_random_mutations_parse_or_fail_cleanly(sha1_format: bool) -> None:
    """Seeded mutations: every input parses or raises MalformedEventLog, never anything else.

    Whatever parses also replays, yields facts and selectors without an exception.
    """
    rng = random.Random(20261211 + sha1_format)
    seeds = [
        uefi_log(sha1_format=sha1_format).build().data,
        uefi_log(sha1_format=sha1_format, locality=3, windows_trailer=True).build().data,
    ]
    outcomes = {"parsed": 0, "malformed": 0}
    for _ in range(2000):
        data = _mutate(rng, rng.choice(seeds))
        try:
            log = parse(data)
        except MalformedEventLog as exc:
            assert 0 <= exc.offset <= len(data)
            outcomes["malformed"] += 1
            continue
        outcomes["parsed"] += 1
        replay(log)
        selectors(derive_facts(restrict(log, dict.fromkeys(range(24), log.algorithms))))
    assert outcomes["parsed"] > 100 and outcomes["malformed"] > 100, outcomes

"""Replaying event logs against quoted PCR values: only what the quote proves is used."""

from __future__ import annotations

import dataclasses

import pytest

from spire_tpm_attestor.errors import NotProven
from spire_tpm_attestor.eventlog import (
    ReplayMismatch,
    compare,
    derive_facts,
    parse,
    replay,
    selectors,
    verify,
)
from tests.eventlog_builder import (
    EV_POST_CODE,
    SHA1,
    SHA256,
    SHA384,
    BuiltLog,
    EventLogBuilder,
    LogEvent,
    sample_logs,
    uefi_log,
)

SAMPLES = sample_logs()


@pytest.mark.parametrize("name", SAMPLES)
def test_replay_matches_the_builder(name: str) -> None:
    built = SAMPLES[name]
    log = parse(built.data)
    replayed = {bank: values for bank, values in replay(log).values.items() if values}
    assert replayed == built.pcrs
    verified = verify(log, built.quoted(built.banks))
    assert verified.pcrs == dict.fromkeys(range(8), frozenset(built.banks))
    assert verified.unverified == ()
    assert [event.number for event in verified.events] == [
        event.number for event in log.events if event.extended and event.pcr < 8
    ]


def _rebuild(built: BuiltLog, events: list[LogEvent]) -> bytes:
    writer = EventLogBuilder(banks=built.banks, sha1_format=built.sha1_format)
    return writer.encode(events)


def _first_pcr_differing(before: BuiltLog, events: list[LogEvent]) -> int:
    """Recompute with the builder and return the lowest PCR whose value changed."""
    writer = EventLogBuilder(banks=before.banks, sha1_format=before.sha1_format)
    writer.events = events
    writer.startup_locality = before.startup_locality
    after = writer.build()
    changed = [
        pcr for pcr in range(8) if after.pcr_value(SHA256, pcr) != before.pcr_value(SHA256, pcr)
    ]
    assert changed, "the edit changed no PCR"
    return changed[0]


def _edits(built: BuiltLog) -> dict[str, list[LogEvent]]:
    events = list(built.events)
    db = next(i for i, e in enumerate(events) if b"d\x00b\x00" in e.data and e.pcr == 7)
    app = next(i for i, e in enumerate(events) if e.pcr == 4 and e.type == 0x80000003)
    altered = dataclasses.replace(
        events[db], digests={bank: bytes(len(d)) for bank, d in events[db].digests.items()}
    )
    reordered = list(events)
    reordered[app], reordered[app + 2] = reordered[app + 2], reordered[app]
    extra = LogEvent(
        1,
        EV_POST_CODE,
        b"x",
        {bank: b"\x01" * len(d) for bank, d in events[0].digests.items()},
        True,
    )
    return {
        "altered": [*events[:db], altered, *events[db + 1 :]],
        "removed": [*events[:app], *events[app + 1 :]],
        "reordered": reordered,
        "added": [*events[:3], extra, *events[3:]],
    }


@pytest.mark.parametrize("edit", ["altered", "removed", "reordered", "added"])
def test_edited_log_fails_naming_the_first_differing_pcr(edit: str) -> None:
    built = uefi_log().build()
    events = _edits(built)[edit]
    expected_pcr = _first_pcr_differing(built, events)
    log = parse(_rebuild(built, events))
    with pytest.raises(ReplayMismatch) as raised:
        verify(log, built.quoted((SHA256,)))
    mismatch = raised.value
    assert isinstance(mismatch, NotProven)
    assert (mismatch.bank, mismatch.pcr) == (SHA256, expected_pcr)
    assert mismatch.quoted == built.pcr_value(SHA256, expected_pcr)
    assert f"PCR sha256:{expected_pcr}" in str(mismatch)


def test_removing_the_only_event_of_a_pcr_is_a_mismatch() -> None:
    """A quoted PCR the log no longer touches is compared with its reset value."""
    built = uefi_log().build()
    events = [e for e in built.events if e.pcr != 2]
    log = parse(_rebuild(built, events))
    with pytest.raises(ReplayMismatch) as raised:
        verify(log, built.quoted((SHA256,)))
    assert raised.value.pcr == 2 and raised.value.replayed == bytes(32)


def test_altered_data_with_original_digests_replays_but_yields_no_fact() -> None:
    """Changing event data keeps the PCRs; facts then refuse the event (data != digest)."""
    built = uefi_log(secure_boot=False).build()
    events = list(built.events)
    index = next(i for i, e in enumerate(events) if b"S\x00e\x00c\x00u\x00r\x00e\x00" in e.data)
    forged = events[index].data[:-1] + b"\x01"  # SecureBoot = 1, digests of 0 kept
    events[index] = dataclasses.replace(events[index], data=forged)
    log = parse(_rebuild(built, events))
    verified = verify(log, built.quoted((SHA256,)))
    facts = derive_facts(verified.events)
    assert facts.secure_boot is None
    assert any("does not match its digests" in problem for problem in facts.problems)
    assert "secureboot:enabled" not in selectors(facts)


def test_first_mismatch_is_the_lowest_pcr() -> None:
    built = uefi_log().build()
    quoted = built.quoted((SHA1, SHA256))
    quoted[SHA256, 7] = b"\x07" * 32
    quoted[SHA1, 4] = b"\x04" * 20
    comparison = compare(replay(parse(built.data)), quoted)
    assert comparison.mismatch is not None
    assert (comparison.mismatch.bank, comparison.mismatch.pcr) == (SHA1, 4)
    assert set(comparison.matched) == set(range(8)) - {4, 7}
    assert comparison.matched[5] == {SHA1, SHA256}


def test_unquoted_pcr_yields_no_events_facts_or_selectors() -> None:
    built = uefi_log().build()
    log = parse(built.data)
    verified = verify(log, built.quoted((SHA256,), pcrs=[0, 1, 2, 3, 4, 5]))
    assert set(verified.pcrs) == set(range(6))
    assert all(event.pcr in range(6) for event in verified.events)
    facts = derive_facts(verified.events)
    assert facts.secure_boot is None and facts.db is None and facts.authorities == ()
    assert not any(value.startswith("secureboot:") for value in selectors(facts))
    # PCR 0 and 4 were quoted: the firmware version and boot applications remain.
    assert facts.firmware_version and facts.boot_applications


def test_nothing_quoted_yields_nothing() -> None:
    built = uefi_log().build()
    verified = verify(parse(built.data), {})
    assert verified.events == () and selectors(derive_facts(verified.events)) == []


def test_quoted_bank_the_log_lacks_is_unverified_not_matched() -> None:
    built = uefi_log(banks=(SHA1, SHA256)).build()
    log = parse(built.data)
    quoted = {(SHA384, 7): b"\x00" * 48}
    verified = verify(log, quoted)
    assert verified.pcrs == {} and verified.events == ()
    assert verified.unverified == ((SHA384, 7),)
    # With the SHA-256 bank quoted as well, PCR 7 is proven by that bank.
    quoted[SHA256, 7] = built.pcr_value(SHA256, 7)
    verified = verify(log, quoted)
    assert verified.pcrs == {7: {SHA256}}


def test_event_without_the_quoted_banks_digest_leaves_the_pcr_unverified() -> None:
    builder = uefi_log()
    builder.add(7, EV_POST_CODE, b"sneaky", omit=(SHA256,))
    built = builder.build()
    log = parse(built.data)
    verified = verify(log, {(SHA256, 7): built.pcr_value(SHA256, 7)})
    assert verified.pcrs == {} and verified.unverified == ((SHA256, 7),)


def test_drtm_pcrs_without_events_cannot_be_replayed() -> None:
    built = uefi_log().build()
    result = replay(parse(built.data))
    assert result.value(SHA256, 17) is None
    assert result.value(SHA256, 10) == bytes(32)
    assert result.value(SHA256, 0) == built.pcrs[SHA256][0]


def test_digests_of_unquoted_banks_are_cut_from_verified_events() -> None:
    """A bank the quote did not cover could say anything: forged SHA-256 boot
    application digests in a log proven through SHA-1 only must not become facts."""
    built = uefi_log().build()
    events = [
        dataclasses.replace(e, digests={**e.digests, SHA256: b"\x66" * 32})
        if e.type == 0x80000003
        else e
        for e in built.events
    ]
    log = parse(_rebuild(built, events))
    verified = verify(log, built.quoted((SHA1,)))
    assert verified.pcrs[4] == {SHA1}
    assert all(list(event.digests) == [SHA1] for event in verified.events)
    facts = derive_facts(verified.events)
    assert facts.boot_applications == ()
    assert not any(value.startswith("boot:app:") for value in selectors(facts))
    # Data-bound facts still come through the proven SHA-1 digests.
    assert facts.secure_boot is True and facts.firmware_version

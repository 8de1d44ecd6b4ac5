"""Replay a parsed event log per bank and hold it against the quoted PCR values.

Only what a quote proves may be used: `verify` returns the events of the PCRs whose
quoted values the log replays to, and nothing of any other PCR.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from spire_tpm_attestor.errors import NotProven
from spire_tpm_attestor.eventlog.events import PCR_COUNT, Event, EventLog, EventType
from spire_tpm_attestor.tpm.constants import TPM_ALG, pcr_label

PCRKey = tuple[int, int]  # (bank: TPM_ALG id, PCR index), as the server keys quoted PCRs
PCRValues = dict[int, dict[int, bytes]]  # bank -> PCR index -> value

# hashlib constructors of the banks this module can replay.
HASH_FUNCTIONS: Final[dict[int, Callable[[bytes | memoryview], hashlib._Hash]]] = {
    TPM_ALG.SHA1: hashlib.sha1,
    TPM_ALG.SHA256: hashlib.sha256,
    TPM_ALG.SHA384: hashlib.sha384,
    TPM_ALG.SHA512: hashlib.sha512,
}
# PCRs 17-22 (DRTM) reset to all ones at TPM2_Startup and to zero by a dynamic launch,
# whose measurements are not in the firmware log: a value for them can only come from
# events the log holds.
_DRTM_PCRS: Final = frozenset(range(17, 23))


class ReplayMismatch(NotProven):
    """A quoted PCR differs from what the log replays to."""

    def __init__(self, bank: int, pcr: int, replayed: bytes, quoted: bytes) -> None:
        super().__init__(
            f"event log does not match PCR {pcr_label(bank, pcr)}: the log replays to "
            f"{replayed.hex()}, the quote has {quoted.hex()}"
        )
        self.bank = bank
        self.pcr = pcr
        self.replayed = replayed
        self.quoted = quoted


@dataclass(frozen=True)
class Replay:
    """What a log extends each PCR of each bank it can replay to."""

    values: Mapping[int, Mapping[int, bytes]]  # bank -> PCR -> value, PCRs the log extends
    sizes: Mapping[int, int]  # bank -> digest size, for the banks replayed
    # bank -> PCRs with an event that carries no digest for the bank: no value there.
    incomplete: Mapping[int, frozenset[int]]
    startup_locality: int | None

    def value(self, bank: int, pcr: int) -> bytes | None:
        """The value the log says `pcr` holds in `bank`; None when it cannot say."""
        size = self.sizes.get(bank)
        if size is None or pcr in self.incomplete.get(bank, ()):
            return None
        value = self.values[bank].get(pcr)
        if value is not None:
            return value
        if not 0 <= pcr < PCR_COUNT or pcr in _DRTM_PCRS:
            return None
        return _reset_value(pcr, size, self.startup_locality)


def _reset_value(pcr: int, size: int, locality: int | None) -> bytes:
    """PCR 0 starts at the startup locality (PFP §3.3.4.2), the static PCRs at zero."""
    if pcr == 0 and locality:
        return bytes(size - 1) + bytes((locality,))
    return bytes(size)


def replay(log: EventLog, banks: Iterable[int] | None = None) -> Replay:
    """Extend every bank the log declares (and this module can hash) with its events.

    `banks` limits the work to those banks (the quoted ones); None replays all.
    """
    extended = [event for event in log.events if event.extended]
    values: dict[int, dict[int, bytes]] = {}
    sizes: dict[int, int] = {}
    incomplete: dict[int, frozenset[int]] = {}
    wanted = None if banks is None else frozenset(banks)
    for bank, size in log.algorithms.items():
        if wanted is not None and bank not in wanted:
            continue
        hash_function = HASH_FUNCTIONS.get(bank)
        if hash_function is None:
            continue  # e.g. SM3: no value, so quoted SM3 PCRs stay unverified
        pcrs: dict[int, bytes] = {}
        if log.startup_locality:
            pcrs[0] = _reset_value(0, size, log.startup_locality)
        missing: set[int] = set()
        zero = bytes(size)
        for event in extended:
            digest = event.digests.get(bank)
            if digest is None:
                missing.add(event.pcr)
                continue
            pcrs[event.pcr] = hash_function(pcrs.get(event.pcr, zero) + digest).digest()
        for pcr in missing:
            pcrs.pop(pcr, None)
        values[bank] = pcrs
        sizes[bank] = size
        incomplete[bank] = frozenset(missing)
    return Replay(values, sizes, incomplete, log.startup_locality)


@dataclass(frozen=True)
class Comparison:
    """Quoted PCR values held against a replay."""

    # PCR -> the quoted banks that match, for PCRs where at least one matches and none
    # differs.
    matched: Mapping[int, frozenset[int]]
    mismatch: ReplayMismatch | None  # the first quoted PCR (lowest index) that differs
    unverified: tuple[PCRKey, ...]  # quoted PCRs the log cannot replay in that bank


def compare(result: Replay, quoted: Mapping[PCRKey, bytes]) -> Comparison:
    """Which quoted PCRs the log explains, and the first one it contradicts."""
    matched: dict[int, set[int]] = {}
    differing: set[int] = set()
    mismatch: ReplayMismatch | None = None
    unverified: list[PCRKey] = []
    for bank, pcr in sorted(quoted, key=lambda key: (key[1], key[0])):
        value = quoted[bank, pcr]
        expected = result.value(bank, pcr)
        if expected is None:
            unverified.append((bank, pcr))
        elif expected == value:
            matched.setdefault(pcr, set()).add(bank)
        else:
            differing.add(pcr)
            if mismatch is None:
                mismatch = ReplayMismatch(bank, pcr, expected, value)
    proven = {pcr: frozenset(banks) for pcr, banks in matched.items() if pcr not in differing}
    return Comparison(proven, mismatch, tuple(unverified))


def restrict(log: EventLog, proven: Mapping[int, Iterable[int]]) -> tuple[Event, ...]:
    """The extended events of the PCRs in `proven`, each with only the digests of the
    banks proven for its PCR, in log order. EV_NO_ACTION events are never proven.

    Cutting the digests matters: a digest of a bank the quote did not cover (say SHA-1
    when SHA-256 was quoted) could say anything, and must not become a fact.
    """
    banks = {pcr: frozenset(proven_banks) for pcr, proven_banks in proven.items()}
    no_action = EventType.EV_NO_ACTION
    events: list[Event] = []
    for event in log.events:
        wanted = banks.get(event.pcr)
        if wanted is None or event.type == no_action:
            continue
        digests = event.digests
        if digests.keys() <= wanted:
            events.append(event)
        else:
            kept = {alg: digest for alg, digest in digests.items() if alg in wanted}
            events.append(
                Event(event.number, event.offset, event.pcr, event.type, kept, event.data)
            )
    return tuple(events)


@dataclass(frozen=True)
class VerifiedLog:
    """A log whose events for `pcrs` the quote proves; nothing else of it is usable."""

    log: EventLog
    pcrs: Mapping[int, frozenset[int]]  # quoted PCRs the log replays to -> matching banks
    events: tuple[Event, ...]  # their extended events, digests of matching banks only
    unverified: tuple[PCRKey, ...]  # quoted PCRs the log cannot replay (bank not logged)


def verify(log: EventLog, quoted: Mapping[PCRKey, bytes]) -> VerifiedLog:
    """Replay `log` against the quoted values; raises `ReplayMismatch` on any difference."""
    comparison = compare(replay(log, {bank for bank, _ in quoted}), quoted)
    if comparison.mismatch is not None:
        raise comparison.mismatch
    return VerifiedLog(
        log=log,
        pcrs=comparison.matched,
        events=restrict(log, comparison.matched),
        unverified=comparison.unverified,
    )

"""The TCG firmware event log: parse, replay against a quote, derive boot facts.

Pure Python on the standard library and `cryptography`; no I/O. The flow:

    log = parse(data)                      # MalformedEventLog: offset and reason
    verified = verify(log, quoted_values)  # ReplayMismatch names the first PCR
    facts = derive_facts(verified.events)  # only events of quoted, matching PCRs
    values = selectors(facts)
"""

from spire_tpm_attestor.eventlog.events import Event, EventLog, EventType, LogFormat, SpecID
from spire_tpm_attestor.eventlog.facts import Authority, BootFacts, SignatureDatabase, derive_facts
from spire_tpm_attestor.eventlog.parse import DEFAULT_LIMITS, Limits, MalformedEventLog, parse
from spire_tpm_attestor.eventlog.replay import (
    Comparison,
    Replay,
    ReplayMismatch,
    VerifiedLog,
    compare,
    replay,
    restrict,
    verify,
)
from spire_tpm_attestor.eventlog.selectors import selectors

__all__ = [
    "DEFAULT_LIMITS",
    "Authority",
    "BootFacts",
    "Comparison",
    "Event",
    "EventLog",
    "EventType",
    "Limits",
    "LogFormat",
    "MalformedEventLog",
    "Replay",
    "ReplayMismatch",
    "SignatureDatabase",
    "SpecID",
    "VerifiedLog",
    "compare",
    "derive_facts",
    "parse",
    "replay",
    "restrict",
    "selectors",
    "verify",
]

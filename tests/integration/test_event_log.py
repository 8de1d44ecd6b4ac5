"""Measured boot end to end: the real plugin processes, swtpm, and generated event logs.

Each test writes a log with the builder, extends swtpm's PCRs with the same digests (as
firmware would have), and points the agent's event_log_path at the file. The logs have
no StartupLocality or H-CRTM event: swtpm starts PCR 0 at zero (locality 0), which a
log claiming locality 3 or 4 would not replay to.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

import grpc
import pytest

from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.host import AttestationFailed, PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.eventlog_builder import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    BuiltLog,
    EventLogBuilder,
    LogEvent,
    Machine,
    expected_selectors,
    fingerprint,
    uefi_log,
    utf16,
)
from tests.integration.platform_setup import intercept, measure_boot
from tests.integration.plugins import expect_rejection, hcl

pytestmark = pytest.mark.swtpm

MACHINE = Machine()
BOOT_APPLICATIONS = [hashlib.sha256(image).hexdigest() for image in MACHINE.boot_applications]


def expected() -> set[str]:
    return set(expected_selectors(MACHINE))


def boot_selectors(selectors: list[str]) -> set[str]:
    kinds = ("secureboot:", "firmware:", "boot:")
    return {selector for selector in selectors if selector.startswith(kinds)}


class Node:
    """The agent on a swtpm that booted with `log` measured, and the server."""

    def __init__(
        self, agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, path: Path
    ) -> None:
        self.agent, self.server, self.swtpm, self.ek_ca = agent, server, swtpm, ek_ca
        self.directory = path
        self.log_path = path / "binary_bios_measurements"

    def boot(self, log: BuiltLog, written: bytes | None = None) -> None:
        """Measure `log` into swtpm; the file the agent reads holds `written` (default:
        the log itself)."""
        measure_boot(self.swtpm.tcti, log)
        self.log_path.write_bytes(log.data if written is None else written)

    def configure(self, agent_options: dict[str, object] | None = None, **server: object) -> None:
        options = {"tcti": self.swtpm.tcti, "event_log_path": str(self.log_path)}
        self.agent.configure(hcl(**{**options, **(agent_options or {})}))
        extra = server.pop("extra", "")
        text = hcl(ek_ca_path=str(self.ek_ca.bundle_path), **server)
        self.server.configure(f"{text}\n{extra}")

    def policy(self, **rules: object) -> None:
        """The server with event_log_policy_path holding `rules`."""
        policy_path = self.directory / "event-log-policy.json"
        policy_path.write_text(json.dumps(rules))
        self.configure(event_log_policy_path=str(policy_path))

    def selectors(self) -> set[str]:
        return boot_selectors(relay_attestation(self.agent, self.server).selectors)

    def refused(self, code: grpc.StatusCode, words: str) -> dict[str, str]:
        return expect_rejection(self.agent, self.server, code, words)


@pytest.fixture
def node(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> Node:
    return Node(agent, server, swtpm, ek_ca, tmp_path)


def test_the_measured_boot_becomes_selectors(node: Node) -> None:
    node.boot(uefi_log(machine=MACHINE).build())
    node.configure(event_log=True)
    result = relay_attestation(node.agent, node.server)
    assert boot_selectors(result.selectors) == expected()
    # The PCRs the log was replayed against are quoted, and reported, as usual.
    assert sum(selector.startswith("pcr:sha256:") for selector in result.selectors) == 8


def test_the_challenge_asks_for_the_log_and_firmware_pcrs(node: Node) -> None:
    node.boot(uefi_log(machine=MACHINE).build())
    node.configure(event_log=True)
    exchange = intercept(node.agent, node.server)
    assert exchange.challenge is not None and exchange.response is not None
    assert exchange.challenge.want_event_log
    assert [(bank.hash_alg, list(bank.indices)) for bank in exchange.challenge.pcr_selection] == [
        (0x000B, list(range(8)))
    ]
    assert exchange.response.event_log == node.log_path.read_bytes()


def test_without_event_log_the_agent_sends_none(node: Node) -> None:
    node.boot(uefi_log(machine=MACHINE).build())
    node.configure()
    exchange = intercept(node.agent, node.server)
    assert exchange.challenge is not None and not exchange.challenge.want_event_log
    assert exchange.response is not None and not exchange.response.event_log
    assert exchange.attributes is not None
    assert not boot_selectors(list(exchange.attributes.selector_values))


def test_an_agent_that_sends_no_log_is_admitted_without_a_policy(node: Node) -> None:
    """An agent that predates event logs ignores want_event_log."""
    node.boot(uefi_log(machine=MACHINE).build())
    node.configure(event_log=True)

    def old_agent(response: attestation_pb2.ChallengeResponse) -> None:
        response.ClearField("event_log")

    exchange = intercept(node.agent, node.server, response=old_agent)
    assert exchange.error is None and exchange.attributes is not None
    assert not boot_selectors(list(exchange.attributes.selector_values))


# -- only what the quote proves --------------------------------------------------------


def test_events_of_unquoted_pcrs_yield_no_selectors(node: Node) -> None:
    node.boot(uefi_log(machine=MACHINE).build())
    # Everything but PCRs 4 (boot applications) and 7 (Secure Boot).
    node.configure(extra="event_log { pcr_selection { sha256 = [0, 1, 2, 3, 5, 6] } }")
    assert node.selectors() == {f"firmware:version:{MACHINE.firmware_version}"}


def test_a_forged_pcr_7_is_unseen_when_pcr_7_is_not_quoted(node: Node) -> None:
    """Secure Boot claimed on in the log, measured off in the TPM: without PCR 7 in the
    quote the claim proves nothing and yields nothing."""
    measured = uefi_log(machine=MACHINE, secure_boot=False).build()
    claimed = uefi_log(machine=MACHINE, secure_boot=True).build()
    node.boot(measured, written=claimed.data)
    node.configure(extra="event_log { pcr_selection { sha256 = [0, 1, 2, 3, 4, 5, 6] } }")
    selectors = node.selectors()
    assert not any(selector.startswith("secureboot:") for selector in selectors)
    assert f"boot:app:{BOOT_APPLICATIONS[0]}" in selectors


def _variable(events: list[LogEvent], name: str) -> int:
    """The index of the event that measures the variable `name`."""
    head = struct.pack("<Q", len(name))
    return next(
        i
        for i, event in enumerate(events)
        if event.type == EV_EFI_VARIABLE_DRIVER_CONFIG
        and event.data[16:24] == head
        and event.data[32 : 32 + 2 * len(name)] == utf16(name)
    )


def _tampered(change: str) -> bytes:
    builder = uefi_log(machine=MACHINE)
    events = list(builder.events)
    pk = _variable(events, "PK")
    apps = [i for i, e in enumerate(events) if e.type == EV_EFI_BOOT_SERVICES_APPLICATION]
    if change == "altered":  # Secure Boot on, with digests to match: PCR 7 replays wrong
        forged = EventLogBuilder(banks=builder.banks).secure_boot(True).events[0]
        events[_variable(events, "SecureBoot")] = forged
    elif change == "removed":
        del events[apps[1]]
    elif change == "reordered":
        events[pk], events[pk + 1] = events[pk + 1], events[pk]  # PK <-> KEK
    elif change == "added":
        extra = EventLogBuilder(banks=builder.banks).boot_application(b"rootkit").events[0]
        events.insert(apps[-1] + 1, extra)
    return builder.encode(events)


@pytest.mark.parametrize(
    ("change", "pcr"),
    [("altered", 7), ("removed", 4), ("reordered", 7), ("added", 4)],
)
def test_a_tampered_log_is_refused_naming_the_pcr(node: Node, change: str, pcr: int) -> None:
    # The machine booted with Secure Boot off for "altered": the forged log claims on.
    booted = uefi_log(machine=MACHINE, secure_boot=change != "altered").build()
    node.boot(booted, written=_tampered(change))
    node.configure(event_log=True)
    audit = node.refused(
        grpc.StatusCode.PERMISSION_DENIED, f"event log does not match PCR sha256:{pcr}:"
    )
    assert audit["check"] == "event_log_replay"


# -- bad input: refused cleanly, and the plugin keeps serving ----------------------------


def test_a_garbage_log_is_malformed_and_the_server_keeps_serving(node: Node) -> None:
    good = uefi_log(machine=MACHINE).build()
    node.boot(good, written=b"\x00\x00\x00\x00\x01\x00\x00\x00" + bytes(range(256)) * 4)
    node.configure(event_log=True)
    audit = node.refused(grpc.StatusCode.INVALID_ARGUMENT, "event log is malformed at byte offset")
    assert audit["check"] == "event_log"
    node.log_path.write_bytes(good.data)
    assert node.selectors() == expected()


def test_a_log_over_the_wire_limit_is_malformed_and_the_server_keeps_serving(
    node: Node,
) -> None:
    node.boot(uefi_log(machine=MACHINE).build())
    node.configure(event_log=True)

    def oversized(response: attestation_pb2.ChallengeResponse) -> None:
        response.event_log = bytes(wire.MAX_EVENT_LOG + 1)

    exchange = intercept(node.agent, node.server, response=oversized)
    assert exchange.error is not None
    assert exchange.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event_log is too large" in (exchange.error.details() or "")
    assert node.selectors() == expected()


def test_a_log_over_max_event_log_size_is_sent_as_absent(node: Node) -> None:
    node.boot(uefi_log(machine=MACHINE).build())
    node.policy(require_event_log=True)
    node.agent.configure(
        hcl(tcti=node.swtpm.tcti, event_log_path=str(node.log_path), max_event_log_size=1000)
    )
    audit = node.refused(
        grpc.StatusCode.PERMISSION_DENIED,
        "event log policy rule require_event_log: the agent sent no event log: the event log "
        f"at {node.log_path} is larger than max_event_log_size (1000 bytes)",
    )
    assert audit["check"] == "event_log_policy"


# -- the policy ------------------------------------------------------------------------


def test_a_policy_the_boot_meets_admits(node: Node) -> None:
    node.boot(uefi_log(machine=MACHINE).build())
    node.policy(
        require_event_log=True,
        require_secure_boot=True,
        allowed_pk=[fingerprint(MACHINE.pk)],
        allowed_kek=[fingerprint(MACHINE.kek), "ab" * 32],
        allowed_db=[fingerprint(der) for der in MACHINE.db],
        required_dbx=[MACHINE.dbx_hashes[0].hex(), MACHINE.dbx_hashes[2].hex()],
        allowed_boot_applications=BOOT_APPLICATIONS,
    )
    assert node.selectors() == expected()


OTHER = "ab" * 32
REFUSALS = [
    ("require_event_log", {"require_event_log": True}, "the agent sent no event log: there is no"),
    ("require_secure_boot", {"require_secure_boot": True}, "Secure Boot is disabled"),
    ("allowed_pk", {"allowed_pk": [OTHER]}, "PK certificate"),
    ("allowed_kek", {"allowed_kek": [OTHER]}, "KEK certificate"),
    ("allowed_db", {"allowed_db": [fingerprint(MACHINE.db[0])]}, "db certificate"),
    ("required_dbx", {"required_dbx": [OTHER]}, f"dbx lacks the revocation {OTHER}"),
    (
        "allowed_boot_applications",
        {"allowed_boot_applications": BOOT_APPLICATIONS[:2]},
        f"boot application {BOOT_APPLICATIONS[2]} is not allowed",
    ),
]


@pytest.mark.parametrize(("rule", "rules", "words"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_policy_rule_refuses(
    node: Node, rule: str, rules: dict[str, object], words: str
) -> None:
    node.boot(uefi_log(machine=MACHINE, secure_boot=rule != "require_secure_boot").build())
    if rule == "require_event_log":
        node.log_path = node.directory / "absent"
    node.policy(**rules)
    audit = node.refused(grpc.StatusCode.PERMISSION_DENIED, f"event log policy rule {rule}: ")
    assert audit["check"] == "event_log_policy"
    assert words in audit["reason"]


def test_the_policy_file_is_reloaded_when_it_changes(node: Node) -> None:
    node.boot(uefi_log(machine=MACHINE).build())
    node.policy(allowed_pk=[fingerprint(MACHINE.pk)])
    assert node.selectors() == expected()
    # The fleet's PK is rotated: the operator allows only the new one.
    (node.directory / "event-log-policy.json").write_text(json.dumps({"allowed_pk": [OTHER]}))
    deadline = time.monotonic() + 10
    while True:
        try:
            relay_attestation(node.agent, node.server)
        except AttestationFailed as failure:
            assert "event log policy rule allowed_pk" in failure.details
            break
        assert time.monotonic() < deadline, "the policy file change did not apply"
        time.sleep(0.1)

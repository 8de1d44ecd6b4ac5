"""`spire-tpm-attestor eventlog inspect`: what a firmware event log says, and what the
server would make of it.

`inspect LOG` parses the log, replays it per bank and prints the PCR values, the Secure
Boot facts the log states and the selectors the server would emit. The server replays
the log against quoted PCRs (by default SHA-256 0-7); without `--pcrs` the log is taken
to match itself there, with `--pcrs PCRS.json` (`{"sha256": {"0": "<hex>", ...}}`, as
`check --write-pcrs` writes it on a node) it is held against every PCR given, and a
mismatch yields no selectors, as the server refuses such a log.

Exit codes: 0 parsed (and, with --pcrs, the replay matches), 1 the replay does not
match, 2 the log (or PCRS.json) cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spire_tpm_attestor import eventlog, wire
from spire_tpm_attestor.eventlog import EventLog, ReplayMismatch
from spire_tpm_attestor.files import read_bounded
from spire_tpm_attestor.tpm.constants import BANK_NAMES, TPM_ALG, alg_name

PCRKey = tuple[int, int]
# What the server replays the log against unless its event_log block says otherwise.
DEFAULT_PCRS = tuple((int(TPM_ALG.SHA256), index) for index in range(8))
MAX_PCRS_FILE = 64 * 1024


def read_pcrs_file(path: str) -> dict[PCRKey, bytes]:
    """PCRS.json: `{"<bank>": {"<index>": "<hex>"}}`, one value per PCR."""
    from server_plugin.pcr_policy import parse_pcr_policy  # the same bank/index/hex rules

    values = parse_pcr_policy(json.loads(read_bounded(path, MAX_PCRS_FILE)), Path(path).name)
    quoted: dict[PCRKey, bytes] = {}
    for key, allowed in values.allowed.items():
        if len(allowed) != 1:
            raise ValueError(f"{path}: PCR {alg_name(key[0])}:{key[1]} needs exactly one value")
        (quoted[key],) = allowed
    if not quoted:
        raise ValueError(f"{path}: holds no PCR value")
    return quoted


def replayed_values(log: EventLog) -> dict[str, dict[str, str]]:
    """`{bank: {"<index>": "<hex>"}}` for every PCR the log extends, as replayed."""
    replay = eventlog.replay(log)
    return {
        BANK_NAMES.get(bank, alg_name(bank)): {
            str(pcr): value.hex() for pcr, value in sorted(values.items())
        }
        for bank, values in replay.values.items()
    }


def inspect(data: bytes, quoted: dict[PCRKey, bytes] | None) -> dict[str, Any]:
    """The report of `inspect`; `replay_ok` only when PCR values were given."""
    log = eventlog.parse(data, wire.EVENT_LOG_LIMITS)
    report: dict[str, Any] = {"pcrs": replayed_values(log)}
    stated = eventlog.derive_facts(log.events)  # what the log says, proven or not
    report["secure_boot"] = {
        "enabled": stated.secure_boot,
        "authorities": [found.certificate for found in stated.authorities if found.certificate],
        "variables": list(stated.variables),
    }
    against = quoted
    if against is None:
        replay = eventlog.replay(log)
        against = {key: value for key in DEFAULT_PCRS if (value := replay.value(*key)) is not None}
    try:
        verified = eventlog.verify(log, against)
    except ReplayMismatch as mismatch:
        report["selectors"] = []
        report["replay_ok"] = False
        report["mismatch"] = str(mismatch)
    else:
        report["selectors"] = eventlog.selectors(eventlog.derive_facts(verified.events))
        if quoted is not None:
            report["replay_ok"] = True
    report["quirks"] = list(log.quirks)
    return report


def print_report(report: dict[str, Any]) -> None:
    print("pcrs (replayed):")
    for bank, values in report["pcrs"].items():
        for index, value in values.items():
            print(f"  {bank}:{index} {value}")
    secure_boot = report["secure_boot"]
    enabled = {True: "enabled", False: "disabled", None: "unknown"}[secure_boot["enabled"]]
    print(f"secure boot: {enabled}")
    print("authorities:")
    for fingerprint in secure_boot["authorities"]:
        print(f"  {fingerprint}")
    print(f"variables: {', '.join(secure_boot['variables'])}")
    print("selectors:")
    for selector in report["selectors"]:
        print(f"  {selector}")
    for quirk in report["quirks"]:
        print(f"note: {quirk}")
    if "replay_ok" in report:
        print("replay: " + ("matches the PCRs given" if report["replay_ok"] else "MISMATCH"))
    if "mismatch" in report:
        print(report["mismatch"])


def cmd_inspect(args: argparse.Namespace) -> int:
    quoted = read_pcrs_file(args.pcrs) if args.pcrs else None
    report = inspect(read_bounded(args.log, wire.MAX_EVENT_LOG), quoted)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if "mismatch" in report else 0


def add_eventlog_commands(commands: Any) -> None:
    group = commands.add_parser("eventlog", help="inspect a TCG firmware event log")
    actions = group.add_subparsers(dest="eventlog_command", required=True)
    inspect_cmd = actions.add_parser(
        "inspect",
        help="print a log's replayed PCRs, Secure Boot facts and the selectors it yields",
    )
    inspect_cmd.add_argument("log", help="the log (e.g. binary_bios_measurements)")
    inspect_cmd.add_argument(
        "--pcrs", help='PCR values to replay against: {"sha256": {"0": "<hex>", ...}}'
    )
    inspect_cmd.add_argument("--json", action="store_true", help="print JSON")
    inspect_cmd.set_defaults(run=cmd_inspect)

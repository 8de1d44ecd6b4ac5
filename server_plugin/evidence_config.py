"""Server options for the evidence beyond EK and AK: platform state (PCRs, the firmware
event log) and device identity (DevID).

`read_pcr_options`, `read_event_log_options` and `read_devid_options` take their options
from the plugin data;
`ServerConfig` holds what they return. Files (the PCR policy, the DevID CA bundle) are
`Reloading` values: once started (by the committed configuration) they follow their
files without a restart and keep the last good content when a change does not load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server_plugin.event_log_policy import (
    EventLogPolicy,
    EventLogPolicyError,
    load_event_log_policy_file,
)
from server_plugin.pcr_policy import (
    PCRKey,
    PCRPolicy,
    PCRPolicyError,
    load_pcr_policy_file,
    parse_pcr_policy,
    parse_pcr_selection,
)
from server_plugin.reload import Reloading
from spire_tpm_attestor.identity import AgentPathTemplate
from spire_tpm_attestor.runtime.config import ConfigReader
from spire_tpm_attestor.tpm.constants import TPM_ALG
from spire_tpm_attestor.x509 import Certificate

DEVID_TEMPLATE_FIELDS = ("DevIDSubjectCN", "DevIDSerialNumber", "DevIDFingerprint")
# The PCRs UEFI firmware measures into (PFP §3.3.4): what the log is replayed against.
DEFAULT_EVENT_LOG_PCRS: frozenset[PCRKey] = frozenset(
    (int(TPM_ALG.SHA256), index) for index in range(8)
)


class _PolicyFile:
    """Options holding a policy file, watched once the configuration is committed."""

    policy_file: Reloading[Any] | None

    def start(self) -> None:
        if self.policy_file is not None:
            self.policy_file.start()

    def close(self) -> None:
        if self.policy_file is not None:
            self.policy_file.close()


@dataclass(frozen=True)
class PCROptions(_PolicyFile):
    """The PCRs to quote and, optionally, the values they must have."""

    selection: frozenset[PCRKey] = frozenset()
    inline_policy: PCRPolicy | None = None
    policy_file: Reloading[PCRPolicy] | None = None

    def policy(self) -> PCRPolicy | None:
        """The policy in force now (the file's current content when one is configured)."""
        return self.policy_file.value if self.policy_file is not None else self.inline_policy


@dataclass(frozen=True)
class EventLogOptions(_PolicyFile):
    """Ask agents for the firmware event log, replay it against these PCRs, and
    (optionally) hold its facts to a policy file."""

    selection: frozenset[PCRKey] = DEFAULT_EVENT_LOG_PCRS
    policy_file: Reloading[EventLogPolicy] | None = None

    def policy(self) -> EventLogPolicy | None:
        return self.policy_file.value if self.policy_file is not None else None


@dataclass(frozen=True)
class DevIDOptions:
    """The DevID CA bundle, and whether every agent must prove a DevID."""

    bundle: Reloading[list[Certificate]] | None
    required: bool

    def start(self) -> None:
        if self.bundle is not None:
            self.bundle.start()

    def close(self) -> None:
        if self.bundle is not None:
            self.bundle.close()


def read_pcr_options(reader: ConfigReader) -> PCROptions:
    selection: frozenset[PCRKey] = frozenset()
    if reader.has("pcr_selection"):
        try:
            selection = parse_pcr_selection(reader.raw("pcr_selection"))
        except PCRPolicyError as exc:
            reader.problem(str(exc))
    inline: PCRPolicy | None = None
    if reader.has("pcr_policy"):
        try:
            inline = parse_pcr_policy(reader.raw("pcr_policy"))
        except PCRPolicyError as exc:
            reader.problem(str(exc))
    path = reader.string("pcr_policy_path")
    if path is None:
        return PCROptions(selection, inline)
    if reader.has("pcr_policy"):
        reader.problem("pcr_policy and pcr_policy_path are mutually exclusive")
        return PCROptions(selection, inline)
    try:
        policy_file = Reloading("pcr_policy_path", [path], lambda: load_pcr_policy_file(path))
    except (OSError, PCRPolicyError) as exc:
        reader.problem(f"pcr_policy_path: {exc}")
        return PCROptions(selection)
    return PCROptions(selection, policy_file=policy_file)


def read_event_log_options(reader: ConfigReader) -> EventLogOptions | None:
    """`event_log = true`, or `event_log { pcr_selection { ... } }`, and
    `event_log_policy_path` (which asks for the log too); None when the log is not asked
    for. The policy file is watched only from `start()`."""
    value = reader.raw("event_log")
    path = reader.string("event_log_policy_path")
    if value is False:
        if path is not None:
            reader.problem("event_log_policy_path needs event_log (it is false)")
        return None
    if value is None and path is None:
        return None
    selection = DEFAULT_EVENT_LOG_PCRS
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # pyhcl's form of a block
    if isinstance(value, dict):
        for key in sorted(set(value) - {"pcr_selection"}):
            reader.problem(f"{reader.key('event_log')}.{key}: unknown option")
        if "pcr_selection" in value:
            try:
                selection = parse_pcr_selection(
                    value["pcr_selection"], reader.key("event_log.pcr_selection")
                )
            except PCRPolicyError as exc:
                reader.problem(str(exc))
    elif value is not None and value is not True:
        reader.problem("event_log: expected true, false or a block { pcr_selection { ... } }")
    if path is None:
        return EventLogOptions(selection)
    try:
        policy_file = Reloading(
            "event_log_policy_path", [path], lambda: load_event_log_policy_file(path)
        )
    except (OSError, EventLogPolicyError) as exc:
        reader.problem(f"event_log_policy_path: {exc}")
        return EventLogOptions(selection)
    return EventLogOptions(selection, policy_file)


def read_devid_options(
    reader: ConfigReader,
    template: AgentPathTemplate,
    bundle: Reloading[list[Certificate]] | None,
) -> DevIDOptions:
    """`require_devid`, checked against the DevID CA `bundle` read from devid_ca_path."""
    required = reader.boolean("require_devid")
    if required and not reader.has("devid_ca_path"):
        reader.problem("require_devid needs devid_ca_path (DevID CA certificates)")
    needs_devid = sorted(template.fields() & set(DEVID_TEMPLATE_FIELDS))
    if needs_devid and not required:
        reader.problem(
            f"agent_path_template uses .{needs_devid[0]}, which needs require_devid = true"
        )
    return DevIDOptions(bundle, required)

"""Server options for the evidence beyond EK and AK: platform state (PCRs) and device
identity (DevID).

`read_pcr_options` and `read_devid_options` take their options from the plugin data;
`ServerConfig` holds what they return. Files (the PCR policy, the DevID CA bundle) are
`Reloading` values: once started (by the committed configuration) they follow their
files without a restart and keep the last good content when a change does not load.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from spire_tpm_attestor.x509 import Certificate

DEVID_TEMPLATE_FIELDS = ("DevIDSubjectCN", "DevIDSerialNumber", "DevIDFingerprint")


@dataclass(frozen=True)
class PCROptions:
    """The PCRs to quote and, optionally, the values they must have."""

    selection: frozenset[PCRKey] = frozenset()
    inline_policy: PCRPolicy | None = None
    policy_file: Reloading[PCRPolicy] | None = None

    def policy(self) -> PCRPolicy | None:
        """The policy in force now (the file's current content when one is configured)."""
        return self.policy_file.value if self.policy_file is not None else self.inline_policy

    def start(self) -> None:
        if self.policy_file is not None:
            self.policy_file.start()

    def close(self) -> None:
        if self.policy_file is not None:
            self.policy_file.close()


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

"""`spire-tpm-attestor`: the operator's command line.

- `version`
- `hash`: the EK hash (the allowlist key and the default agent ID suffix) from a
  running TPM, an EK certificate, or a public key file; with `--urls`, where Intel or
  AMD publish the EK certificate.
- `check`: one full attestation through both real plugin processes, and whether this
  node's firmware event log replays to its TPM's PCRs.
- `eventlog inspect`: what a firmware event log says and the selectors it yields.
- `devid create`: a DevID key in this machine's TPM, for a CA to certify.
- `allowlist add|remove|list|export`: provisioning allowlist directories.
- `ek inspect|verify`: what the server reads from an EK certificate, and its chain.
- `ca import`: CA bundles split into one file per CA, for ek_ca_path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from spire_tpm_attestor import __version__, wire
from spire_tpm_attestor.cli.allowlist import add_allowlist_commands
from spire_tpm_attestor.cli.ca import add_ca_commands
from spire_tpm_attestor.cli.devid import add_devid_commands
from spire_tpm_attestor.cli.ek import add_ek_commands
from spire_tpm_attestor.cli.eventlog import DEFAULT_PCRS, add_eventlog_commands
from spire_tpm_attestor.cli.spire_config import PluginConfigFile
from spire_tpm_attestor.ek_download import (
    DEFAULT_SERVICE_URLS,
    MANUFACTURER_IDS,
    MANUFACTURERS,
    ek_certificate_url,
)
from spire_tpm_attestor.ek_hash import ek_hash, load_public_key
from spire_tpm_attestor.errors import AttestorError, SourceUnavailable
from spire_tpm_attestor.runtime.config import ConfigProblems
from spire_tpm_attestor.runtime.host import AttestationResult
from spire_tpm_attestor.tpm.constants import BANK_NAMES
from spire_tpm_attestor.x509 import load_certificate


def cmd_version(args: argparse.Namespace) -> int:
    print(f"spire-tpm-attestor {__version__}")
    return 0


@dataclass(frozen=True)
class TPMEK:
    public_key: PublicKeyTypes
    has_certificate: bool
    manufacturer: str  # TPM_PT_MANUFACTURER: "INTC", "AMD", ...


def ek_of_tpm(agent_config: PluginConfigFile) -> TPMEK:
    from agent_plugin.config import build_agent_config
    from agent_plugin.tpm import TPMAccessError, TPMSession
    from spire_tpm_attestor.runtime.config import CoreConfig
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

    config = build_agent_config(agent_config.plugin_data, CoreConfig(agent_config.trust_domain))
    try:
        with TPMSession.open(config.tcti) as tpm:
            ek = tpm.read_ek(config.ek_algorithm, config.ek_handle, config.ek_cert_path)
            manufacturer = tpm.manufacturer()
    except TPMAccessError as exc:  # an error line and exit 2, like any unusable input
        raise SourceUnavailable(f"TPM ({config.tcti or 'the default device'}): {exc}") from None
    return TPMEK(parse_tpm2b_public(ek.public).public_key(), bool(ek.certificate), manufacturer)


def cmd_hash(args: argparse.Namespace) -> int:
    manufacturers: tuple[str, ...] = MANUFACTURERS
    if args.certificate:
        key = load_certificate(Path(args.certificate).read_bytes()).public_key()
    elif args.public_key:
        key = load_public_key(Path(args.public_key).read_bytes())
    else:
        tpm = ek_of_tpm(
            PluginConfigFile.read(args.agent_config)
            if args.agent_config
            else PluginConfigFile("example.org", "", None)
        )
        key = tpm.public_key
        known = MANUFACTURER_IDS.get(tpm.manufacturer)
        manufacturers = (known,) if known else ()
        if known and not tpm.has_certificate and not args.urls:
            url = ek_certificate_url(known, DEFAULT_SERVICE_URLS[known], key)
            print(f"note: no EK certificate in NV; {known} publishes it at {url}", file=sys.stderr)
    print(ek_hash(key))
    if args.urls:
        for manufacturer in manufacturers:
            url = ek_certificate_url(manufacturer, DEFAULT_SERVICE_URLS[manufacturer], key)
            print(f"{manufacturer}: {url}")
    return 0


def plugin_command(config: PluginConfigFile, side: str) -> list[str]:
    if config.plugin_cmd:
        return [config.plugin_cmd]
    installed = shutil.which(f"spire-tpm-attestor-{side}") or os.path.join(
        os.path.dirname(sys.executable), f"spire-tpm-attestor-{side}"
    )
    if os.path.exists(installed):
        return [installed]
    return [sys.executable, "-m", f"{side}_plugin.main"]


def cmd_check(args: argparse.Namespace) -> int:
    from spire_tpm_attestor.runtime.host import (
        AGENT_HOST_SERVICES,
        SERVER_HOST_SERVICES,
        AttestationFailed,
        PluginProcess,
        relay_attestation,
    )

    agent_config = PluginConfigFile.read(args.agent_config, args.trust_domain)
    server_config = PluginConfigFile.read(args.server_config, args.trust_domain)
    with (
        PluginProcess.start(
            plugin_command(server_config, "server"), host_service_names=SERVER_HOST_SERVICES
        ) as server,
        PluginProcess.start(
            plugin_command(agent_config, "agent"), host_service_names=AGENT_HOST_SERVICES
        ) as agent,
    ):
        for side, plugin, config in (
            ("server", server, server_config),
            ("agent", agent, agent_config),
        ):
            try:
                plugin.configure(config.plugin_data, config.trust_domain)
            except grpc.RpcError as error:
                print(
                    f"the {side} plugin refused its configuration: {error.details()}",
                    file=sys.stderr,
                )
                return 2
        try:
            result = relay_attestation(agent, server)
        except AttestationFailed as failure:
            print(
                f"attestation failed in the {failure.side} plugin: "
                f"{failure.code.name}: {failure.details}",
                file=sys.stderr,
            )
            return 1
    print_result(result)
    print(f"event log: {event_log_state(agent_config, args.write_pcrs)}")
    return 0


def event_log_state(agent_config: PluginConfigFile, write_pcrs: str | None) -> str:
    """Whether the agent's event log is there and replays to this TPM's PCRs (SHA-256
    0-7, which `write_pcrs` receives as PCRS.json for `eventlog inspect --pcrs`)."""
    from agent_plugin.config import build_agent_config
    from agent_plugin.event_log import read_event_log
    from agent_plugin.tpm import TPMAccessError, TPMSession
    from spire_tpm_attestor import eventlog
    from spire_tpm_attestor.runtime.config import CoreConfig

    config = build_agent_config(agent_config.plugin_data, CoreConfig(agent_config.trust_domain))
    try:
        with TPMSession.open(
            config.tcti, require_encryption=not config.allow_unencrypted_sessions
        ) as tpm:
            values = tpm.read_pcrs([(bank, [index]) for bank, index in DEFAULT_PCRS])
    except TPMAccessError as exc:
        return f"not checked: the TPM's PCRs cannot be read ({exc})"
    quoted = {(value.hash_alg, value.index): value.digest for value in values}
    if write_pcrs:
        banks: dict[str, dict[str, str]] = {}
        for (bank, index), digest in sorted(quoted.items()):
            banks.setdefault(BANK_NAMES[bank], {})[str(index)] = digest.hex()
        Path(write_pcrs).write_text(json.dumps(banks, indent=2) + "\n")
    data, absent = read_event_log(config.event_log_path, config.max_event_log_size)
    if not data:
        return f"none ({absent})"
    try:
        log = eventlog.parse(data, wire.EVENT_LOG_LIMITS)
        verified = eventlog.verify(log, quoted)
    except AttestorError as exc:
        return f"{len(data)} bytes at {config.event_log_path}, REFUSED: {exc}"
    where = f"{len(data)} bytes, {len(log.events)} events at {config.event_log_path}"
    if not verified.pcrs:
        return f"{where}; it proves none of PCRs sha256:0-7 (no SHA-256 bank in it)"
    proven = ", ".join(str(index) for index in sorted(verified.pcrs))
    return f"{where}; replays to this TPM's PCRs sha256 {proven}"


def print_result(result: AttestationResult, selector_type: str = "") -> None:
    """The agent ID and selectors, as an operator reads them (`tpm:` for registration)."""
    print(f"spiffe_id: {result.spiffe_id}")
    print(f"can_reattest: {str(result.can_reattest).lower()}")
    print("selectors:")
    for selector in result.selectors:
        print(f"  {selector_type}{selector}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spire-tpm-attestor", description="Operator tools for the SPIRE TPM node attestor."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=cmd_version)

    hash_cmd = commands.add_parser(
        "hash", help="print the EK hash (allowlist key) of a TPM, EK certificate or public key"
    )
    source = hash_cmd.add_mutually_exclusive_group()
    source.add_argument("--agent-config", help="read the EK from the TPM this agent config uses")
    source.add_argument("--certificate", help="EK certificate file (PEM, DER or a raw NV read)")
    source.add_argument("--public-key", help="EK public key file (PEM or DER SubjectPublicKeyInfo)")
    hash_cmd.add_argument(
        "--urls",
        action="store_true",
        help="also print where the manufacturer publishes the EK certificate (Intel, AMD); "
        "from a TPM, only its own manufacturer's",
    )
    hash_cmd.set_defaults(run=cmd_hash)

    check = commands.add_parser(
        "check", help="run one attestation through both plugins and print the result"
    )
    check.add_argument(
        "--agent-config", required=True, help="agent plugin data (HCL) or a whole agent.conf"
    )
    check.add_argument(
        "--server-config", required=True, help="server plugin data (HCL) or a whole server.conf"
    )
    check.add_argument(
        "--trust-domain",
        default="example.org",
        help="trust domain when the files are plugin data alone",
    )
    check.add_argument(
        "--write-pcrs",
        metavar="PCRS.json",
        help="write this TPM's SHA-256 PCRs 0-7 for `eventlog inspect --pcrs`",
    )
    check.set_defaults(run=cmd_check)

    add_devid_commands(commands)
    add_allowlist_commands(commands)
    add_eventlog_commands(commands)
    add_ek_commands(commands)
    add_ca_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigProblems as problems:
        for problem in problems.problems:
            print(f"configuration problem: {problem}", file=sys.stderr)
        return 2
    except (OSError, ValueError, AttestorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

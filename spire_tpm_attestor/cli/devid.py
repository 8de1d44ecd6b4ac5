"""`spire-tpm-attestor devid ...`: provisioning a DevID key in this machine's TPM.

`devid create` makes an LDevID signing key inside the TPM (under the standard SRK the
agent uses, or a persistent parent) and writes what the CA and the agent need:

    devid.tss.pem   TSS2 PEM private key (the TPM-wrapped blob): agent devid_key_path
    devid.pub       TPM2B_PUBLIC  }  the same key as blobs, for tools that want them:
    devid.priv      TPM2B_PRIVATE }  agent devid_public_path / devid_private_path
    devid.pub.pem   the public key (SubjectPublicKeyInfo) for the CA to certify

None of these files is a usable secret: only this TPM can load the key.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from spire_tpm_attestor.cli.spire_config import PluginConfigFile
from spire_tpm_attestor.runtime.config import parse_hcl
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

FILES = {
    "pem": "devid.tss.pem",
    "public": "devid.pub",
    "private": "devid.priv",
    "spki": "devid.pub.pem",
}


def _tcti(agent_config: str | None) -> str | None:
    """The TCTI of an agent configuration; only that option is read, so the file may
    already name DevID files that do not exist yet."""
    if agent_config is None:
        return None
    tcti = parse_hcl(PluginConfigFile.read(agent_config).plugin_data).get("tcti")
    if tcti is not None and not isinstance(tcti, str):
        raise ValueError(f"{agent_config}: tcti must be a string")
    return tcti


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def create_devid_files(
    tcti: str | None, out_dir: Path, algorithm: str, parent_handle: int | None
) -> dict[str, Path]:
    """Create a DevID key in the TPM and write its files to `out_dir`; returns their paths."""
    from tpm2_pytss import TPM2_RH, TPM2B_PRIVATE, TPM2B_PUBLIC
    from tpm2_pytss.tsskey import TSSPrivKey

    from agent_plugin.tpm import TPMSession

    with TPMSession.open(tcti) as tpm:
        public, private = tpm.create_devid_key(algorithm, parent_handle)
    pem = TSSPrivKey(
        TPM2B_PRIVATE.unmarshal(private)[0],
        TPM2B_PUBLIC.unmarshal(public)[0],
        empty_auth=True,
        parent=TPM2_RH.OWNER if parent_handle is None else parent_handle,
    ).to_pem()
    spki = (
        parse_tpm2b_public(public)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in FILES.items()}
    for kind, data in (("pem", pem), ("public", public), ("private", private), ("spki", spki)):
        _write(paths[kind], data)
    return paths


def cmd_devid_create(args: argparse.Namespace) -> int:
    from agent_plugin.config import parse_handle

    parent = parse_handle(args.parent_handle) if args.parent_handle else None
    paths = create_devid_files(_tcti(args.agent_config), Path(args.out_dir), args.algorithm, parent)
    print(f"DevID key created in the TPM; have {paths['spki']} certified by your DevID CA.")
    print("Then add to the agent's plugin_data:")
    print('  devid_cert_path = "<the certificate, leaf first, then intermediates>"')
    print(f'  devid_key_path  = "{paths["pem"].resolve()}"')
    return 0


def add_devid_commands(commands: Any) -> None:
    """Register `devid create` on the CLI's subcommand parsers."""
    devid = commands.add_parser("devid", help="provision a DevID key in this machine's TPM")
    actions = devid.add_subparsers(dest="devid_command", required=True)
    create = actions.add_parser(
        "create",
        help="create a DevID key in the TPM and write its TSS2 PEM, blobs and public key",
    )
    create.add_argument("--agent-config", help="take the TCTI from this agent config")
    create.add_argument("--out-dir", required=True, help="directory for the files written")
    create.add_argument(
        "--algorithm", choices=("ecc", "rsa"), default="ecc", help="P-256 (default) or RSA 2048"
    )
    create.add_argument(
        "--parent-handle", help="persistent parent key (e.g. 0x81000001); default: the SRK"
    )
    create.set_defaults(run=cmd_devid_create)

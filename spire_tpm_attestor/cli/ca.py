"""`spire-tpm-attestor ca import BUNDLE... --out DIR`: split CA bundles (the public
TPM-manufacturer bundles among them) into one PEM file per CA, for ek_ca_path.

Each file is named by manufacturer (the subject's organization, else its common name)
and a hash of the subject, e.g. `infineon-technologies-ag-3f2a9b1c.pem`, and holds the
certificate's original DER. What cannot be a trust anchor is skipped, as the server
would skip it, and reported. Exit codes: 0 every certificate imported, 1 some skipped
(the others imported), 2 nothing importable.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID

from server_plugin.ca_bundle import load_ca_paths
from spire_tpm_attestor.x509 import Certificate
from spire_tpm_attestor.x509.certificate import to_pem


def file_name(cert: Certificate) -> str:
    """`<manufacturer>-<subject hash>`: one name per CA subject, readable in a listing."""
    organizations = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    label = str(organizations[0].value) if organizations else cert.subject_common_name
    slug = re.sub(r"[^a-z0-9]+", "-", (label or "unknown").lower()).strip("-")[:48]
    subject_hash = hashlib.sha256(cert.subject.public_bytes()).hexdigest()[:8]
    return f"{slug or 'unknown'}-{subject_hash}"


def write_certificate(out: Path, cert: Certificate) -> tuple[Path, bool]:
    """Writes `cert` under `out` unless an identical file is there; (path, written).
    Another CA of the same subject (a renewed one) gets a numbered name."""
    base, pem = file_name(cert), to_pem(cert.der)
    for number in range(1, 1000):
        path = out / (f"{base}.pem" if number == 1 else f"{base}-{number}.pem")
        if not path.exists():
            path.write_bytes(pem)
            return path, True
        if path.read_bytes() == pem:
            return path, False
    raise OSError(f"too many certificates named {base} in {out}")


def cmd_ca_import(args: argparse.Namespace) -> int:
    by_file, skipped = load_ca_paths(args.bundles)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    usable = 0
    for certificates in by_file.values():
        for cert in certificates:
            usable += 1
            path, written = write_certificate(out, cert)
            state = "wrote" if written else "already there"
            print(f"{state}: {path} ({cert.subject.rfc4514_string()})")
    for skipped_file in skipped:
        print(f"skipped: {skipped_file.path}: {skipped_file.reason}", file=sys.stderr)
    if not usable:
        print("error: no usable CA certificate to import", file=sys.stderr)
        return 2
    return 1 if skipped else 0


def add_ca_commands(commands: Any) -> None:
    ca = commands.add_parser("ca", help="manage EK CA certificates for ek_ca_path")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    imports = ca_commands.add_parser(
        "import",
        help="split CA bundles into one PEM file per CA "
        "(exit 0 all imported, 1 some skipped, 2 none importable)",
    )
    imports.add_argument("bundles", nargs="+", metavar="BUNDLE", help="PEM bundle or DER file")
    imports.add_argument("--out", required=True, help="directory to write the CA files to")
    imports.set_defaults(run=cmd_ca_import)

"""`spire-tpm-attestor ek inspect|verify`: an operator's view of an EK certificate.

`inspect` reads what the server would read from a certificate file or a raw NV read;
`verify` also checks its chain against CA paths loaded exactly as the server loads
`ek_ca_path`. Exit codes: 0 parsed (inspect) / verified (verify), 1 not verified,
2 not a usable EK certificate (or another input that cannot be used).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from server_plugin.ca_bundle import load_ca_paths
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.errors import MalformedInput, NotProven
from spire_tpm_attestor.files import read_bounded
from spire_tpm_attestor.x509 import Certificate, certificates_in, load_certificate, verify_chain
from spire_tpm_attestor.x509.bundle import MAX_BUNDLE_FILE_SIZE
from spire_tpm_attestor.x509.certificate import MAX_CERTIFICATE_SIZE

EXIT_VERIFIED, EXIT_NOT_VERIFIED = 0, 1  # and 2, from main(): input that cannot be used
_CURVES = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}


def key_name(key: PublicKeyTypes) -> str:
    """`rsa-2048`, `ecc-p256`, ...; MalformedInput for a key no EK has."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ecc-{_CURVES.get(key.curve.name, key.curve.name)}"
    raise MalformedInput(f"a {type(key).__name__} is no EK")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_ek_certificate(path: str) -> tuple[Certificate, dict[str, Any]]:
    """The EK certificate in a file (DER, PEM or raw NV read) and what `inspect` shows;
    MalformedInput naming the file when it holds no usable EK certificate."""
    try:
        cert = load_certificate(read_bounded(path, MAX_CERTIFICATE_SIZE))
        if cert.is_ca:
            raise MalformedInput(f"{cert.describe()} is a CA certificate, not an EK certificate")
        key = cert.public_key()
        name = key_name(key)
    except (OSError, MalformedInput) as exc:
        raise MalformedInput(f"{path} is not a usable EK certificate: {exc}") from None
    facts = {
        "ek_hash": ek_hash(key),
        "key": name,
        "manufacturer": cert.tcg_manufacturer,
        "model": cert.tcg_model,
        "version": cert.tcg_version,
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": rfc3339(cert.not_valid_before),
        "not_after": rfc3339(cert.not_valid_after),
        "quirks": list(cert.quirks),
    }
    return cert, facts


def show(facts: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "none"
        elif isinstance(value, bool) or value is None:
            value = json.dumps(value)
        print(f"{key}: {value}")


def cmd_ek_inspect(args: argparse.Namespace) -> int:
    _, facts = read_ek_certificate(args.file)  # main() makes its errors exit 2
    show(facts, args.json)
    return EXIT_VERIFIED


def cmd_ek_verify(args: argparse.Namespace) -> int:
    cert, facts = read_ek_certificate(args.file)
    sent: list[Certificate] = []
    if args.intermediates:
        try:
            sent = certificates_in(read_bounded(args.intermediates, MAX_BUNDLE_FILE_SIZE))
        except (OSError, MalformedInput) as exc:
            raise MalformedInput(f"intermediates {args.intermediates}: {exc}") from None
    by_file, skipped = load_ca_paths(args.ca_path)
    anchors = [anchor for certificates in by_file.values() for anchor in certificates]
    chain: list[Certificate] = []
    reason = None
    try:
        chain = verify_chain(
            cert, sent, anchors, args.at, enforce_expiry=args.ek_cert_expiry == "enforce"
        )
    except NotProven as exc:
        reason = str(exc) if anchors else "the CA paths hold no usable CA certificate"
    facts.update(
        verified=reason is None,
        chain=[link.subject.rfc4514_string() for link in chain],
        reason=reason,
        ca_files_skipped=[{"path": s.path, "reason": s.reason} for s in skipped],
    )
    show(facts, args.json)
    return EXIT_VERIFIED if reason is None else EXIT_NOT_VERIFIED


def moment(text: str) -> datetime:
    """An RFC 3339 time with its offset (`2030-01-01T00:00:00Z`)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +00:00)")
    return parsed


def add_ek_commands(commands: Any) -> None:
    ek = commands.add_parser("ek", help="inspect or verify an EK certificate")
    ek_commands = ek.add_subparsers(dest="ek_command", required=True)

    inspect = ek_commands.add_parser(
        "inspect", help="what the server reads from an EK certificate (exit 2: not one)"
    )
    inspect.add_argument("file", help="EK certificate: DER, PEM or a raw NV read")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(run=cmd_ek_inspect)

    verify = ek_commands.add_parser(
        "verify",
        help="verify an EK certificate's chain as the server does "
        "(exit 0 verified, 1 not verified, 2 unusable EK file)",
    )
    verify.add_argument("file", help="EK certificate: DER, PEM or a raw NV read")
    verify.add_argument(
        "--ca-path",
        action="append",
        required=True,
        help="a file or directory of CA certificates, loaded as ek_ca_path is (repeatable)",
    )
    verify.add_argument(
        "--intermediates", help="PEM/DER certificates that may complete the chain (not anchors)"
    )
    verify.add_argument(
        "--at",
        type=moment,
        default=datetime.now(UTC),
        help="verify at this RFC 3339 time instead of now",
    )
    verify.add_argument(
        "--ek-cert-expiry",
        choices=("enforce", "ignore"),
        default="enforce",
        help="as the server option: whether certificates past notAfter count",
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(run=cmd_ek_verify)

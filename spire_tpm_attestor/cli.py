"""`spire-tpm-attestor`: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spire_tpm_attestor import __version__


def cmd_version(args: argparse.Namespace) -> int:
    print(f"spire-tpm-attestor {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spire-tpm-attestor", description="Operator tools for the SPIRE TPM node attestor."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())

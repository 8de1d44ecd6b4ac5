"""`spire-tpm-attestor allowlist ...`: provisioning allowlist (and deny-list) directories.

    allowlist add    --directory DIR [--layout flat|bucketed] [--name N] [--label K=V]... [INPUT...]
    allowlist remove --directory DIR [--layout flat|bucketed] [INPUT...]
    allowlist list   --directory DIR [--layout flat|bucketed] [--long]
    allowlist export --directory DIR [--layout flat|bucketed] [--output FILE]

An INPUT is an EK hash, or a file holding EK certificates or EK public keys (PEM, one or
many blocks; or one DER certificate or SubjectPublicKeyInfo). Without INPUTs, or with
`-`, stdin is read: PEM blocks, or one EK hash or file name per line. Every entry is
written to a temporary file in the same directory and renamed into place, so a SPIRE
server never reads half an entry; `export` writes the HTTP JSON document the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from server_plugin.allowlist import AllowlistEntry, AllowlistError
from server_plugin.allowlist.directory import (
    BucketedDirectory,
    DirectorySource,
    FlatDirectory,
    read_entry_file,
)
from server_plugin.allowlist.document import render_document
from spire_tpm_attestor.errors import MalformedInput

LAYOUTS: dict[str, type[DirectorySource]] = {"flat": FlatDirectory, "bucketed": BucketedDirectory}
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
HEX_HASH = re.compile(r"^[0-9a-fA-F]{64}\Z")


class InputError(ValueError):
    """An input is neither an EK hash nor an EK certificate or public key."""


def hashes_of_data(data: bytes, origin: str) -> list[str]:
    """EK hashes of the certificates and public keys in `data` (PEM blocks, or one DER)."""
    from spire_tpm_attestor.ek_hash import hash_of_certificate, hash_of_public_key

    if b"-----BEGIN" not in data:
        for hash_of in (hash_of_certificate, hash_of_public_key):
            try:
                return [hash_of(data)]
            except MalformedInput:
                continue
        raise InputError(f"{origin}: neither an EK certificate nor a public key (DER)")
    hashes = []
    for block in PEM_BLOCK.finditer(data):
        label = block.group(1).decode()
        if label not in ("CERTIFICATE", "PUBLIC KEY"):
            raise InputError(f"{origin}: a PEM {label} is not an EK certificate or public key")
        hash_of = hash_of_certificate if label == "CERTIFICATE" else hash_of_public_key
        try:
            hashes.append(hash_of(block.group(0)))
        except MalformedInput as exc:
            raise InputError(f"{origin}: PEM {label}: {exc}") from None
    if not hashes:
        raise InputError(f"{origin}: no complete PEM block")
    return hashes


def hashes_of_input(item: str) -> list[str]:
    if HEX_HASH.match(item):
        return [item.lower()]
    return hashes_of_data(Path(item).read_bytes(), item)


def hashes_of_inputs(inputs: list[str]) -> list[str]:
    """Every EK hash the inputs name, in order, each once."""
    hashes: list[str] = []
    for item in inputs or ["-"]:
        if item != "-":
            hashes.extend(hashes_of_input(item))
            continue
        data = sys.stdin.buffer.read()
        if b"-----BEGIN" in data:
            hashes.extend(hashes_of_data(data, "stdin"))
            continue
        for line in data.decode().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                hashes.extend(hashes_of_input(line))
    return list(dict.fromkeys(hashes))


def write_atomically(path: str, data: bytes) -> str:
    """Write to a hidden temporary file beside `path`, fsync, rename over `path`.

    Returns the directory, which the caller must `sync_directories` for the rename
    itself to survive a crash (once per directory, not once per entry)."""
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return directory


def sync_directories(directories: set[str]) -> None:
    for directory in sorted(directories):
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)


def _layout(args: argparse.Namespace) -> DirectorySource:
    if not os.path.isdir(args.directory):
        raise InputError(f"{args.directory} is not a directory")
    return LAYOUTS[args.layout](args.directory, args.directory)


def _label(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def cmd_add(args: argparse.Namespace) -> int:
    directory = _layout(args)
    hashes = hashes_of_inputs(args.inputs)
    if args.name is not None and len(hashes) != 1:
        raise InputError(f"--name names one EK, but the inputs give {len(hashes)}")
    metadata: dict[str, Any] = {}
    if args.name is not None:
        metadata["name"] = args.name
    if args.label:
        metadata["labels"] = dict(args.label)
    body = json.dumps(metadata, ensure_ascii=False).encode() if metadata else b""
    written: set[str] = set()
    for pub_hash in hashes:
        path = directory.entry_path(pub_hash)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        written.add(write_atomically(path, body))
        print(pub_hash)
    sync_directories(written)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    directory = _layout(args)
    changed: set[str] = set()
    for pub_hash in hashes_of_inputs(args.inputs):
        path = directory.entry_path(pub_hash)
        try:
            os.unlink(path)
        except FileNotFoundError:
            print(f"{pub_hash}: not listed", file=sys.stderr)
            continue
        changed.add(os.path.dirname(path))
        print(pub_hash)
    sync_directories(changed)
    return 0


def _entries(directory: DirectorySource) -> list[AllowlistEntry]:
    entries = []
    for pub_hash in sorted(directory.hashes()):
        try:
            entry = read_entry_file(directory.entry_path(pub_hash), pub_hash, directory.path)
        except AllowlistError as exc:
            raise InputError(str(exc)) from None
        if entry is not None:  # None: removed while we listed
            entries.append(entry)
    return entries


def cmd_list(args: argparse.Namespace) -> int:
    for entry in _entries(_layout(args)):
        if not args.long:
            print(entry.pub_hash)
            continue
        metadata: dict[str, Any] = {"name": entry.name} if entry.name is not None else {}
        if entry.labels:
            metadata["labels"] = entry.labels
        shown = f" {json.dumps(metadata, ensure_ascii=False)}" if metadata else ""
        print(f"{entry.pub_hash}{shown}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    document = render_document(_entries(_layout(args))).encode()
    if args.output in (None, "-"):
        sys.stdout.buffer.write(document)
    else:
        sync_directories({write_atomically(args.output, document)})
    return 0


def add_allowlist_commands(commands: Any) -> None:
    allowlist = commands.add_parser(
        "allowlist", help="add, remove, list or export EK hashes in an allowlist directory"
    )
    actions = allowlist.add_subparsers(dest="action", required=True)
    for name, run, help_text in (
        ("add", cmd_add, "add EKs (hashes, certificates, public keys) with optional metadata"),
        ("remove", cmd_remove, "remove EKs"),
        ("list", cmd_list, "print the EK hashes listed"),
        ("export", cmd_export, "print the HTTP JSON document of the directory"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--directory", required=True, help="the allowlist directory")
        action.add_argument(
            "--layout",
            choices=sorted(LAYOUTS),
            default="flat",
            help="flat: <dir>/<hash> (hash_path); bucketed: <dir>/<first 2 hex>/<hash>",
        )
        if name in ("add", "remove"):
            action.add_argument(
                "inputs",
                nargs="*",
                metavar="INPUT",
                help="EK hash, or EK certificate / public key file; none or - reads stdin",
            )
        if name == "add":
            action.add_argument("--name", help="the entry's name (selector name:<name>)")
            action.add_argument(
                "--label",
                type=_label,
                action="append",
                metavar="KEY=VALUE",
                help="a label (selector label:<key>:<value>); repeatable",
            )
        if name == "list":
            action.add_argument("--long", action="store_true", help="show names and labels")
        if name == "export":
            action.add_argument("--output", help="write here (atomically) instead of stdout")
        action.set_defaults(run=run)

"""PCR selections and PCR policies: what the server asks agents to quote, and what it accepts.

A selection names PCRs as (bank, index) pairs; a policy maps some of them to the values
the operator allows (several per PCR, e.g. one per firmware version in the fleet). Both
are written as a bank name -> indices / index -> values mapping, inline in the plugin
data or, for the policy, in an HCL or JSON file:

    pcr_selection { sha256 = [0, 1, 2, 3, 4, 5, 6, 7] }
    pcr_policy { sha256 { "0" = ["<hex>", "<hex>"]  "7" = "<hex>" } }

Parsing is pure and strict: unknown banks, indices outside 0-23, digests of the wrong
length and empty value lists are errors naming the offending entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.config import ConfigProblems, read_hcl_file
from spire_tpm_attestor.tpm import constants
from spire_tpm_attestor.tpm.constants import BANKS_BY_NAME, digest_size

PCRKey = tuple[int, int]
"""One PCR: (bank hash algorithm id, index)."""

MAX_PCR_INDEX = 23  # PC Client TPMs have 24 PCRs; the wire format allows no more
MAX_POLICY_FILE = 1024 * 1024


class PCRPolicyError(ValueError):
    """A selection or policy is malformed; the message names the entry."""


def pcr_label(key: PCRKey) -> str:
    """`sha256:7`, the spelling used in selectors, options and messages."""
    return constants.pcr_label(*key)


def _bank(name: object, where: str) -> int:
    if not isinstance(name, str) or name.lower() not in BANKS_BY_NAME:
        raise PCRPolicyError(f"{where}: unknown PCR bank {name!r} (use {', '.join(BANKS_BY_NAME)})")
    return BANKS_BY_NAME[name.lower()]


def _index(value: object, where: str) -> int:
    # HCL object keys are strings ("7"); list items are integers.
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PCR_INDEX:
        raise PCRPolicyError(f"{where}: PCR index {value!r} is not an integer 0-{MAX_PCR_INDEX}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    # pyhcl turns a repeated block into a list of blocks; merge them in order.
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        merged: dict[str, Any] = {}
        for item in value:
            for key in item:
                if key in merged:
                    raise PCRPolicyError(f"{where}: {key} is given twice")
            merged.update(item)
        return merged
    if not isinstance(value, dict):
        raise PCRPolicyError(f"{where}: expected a block of bank = ..., got {type(value).__name__}")
    return value


def parse_pcr_selection(value: Any, where: str = "pcr_selection") -> frozenset[PCRKey]:
    """`{sha256 = [0, 1, 7]}` -> {(SHA256, 0), (SHA256, 1), (SHA256, 7)}."""
    selection: set[PCRKey] = set()
    for name, indices in _mapping(value, where).items():
        bank = _bank(name, where)
        if not isinstance(indices, list):
            indices = [indices]
        for index in indices:
            selection.add((bank, _index(index, f"{where}.{name}")))
    return frozenset(selection)


def _digest(text: object, key: PCRKey, where: str) -> bytes:
    try:
        digest = bytes.fromhex(text) if isinstance(text, str) else None
    except ValueError:
        digest = None
    size = digest_size(key[0])
    if digest is None or len(digest) != size:
        raise PCRPolicyError(
            f"{where}: allowed value {text!r} for PCR {pcr_label(key)} is not {size} bytes of hex"
        )
    return digest


@dataclass(frozen=True)
class PCRPolicy:
    """For each PCR it names, the set of values the operator allows."""

    allowed: Mapping[PCRKey, frozenset[bytes]]

    def pcrs(self) -> frozenset[PCRKey]:
        return frozenset(self.allowed)

    def violation(self, values: Mapping[PCRKey, bytes]) -> str | None:
        """Why `values` (verified PCR values) break the policy, or None if they comply."""
        for key in sorted(self.allowed):
            seen = values.get(key)
            if seen is None:
                return f"PCR {pcr_label(key)} was not quoted"
            if seen not in self.allowed[key]:
                return f"PCR {pcr_label(key)} is {seen.hex()}, which pcr_policy does not allow"
        return None


def parse_pcr_policy(value: Any, where: str = "pcr_policy") -> PCRPolicy:
    """`{sha256 = {"0" = ["<hex>", ...], "7" = "<hex>"}}` -> PCRPolicy."""
    allowed: dict[PCRKey, frozenset[bytes]] = {}
    for name, entries in _mapping(value, where).items():
        bank = _bank(name, where)
        for index_text, values in _mapping(entries, f"{where}.{name}").items():
            key = (bank, _index(index_text, f"{where}.{name}"))
            texts = values if isinstance(values, list) else [values]
            if not texts:
                raise PCRPolicyError(f"{where}: PCR {pcr_label(key)} allows no value at all")
            allowed[key] = frozenset(_digest(text, key, where) for text in texts)
    return PCRPolicy(allowed)


def load_pcr_policy_file(path: str) -> PCRPolicy:
    """A policy from an HCL or JSON file holding the same structure as `pcr_policy`."""
    try:
        document = read_hcl_file(path, MAX_POLICY_FILE)
    except ConfigProblems as exc:
        raise PCRPolicyError(str(exc)) from None
    return parse_pcr_policy(document, Path(path).name)


def bank_selections(pcrs: Iterable[PCRKey]) -> list[attestation_pb2.PCRBankSelection]:
    """The selection as it travels in the challenge: banks by algorithm id, indices sorted."""
    banks: dict[int, list[int]] = {}
    for bank, index in sorted(pcrs):
        banks.setdefault(bank, []).append(index)
    return [
        attestation_pb2.PCRBankSelection(hash_alg=bank, indices=indices)
        for bank, indices in banks.items()
    ]

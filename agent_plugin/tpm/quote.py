"""PCR quotes: the AK signs the selected PCRs and the server's nonce."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import tpm2_pytss as tss

from agent_plugin.tpm.session import SessionBase, TPMAccessError, log, tpm_step
from spire_tpm_attestor.tpm.constants import BANK_NAMES, BANKS_BY_NAME, pcr_label

_MAX_PCR_INDEX = 31  # TPML_PCR_SELECTION holds at most 4 bytes of PCR bits
_QUOTE_ATTEMPTS = 3
_MAX_NONCE = 64  # TPM2B_DATA capacity in libtss2


@dataclass(frozen=True)
class PCRValue:
    hash_alg: int  # TPM_ALG_ID of the bank
    index: int
    digest: bytes


class Quote(NamedTuple):
    attest: bytes  # TPMS_ATTEST, no size prefix: exactly what the AK signed
    signature: bytes  # marshaled TPMT_SIGNATURE
    pcr_values: list[PCRValue]  # in the quote's selection order


PCRSelection = Sequence[tuple[str | int, Sequence[int]]]


class QuoteOperations(SessionBase):
    """Quoting PCRs with the AK loaded by `create_ak()`."""

    def quote(self, pcr_selection: PCRSelection, nonce: bytes) -> Quote:
        """An AK-signed quote over the selected PCRs with `nonce` as qualifying data.

        `pcr_selection` lists (bank, indices), the bank as a name ("sha256") or a
        TPM_ALG_ID. The PCR values are read after the quote; if an extend raced with it
        (the values do not hash to the quoted digest) the quote is taken again.
        """
        if self._ak is None:
            raise TPMAccessError("quote needs create_ak() first")
        if len(nonce) > _MAX_NONCE:
            raise TPMAccessError(f"nonce of {len(nonce)} bytes is longer than {_MAX_NONCE}")
        banks = _normalize_selection(pcr_selection)
        selection = _tpml_pcr_selection(banks)
        for _ in range(_QUOTE_ATTEMPTS):
            session = self._session_for(encrypt_response=True)
            with tpm_step("quoting the PCRs"):
                attest, signature = self._esapi.quote(
                    self._ak,
                    selection,
                    nonce,
                    tss.TPMT_SIG_SCHEME(scheme=tss.TPM2_ALG.NULL),
                    session1=session,
                )
            values = self._read_pcrs(banks)
            if _quote_digest_matches(bytes(attest), signature, values):
                return Quote(bytes(attest), bytes(signature.marshal()), values)
            log.info("PCRs changed while quoting; quoting again")
        raise TPMAccessError(f"PCRs kept changing while quoting ({_QUOTE_ATTEMPTS} attempts)")

    def read_pcrs(self, pcr_selection: PCRSelection) -> list[PCRValue]:
        """The current values of the selected PCRs (unsigned: for the operator's eyes)."""
        return self._read_pcrs(_normalize_selection(pcr_selection))

    def _read_pcrs(self, banks: Sequence[tuple[int, Sequence[int]]]) -> list[PCRValue]:
        """PCR values in selection order; TPM2_PCR_Read returns at most 8 per call."""
        wanted = [(alg, index) for alg, indices in banks for index in indices]
        found: dict[tuple[int, int], bytes] = {}
        while len(found) < len(wanted):
            pending: dict[int, list[int]] = {}
            for alg, index in wanted:
                if (alg, index) not in found:
                    pending.setdefault(alg, []).append(index)
            with tpm_step("reading the PCRs"):
                _, returned, digests = self._esapi.pcr_read(
                    _tpml_pcr_selection(list(pending.items()))
                )
            pairs = _selected_pcrs(returned)
            if not pairs:
                missing = ", ".join(
                    pcr_label(alg, index) for alg, indices in pending.items() for index in indices
                )
                raise TPMAccessError(f"the TPM does not have PCRs {missing} (bank not allocated?)")
            for pair, digest in zip(pairs, digests, strict=True):
                found[pair] = bytes(digest)
        return [PCRValue(alg, index, found[(alg, index)]) for alg, index in wanted]


def _pcr_bank(bank: str | int) -> int:
    if isinstance(bank, int):
        return bank
    try:
        return BANKS_BY_NAME[bank.lower()]
    except KeyError:
        raise TPMAccessError(
            f"unknown PCR bank {bank!r}; known: {', '.join(BANKS_BY_NAME)}"
        ) from None


def _normalize_selection(selection: PCRSelection) -> list[tuple[int, list[int]]]:
    """Banks in first-seen order, duplicates merged, indices sorted, empty banks dropped."""
    banks: dict[int, set[int]] = {}
    for bank, indices in selection:
        for index in indices:
            if not 0 <= index <= _MAX_PCR_INDEX:
                raise TPMAccessError(f"PCR index {index} is out of range 0-{_MAX_PCR_INDEX}")
        banks.setdefault(_pcr_bank(bank), set()).update(indices)
    return [(alg, sorted(indices)) for alg, indices in banks.items() if indices]


def _tpml_pcr_selection(banks: Sequence[tuple[int, Sequence[int]]]) -> Any:
    selections = []
    for alg, indices in banks:
        mask = bytearray(3)  # PC Client TPMs have 24 PCRs: always send 3 bytes at least
        for index in indices:
            if index // 8 >= len(mask):
                mask.extend(bytes(index // 8 + 1 - len(mask)))
            mask[index // 8] |= 1 << (index % 8)
        selections.append(
            tss.TPMS_PCR_SELECTION(hash=alg, sizeofSelect=len(mask), pcrSelect=bytes(mask))
        )
    return tss.TPML_PCR_SELECTION(selections)


def _selected_pcrs(selection: Any) -> list[tuple[int, int]]:
    """(bank, index) pairs of a TPML_PCR_SELECTION, in the TPM's digest order."""
    pairs = []
    for bank in selection:
        mask = bytes(bank.pcrSelect)[: bank.sizeofSelect]
        for index in range(len(mask) * 8):
            if mask[index // 8] & (1 << (index % 8)):
                pairs.append((int(bank.hash), index))
    return pairs


def _quote_digest_matches(attest: bytes, signature: Any, values: Sequence[PCRValue]) -> bool:
    """Whether the values read afterwards are the ones the quote's pcrDigest covers."""
    hash_alg = int(signature.signature.any.hashAlg)
    if hash_alg not in BANK_NAMES:
        raise TPMAccessError(f"AK signs with unsupported hash algorithm {hash_alg:#06x}")
    quoted, _ = tss.TPMS_ATTEST.unmarshal(attest)
    digest = hashlib.new(BANK_NAMES[hash_alg], b"".join(v.digest for v in values)).digest()
    return bytes(quoted.attested.quote.pcrDigest) == digest

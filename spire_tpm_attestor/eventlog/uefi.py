"""UEFI structures carried in event data, decoded tolerantly (a problem is a value).

UEFI_VARIABLE_DATA (PFP §10.2.6): VariableName GUID, UnicodeNameLength u64 (characters),
VariableDataLength u64, UnicodeName (UCS-2), VariableData.
EFI_SIGNATURE_LIST (UEFI §32.4.1): SignatureType GUID, SignatureListSize u32,
SignatureHeaderSize u32, SignatureSize u32, header, then EFI_SIGNATURE_DATA entries of
SignatureSize bytes each (SignatureOwner GUID, SignatureData).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Final

EFI_GLOBAL_VARIABLE: Final = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE: Final = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_CERT_X509: Final = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256: Final = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")

_VARIABLE_HEAD = struct.Struct("<16sQQ")
_LIST_HEAD = struct.Struct("<16sIII")
GUID_SIZE: Final = 16
MAX_NAME_CHARACTERS: Final = 1024
MAX_SIGNATURES: Final = 10_000


@dataclass(frozen=True)
class Variable:
    """A decoded UEFI_VARIABLE_DATA; `problem` says what did not fit, if anything."""

    vendor: uuid.UUID
    name: str
    data: memoryview
    problem: str | None = None


def decode_variable(event_data: memoryview) -> Variable | str:
    """The variable an EV_EFI_VARIABLE_* event measured, or why it cannot be read."""
    if len(event_data) < _VARIABLE_HEAD.size:
        return f"UEFI_VARIABLE_DATA of {len(event_data)} bytes is too short"
    raw_guid, name_length, data_length = _VARIABLE_HEAD.unpack_from(event_data, 0)
    if name_length > MAX_NAME_CHARACTERS:
        return f"UEFI_VARIABLE_DATA declares a {name_length}-character name"
    name_end = _VARIABLE_HEAD.size + 2 * name_length
    if name_end > len(event_data):
        return f"UEFI_VARIABLE_DATA declares a {name_length}-character name that overruns it"
    name = (
        bytes(event_data[_VARIABLE_HEAD.size : name_end])
        .decode("utf-16-le", errors="replace")
        .rstrip("\x00")
    )
    available = len(event_data) - name_end
    problem = None
    if data_length > available:
        problem = f"variable data declares {data_length} bytes, {available} are present"
        data_length = available
    elif data_length < available:
        problem = f"{available - data_length} bytes follow the variable data"
    data = event_data[name_end : name_end + data_length]
    return Variable(uuid.UUID(bytes_le=raw_guid), name, data, problem)


@dataclass(frozen=True)
class SignatureList:
    """One EFI_SIGNATURE_LIST: its type and the SignatureData of each entry.

    The SignatureOwner GUIDs are left out: nothing here depends on who added an entry.
    """

    type: bytes  # SignatureType GUID as stored (compare with `uuid.UUID.bytes_le`)
    entries: tuple[memoryview, ...]


def decode_signature_lists(data: memoryview) -> tuple[list[SignatureList], str | None]:
    """The EFI_SIGNATURE_LISTs in `data`, and why decoding stopped early, if it did."""
    lists: list[SignatureList] = []
    total = 0
    offset = 0
    while offset < len(data):
        if offset + _LIST_HEAD.size > len(data):
            return lists, f"signature list at {offset} is truncated"
        raw_type, list_size, header_size, signature_size = _LIST_HEAD.unpack_from(data, offset)
        body = offset + _LIST_HEAD.size + header_size
        end = offset + list_size
        if (
            list_size < _LIST_HEAD.size
            or end > len(data)
            or body > end
            or signature_size < GUID_SIZE
            or (end - body) % signature_size
        ):
            return lists, (
                f"signature list at {offset} is inconsistent (size {list_size}, header "
                f"{header_size}, entries of {signature_size})"
            )
        count = (end - body) // signature_size
        if total + count > MAX_SIGNATURES:
            return lists, f"more than {MAX_SIGNATURES} signatures"
        total += count
        entries = tuple(
            data[at + GUID_SIZE : at + signature_size] for at in range(body, end, signature_size)
        )
        lists.append(SignatureList(raw_type, entries))
        offset = end
    return lists, None


def der_length(data: memoryview) -> int | None:
    """The length of the DER SEQUENCE at the start of `data` when it fills it exactly.

    Enough to tell a certificate from other authority data without parsing it: a
    certificate is a SEQUENCE with a long-form length that covers the rest of the data.
    """
    if len(data) < 4 or data[0] != 0x30:
        return None
    first = data[1]
    if first < 0x80:
        total = 2 + first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count:
            return None
        total = 2 + count + int.from_bytes(data[2 : 2 + count], "big")
    return total if total == len(data) else None


def decode_ucs2(data: memoryview) -> str:
    """A NUL-terminated UCS-2 string as firmware writes it (EV_S_CRTM_VERSION)."""
    if len(data) % 2:
        data = data[: len(data) - 1]
    return bytes(data).decode("utf-16-le", errors="replace").split("\x00", 1)[0]

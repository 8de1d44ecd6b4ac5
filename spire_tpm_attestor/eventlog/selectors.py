"""Boot facts as selector values (the plugin name, e.g. `tpm:`, is added by SPIRE).

| value | from |
|---|---|
| `secureboot:enabled` / `secureboot:disabled` | the SecureBoot variable; nothing when unknown |
| `secureboot:pk:<sha256>` | each X.509 certificate in PK (SHA-256 of its DER) |
| `secureboot:kek:<sha256>` | each X.509 certificate in KEK |
| `secureboot:db:<sha256>` | each X.509 certificate in db |
| `secureboot:authority:<sha256>` | each certificate logged as EV_EFI_VARIABLE_AUTHORITY |
| `secureboot:dbx:<sha256>` | SHA-256 of the dbx variable data |
| `secureboot:dbx_count:<n>` | number of entries in dbx |
| `firmware:version:<text>` | the EV_S_CRTM_VERSION string |
| `boot:app:<sha256>` | each EV_EFI_BOOT_SERVICES_APPLICATION digest on PCR 4 (SHA-256 bank) |

Each kind yields at most `MAX_PER_KIND` values, the first ones in log order; the rest
are dropped. Dropping is safe: a SPIRE registration entry matches a node only when the
node has every selector the entry names, so a missing selector can only withhold an
identity, never grant one. Policy (a later phase) sees the complete facts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from spire_tpm_attestor.eventlog.facts import BootFacts
from spire_tpm_attestor.identity import selector_safe

MAX_PER_KIND: Final = 16
MAX_TEXT: Final = 128  # characters of a firmware version string kept in a selector


def _capped(kind: str, values: Iterable[str]) -> list[str]:
    unique = dict.fromkeys(values)
    return [f"{kind}:{value}" for value in list(unique)[:MAX_PER_KIND]]


def selectors(facts: BootFacts) -> list[str]:
    """Selector values for the facts, in a stable order (see the module docstring)."""
    values: list[str] = []
    if facts.secure_boot is not None:
        values.append("secureboot:enabled" if facts.secure_boot else "secureboot:disabled")
    for kind, database in (
        ("secureboot:pk", facts.pk),
        ("secureboot:kek", facts.kek),
        ("secureboot:db", facts.db),
    ):
        if database is not None:
            values.extend(_capped(kind, database.certificates))
    values.extend(
        _capped(
            "secureboot:authority",
            (found.certificate for found in facts.authorities if found.certificate),
        )
    )
    if facts.dbx is not None:
        values.append(f"secureboot:dbx:{facts.dbx.digest}")
        values.append(f"secureboot:dbx_count:{facts.dbx.entries}")
    if facts.firmware_version:
        values.append(f"firmware:version:{selector_safe(facts.firmware_version)[:MAX_TEXT]}")
    values.extend(_capped("boot:app", facts.boot_applications))
    return values

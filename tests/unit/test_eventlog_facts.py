"""Boot facts and selectors from verified event logs."""

from __future__ import annotations

import hashlib
import re
import uuid

import pytest

from spire_tpm_attestor.eventlog import BootFacts, derive_facts, parse, selectors, verify
from spire_tpm_attestor.eventlog.selectors import MAX_PER_KIND
from spire_tpm_attestor.eventlog.uefi import decode_signature_lists, decode_variable
from tests.eventlog_builder import (
    EFI_GLOBAL_VARIABLE,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    SHA1,
    SHA256,
    BuiltLog,
    EventLogBuilder,
    Machine,
    expected_selectors,
    fingerprint,
    make_certificate,
    signature_database,
    uefi_log,
    variable_data,
)


def facts_of(built: BuiltLog, banks: tuple[int, ...] = (SHA256,)) -> BootFacts:
    verified = verify(parse(built.data), built.quoted(banks))
    return derive_facts(verified.events)


def test_secure_boot_enabled_machine() -> None:
    machine = Machine()
    facts = facts_of(uefi_log(machine=machine).build())
    assert facts.secure_boot is True
    assert facts.pk is not None and facts.pk.certificates == (fingerprint(machine.pk),)
    assert facts.kek is not None and facts.kek.certificates == (fingerprint(machine.kek),)
    assert facts.db is not None
    assert facts.db.certificates == tuple(fingerprint(der) for der in machine.db)
    assert facts.db.hashes == tuple(h.hex() for h in machine.db_hashes)
    assert facts.db.entries == 3
    assert facts.dbx is not None
    assert facts.dbx.digest == hashlib.sha256(machine.dbx_variable).hexdigest()
    assert facts.dbx.entries == len(machine.dbx_hashes)
    assert facts.firmware_version == "Test Firmware 1.2.3"
    assert facts.boot_applications == tuple(
        hashlib.sha256(image).hexdigest() for image in machine.boot_applications
    )
    assert facts.exit_boot_services is True
    assert facts.variables == (
        "BootOrder",
        "Boot0001",
        "SecureBoot",
        "PK",
        "KEK",
        "db",
        "dbx",
        "Shim",
        "SbatLevel",
    )
    assert facts.problems == ()


def test_authorities_with_and_without_owner_guid_certificate_or_repeats() -> None:
    machine = Machine()
    facts = facts_of(uefi_log(machine=machine).build())
    assert [(a.variable, a.certificate) for a in facts.authorities] == [
        ("db", fingerprint(machine.db[0])),  # EFI_SIGNATURE_DATA: owner GUID + certificate
        ("Shim", fingerprint(machine.shim_vendor)),  # bare certificate, logged twice
        ("SbatLevel", None),  # no certificate at all
    ]
    assert facts.authorities[2].digest == hashlib.sha256(b"sbat,1,2024010000\n").hexdigest()


def test_secure_boot_disabled() -> None:
    facts = facts_of(uefi_log(secure_boot=False).build())
    assert facts.secure_boot is False
    assert "secureboot:disabled" in selectors(facts)


def test_secure_boot_measured_without_data_is_unknown_not_an_error() -> None:
    facts = facts_of(uefi_log(secure_boot=None).build())
    assert facts.secure_boot is None and facts.problems == ()
    assert not any(
        value in ("secureboot:enabled", "secureboot:disabled") for value in selectors(facts)
    )


def test_secure_boot_not_measured() -> None:
    facts = facts_of(uefi_log(measure_secure_boot=False).build())
    assert facts.secure_boot is None and "SecureBoot" not in facts.variables


def test_firmware_that_skipped_exit_boot_services() -> None:
    facts = facts_of(uefi_log(exit_boot_services=False).build())
    assert facts.exit_boot_services is False
    assert facts.secure_boot is True


def test_sha1_format_log_facts_from_the_sha1_bank() -> None:
    facts = facts_of(uefi_log(sha1_format=True).build(), banks=(SHA1,))
    assert facts.secure_boot is True and facts.firmware_version == "Test Firmware 1.2.3"
    assert facts.boot_applications == ()  # boot application digests come from the SHA-256 bank


def test_secure_boot_after_the_separator_is_ignored() -> None:
    """Only the firmware, before PCR 7's separator, says what Secure Boot is."""
    builder = uefi_log(measure_secure_boot=False)
    builder.secure_boot(True)  # after the separator: anyone after the firmware could log it
    facts = facts_of(builder.build())
    assert facts.secure_boot is None
    assert any("after PCR 7's separator" in problem for problem in facts.problems)


def test_first_secure_boot_measurement_wins() -> None:
    builder = EventLogBuilder()
    builder.secure_boot(False).secure_boot(True).separators([7])
    assert facts_of(builder.build()).secure_boot is False


def test_secure_boot_variable_with_wrong_vendor_is_ignored() -> None:
    builder = EventLogBuilder()
    builder.variable(
        7,
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        uuid.UUID(int=5),
        "SecureBoot",
        b"\x01",
    )
    facts = facts_of(builder.build())
    assert facts.secure_boot is None and any("vendor GUID" in p for p in facts.problems)


def test_secure_boot_on_another_pcr_is_ignored() -> None:
    builder = EventLogBuilder()
    builder.variable(1, EV_EFI_VARIABLE_DRIVER_CONFIG, EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01")
    facts = facts_of(builder.build())
    assert facts.secure_boot is None and facts.variables == ("SecureBoot",)


def test_signature_database_tolerates_a_broken_list() -> None:
    good = signature_database([make_certificate("test db 1")])
    data = good + b"\x00" * 20  # a truncated second list
    lists, problem = decode_signature_lists(memoryview(data))
    assert len(lists) == 1 and problem is not None and "truncated" in problem
    builder = EventLogBuilder()
    builder.database("db", data).separators([7])
    facts = facts_of(builder.build())
    assert facts.db is not None and facts.db.certificates == (
        fingerprint(make_certificate("test db 1")),
    )
    assert any("truncated" in problem for problem in facts.problems)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"short", "too short"),
        (EFI_GLOBAL_VARIABLE.bytes_le + (10**6).to_bytes(8, "little") + bytes(8), "character name"),
        (
            EFI_GLOBAL_VARIABLE.bytes_le + (50).to_bytes(8, "little") + bytes(8) + b"a\x00",
            "overruns",
        ),
    ],
)
def test_undecodable_variables(data: bytes, words: str) -> None:
    result = decode_variable(memoryview(data))
    assert isinstance(result, str) and words in result


def test_variable_data_length_mismatch_is_tolerated() -> None:
    data = variable_data(EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01")
    longer = decode_variable(memoryview(data[:24] + (5).to_bytes(8, "little") + data[32:]))
    assert not isinstance(longer, str) and bytes(longer.data) == b"\x01" and longer.problem
    trailing = decode_variable(memoryview(data + b"zz"))
    assert not isinstance(trailing, str) and bytes(trailing.data) == b"\x01" and trailing.problem


# --- selectors ------------------------------------------------------------------------


def test_selectors_of_a_secure_boot_machine() -> None:
    machine = Machine()
    values = selectors(facts_of(uefi_log(machine=machine).build()))
    assert values == expected_selectors(machine)
    shape = re.compile(r"[a-z_]+(:[a-z_]+)*:[\x21-\x7e ]+")
    assert all(shape.fullmatch(value) for value in values)


def test_selectors_are_capped_per_kind() -> None:
    machine = Machine(
        db=tuple(make_certificate(f"test db {n}") for n in range(MAX_PER_KIND + 4)),
        boot_applications=tuple(b"image %d" % n for n in range(MAX_PER_KIND + 4)),
    )
    facts = facts_of(uefi_log(machine=machine).build())
    assert facts.db is not None and len(facts.db.certificates) == MAX_PER_KIND + 4
    values = selectors(facts)
    db = [value for value in values if value.startswith("secureboot:db:")]
    apps = [value for value in values if value.startswith("boot:app:")]
    assert len(db) == MAX_PER_KIND and len(apps) == MAX_PER_KIND
    assert db[0] == f"secureboot:db:{fingerprint(machine.db[0])}"  # the first ones, in log order


def test_boot_application_repeats_are_one_selector() -> None:
    machine = Machine(boot_applications=(b"shim", b"grub", b"grub", b"kernel"))
    facts = facts_of(uefi_log(machine=machine).build())
    assert len(facts.boot_applications) == 4
    assert len([v for v in selectors(facts) if v.startswith("boot:app:")]) == 3


def test_firmware_version_is_made_selector_safe_and_bounded() -> None:
    builder = EventLogBuilder()
    builder.crtm_version("Vendor\nFirmware\t" + "x" * 300)
    facts = facts_of(builder.build())
    (value,) = selectors(facts)
    assert value.startswith("firmware:version:Vendor_Firmware_xxx")
    assert len(value) == len("firmware:version:") + 128

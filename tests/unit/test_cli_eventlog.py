"""`spire-tpm-attestor eventlog inspect`: the report, its exit codes, no traceback on any input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from spire_tpm_attestor.cli.main import main
from tests.eventlog_builder import SHA256, Machine, fingerprint, uefi_log

MACHINE = Machine()


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["eventlog", "inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_pcrs(path: Path, values: dict[int, bytes]) -> str:
    path.write_text(json.dumps({"sha256": {str(i): v.hex() for i, v in values.items()}}))
    return str(path)


def test_the_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = uefi_log(machine=MACHINE).build()
    (tmp_path / "log").write_bytes(built.data)
    code, out, _ = inspect(capsys, str(tmp_path / "log"), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["pcrs"]["sha256"] == {str(i): v.hex() for i, v in built.pcrs[SHA256].items()}
    assert set(report["pcrs"]) == {"sha1", "sha256"}
    assert report["secure_boot"] == {
        "enabled": True,
        "authorities": [fingerprint(MACHINE.db[0]), fingerprint(MACHINE.shim_vendor)],
        "variables": [
            "BootOrder",
            "Boot0001",
            "SecureBoot",
            "PK",
            "KEK",
            "db",
            "dbx",
            "Shim",
            "SbatLevel",
        ],
    }
    assert "secureboot:enabled" in report["selectors"]
    assert "replay_ok" not in report


def test_replay_against_pcrs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = uefi_log(machine=MACHINE).build()
    (tmp_path / "log").write_bytes(built.data)
    good = {i: built.pcr_value(SHA256, i) for i in range(8)}
    pcrs = write_pcrs(tmp_path / "pcrs.json", good)
    code, out, _ = inspect(capsys, str(tmp_path / "log"), "--pcrs", pcrs, "--json")
    assert code == 0 and json.loads(out)["replay_ok"] is True

    pcrs = write_pcrs(tmp_path / "pcrs.json", {**good, 4: b"\x04" * 32})
    code, out, _ = inspect(capsys, str(tmp_path / "log"), "--pcrs", pcrs, "--json")
    report = json.loads(out)
    assert code == 1 and report["replay_ok"] is False and report["selectors"] == []
    assert "does not match PCR sha256:4" in report["mismatch"]

    code, out, _ = inspect(capsys, str(tmp_path / "log"), "--pcrs", pcrs)
    assert code == 1 and "replay: MISMATCH" in out and "secure boot: enabled" in out


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 64, b"garbage", uefi_log().build().data[:-7], b"\xff" * 40],
    ids=["empty", "zeros", "garbage", "truncated", "ones"],
)
def test_an_unparseable_log_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    (tmp_path / "log").write_bytes(content)
    code, out, err = inspect(capsys, str(tmp_path / "log"))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "Traceback" not in err


def test_bad_pcrs_files_and_missing_logs_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log").write_bytes(uefi_log().build().data)
    for content in (
        "{",
        '{"md5": {}}',
        '{"sha256": {"0": "zz"}}',
        '{"sha256": {"0": []}}',
        "[]",
        "{}",
    ):
        (tmp_path / "pcrs.json").write_text(content)
        code, _, err = inspect(capsys, str(tmp_path / "log"), "--pcrs", str(tmp_path / "pcrs.json"))
        assert code == 2 and err.startswith("error: "), (content, err)
    code, _, err = inspect(capsys, str(tmp_path / "absent"))
    assert code == 2 and "absent" in err


def test_random_mutations_never_escape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Flipped bytes anywhere: each run ends in exit 0, 1 or 2, never an exception."""
    data = bytearray(uefi_log().build().data)
    chance = random.Random(11)
    for _ in range(200):
        mutated = bytearray(data)
        for _ in range(chance.randint(1, 4)):
            mutated[chance.randrange(len(mutated))] = chance.randrange(256)
        (tmp_path / "log").write_bytes(bytes(mutated))
        code, _, _ = inspect(capsys, str(tmp_path / "log"), "--json")
        assert code in (0, 1, 2)

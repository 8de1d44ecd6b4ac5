"""THREAT_MODEL.md names only tests that exist (tests/check_threat_model.py)."""

from __future__ import annotations

from pathlib import Path

from tests.check_threat_model import ROOT, main, missing_ids


def test_every_test_the_threat_model_names_exists() -> None:
    count, missing = missing_ids(ROOT / "THREAT_MODEL.md")
    assert count >= 40
    assert missing == []


def test_a_renamed_test_is_reported(tmp_path: Path) -> None:
    document = tmp_path / "THREAT_MODEL.md"
    document.write_text(
        "`tests/unit/test_threat_model.py::test_every_test_the_threat_model_names_exists`\n"
        "`tests/unit/test_threat_model.py::test_that_was_renamed`\n"
        "`tests/unit/no_such_file.py::test_anything`\n"
    )
    assert missing_ids(document) == (
        3,
        [
            "tests/unit/no_such_file.py::test_anything",
            "tests/unit/test_threat_model.py::test_that_was_renamed",
        ],
    )
    assert main([str(document)]) == 1

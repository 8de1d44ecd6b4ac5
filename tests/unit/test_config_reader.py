"""ConfigReader additions: durations and labeled blocks (in order, problems collected)."""

from __future__ import annotations

from typing import Any

import pytest

from spire_tpm_attestor.runtime.config import ConfigReader, parse_duration, parse_hcl


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("60s", 60), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "60", "s", "1d", "-1s", "1 h", "1h 30m", "5mm", "h1"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def reader_for(text: str) -> tuple[ConfigReader, list[str]]:
    problems: list[str] = []
    return ConfigReader(parse_hcl(text), problems), problems


def test_duration_option_problems() -> None:
    reader, problems = reader_for('a = "10ms"\nb = "soon"\nc = 5')
    assert reader.duration("a", 1.0, minimum=0.1) == 1.0
    assert reader.duration("b", 2.0) == 2.0
    assert reader.duration("c", 3.0) == 3.0
    assert reader.duration("missing", 4.0) == 4.0
    assert problems == [
        "a: must be at least 0.1s",
        'b: \'soon\' is not a duration such as "500ms", "60s", "5m" or "1h"',
        "c: expected a string, got integer",
    ]


def labels(blocks: list[tuple[str, ConfigReader]]) -> list[str]:
    return [label for label, _ in blocks]


def test_labeled_blocks_keep_their_order() -> None:
    reader, problems = reader_for(
        """
        allowlist "zeta" {
          path = "/z"
        }
        allowlist "alpha" {
          path = "/a"
        }
        allowlist "mid" {
          path = "/m"
        }
        """
    )
    blocks = reader.labeled_blocks("allowlist")
    assert labels(blocks) == ["zeta", "alpha", "mid"]
    assert [block.string("path") for _, block in blocks] == ["/z", "/a", "/m"]
    assert problems == []


def test_a_single_labeled_block() -> None:
    reader, problems = reader_for('denylist "revoked" {\n  path = "/r"\n}')
    (label, block), *rest = reader.labeled_blocks("denylist")
    assert (label, block.string("path"), rest, problems) == ("revoked", "/r", [], [])


def test_unknown_options_in_a_block_are_named() -> None:
    reader, problems = reader_for('allowlist "x" {\n  path = "/x"\n  pth = "/y"\n}')
    (_, block), *_ = reader.labeled_blocks("allowlist")
    block.string("path")
    block.finish()
    assert problems == ["allowlist.x.pth: unknown option"]


@pytest.mark.parametrize(
    "document",
    [
        {"allowlist": {"type": "directory"}},  # `allowlist { ... }` without a label
        {"allowlist": "x"},
    ],
)
def test_unlabeled_blocks_are_a_problem(document: dict[str, Any]) -> None:
    problems: list[str] = []
    assert ConfigReader(document, problems).labeled_blocks("allowlist") == []
    assert problems == ['allowlist: expected labeled blocks: allowlist "label" { ... }']


def test_json_list_form_and_duplicate_labels() -> None:
    problems: list[str] = []
    document = {"allowlist": [{"a": {"path": "/1"}}, {"b": {}}, {"a": {"path": "/2"}}]}
    blocks = ConfigReader(document, problems).labeled_blocks("allowlist")
    assert labels(blocks) == ["a", "b"]
    assert problems == ["allowlist: 'a' is configured twice"]

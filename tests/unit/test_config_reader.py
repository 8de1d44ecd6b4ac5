"""ConfigReader: declared options, durations and labeled blocks (in order, problems
collected)."""

from __future__ import annotations

from typing import Any

import pytest

from spire_tpm_attestor.runtime.config import (
    ConfigReader,
    Option,
    declare,
    format_duration,
    options_table,
    parse_duration,
    parse_hcl,
)

BLOCK = declare(Option("path", "string", "a path"))
OPTIONS = declare(
    Option("a", "duration", "", default=1.0),
    Option("b", "duration", "", default=2.0),
    Option("c", "duration", "", default=3.0),
    Option("missing", "duration", "", default=4.0),
    Option("allowlist", "blocks", ""),
    Option("denylist", "blocks", ""),
)


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
    return ConfigReader(parse_hcl(text), problems, OPTIONS), problems


def test_duration_option_problems() -> None:
    reader, problems = reader_for('a = "10ms"\nb = "soon"\nc = 5')
    assert reader.duration("a", minimum=0.1) == 1.0
    assert reader.duration("b", minimum=0) == 2.0
    assert reader.duration("c", minimum=0) == 3.0
    assert reader.duration("missing", minimum=0) == 4.0
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
    blocks = reader.labeled_blocks("allowlist", BLOCK)
    assert labels(blocks) == ["zeta", "alpha", "mid"]
    assert [block.string("path") for _, block in blocks] == ["/z", "/a", "/m"]
    assert problems == []


def test_a_single_labeled_block() -> None:
    reader, problems = reader_for('denylist "revoked" {\n  path = "/r"\n}')
    (label, block), *rest = reader.labeled_blocks("denylist", BLOCK)
    assert (label, block.string("path"), rest, problems) == ("revoked", "/r", [], [])


def test_unknown_options_in_a_block_are_named() -> None:
    reader, problems = reader_for('allowlist "x" {\n  path = "/x"\n  pth = "/y"\n}')
    (_, block), *_ = reader.labeled_blocks("allowlist", BLOCK)
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
    assert ConfigReader(document, problems, OPTIONS).labeled_blocks("allowlist", BLOCK) == []
    assert problems == ['allowlist: expected labeled blocks: allowlist "label" { ... }']


def test_json_list_form_and_duplicate_labels() -> None:
    problems: list[str] = []
    document = {"allowlist": [{"a": {"path": "/1"}}, {"b": {}}, {"a": {"path": "/2"}}]}
    blocks = ConfigReader(document, problems, OPTIONS).labeled_blocks("allowlist", BLOCK)
    assert labels(blocks) == ["a", "b"]
    assert problems == ["allowlist: 'a' is configured twice"]


def test_an_undeclared_key_is_an_unknown_option_even_when_read_nowhere() -> None:
    reader, problems = reader_for('a = "1s"\nb_typo = "2s"')
    reader.finish()
    assert problems == ["b_typo: unknown option"]


@pytest.mark.parametrize(
    "read",
    [
        lambda reader: reader.string("undeclared"),
        lambda reader: reader.has("undeclared"),
        lambda reader: reader.string("a"),  # declared as a duration
    ],
)
def test_reading_an_undeclared_option_is_a_bug_not_a_problem(read: Any) -> None:
    reader, _ = reader_for('a = "1s"')
    with pytest.raises(LookupError, match="is not declared"):
        read(reader)


def test_an_option_is_declared_once() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        declare(Option("a", "string", ""), Option("a", "boolean", ""))


def test_option_types_are_known() -> None:
    with pytest.raises(ValueError, match="is not in"):
        Option("a", "text", "")


@pytest.mark.parametrize(
    ("seconds", "text"), [(60, "60s"), (3600, "1h"), (7200, "2h"), (0.5, "0.5s")]
)
def test_default_durations_are_written_as_the_readme_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_options_table() -> None:
    table = declare(
        Option("x", "boolean", "turns x on", default=False),
        Option("y", "blocks", "ys"),
        Option("z", "string", "where", default_text="the current directory"),
    )
    assert options_table(table).splitlines() == [
        "| option | default | meaning |",
        "|---|---|---|",
        "| `x` | `false` | turns x on |",
        '| `y "<label>" { ... }` | none | ys |',
        "| `z` | the current directory | where |",
    ]


def test_a_nul_or_a_lone_surrogate_in_a_string_or_path_is_a_problem() -> None:
    """The OS refuses a path with a NUL (ValueError) or a lone surrogate
    (UnicodeEncodeError), which Validate would answer as INTERNAL: a problem instead
    (found by tests/fuzz)."""
    from server_plugin.config import build_server_config
    from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig

    reader = ConfigReader(
        parse_hcl('{"path": "a\\u0000b", "list": ["ok", "x\\u0000"]}'),  # JSON unescapes
        problems := [],
        declare(Option("path", "string", ""), Option("list", "strings", "")),
    )
    assert reader.string("path") is None and reader.string_list("list") == []
    assert problems == ["path: holds a NUL character", "list: holds a NUL character"]
    with pytest.raises(ConfigProblems, match="ek_ca_path: holds a NUL character"):
        build_server_config('ek_ca_path = "/etc/\x00ca.pem"', CoreConfig("example.org"))
    with pytest.raises(ConfigProblems, match="ek_ca_path: holds a lone surrogate"):
        build_server_config('{"ek_ca_path": "/etc/\\ud800"}', CoreConfig("example.org"))

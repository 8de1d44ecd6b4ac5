"""The allowlist JSON document: strict parsing, the compact index, rendering."""

from __future__ import annotations

import hashlib
import json
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server_plugin.allowlist import AllowlistEntry, AllowlistError
from server_plugin.allowlist import document as allowlist_document
from server_plugin.allowlist.document import (
    DocumentError,
    DocumentParser,
    Index,
    parse_document,
    read_document_file,
    render_document,
)


def ek_hash(n: int) -> str:
    return hashlib.sha256(n.to_bytes(4, "big")).hexdigest()


def document(*entries: Any, **top: Any) -> bytes:
    return json.dumps({"version": 1, "entries": list(entries), **top}).encode()


def test_lookups_find_every_entry_and_only_those() -> None:
    hashes = [ek_hash(n) for n in range(500)]
    body = document(*({"pub_hash": h} for h in reversed(hashes)))  # unsorted on purpose
    index = parse_document(body, "src")
    assert len(index) == 500
    for h in hashes:
        assert index.lookup(h, "src") == AllowlistEntry(pub_hash=h, source="src")
    for n in range(500, 600):
        assert index.lookup(ek_hash(n), "src") is None
    assert index.lookup("0" * 64, "src") is None
    assert index.lookup("f" * 64, "src") is None


def test_metadata_is_kept_for_the_entries_that_have_it() -> None:
    body = document(
        {"pub_hash": ek_hash(1), "name": "node-1", "labels": {"rack": "r1", "ü": "ß"}},
        {"pub_hash": ek_hash(2)},
        {"pub_hash": ek_hash(3), "labels": {"role": "db"}},
        {"pub_hash": ek_hash(4), "name": "node-4"},
    )
    index = parse_document(body, "src")
    assert index.lookup(ek_hash(1), "src") == AllowlistEntry(
        ek_hash(1), "node-1", {"rack": "r1", "ü": "ß"}, "src"
    )
    assert index.lookup(ek_hash(2), "src") == AllowlistEntry(ek_hash(2), source="src")
    assert index.lookup(ek_hash(3), "src") == AllowlistEntry(
        ek_hash(3), None, {"role": "db"}, "src"
    )
    assert index.lookup(ek_hash(4), "src") == AllowlistEntry(ek_hash(4), "node-4", {}, "src")
    assert len(index.meta_digests) == 3 * 32


def test_an_empty_list_is_a_list() -> None:
    assert len(parse_document(document(), "src")) == 0


def test_lookup_of_something_that_is_not_an_ek_hash_is_an_error() -> None:
    index = parse_document(document({"pub_hash": ek_hash(1)}), "src")
    with pytest.raises(AllowlistError):
        index.lookup("../etc/passwd", "src")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps({"entries": []}).encode(), "unsupported version None"),
        (json.dumps({"version": 2, "entries": []}).encode(), "unsupported version 2"),
        (json.dumps({"version": "1", "entries": []}).encode(), "unsupported version '1'"),
        (json.dumps({"version": True, "entries": []}).encode(), "unsupported version True"),
        (json.dumps({"version": 1}).encode(), '"entries" must be a list'),
        (document(generated="today"), "unknown keys ['generated']"),
        (document({"pub_hash": ek_hash(1)}, "x"), "entry 1 must be a JSON object"),
        (document({"name": "n"}), "entry 0: pub_hash must be 64 lowercase hex digits"),
        (document({"pub_hash": ek_hash(1).upper()}), "entry 0: pub_hash must be 64 lowercase"),
        (document({"pub_hash": ek_hash(1)[:63]}), "entry 0: pub_hash"),
        (document({"pub_hash": ek_hash(1) + "\n"}), "entry 0: pub_hash"),
        (document({"pub_hash": " " + ek_hash(1)[1:]}), "entry 0: pub_hash"),
        (document({"pub_hash": 7}), "entry 0: pub_hash"),
        (document({"pub_hash": ek_hash(1)}, {"pub_hash": ek_hash(2), "nmae": "x"}), "entry 1:"),
        (document({"pub_hash": ek_hash(1), "name": 7}), "entry 0: "),
        (document({"pub_hash": ek_hash(1), "labels": ["a"]}), "entry 0: "),
        (document({"pub_hash": ek_hash(1), "labels": {"a": 1}}), "labels must map strings"),
        (document({"pub_hash": ek_hash(1)}, {"pub_hash": ek_hash(1)}), "listed more than once"),
    ],
)
def test_malformed_documents_are_rejected_whole_with_the_reason(body: bytes, words: str) -> None:
    with pytest.raises(DocumentError) as error:
        parse_document(body, "src")
    assert words in str(error.value)


def test_render_then_parse_round_trips() -> None:
    entries = [
        AllowlistEntry(ek_hash(2), "node-2", {"rack": "r1", "a": "b"}),
        AllowlistEntry(ek_hash(1)),
        AllowlistEntry(ek_hash(3), None, {"x": "y"}),
    ]
    text = render_document(entries)
    parsed = json.loads(text)
    assert parsed["version"] == 1
    assert [e["pub_hash"] for e in parsed["entries"]] == sorted(e.pub_hash for e in entries)
    assert {"pub_hash": ek_hash(1)} in parsed["entries"]  # no empty metadata written
    index = parse_document(text.encode(), "src")
    for entry in entries:
        assert index.lookup(entry.pub_hash, "src") == AllowlistEntry(
            entry.pub_hash, entry.name, entry.labels, "src"
        )
    assert len(parse_document(render_document([]).encode(), "src")) == 0


@pytest.mark.parametrize(
    "metadata",
    [{"labels": {"a:b": "c"}}, {"name": "rack12/node07"}, {"name": "node07\n"}],
)
def test_documents_with_ambiguous_metadata_are_rejected_whole(metadata: dict[str, Any]) -> None:
    with pytest.raises(DocumentError, match="entry 1: "):
        parse_document(
            document({"pub_hash": ek_hash(1)}, {"pub_hash": ek_hash(2), **metadata}), "src"
        )


# --- the parse in pieces --------------------------------------------------------------
# The document is parsed as it arrives, a piece at a time; whatever the pieces, the
# outcome must be what json.loads and the checks after it give for the whole body.

H1, H2, H3 = ek_hash(1), ek_hash(2), ek_hash(3)
ESCAPED_H1 = "".join(f"\\u{ord(c):04x}" if c in "0a" else c for c in H1)
SORTED = sorted(ek_hash(n) for n in range(3000))  # the order render_document writes
FIRST_LABELLED = min(SORTED.index(ek_hash(n)) for n in range(0, 3000, 7))
LOTS = render_document(
    AllowlistEntry(ek_hash(n), f"node-{n}", {"rack": "}, {"})
    if n % 7 == 0
    else AllowlistEntry(ek_hash(n))
    for n in range(3000)
)


def in_pieces(size: int) -> Callable[[bytes], Index]:
    def parse(body: bytes) -> Index:
        parser = DocumentParser("src")
        for start in range(0, len(body), size):
            parser.feed(body[start : start + size])
        return parser.finish()

    return parse


WAYS: dict[str, tuple[int, Callable[[bytes], Index]]] = {
    # name: (characters parsed at a time, how the body is given)
    "whole bytes": (1 << 20, lambda body: parse_document(body, "src")),
    "whole text": (1 << 20, lambda body: parse_document(body.decode(), "src")),
    "bytearray": (1 << 20, lambda body: parse_document(bytearray(body), "src")),
    "byte by byte": (1, in_pieces(1)),
    "odd pieces": (7, in_pieces(5)),
    "text, small slices": (13, lambda body: parse_document(body.decode(), "src")),
}


TEXT_WAYS = {"whole text", "text, small slices"}  # for UTF-8 bodies only


@pytest.fixture(params=list(WAYS))
def parse(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[bytes], Index]:
    piece, way = WAYS[request.param]
    monkeypatch.setattr(allowlist_document, "PIECE", piece)
    return way


@pytest.fixture(params=[way for way in WAYS if way not in TEXT_WAYS])
def parse_bytes(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[bytes], Index]:
    piece, way = WAYS[request.param]
    monkeypatch.setattr(allowlist_document, "PIECE", piece)
    return way


def as_json_reads_it(text: str) -> dict[str, AllowlistEntry]:
    entries = json.loads(text)["entries"]
    return {
        e["pub_hash"]: AllowlistEntry(e["pub_hash"], e.get("name"), e.get("labels", {}), "src")
        for e in entries
    }


@pytest.mark.parametrize(
    "text",
    [
        f'{{"version":1,"entries":[{{"pub_hash":"{H1}"}},{{"pub_hash":"{H2}","name":"n"}}]}}',
        f' \r\n{{ "version" : 1 ,\n\t"entries" : [\n {{ "pub_hash" : "{H1}" }} ,\n\n'
        f' {{ "name" : "n" , "pub_hash" : "{H2}" , "labels" : {{ }} }}\n ]\n}}\r\n ',
        f'{{"entries": [{{"pub_hash": "{H1}"}}], "version": 1}}',
        '{"version": 1 , "entries": [] }',
        # Escapes in keys and values; a surrogate pair; JSON inside strings.
        f'{{"\\u0076ersion": 1, "entr\\u0069es": [{{"pub\\u005fhash": "{ESCAPED_H1}", '
        f'"name": "\\ud83d\\ude00 caf\\u00e9 \\"x\\"", '
        f'"labels": {{"r\\u00e4ck": "}}, {{\\"a\\": ["}}}}]}}',
        f'{{"version": 1, "entries": [{{"pub_hash": "{H1}", '
        f'"name": "}}, {{\\"pub_hash\\": 1}}, {{"}}, '
        f'{{"labels": {{"]": "}}]"}}, "pub_hash": "{H2}"}}]}}',
        f'{{"version": 1, "entries": [{{"pub_hash": "{H1}", "labels": {{"x": "y"}}, "name": "z"}},'
        f' {{"pub_hash": "{H2}"}}]}}',
        # A key given twice counts once, the last time, as in a dict.
        f'{{"version": 1, "entries": [{{"pub_hash": "{H3}"}}], '
        f'"entries": [{{"pub_hash": "{H1}"}}]}}',
        '{"version": 2, "entries": [], "version": 1}',
        f'{{"version": 1, "entries": [{{"pub_hash": "{H1}", "name": "a", "name": null}}]}}',
        '{"version": 1, "entries": []}',
        '{"version":1,"entries":[ ]}',
        LOTS,
    ],
    ids=[
        "compact",
        "whitespace",
        "entries_first",
        "spaces_before_commas",
        "escapes",
        "json_in_strings",
        "labels_before_name",
        "entries_twice",
        "version_twice",
        "name_twice",
        "empty",
        "empty_spaced",
        "3000_entries",
    ],
)
def test_documents_read_as_json_reads_them(parse: Callable[[bytes], Index], text: str) -> None:
    if text is LOTS and parse is WAYS["byte by byte"][1]:
        pytest.skip("a byte at a time is for the small documents")
    index = parse(text.encode())
    expected = as_json_reads_it(text)
    assert len(index) == len(expected)
    for pub_hash, entry in expected.items():
        assert index.lookup(pub_hash, "src") == entry
    assert index.lookup(ek_hash(5000), "src") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f'{{"version": 1, "entries": [{{"pub_hash": "{H1}"}}]}} x', "trailing garbage"),
        ('{"version": 1, "entries": []}{"version": 1, "entries": []}', "trailing garbage"),
        ('{"version": 1, "entries": [], "generated": "now"}', "unknown keys ['generated']"),
        (f'{{"version": 1, "entries": [], "more": [{{"pub_hash": "{H1}"}}, 2]}}', "unknown keys"),
        ('{"entries": [], "version": 2}', "unsupported version 2"),
        ('{"entries": [], "version": [1]}', "unsupported version [1]"),
        # Numbers that a piece may cut short (`1` then `.0`); the spaces empty the text
        # held over just before the number.
        (f'{{"entries": [], "version"{" " * 20}: 1.0{" " * 20}}}', "unsupported version 1.0"),
        (f'{{"entries": [], "version"{" " * 20}: 10{" " * 20}}}', "unsupported version 10"),
        (f'{{"entries": [], "version"{" " * 20}: 1e0{" " * 20}}}', "unsupported version 1.0"),
        (
            f'{{"version": 1, "entries": [{{"pub_hash": "{H1}"}}], "entries": {{}}}}',
            "must be a list",
        ),
        ('{"version": 1, "entries": [], "entries": 7}', '"entries" must be a list'),
        (
            f'{{"version": 1, "entries": [{{"pub_hash": "{H1}"}}, '
            f'{{"pub_hash": "{H2}", "labels": {{"a": {{"b": "c"}}}}}}]}}',
            f"entry 1: src: entry {H2}: labels must map strings to strings",
        ),
        (f'{{"version": 1, "entries": [{{"pub_hash": "{H1}"}}, [], 7]}}', "entry 1 must be"),
        (f'[{{"pub_hash": "{H1}"}}]', "the document must be a JSON object"),
        ('"a string"', "the document must be a JSON object"),
        ("7", "the document must be a JSON object"),
        (LOTS.replace(SORTED[2500], SORTED[2500].upper()), "entry 2500: pub_hash"),
        (LOTS.replace(SORTED[2500], SORTED[17]), f"EK hash {SORTED[17]} is listed more than once"),
        (
            LOTS.replace('"labels"', '"lables"'),
            f"entry {FIRST_LABELLED}: src: entry {SORTED[FIRST_LABELLED]} "
            "has unknown keys ['lables']",
        ),
    ],
    ids=[
        "trailing_garbage",
        "two_documents",
        "key_after_entries",
        "unknown_array",
        "version_after_entries",
        "version_a_list",
        "version_1.0",
        "version_10",
        "version_1e0",
        "entries_then_not_a_list",
        "entries_twice_last_bad",
        "nested_labels",
        "entry_not_an_object",
        "array",
        "string",
        "number",
        "bad_hash_far_in",
        "duplicate_far_in",
        "unknown_key_far_in",
    ],
)
def test_problems_are_found_whatever_the_pieces(
    parse: Callable[[bytes], Index], text: str, words: str
) -> None:
    if len(text) > 10_000 and parse is WAYS["byte by byte"][1]:
        pytest.skip("a byte at a time is for the small documents")
    with pytest.raises(DocumentError) as error:
        parse(text.encode())
    assert words in str(error.value)


SPACED = (
    f'{{\n  "version": 1,\n  "entries": [\n    {{"pub_hash": "{H1}", "name": "a\\u00e9"}},\n'
    f'    {{"pub_hash": "{H2}", "labels": {{"k": "v"}}}}\n  ]\n}}\n'
)
BROKEN = [SPACED[:cut] for cut in range(len(SPACED.rstrip()))] + [
    SPACED.replace(",\n    {", "\n    {"),
    SPACED.replace('"k": "v"', '"k" "v"'),
    SPACED.replace('"k": "v"', '"k": v'),
    SPACED.replace('"version": 1', '"version": 1.'),
    SPACED.replace('"version": 1', '"version": -'),
    SPACED.replace('"version": 1', '"version": tru'),
    SPACED.replace('"a\\u00e9"', '"a\\u00g9"'),
    SPACED.replace('"a\\u00e9"', '"a\tb"'),
    SPACED.replace("  ]\n}", "  ,]\n}"),
    SPACED.replace("]\n}", "]\n,}"),
    SPACED.replace('{"pub_hash": "' + H2, '{pub_hash: "' + H2),
    SPACED + "]",
]


@pytest.mark.parametrize("text", BROKEN)
def test_json_errors_say_why_and_where(parse: Callable[[bytes], Index], text: str) -> None:
    """What json.loads refuses is refused with yajl's reason and the byte near which it
    stopped (where json.loads stops, or after), whatever the pieces."""
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text.encode())
    with pytest.raises(DocumentError) as error:
        parse(text.encode())
    found = re.fullmatch(
        r"not valid JSON: (?:parse|lexical) error: .+ near byte (\d+)", str(error.value)
    )
    assert found, str(error.value)
    # yajl may read on to the end of a string json.loads finds unterminated at its start.
    assert expected.value.pos - 8 <= int(found.group(1)) <= len(text.encode()), expected.value


def test_a_bom_in_text_is_refused_as_json_loads_refuses_it() -> None:
    text = "\ufeff" + render_document([])
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(DocumentError) as error:
        parse_document(text, "src")
    assert str(error.value) == f"not valid JSON: {expected.value}"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32-le"])
def test_every_encoding_json_reads(parse_bytes: Callable[[bytes], Index], encoding: str) -> None:
    text = f'{{"version": 1, "entries": [{{"pub_hash": "{H1}", "name": "caf\u00e9 \U0001f600"}}]}}'
    index = parse_bytes(text.encode(encoding))
    assert index.lookup(H1, "src") == AllowlistEntry(H1, "caf\u00e9 \U0001f600", {}, "src")


def test_bytes_that_do_not_decode_come_before_any_syntax_error(
    parse_bytes: Callable[[bytes], Index],
) -> None:
    body = b'{"version": 1, ?"entries": [' + b'{"pub_hash": "' + H1.encode() + b'\xff"}]}'
    with pytest.raises(UnicodeDecodeError) as expected:
        json.loads(body)
    with pytest.raises(DocumentError) as error:
        parse_bytes(body)
    assert str(error.value) == f"not valid JSON: {expected.value}"


@pytest.mark.parametrize(
    "where",
    ['"name": "node \ud800"', '"labels": {"\ud800": "x"}', '"\ud800": 1'],
)
def test_a_lone_surrogate_encoded_in_the_bytes_is_refused(
    parse_bytes: Callable[[bytes], Index], where: str
) -> None:
    """json.loads decodes a lone surrogate's bytes (surrogatepass) and the checks refuse
    the document; yajl stops on them: a DocumentError too, never its UnicodeDecodeError
    (found by tests/fuzz)."""
    text = f'{{"version": 1, "entries": [{{"pub_hash": "{H1}", {where}}}]}}'
    with pytest.raises(DocumentError, match="lone surrogate"):
        parse_bytes(text.encode("utf-8", "surrogatepass"))
    with pytest.raises(DocumentError, match="lone surrogate"):
        parse_document(text, "src")  # as text


def test_a_document_file_is_read_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allowlist_document, "PIECE", 1000)
    path = tmp_path / "allowlist.json"
    path.write_text(LOTS)
    index = read_document_file(str(path), "src")
    assert index == parse_document(LOTS, "src")
    path.write_text(LOTS + "x")
    with pytest.raises(DocumentError, match="trailing garbage"):
        read_document_file(str(path), "src")


def test_text_and_bytes_do_not_mix() -> None:
    parser = DocumentParser("src")
    parser.feed(b"{")
    with pytest.raises(TypeError):
        parser.feed('"version"')


def test_the_parse_holds_less_than_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON tree of a document is five or six times its size; the parse holds the
    index, a few pieces of text and the entries of one piece, never the tree."""
    monkeypatch.setattr(allowlist_document, "PIECE", 1 << 16)
    body = render_document(
        AllowlistEntry(ek_hash(n), f"node-{n}" if n % 10 == 0 else None) for n in range(50_000)
    ).encode()
    tracemalloc.start()
    try:
        index = parse_document(body, "src")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == 50_000
    assert peak < len(body), f"the parse peaked at {peak} bytes for a {len(body)}-byte document"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"version": 1, "entries": [' + b"[" * 100_000,
        b'{"version": 1, "entries": [{"pub_hash": "'
        + H1.encode()
        + b'", "labels": '
        + b'{"a": ' * 100_000,
        b'{"version": ' + b"[" * 70 + b"]" * 70 + b', "entries": []}',
    ],
    ids=["top", "entries", "labels", "version"],
)
def test_deep_nesting_is_a_clear_error_not_a_crash(
    parse_bytes: Callable[[bytes], Index], body: bytes
) -> None:
    if len(body) > 10_000 and parse_bytes is WAYS["byte by byte"][1]:
        pytest.skip("a byte at a time is for the small documents")
    with pytest.raises(DocumentError, match=r"^not valid JSON: nested too deeply \(more than"):
        parse_bytes(body)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"version": 1, "entries": [], "\u00fcber": 1}', "unknown keys ['\u00fcber']"),
        ('{"version": 1, "entries": []} \u00e9', "not valid JSON: parse error: trailing garbage"),
        ('{"version": \u00e9, "entries": []}', "not valid JSON: lexical error: "),
        ('{"version": 1, "entries": [\u00ab]}', "not valid JSON: lexical error: "),
        (
            f'{{"version": 1, "entries": [{{"pub_hash": "{H1}", "labels": {{"\u00e9": 1}}}}]}}',
            "labels must map strings to strings",
        ),
    ],
    ids=["unknown_key", "after_the_document", "version", "in_entries", "label"],
)
def test_non_ascii_tokens_are_clear_errors(
    parse: Callable[[bytes], Index], text: str, words: str
) -> None:
    with pytest.raises(DocumentError) as error:
        parse(text.encode())
    assert words in str(error.value)

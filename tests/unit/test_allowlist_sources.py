"""Directory layouts and the local document file, looked up directly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from server_plugin.allowlist import AllowlistEntry, AllowlistError, AllowlistSource
from server_plugin.allowlist.directory import BucketedDirectory, FlatDirectory
from server_plugin.allowlist.document import DocumentError
from server_plugin.allowlist.file import DocumentFile
from tests.unit.test_allowlist_document import ek_hash


def test_bucketed_directory_reads_entries_from_their_bucket(tmp_path: Path) -> None:
    listed, unlisted, misplaced = ek_hash(1), ek_hash(2), ek_hash(3)
    (tmp_path / listed[:2]).mkdir()
    (tmp_path / listed[:2] / listed).write_text('{"name": "n1", "labels": {"rack": "r"}}')
    (tmp_path / misplaced).write_text("")  # the flat place, not its bucket
    source = BucketedDirectory(str(tmp_path), 'allowlist "b"')
    assert source.lookup(listed) == AllowlistEntry(listed, "n1", {"rack": "r"}, source.describe())
    assert source.lookup(unlisted) is None
    assert source.lookup(misplaced) is None
    assert source.describe() == f'allowlist "b" (bucketed directory {tmp_path})'
    assert list(source.hashes()) == [listed]


def test_flat_directory_lists_only_ek_hash_names(tmp_path: Path) -> None:
    for name in (ek_hash(1), ek_hash(2), "README.md", f".{ek_hash(3)}.tmp", ek_hash(4).upper()):
        (tmp_path / name).write_text("")
    assert sorted(FlatDirectory(str(tmp_path), "hash_path").hashes()) == sorted(
        [ek_hash(1), ek_hash(2)]
    )


@pytest.mark.parametrize("layout", [FlatDirectory, BucketedDirectory])
def test_a_missing_directory_is_an_error_not_an_absence(
    tmp_path: Path, layout: type[FlatDirectory]
) -> None:
    source = layout(str(tmp_path / "unmounted"), "denylist")
    with pytest.raises(AllowlistError, match="is not a directory"):
        source.lookup(ek_hash(1))


def test_a_bucket_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ek_hash(1)[:2]).write_text("")
    with pytest.raises(AllowlistError, match="cannot read entry"):
        BucketedDirectory(str(tmp_path), "b").lookup(ek_hash(1))


@pytest.mark.parametrize("layout", [FlatDirectory, BucketedDirectory])
def test_names_that_are_not_ek_hashes_are_refused(
    tmp_path: Path, layout: type[FlatDirectory]
) -> None:
    with pytest.raises(AllowlistError, match="not an EK hash"):
        layout(str(tmp_path), "x").lookup("../" + ek_hash(1)[3:])


def write_document(path: Path, *hashes: str) -> None:
    entries = [{"pub_hash": h} for h in hashes]
    path.write_text(json.dumps({"version": 1, "entries": entries}))


def test_document_file_reloads_and_keeps_the_last_good_copy(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    write_document(path, ek_hash(1))
    source = DocumentFile(str(path), 'denylist "revoked"')
    source.start()
    try:
        assert source.lookup(ek_hash(1)) is not None
        assert source.lookup(ek_hash(2)) is None
        write_document(path, ek_hash(2))
        deadline = time.monotonic() + 10
        while source.lookup(ek_hash(2)) is None:
            assert time.monotonic() < deadline, "the file was not reloaded"
            time.sleep(0.02)
        assert source.lookup(ek_hash(1)) is None
        path.write_text('{"version": 2, "entries": []}')  # refused: the last good copy stays
        assert source._index.reload() is False
        assert source.lookup(ek_hash(2)) is not None
    finally:
        source.close()


def test_document_file_that_does_not_load_is_an_error_at_once(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="cannot read"):
        DocumentFile(str(tmp_path / "missing.json"), "x")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(DocumentError, match="must be a JSON object"):
        DocumentFile(str(tmp_path / "bad.json"), "x")


AMBIGUOUS_METADATA = [
    ({"labels": {"a:b": "c"}}, "label key 'a:b'"),  # label:a:b:c would read two ways
    ({"labels": {"": "c"}}, "label key ''"),
    ({"labels": {"rack\n": "1"}}, "label key 'rack\\n'"),
    ({"labels": {"rack": "1\x1b[2J"}}, "unprintable"),
    ({"name": "rack12/node07"}, "holds a '/'"),
    ({"name": "/node07"}, "holds a '/'"),
    ({"name": "node07\n"}, "unprintable"),
    ({"name": "node\u202e70"}, "unprintable"),  # right-to-left override
]


@pytest.mark.parametrize(("metadata", "words"), AMBIGUOUS_METADATA)
def test_ambiguous_names_and_labels_are_refused(
    tmp_path: Path, metadata: dict[str, object], words: str
) -> None:
    listed = ek_hash(1)
    (tmp_path / listed).write_text(json.dumps(metadata))
    with pytest.raises(AllowlistError, match=r"entry .*: ") as error:
        FlatDirectory(str(tmp_path), "hash_path").lookup(listed)
    assert words in str(error.value)


def test_unambiguous_names_and_labels_are_kept(tmp_path: Path) -> None:
    listed = ek_hash(1)
    metadata = {"name": "nöde 7: rack", "labels": {"zone": "eu:west/1"}}
    (tmp_path / listed).write_text(json.dumps(metadata))
    entry = FlatDirectory(str(tmp_path), "hash_path").lookup(listed)
    assert entry == AllowlistEntry(listed, "nöde 7: rack", {"zone": "eu:west/1"}, entry.source)


def test_a_deeply_nested_entry_body_is_a_lookup_error_not_a_crash() -> None:
    from server_plugin.allowlist.base import parse_entry_body

    with pytest.raises(AllowlistError, match="not valid JSON"):
        parse_entry_body("a" * 64, b"[" * 100_000, "directory /x")


def test_a_bearer_token_must_be_ascii(tmp_path: Path) -> None:
    from server_plugin.allowlist.http import read_token

    token = tmp_path / "token"
    token.write_bytes("t\u00f6ken\n".encode())
    with pytest.raises(ValueError, match="non-ASCII"):
        read_token(str(token))


# --- the base class: fail closed whatever a source raises -----------------------------


class Broken(AllowlistSource):
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.asked: list[str] = []

    def _lookup(self, pub_hash: str) -> AllowlistEntry | None:
        self.asked.append(pub_hash)
        raise self.error

    def describe(self) -> str:
        return 'allowlist "broken"'


@pytest.mark.parametrize(
    "error", [KeyError("x"), ValueError("x"), OSError(5, "EIO"), RecursionError(), MemoryError()]
)
def test_an_unexpected_error_in_a_source_is_an_allowlist_error(error: Exception) -> None:
    source = Broken(error)
    with pytest.raises(AllowlistError, match=r'allowlist "broken": lookup failed \(') as raised:
        source.lookup(ek_hash(1))
    assert raised.value.__cause__ is error
    assert source.asked == [ek_hash(1)]


def test_an_allowlist_error_from_a_source_is_kept_as_it_is() -> None:
    error = AllowlistError("the list is stale")
    with pytest.raises(AllowlistError) as raised:
        Broken(error).lookup(ek_hash(1))
    assert raised.value is error


@pytest.mark.parametrize("pub_hash", ["../" + ek_hash(1)[3:], ek_hash(1).upper(), "", 7])
def test_the_base_refuses_what_is_not_an_ek_hash_before_the_source_sees_it(
    pub_hash: object,
) -> None:
    source = Broken(KeyError("x"))
    with pytest.raises(AllowlistError, match="not an EK hash"):
        source.lookup(pub_hash)  # type: ignore[arg-type]
    assert source.asked == []

"""The one error tree and the one table that maps its branches to gRPC statuses."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import grpc
import pytest

import spire_tpm_attestor.errors
from server_plugin.checks import Rejected, check
from spire_tpm_attestor.errors import AttestorError, MalformedInput, NotProven, SourceUnavailable
from spire_tpm_attestor.runtime.status import STATUS_OF_ERROR, status_error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (MalformedInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotProven("x"), grpc.StatusCode.PERMISSION_DENIED),
        (SourceUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (AttestorError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_branch_has_one_status(error: AttestorError, code: grpc.StatusCode) -> None:
    mapped = status_error(error, "message")
    assert (mapped.code, mapped.message) == (code, "message")


def test_a_subclass_takes_its_branch_status() -> None:
    class Specific(NotProven):
        pass

    assert status_error(Specific("x"), "m").code == grpc.StatusCode.PERMISSION_DENIED


def test_the_table_names_exactly_the_three_branches() -> None:
    assert set(STATUS_OF_ERROR) == {MalformedInput, NotProven, SourceUnavailable}
    assert all(branch.__bases__ == (AttestorError,) for branch in STATUS_OF_ERROR)


def test_the_error_tree_imports_no_grpc() -> None:
    tree = ast.parse(Path(spire_tpm_attestor.errors.__file__).read_text())
    modules = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    modules += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [module for module in modules if module.split(".")[0] == "grpc"]


# --- the server's check() helper --------------------------------------------------------


def _rejected(error: Exception, **kwargs: Any) -> Rejected:
    with pytest.raises(Rejected) as raised, check("some_check", "it failed", **kwargs):
        raise error
    return raised.value


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (MalformedInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotProven("bad"), grpc.StatusCode.PERMISSION_DENIED),
        (SourceUnavailable("bad"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_check_names_itself_and_maps_the_branch(
    error: AttestorError, code: grpc.StatusCode
) -> None:
    rejected = _rejected(error)
    assert (rejected.check, rejected.error.code, rejected.error.message) == (
        "some_check",
        code,
        "it failed: bad",
    )


def test_check_words_malformed_input_apart_when_asked() -> None:
    assert _rejected(MalformedInput("x"), if_malformed="garbled").error.message == "garbled: x"
    assert _rejected(NotProven("x"), if_malformed="garbled").error.message == "it failed: x"


def test_check_can_file_every_failure_under_one_branch() -> None:
    rejected = _rejected(MalformedInput("x"), every_failure=NotProven)
    assert rejected.error.code == grpc.StatusCode.PERMISSION_DENIED


def test_check_lets_other_exceptions_through() -> None:
    with pytest.raises(KeyError), check("some_check", "it failed"):
        raise KeyError("a bug is not a rejection")

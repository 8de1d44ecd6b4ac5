"""The one error tree and the one table that maps its branches to gRPC statuses."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest

import spire_tpm_attestor.errors
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

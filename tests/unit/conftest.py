"""CAs for the in-process server tests (the EK CA, `ek_ca`, is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.unit.server_builders import TestCA


@pytest.fixture(scope="session")
def rogue_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA of the same shape as `ek_ca` that no server trusts."""
    return TestCA.create(tmp_path_factory.mktemp("rogue-ca"), name="Rogue TPM")


@pytest.fixture(scope="session")
def devid_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("devid-ca"), name="Unit DevID")

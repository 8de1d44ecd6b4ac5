"""The real plugin processes, one of each per test module (Configure swaps per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spire_tpm_attestor.harness import PluginProcess
from tests.integration.plugins import start_plugin


@pytest.fixture(scope="module")
def agent() -> Iterator[PluginProcess]:
    with start_plugin("agent") as process:
        yield process


@pytest.fixture(scope="module")
def server() -> Iterator[PluginProcess]:
    with start_plugin("server") as process:
        yield process

"""The real plugin processes, one of each per test module (Configure swaps per test), and
what the DevID tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spire_tpm_attestor.runtime.host import PluginProcess
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.plugins import start_plugin

if TYPE_CHECKING:  # platform_setup needs tpm2-pytss: imported only by the fixtures using it
    from tests.integration.platform_setup import DevIDFiles, DevIDNode


@pytest.fixture(scope="module")
def agent() -> Iterator[PluginProcess]:
    with start_plugin("agent") as process:
        yield process


@pytest.fixture(scope="module")
def server() -> Iterator[PluginProcess]:
    with start_plugin("server") as process:
        yield process


@pytest.fixture(scope="session")
def devid_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("devid-ca"), name="Test DevID")


@pytest.fixture
def devid(swtpm: SWTPM, devid_ca: TestCA, tmp_path: Path) -> DevIDFiles:
    """A DevID in the test's swtpm, created with the CLI and certified by `devid_ca`."""
    from tests.integration.platform_setup import provision_devid

    return provision_devid(swtpm.tcti, devid_ca, tmp_path / "devid")


@pytest.fixture
def devid_node(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    tmp_path: Path,
) -> DevIDNode:
    from tests.integration.platform_setup import DevIDNode

    return DevIDNode(agent, server, swtpm, ek_ca, devid_ca, tmp_path)

"""Fixtures for the real-SPIRE tests: the binaries, their release, the single-file plugins."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.spire.harness import spire_version

ROOT = Path(__file__).parents[2]
# Keep in step with SPIRE_VERSION in the Makefile.
DEFAULT_SPIRE_BIN = Path.home() / ".cache" / "spire-tpm-attestor" / "spire" / "v1.14.5" / "bin"


@pytest.fixture(scope="session")
def spire_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory with spire-server and spire-agent.

    SPIRE_AGENT_BIN, when set, names another release's spire-agent to run against
    SPIRE_BIN's server (for a release whose server cannot be built here; see the Makefile).
    """
    if shutil.which("go") is None:
        pytest.skip("Go is not installed, so `make spire` cannot build SPIRE")
    directory = Path(os.environ.get("SPIRE_BIN", DEFAULT_SPIRE_BIN))
    assert (directory / "spire-server").exists(), (
        f"no spire-server in {directory}: run `make spire` (Go is installed, so it must build)"
    )
    agent_directory = os.environ.get("SPIRE_AGENT_BIN")
    if not agent_directory:
        return directory
    mixed = tmp_path_factory.mktemp("spire-bin")
    (mixed / "spire-server").symlink_to(directory / "spire-server")
    (mixed / "spire-agent").symlink_to(Path(agent_directory) / "spire-agent")
    return mixed


def pytest_report_header() -> list[str]:
    directory = Path(os.environ.get("SPIRE_BIN", DEFAULT_SPIRE_BIN))
    agent = Path(os.environ.get("SPIRE_AGENT_BIN") or directory) / "spire-agent"
    lines = []
    for binary in (directory / "spire-server", agent):
        if binary.exists():
            out = subprocess.run(
                [str(binary), "--version"], capture_output=True, text=True, check=False
            )
            lines.append(f"{binary}: {(out.stdout + out.stderr).strip()}")
    return lines


@pytest.fixture(scope="session")
def spire_release(spire_bin: Path) -> tuple[int, int, int]:
    return spire_version(spire_bin)


def needs_release(release: tuple[int, int, int], minimum: tuple[int, int], what: str) -> None:
    if release[:2] < minimum:
        pytest.skip(
            f"SPIRE {'.'.join(map(str, release))} has no {what} "
            f"(from v{minimum[0]}.{minimum[1]}.0 on)"
        )


@pytest.fixture
def workdir() -> Iterator[Path]:
    # unix socket paths must stay short (spire-server hangs past ~107 characters)
    path = Path(tempfile.mkdtemp(prefix="sps", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent and server single-file executables and their SHA256SUMS (`make dist`).

    Built once per source tree: packaging/build_dist.py caches them by a hash of the
    sources and installed packages, so only the first session after a change pays the
    build (about a minute per executable on a busy 2-core machine).
    """
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed (`make install` installs the dist extra)")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "packaging" / "build_dist.py"),
            "--out",
            str(out),
            "--targets",
            "agent,server",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        timeout=1200,
    )
    return out


def dist_checksums(dist: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (dist / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name] = digest
    return sums

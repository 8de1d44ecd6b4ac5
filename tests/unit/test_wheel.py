"""The built wheel ships the plugins and the core, never the test aids in `testing/`."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# What a source build reads; copied so the build leaves nothing in the checkout.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "proto")
PACKAGES = ("spire_tpm_attestor", "agent_plugin", "server_plugin")
BUILD_REQUIREMENTS = ("setuptools", "wheel", "grpc_tools", "pip")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    missing = [name for name in BUILD_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"cannot build a wheel offline without {', '.join(missing)}")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name)
        else:
            shutil.copy2(path, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    out = work / "out"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = out.glob("spire_tpm_attestor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_has_no_test_aids(wheel_names: list[str]) -> None:
    assert not [name for name in wheel_names if name.startswith("spire_tpm_attestor/testing/")]


def test_wheel_has_the_plugins_and_the_cli(wheel_names: list[str]) -> None:
    for module in (
        "spire_tpm_attestor/cli/main.py",
        "spire_tpm_attestor/runtime/host.py",
        "agent_plugin/main.py",
        "server_plugin/main.py",
    ):
        assert module in wheel_names

"""examples/container/Dockerfile builds, and the plugin runs inside the image.

Needs a container tool with a running engine and SPIRE's release images plus the Debian
base image (pulled from their registries, or already present); skips, saying which is
missing, otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
DOCKERFILE = EXAMPLES / "container" / "Dockerfile"
SPIRE_VERSION = "1.14.5"
BASE_IMAGES = [
    f"ghcr.io/spiffe/spire-agent:{SPIRE_VERSION}",
    f"ghcr.io/spiffe/spire-server:{SPIRE_VERSION}",
    "debian:bookworm-slim",
]


def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def engine() -> str:
    for tool in ("docker", "podman"):
        if shutil.which(tool) is None:
            continue
        info = run(tool, "info", timeout=30)
        if info.returncode != 0:
            reason = (info.stderr or info.stdout).strip().splitlines()[-1:]
            pytest.skip(f"{tool} is installed but its engine does not answer: {reason}")
        for image in BASE_IMAGES:
            if run(tool, "image", "inspect", image, timeout=30).returncode == 0:
                continue
            pulled = run(tool, "pull", image, timeout=300)
            if pulled.returncode != 0:
                reason = (pulled.stderr or pulled.stdout).strip().splitlines()[-1:]
                pytest.skip(f"{tool} cannot get the base image {image}: {reason}")
        return tool
    pytest.skip("no container tool (docker or podman) on this machine")


@pytest.fixture(scope="module")
def context(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context: all three executables and SHA256SUMS (`make dist`, cached)."""
    out = tmp_path_factory.mktemp("container-context")
    subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "build_dist.py"), "--out", str(out)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        timeout=1200,
    )
    return out


@pytest.mark.parametrize("side", ["agent", "server"])
def test_image_builds_and_runs_the_pinned_plugin(engine: str, context: Path, side: str) -> None:
    tag = f"spire-{side}-tpm-test:{uuid.uuid4().hex[:8]}"
    built = run(engine, "build", "-f", str(DOCKERFILE), "--target", side, "-t", tag, str(context))
    assert built.returncode == 0, built.stdout + built.stderr
    try:
        # Run by hand, the plugin explains itself and exits 1: glibc and libraries load.
        plugin = f"/opt/spire-tpm-attestor/bin/spire-tpm-attestor-{side}"
        ran = run(engine, "run", "--rm", "--entrypoint", plugin, tag, timeout=120)
        assert ran.returncode == 1, ran.stdout + ran.stderr
        assert "This binary is a SPIRE plugin" in ran.stderr
        version = run(
            engine, "run", "--rm", "--entrypoint", f"/opt/spire/bin/spire-{side}", tag, "--version"
        )
        assert SPIRE_VERSION in version.stdout + version.stderr
    finally:
        run(engine, "rmi", "-f", tag, timeout=120)

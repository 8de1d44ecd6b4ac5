"""Build the single-file executables (PyInstaller one-file) and their SHA256SUMS.

    python packaging/build_dist.py [--out dist] [--targets agent,server,cli] [--no-cache]

Executables are cached in ~/.cache/spire-tpm-attestor/dist/<key>/, where the key hashes
everything that goes into an executable: the sources (including the generated protobuf
modules), this recipe, the interpreter and the version of every installed distribution.
A second build of an unchanged tree is a copy; only targets not yet built are built.
Prints the output directory.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "packaging"
SPEC = HERE / "spire-tpm-attestor.spec"
CACHE = Path(
    os.environ.get("SPIRE_TPM_DIST_CACHE", Path.home() / ".cache" / "spire-tpm-attestor" / "dist")
)
TARGETS = {
    "agent": "spire-tpm-attestor-agent",
    "server": "spire-tpm-attestor-server",
    "cli": "spire-tpm-attestor",
}
SOURCE_DIRS = ("spire_tpm_attestor", "agent_plugin", "server_plugin", "packaging")
SOURCE_SUFFIXES = {".py", ".spec", ".pem", ".json"}


def source_files() -> Iterable[Path]:
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if (
                path.is_file()
                and path.suffix in SOURCE_SUFFIXES
                and "__pycache__" not in path.parts
            ):
                yield path
    yield ROOT / "pyproject.toml"


def build_key() -> str:
    """A digest of everything an executable is made from."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(sys.version.encode() + b"\0" + sys.executable.encode() + b"\0")
    for dist in sorted(
        f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
    ):
        digest.update(dist.encode() + b"\0")
    return digest.hexdigest()[:24]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sums(directory: Path, names: Iterable[str]) -> None:
    lines = [f"{sha256_file(directory / name)}  {name}\n" for name in sorted(names)]
    (directory / "SHA256SUMS").write_text("".join(lines))


def run_pyinstaller(names: list[str], out: Path, work: Path) -> None:
    env = dict(os.environ, SPIRE_TPM_DIST_TARGETS=",".join(names))
    # A fixed hash seed and source date make the archive's contents independent of the run.
    env.setdefault("PYTHONHASHSEED", "0")
    env.setdefault("SOURCE_DATE_EPOCH", "1700000000")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            str(out),
            "--workpath",
            str(work),
            str(SPEC),
        ],
        check=True,
        cwd=ROOT,
        env=env,
    )


def build(targets: list[str], out: Path, use_cache: bool = True) -> Path:
    """Put the targets' executables and their SHA256SUMS in `out`; build what is missing."""
    names = [TARGETS[t] for t in targets]
    cached = CACHE / build_key()
    missing = [n for n in names if not (use_cache and (cached / n).exists())]
    if missing:
        cached.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached, prefix=".build-") as scratch:
            staging = Path(scratch) / "out"
            run_pyinstaller(missing, staging, Path(scratch) / "work")
            for name in missing:
                # rename is atomic: a concurrent reader sees the old file or the new one
                (staging / name).rename(cached / name)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if out.resolve() != cached.resolve():
            shutil.copy2(cached / name, out / name)
    write_sums(out, names)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--targets", default="agent,server,cli")
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(TARGETS)}")
    print(build(targets, args.out, use_cache=not args.no_cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())

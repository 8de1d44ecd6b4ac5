"""Build the single-file executables (PyInstaller one-file) and their SHA256SUMS.

    python packaging/build_dist.py [--out dist] [--targets agent,server,cli] [--no-cache]
    python packaging/build_dist.py --check            # build twice, compare (make dist-check)
    python packaging/build_dist.py --compare A B      # which members of two builds differ

Executables are cached in ~/.cache/spire-tpm-attestor/dist/<key>/, where the key hashes
everything that goes into an executable: the sources (including the generated protobuf
modules), this recipe, the interpreter and the version of every installed distribution.
A second build of an unchanged tree is a copy; only targets not yet built are built, each
in a PyInstaller process of its own, so an executable is the same however many were built
with it. Prints the output directory.
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


def run_pyinstaller(name: str, out: Path, work: Path) -> None:
    """Build one executable, in a PyInstaller process of its own: what the analysis of one
    target leaves in the process (code objects, interned strings) changes how another is
    marshalled, so an executable built alongside others would not be the one built alone."""
    # PyInstaller's own cache (stripped copies of the native libraries) in this build's
    # work directory: `--clean` empties the shared one, under any concurrent build.
    env = dict(
        os.environ,
        SPIRE_TPM_DIST_TARGETS=name,
        PYINSTALLER_CONFIG_DIR=str(work / "pyinstaller"),
    )
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
            str(work / name),
            str(SPEC),
        ],
        check=True,
        cwd=ROOT,
        env=env,
    )


def build(targets: list[str], out: Path, use_cache: bool = True, cache: Path = CACHE) -> Path:
    """Put the targets' executables and their SHA256SUMS in `out`; build what is missing."""
    names = [TARGETS[t] for t in targets]
    cached = cache / build_key()
    missing = [n for n in names if not (use_cache and (cached / n).exists())]
    if missing:
        cached.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached, prefix=".build-") as scratch:
            staging = Path(scratch) / "out"
            for name in missing:
                run_pyinstaller(name, staging, Path(scratch) / "work")
                # rename is atomic: a concurrent reader sees the old file or the new one
                (staging / name).rename(cached / name)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if out.resolve() != cached.resolve():
            shutil.copy2(cached / name, out / name)
    write_sums(out, names)
    return out


def archive_members(executable: Path) -> dict[str, bytes]:
    """Every member of a one-file executable by name, the embedded PYZ's modules included
    (as `PYZ.pyz:<module>`), and the bootloader before the archive as `<bootloader>`."""
    from PyInstaller.archive.readers import PKG_ITEM_PYZ, CArchiveReader

    reader = CArchiveReader(str(executable))
    members = {"<bootloader>": executable.read_bytes()[: reader._start_offset]}
    for name, entry in reader.toc.items():
        if entry[-1] == PKG_ITEM_PYZ:
            pyz = reader.open_embedded_archive(name)
            for module in pyz.toc:
                members[f"{name}:{module}"] = pyz.extract(module, raw=True)
        else:
            members[name] = reader.extract(name)
    return members


def differing_members(first: Path, second: Path) -> list[str]:
    """The names of the members that differ between two builds of one executable."""
    a, b = archive_members(first), archive_members(second)
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def check_reproducible(targets: list[str]) -> int:
    """Build the targets twice from nothing (fresh caches) and compare them byte for byte;
    on a difference, name the archive members that differ. Exit status 1 then."""
    names = [TARGETS[t] for t in targets]
    with tempfile.TemporaryDirectory(prefix="dist-check-") as scratch:
        builds = []
        for run in (Path(scratch) / "first", Path(scratch) / "second"):
            builds.append(build(targets, run / "out", use_cache=False, cache=run / "cache"))
        differing = 0
        for name in names:
            first, second = (out / name for out in builds)
            if sha256_file(first) == sha256_file(second):
                print(f"identical  {sha256_file(first)}  {name}")
                continue
            differing += 1
            print(f"DIFFERENT  {name}:")
            for member in differing_members(first, second):
                print(f"  {member}")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--targets", default="agent,server,cli")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument(
        "--check",
        action="store_true",
        help="build twice from nothing and compare byte for byte (nothing cached or kept)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("MINE", "THEIRS"),
        help="name the archive members in which two builds of one executable differ",
    )
    args = parser.parse_args()
    if args.compare:
        differing = differing_members(*args.compare)
        print("\n".join(differing) or "identical")
        return 1 if differing else 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(TARGETS)}")
    if args.check:
        return check_reproducible(targets)
    print(build(targets, args.out, use_cache=not args.no_cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fail when THREAT_MODEL.md names a test that no longer exists.

    python tests/check_threat_model.py [THREAT_MODEL.md]

Every `tests/<path>.py::<name>` (or `::<Class>::<name>`) in the file must be a test
function in that file. Test files are parsed, not imported or run, so this takes a
fraction of a second. Exit status 1 lists the names that are gone.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_ID = re.compile(r"(tests/[\w/]+\.py)((?:::\w+)+)")


def named_ids(text: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(m.group(1), tuple(m.group(2).split("::")[1:])) for m in NODE_ID.finditer(text)]


def test_names(path: Path) -> set[tuple[str, ...]]:
    """Module-level test functions and test methods of Test classes, as name paths."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[tuple[str, ...]] = set()
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and node.name.startswith("test"):
            found.add((node.name,))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, functions) and item.name.startswith("test"):
                    found.add((node.name, item.name))
    return found


def missing_ids(document: Path) -> tuple[int, list[str]]:
    """How many node ids the document names, and those that do not exist."""
    ids = named_ids(document.read_text())
    cache: dict[str, set[tuple[str, ...]]] = {}
    missing = []
    for file, names in ids:
        path = ROOT / file
        if file not in cache:
            cache[file] = test_names(path) if path.is_file() else set()
        if names not in cache[file]:
            missing.append(f"{file}::{'::'.join(names)}")
    return len(ids), sorted(set(missing))


def main(argv: list[str]) -> int:
    document = Path(argv[0]) if argv else ROOT / "THREAT_MODEL.md"
    count, missing = missing_ids(document)
    if count == 0:
        print(f"{document}: names no test", file=sys.stderr)
        return 1
    if missing:
        print(f"{document}: {len(missing)} named test(s) do not exist:", file=sys.stderr)
        for node_id in missing:
            print(f"  {node_id}", file=sys.stderr)
        return 1
    print(f"{document}: all {count} named tests exist")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

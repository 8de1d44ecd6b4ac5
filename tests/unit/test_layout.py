"""The import rules of the layout, checked on the source (ast), without importing it.

- No import cycle among the project's modules (imports that run when a module loads:
  module level, class bodies, try/except; not function bodies, not `if TYPE_CHECKING:`).
- Nothing in `spire_tpm_attestor/` outside `cli/` and `testing/` imports `agent_plugin`
  or `server_plugin`, at any level: the core sits below both plugins.
- `server_plugin` runs without tpm2-pytss: neither it nor any project module it can reach
  (through any import that runs, lazy ones included) imports `tpm2_pytss`.

Only explicit imports are edges; the implicit import of a parent package when a
submodule loads is not, so a package `__init__` may re-export its submodules.
The generated `spire_tpm_attestor/pb` is left out (it is built, not written).
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGES = ("spire_tpm_attestor", "agent_plugin", "server_plugin")
GENERATED = ROOT / "spire_tpm_attestor" / "pb"
PLUGINS = ("agent_plugin", "server_plugin")
CORE_MAY_IMPORT_PLUGINS = ("spire_tpm_attestor.cli", "spire_tpm_attestor.testing")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a project module when one matches, else the dotted name as written
    line: int
    at_load: bool  # runs when the importing module loads (not in a function body)
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def project_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if GENERATED in path.parents:
                continue
            files[module_name(path)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str:
    """The project module `name` denotes (the longest matching prefix), else `name`."""
    modules = project_files()
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return name


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield _resolve(alias.name)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        # `from package import submodule` imports the submodule.
        submodule = f"{base}.{alias.name}"
        yield _resolve(submodule) if submodule in project_files() else _resolve(base)


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    path = project_files()[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, at_load: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(node, module, is_package):
                found.append(Import(module, target, node.lineno, at_load, type_checking))
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            at_load = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                visit(statement, at_load, True)
            for statement in node.orelse:
                visit(statement, at_load, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, at_load, type_checking)

    visit(tree, True, False)
    return tuple(found)


def project_imports(module: str) -> list[Import]:
    return [i for i in imports_of(module) if i.target in project_files() and i.target != module]


def test_the_walk_sees_the_project() -> None:
    modules = project_files()
    assert {"spire_tpm_attestor.cli.main", "agent_plugin.plugin", "server_plugin.plugin"} <= set(
        modules
    )
    edges = {(i.importer, i.target) for i in project_imports("spire_tpm_attestor.cli.main")}
    assert ("spire_tpm_attestor.cli.main", "spire_tpm_attestor.cli.allowlist") in edges


def test_no_import_cycle() -> None:
    graph = {
        module: {i.target for i in project_imports(module) if i.at_load and not i.type_checking}
        for module in project_files()
    }
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        cycle = error.args[1]
        raise AssertionError(f"import cycle: {' -> '.join(reversed(cycle))}") from None


def test_core_does_not_import_the_plugins() -> None:
    violations = [
        str(i)
        for module in project_files()
        if module.startswith("spire_tpm_attestor")
        and not module.startswith(CORE_MAY_IMPORT_PLUGINS)
        for i in imports_of(module)
        if i.target.split(".")[0] in PLUGINS
    ]
    assert not violations, violations


def test_server_plugin_never_reaches_tpm2_pytss() -> None:
    reached: set[str] = set()
    pending = [m for m in project_files() if m.split(".")[0] == "server_plugin"]
    while pending:
        module = pending.pop()
        if module in reached:
            continue
        reached.add(module)
        pending.extend(i.target for i in project_imports(module) if not i.type_checking)
    violations = [
        str(i)
        for module in sorted(reached)
        for i in imports_of(module)
        if i.target.split(".")[0] == "tpm2_pytss" and not i.type_checking
    ]
    assert not violations, violations
    assert not [m for m in reached if m.split(".")[0] == "agent_plugin"]

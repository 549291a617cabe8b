"""The dependency rules between the parts (README → Development → Layout), as import-linter contracts
in pyproject.toml ([tool.importlinter]): the real tree keeps them, and a tree with a wrong import
planted in it breaks the contract that names that rule."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest
from helpers import REPO

PYPROJECT = REPO / "pyproject.toml"
SRC = REPO / "src"
PACKAGE = "evalledger"


def _lint_imports_exe() -> str:
    # the one installed beside this interpreter, so that the same environment is checked
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports not found: install the dev extra (pip install -e '.[dev]')")
    return found


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with this repository's contracts over the package found in ``src``."""
    # wide enough that rich does not wrap a report line the tests look for
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "200"}
    return subprocess.run(
        [_lint_imports_exe(), "--no-cache", "--no-logo", str(PYPROJECT)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def contracts() -> list[dict]:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]


def contract(contract_id: str) -> dict:
    (found,) = [c for c in contracts() if c["id"] == contract_id]
    return found


def test_the_code_keeps_every_contract() -> None:
    result = lint_imports(SRC, REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout, result.stdout


def _copy_with(tmp_path: Path, planted: dict[str, str]) -> Path:
    """A copy of the package with ``planted`` text appended to the given modules (or new modules)."""
    src = tmp_path / "src"
    shutil.copytree(SRC / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, text in planted.items():
        path = src / PACKAGE / rel
        before = path.read_text() if path.exists() else ""
        path.write_text(before + "\n" + text + "\n")
    return src


# (planted imports, the contract they break, lines its report must show)
PLANTED = {
    "ledger imports the CLI and a reader": (
        {"ledger/layout.py": "from evalledger.cli import cli",
         "ledger/status.py": "from evalledger.readers import get_stats"},
        "layers",
        ["evalledger.ledger is not allowed to import evalledger.cli:",
         "- evalledger.ledger.layout -> evalledger.cli (l.",
         "evalledger.ledger is not allowed to import evalledger.readers:",
         "- evalledger.ledger.status -> evalledger.readers (l."],
    ),
    "a leaf imports a part under TYPE_CHECKING": (
        {"errors.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                      "    from evalledger.ledger import RunLedger"},
        "leaves",
        ["evalledger.errors is not allowed to import evalledger.ledger:",
         "-   evalledger.errors -> evalledger.ledger (l."],
    ),
    "a task imports config": (
        {"tasks/qa.py": "from evalledger.config import RunConfig"},
        "tasks",
        ["evalledger.tasks is not allowed to import evalledger.config:",
         "-   evalledger.tasks.qa -> evalledger.config (l."],
    ),
    "a provider retries": (
        {"providers/base.py": "import tenacity"},
        "providers",
        ["evalledger.providers is not allowed to import tenacity:",
         "-   evalledger.providers.base -> tenacity (l."],
    ),
    "a provider writes files": (
        {"providers/base.py": "from evalledger.fsio import write_bytes_atomic"},
        "providers",
        ["evalledger.providers is not allowed to import evalledger.fsio:",
         "-   evalledger.providers.base -> evalledger.fsio (l."],
    ),
    "the package root imports the CLI": (
        {"__init__.py": "from evalledger.cli import main"},
        "no-cli-from-root",
        ["evalledger is not allowed to import evalledger.cli:",
         "-   evalledger -> evalledger.cli (l."],
    ),
    "a part imports the package root": (
        {"study.py": "from evalledger import RunConfig"},
        "no-root",
        ["evalledger.study is not allowed to import evalledger:",
         "-   evalledger.study -> evalledger (l."],
    ),
    "two leaf modules import each other": (
        {"errors.py": "from evalledger.config import RunConfig"},
        "acyclic",
        ["No cycles are allowed in evalledger.", "- .errors -> .config (1 import)"],
    ),
    "two modules of a part import each other": (
        {"ledger/layout.py": "from evalledger.ledger.status import read_status"},
        "acyclic",
        ["No cycles are allowed in evalledger.ledger.", "- .layout -> .status (1 import)"],
    ),
    "a new part has no layer": (
        {"extra.py": '"""A module the layers contract does not place."""'},
        "layers",
        ["The following modules are not listed as layers:", "- evalledger.extra"],
    ),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_a_planted_wrong_import_breaks_its_contract(tmp_path: Path, case: str) -> None:
    planted, contract_id, expected = PLANTED[case]
    src = _copy_with(tmp_path, planted)
    result = lint_imports(src, tmp_path)
    out = result.stdout + result.stderr
    name = contract(contract_id)["name"]
    assert result.returncode == 1, out
    assert f"{name} BROKEN" in out, out
    # the broken contract's own report (after its underlined heading) names the planted import
    report = out.split(f"{name}\n{'-' * len(name)}\n", 1)
    assert len(report) == 2, out
    for line in expected:
        assert line in report[1], f"{line!r} not in:\n{out}"


def _children() -> set[str]:
    """Every module and package directly under the package: what a forbidden list must cover."""
    found = set()
    for path in (SRC / PACKAGE).iterdir():
        if path.suffix == ".py" and path.name != "__init__.py":
            found.add(f"{PACKAGE}.{path.stem}")
        elif (path / "__init__.py").exists():
            found.add(f"{PACKAGE}.{path.name}")
    return found


@pytest.mark.parametrize(("contract_id", "allowed"), [
    ("tasks", {"samples", "records", "errors", "sandbox"}),
    ("providers", {"errors"}),
])
def test_only_lists_forbid_every_other_module(contract_id: str, allowed: set[str]) -> None:
    """The 'imports only …' rules are forbidden lists: a module added to the package must join them."""
    c = contract(contract_id)
    (source,) = c["source_modules"]
    internal = {m for m in c["forbidden_modules"] if m.split(".")[0] == PACKAGE}
    expected = _children() - {source} - {f"{PACKAGE}.{name}" for name in allowed}
    assert internal == expected


def module_cycles(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    """Every import (importer, imported) whose imported module leads back to its importer."""
    return sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )


def test_no_module_level_import_cycle() -> None:
    """acyclic_siblings compares siblings only: a module importing its own package's ``__init__``
    (which imports it) is a cycle it cannot see. Imports under ``if TYPE_CHECKING:`` count."""
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=False)
    assert module_cycles(graph) == []
    # the same check sees such a cycle once it is there
    graph.add_import(importer="evalledger.ledger.layout", imported="evalledger.ledger")
    assert ("evalledger.ledger.layout", "evalledger.ledger") in module_cycles(graph)


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def private_imports_across_parts(src: Path) -> list[str]:
    """``from evalledger.<part>… import _name`` in a module of another part."""
    found = []
    for path in sorted((src / PACKAGE).rglob("*.py")):
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE)):
                continue
            if _part(node.module) == _part(module):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{module}:{node.lineno} imports {node.module}.{alias.name}")
    return found


def test_no_private_name_is_imported_across_parts(tmp_path: Path) -> None:
    """A part's public face is its ``__init__``: an underscore name stays inside its part."""
    assert private_imports_across_parts(SRC) == []
    src = _copy_with(tmp_path, {"run/prepare.py": "from evalledger.datasets.files import _builtin_names"})
    assert private_imports_across_parts(src) == [
        f"evalledger.run.prepare:{len((src / PACKAGE / 'run/prepare.py').read_text().splitlines())} "
        "imports evalledger.datasets.files._builtin_names"
    ]

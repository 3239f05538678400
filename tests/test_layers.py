"""The package's layering holds: cli -> study -> engine (the import-linter contract in
pyproject.toml), no module reaches for another's private names, and package imports sit
at module top so the import graph lint-imports checks is the whole graph."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pan_utils

PACKAGE = Path(pan_utils.__file__).resolve().parent
REPO = PACKAGE.parent
LINT_IMPORTS = Path(sys.executable).parent / ("lint-imports.exe" if os.name == "nt"
                                              else "lint-imports")
CONTRACT = "cli -> study -> engine"


def run_lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def is_internal(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").split(".")[0] == "pan_utils"


needs_lint_imports = pytest.mark.skipif(not LINT_IMPORTS.exists(),
                                        reason="import-linter is not installed")


@needs_lint_imports
def test_layers_contract_is_kept():
    res = run_lint_imports(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{CONTRACT} KEPT" in res.stdout


@needs_lint_imports
def test_layers_contract_breaks_when_engine_imports_study(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "pan_utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / "pan_utils" / "engine" / "geometry.py"
    with planted.open("a") as f:
        f.write("\nfrom pan_utils.study import figures  # planted\n")
    res = run_lint_imports(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert f"{CONTRACT} BROKEN" in out
    assert "pan_utils.engine.geometry" in out


def test_no_private_names_imported_across_modules():
    bad = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and is_internal(node):
                bad += [f"{path.relative_to(REPO)}:{node.lineno} {a.name}"
                        for a in node.names if a.name.startswith("_")]
    assert not bad, "private names imported from another pan_utils module: " + ", ".join(bad)


LAZY = {"cli.py", "__init__.py"}  # `--help` answers without torch: commands import lazily


def test_no_package_imports_inside_functions():
    """Imports inside functions are only for optional or heavy third-party modules, and in
    the CLI's entry points (``LAZY``)."""
    bad = []
    for path in sources():
        if path.relative_to(PACKAGE).as_posix() in LAZY:
            continue
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                internal = (isinstance(node, ast.ImportFrom) and is_internal(node)) or (
                    isinstance(node, ast.Import)
                    and any(a.name.split(".")[0] == "pan_utils" for a in node.names))
                if internal:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} in {fn.name}()")
    assert not bad, "pan_utils imported inside a function: " + ", ".join(sorted(set(bad)))

"""Every notebook: one literal-only `parameters` cell, stripped outputs, and a smoke run."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from pan_utils.study.reproduce import REPO_ROOT, default_notebooks

NOTEBOOKS = default_notebooks()
STUDY = ("01_identification", "02_taxonomy", "03_ablation", "04_padding_policy", "05_census",
         "06_frames", "07_cure")


def _id(path: Path) -> str:
    return path.stem


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _parameters_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def _is_literal(node: ast.AST) -> bool:
    """A constant, a container of literals, or a signed number: what papermill can override."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_literal(k) for k in node.keys) and all(
            _is_literal(v) for v in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return isinstance(node.operand, ast.Constant) and isinstance(
            node.operand.value, (int, float, complex)) and not isinstance(node.operand.value, bool)
    return False


def test_the_study_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert [n for n in STUDY if n not in names] == [], "missing study notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_exactly_one_parameters_cell_of_literal_assignments(path):
    cells = _parameters_cells(_read(path))
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', need 1"
    cell = cells[0]
    assert cell.cell_type == "code"
    tree = ast.parse(cell.source)
    assert tree.body, "empty parameters cell"
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign), f"not an assignment: {ast.unparse(stmt)}"
        assert all(isinstance(t, ast.Name) for t in stmt.targets), ast.unparse(stmt)
        assert _is_literal(stmt.value), f"not a literal: {ast.unparse(stmt)}"
    names = {t.id for stmt in tree.body for t in stmt.targets}
    assert {"profile", "out_dir"} <= names, "the runner sets `profile` and `out_dir`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_outputs_are_stripped(path):
    nb = _read(path)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert dirty == [], f"{path.name}: cells {dirty} carry outputs or execution counts"
    assert "papermill" not in nb.metadata, f"{path.name} is an executed copy"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_kernel_is_python3(path):
    assert _read(path).metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_no_machine_paths_in_sources(path):
    text = path.read_text()
    assert str(REPO_ROOT) not in text and "/home/" not in text and "/root/" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_smoke_execution(path, smoke_run):
    assert path.stem not in smoke_run.errors, smoke_run.errors.get(path.stem)
    executed = smoke_run.out_dir / "notebooks" / path.name
    assert executed.is_file()
    nb = _read(executed)
    assert all(o.get("output_type") != "error" for c in nb.cells for o in c.get("outputs", []))
    manifest = json.loads((smoke_run.out_dir / "manifest.json").read_text())
    entry = manifest["notebooks"][path.stem]
    assert entry["profile"] == "smoke" and entry["parameters"]["profile"] == "smoke"

"""Thin notebooks: no code cell of notebooks/*.ipynb holds more than 12 lines of logic
(non-blank, non-comment lines); the logic lives in the chapter modules, with tests.

The papermill ``parameters`` cell is exempt: it declares the notebook's settings (one
literal assignment per line, checked by test_notebooks.py) and holds no logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pan_utils.study.reproduce import REPO_ROOT

MAX_LOGIC_LINES = 12
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def logic_lines(source: str) -> int:
    """Non-blank lines that are not comments (``# ...``, magics' comments included)."""
    return sum(1 for line in source.splitlines()
               if line.strip() and not line.strip().startswith("#"))


def fat_cells(notebook: dict, limit: int = MAX_LOGIC_LINES) -> list[tuple[int, int]]:
    """(cell index, logic lines) of every code cell above ``limit``, parameters cell aside."""
    out = []
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code" or "parameters" in cell.get("metadata", {}).get(
                "tags", []):
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        n = logic_lines(src)
        if n > limit:
            out.append((i, n))
    return out


def test_there_are_notebooks_to_check():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_code_cell_holds_more_than_12_lines_of_logic(path: Path):
    fat = fat_cells(json.loads(path.read_text()))
    assert not fat, (f"{path.name}: cells over {MAX_LOGIC_LINES} lines of logic "
                     f"(index, lines): {fat}; move the logic into the chapter module")


def _nb(*sources: str, tags: tuple[str, ...] = ()) -> dict:
    return {"cells": [{"cell_type": "code", "metadata": {"tags": list(tags)}, "source": s}
                      for s in sources]}


def test_the_count_skips_blanks_and_comments_and_fails_above_12():
    thirteen = "\n".join(f"x{i} = {i}" for i in range(13))
    assert logic_lines(thirteen) == 13
    assert logic_lines("# a comment\n\n   \nx = 1\n    # indented comment\ny = 2\n") == 2
    assert fat_cells(_nb("x = 1", thirteen)) == [(1, 13)]
    assert fat_cells(_nb("\n".join(f"x{i} = {i}" for i in range(12)))) == []
    # as a list of lines (the .ipynb form) too
    assert fat_cells({"cells": [{"cell_type": "code", "metadata": {},
                                 "source": [f"x{i} = {i}\n" for i in range(13)]}]}) == [(0, 13)]
    assert fat_cells(_nb(thirteen, tags=("parameters",))) == []
    assert fat_cells({"cells": [{"cell_type": "markdown", "metadata": {},
                                 "source": thirteen}]}) == []

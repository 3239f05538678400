"""The rendered study: every figure a notebook writes is shown inline in its executed copy."""

from __future__ import annotations

import re

import nbformat
import pytest

from pan_utils.study.reproduce import default_notebooks

NOTEBOOKS = default_notebooks()


def _figures_written(nb) -> list[str]:
    names = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            names += re.findall(r"show_figure\(\s*\w+\s*,\s*out_dir\s*,\s*\"(\w+)\"", cell.source)
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_written_figure_is_shown_inline(path, smoke_run):
    executed = nbformat.read(smoke_run.out_dir / "notebooks" / path.name, as_version=4)
    written = _figures_written(executed)
    assert written, f"{path.name} writes no figure"
    for name in written:
        assert (smoke_run.out_dir / "figures" / f"{name}.png").is_file(), name
    images = sum("image/png" in out.get("data", {}) for cell in executed.cells
                 for out in cell.get("outputs", []))
    assert images >= len(written), f"{path.name}: {images} inline images for {len(written)} figures"
    # What a reader sees: a figure's own text/plain ("<Figure size ...>") is hidden behind
    # its image, so only text outputs without an image count.
    text = "".join(out.get("text", "") + ("" if "image/png" in out.get("data", {})
                                          else out.get("data", {}).get("text/plain", ""))
                   for cell in executed.cells for out in cell.get("outputs", []))
    assert "<Figure size" not in text and "PosixPath(" not in text


def test_no_library_code_forces_a_backend():
    from pan_utils.study.reproduce import REPO_ROOT

    for py in (REPO_ROOT / "pan_utils").rglob("*.py"):
        assert "matplotlib.use(" not in py.read_text(), py


def test_the_readme_quotes_the_committed_results():
    from pan_utils.study.readme import block_of, findings
    from pan_utils.study.reproduce import REPO_ROOT

    block = block_of((REPO_ROOT / "README.md").read_text())
    assert block is not None, "README.md lost its findings markers"
    assert block == findings(REPO_ROOT / "results"), (
        "README findings differ from results/: run `python -m pan_utils.study.readme`")

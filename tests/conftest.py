"""Shared fixtures. ``smoke_results``: every notebook run once with the smoke profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pan_utils.study.reproduce import NotebookError, default_notebooks, run_notebook

SMOKE_TIMEOUT = 600  # seconds per cell: a hung cell fails the test run instead of blocking it


@dataclass
class SmokeRun:
    """Where the smoke run wrote its results, and which notebooks failed (stem -> message)."""

    out_dir: Path
    notebooks: list[Path]
    errors: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """Run every ``notebooks/NN_*.ipynb`` in order, once per session, into one folder.

    A failing notebook does not stop the later ones (they may be independent); its error
    is recorded and ``test_notebooks.py::test_smoke_execution`` reports it.
    """
    out = tmp_path_factory.mktemp("smoke_results")
    run = SmokeRun(out, default_notebooks())
    for nb in run.notebooks:
        try:
            run_notebook(nb, out, profile="smoke", timeout=SMOKE_TIMEOUT, progress=False)
        except NotebookError as exc:
            run.errors[nb.stem] = str(exc)
    return run


@pytest.fixture(scope="session")
def smoke_results(smoke_run: SmokeRun) -> Path:
    """The out dir of the smoke run (``tables/``, ``figures/``, ``notebooks/``, manifest)."""
    return smoke_run.out_dir

"""Shared fixtures. ``smoke_results``: every notebook run once with the smoke profile.

``pytest --smoke-dir DIR`` runs it into DIR and keeps it there (``make test`` does, then
runs nbval over DIR's executed notebooks); without it the run goes to a temporary folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pan_utils.study.reproduce import NotebookError, default_notebooks, run_notebook

SMOKE_TIMEOUT = 600  # seconds per cell: a hung cell fails the test run instead of blocking it


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--smoke-dir", default=None, metavar="DIR",
                     help="run the smoke notebooks into DIR and keep them (an empty or new "
                          "folder, or one of the runner's); default: a temporary folder")


@dataclass
class SmokeRun:
    """Where the smoke run wrote its results, and which notebooks failed (stem -> message)."""

    out_dir: Path
    notebooks: list[Path]
    errors: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def smoke_run(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """Run every ``notebooks/NN_*.ipynb`` in order, once per session, into one folder.

    A failing notebook does not stop the later ones (they may be independent); its error
    is recorded and ``test_notebooks.py::test_smoke_execution`` reports it.
    """
    given = request.config.getoption("--smoke-dir")
    out = Path(given) if given else tmp_path_factory.mktemp("smoke_results")
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

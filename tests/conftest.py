"""Shared fixtures. ``smoke_results``: every notebook run once with the smoke profile;
``smoke_rerun``: nbval re-executing that run, as ``make verify`` does for results/."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pan_utils.study import verify
from pan_utils.study.reproduce import NotebookError, default_notebooks, run_notebook

SMOKE_TIMEOUT = 600  # seconds per cell: a hung cell fails the test run instead of blocking it


@dataclass
class SmokeRun:
    """Where the smoke run wrote its results, and which notebooks failed (stem -> message)."""

    out_dir: Path
    notebooks: list[Path]
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Rerun:
    """nbval's re-execution of the smoke run: its tables (``out_dir``), the copies it ran,
    its exit status and report (the diff of every output that did not regenerate)."""

    out_dir: Path
    copies: list[Path]
    returncode: int
    report: str

    def passed(self) -> int:
        m = re.search(r"(\d+) passed", self.report)
        return int(m.group(1)) if m else 0


@pytest.fixture(scope="session", autouse=True)
def scan_store(tmp_path_factory: pytest.TempPathFactory):
    """Each test session scans into a store of its own (docs/METHOD.md §12), notebooks
    included (their kernels inherit it): a scan stored by an earlier run would hide the
    scans, progress bars and warnings a test expects."""
    from pan_utils.engine.store import STORE_ENV

    old = os.environ.get(STORE_ENV)
    os.environ[STORE_ENV] = str(tmp_path_factory.mktemp("scans"))
    yield Path(os.environ[STORE_ENV])
    if old is None:
        os.environ.pop(STORE_ENV, None)
    else:
        os.environ[STORE_ENV] = old


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


@pytest.fixture(scope="session")
def smoke_rerun(smoke_run: SmokeRun, tmp_path_factory: pytest.TempPathFactory) -> Rerun:
    """nbval re-executes the smoke run's executed notebooks, in order, into a fresh folder
    (no table copied from the first run: each comes from the re-execution), comparing
    every printed output with the first run's (``make test``'s nbval step)."""
    executed = [smoke_run.out_dir / "notebooks" / nb.name for nb in smoke_run.notebooks
                if nb.stem not in smoke_run.errors]
    work = tmp_path_factory.mktemp("smoke_rerun")
    copies = verify.prepare(executed, work, seed=False)
    res = verify.run_nbval(copies, work, capture=True)
    return Rerun(work, copies, res.returncode, res.stdout + res.stderr)

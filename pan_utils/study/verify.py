"""Executed notebooks made ready for nbval: the check that every printed number
regenerates (``make test`` on the smoke run, ``make verify`` on results/notebooks/).

nbval re-executes a notebook's cells in a kernel started in the notebook's own folder and
compares the new outputs with the stored ones. An executed notebook of the runner names
its results folder in its injected parameters, so re-executing it as it is would write
into the results it checks, and would resolve relative paths from the wrong folder. Each
copy written here instead:

- sets ``out_dir`` to a scratch folder, seeded with a copy of the results' tables and
  claims (a chapter reads the tables of the chapters before it);
- starts in the folder the source notebook ran in (its relative paths work);
- carries the nbval tags of the current source notebook's cells (matched by cell id), so
  a results folder executed before a tag was added is checked the same way.

``make verify`` is ``python -m pan_utils.study.verify --results results``: it prepares
the copies, prints the nbval command (``nbval_command``) and runs it. ``make test`` runs the
same command over the smoke run (tests/conftest.py, fixture ``smoke_rerun``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .provenance import REPO_ROOT

MARKER = ".nbval-work"  # a work folder this module made (it may be emptied)
SANITIZER = REPO_ROOT / "tests" / "nbval_sanitize.cfg"
CELL_TIMEOUT = 3600  # seconds per cell, as the runner's default
# Strict: every output of every cell is compared (images apart, which nbval skips), except
# cells tagged nbval-ignore-output; a full diff of a mismatch (verbosity_assertions).
NBVAL_ARGS = ("-p", "no:cacheprovider", "-q", "-o", "verbosity_assertions=2", "--nbval",
              "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZER.relative_to(REPO_ROOT)),
              "--nbval-cell-timeout", str(CELL_TIMEOUT))
NBVAL_TAGS = ("nbval-check-output", "nbval-ignore-output", "nbval-skip", "nbval-raises")
CHDIR_FLAG = "# verify: run where the source notebook ran"


class VerifyError(ValueError):
    """A bad argument: one line, exit status 2."""


def _source_of(nb, executed: Path) -> Path | None:
    """The source notebook the runner executed, from papermill's metadata."""
    recorded = (nb.metadata.get("papermill") or {}).get("input_path")
    for base in (REPO_ROOT, executed.parent):
        if recorded and (base / recorded).is_file():
            return (base / recorded).resolve()
    return None


def _merge_tags(nb, source: Path | None) -> int:
    """Copy the nbval tags of ``source``'s cells onto ``nb``'s cells with the same id;
    returns how many cells gained a tag."""
    if source is None:
        return 0
    import nbformat

    tags = {c.get("id"): [t for t in c.metadata.get("tags", []) if t in NBVAL_TAGS]
            for c in nbformat.read(str(source), as_version=4).cells}
    gained = 0
    for cell in nb.cells:
        new = [t for t in tags.get(cell.get("id"), []) if t not in cell.metadata.get("tags", [])]
        if new:
            cell.metadata["tags"] = list(cell.metadata.get("tags", [])) + new
            gained += 1
    return gained


def _reparameterise(nb, out_dir: Path, cwd: Path) -> None:
    """Point the injected parameters at ``out_dir`` and start the kernel in ``cwd``."""
    import nbformat
    from papermill.translators import translate_parameters

    params = dict((nb.metadata.get("papermill") or {}).get("parameters") or {})
    params["out_dir"] = str(out_dir)
    text = (f"import os as _os\n_os.chdir({str(cwd)!r})  {CHDIR_FLAG}\ndel _os\n"
            + translate_parameters("python", "python", params, "Parameters"))
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = text
            return
    cell = nbformat.v4.new_code_cell(text)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(0, cell)


def prepare(executed: list[Path], work: Path, results: Path | None = None,
            seed: bool = True) -> list[Path]:
    """Write nbval-ready copies of ``executed`` into ``work/notebooks`` (emptied first)
    with ``work`` as their ``out_dir``, seeded (``seed``) with the tables of ``results``
    (default: the folder above the first notebook's); unseeded, every table comes from
    the re-execution (all notebooks, in order). Returns the copies, in the order given."""
    import nbformat

    if not executed:
        raise VerifyError("no executed notebooks to verify")
    missing = [str(p) for p in executed if not Path(p).is_file()]
    if missing:
        raise VerifyError(f"no such executed notebook: {', '.join(missing)}")
    work = Path(work).resolve()
    if work == REPO_ROOT or work in REPO_ROOT.parents:
        raise VerifyError(f"--work {work}: the repository root or above it")
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        raise VerifyError(f"--work {work}: not empty and not made by this module; "
                          "use a new folder")
    results = Path(results) if results else Path(executed[0]).resolve().parent.parent
    shutil.rmtree(work, ignore_errors=True)
    (work / "notebooks").mkdir(parents=True)
    (work / MARKER).write_text("made by pan_utils.study.verify; emptied on each use\n")
    if seed and (results / "tables").is_dir():
        shutil.copytree(results / "tables", work / "tables", ignore=shutil.ignore_patterns(".*"))
    if seed and (results / "claims.json").is_file():
        shutil.copy2(results / "claims.json", work / "claims.json")
    copies = []
    for path in map(Path, executed):
        try:
            nb = nbformat.read(str(path), as_version=4)
        except Exception as exc:  # noqa: BLE001
            raise VerifyError(f"{path}: not a readable notebook ({type(exc).__name__})") from None
        source = _source_of(nb, path)
        _merge_tags(nb, source)
        _reparameterise(nb, work, source.parent if source else path.resolve().parent)
        copy = work / "notebooks" / path.name
        nbformat.write(nb, str(copy))
        copies.append(copy)
    return copies


def expand(paths: list[str | Path]) -> list[Path]:
    """Notebook paths as given; a folder stands for its ``notebooks/NN_*.ipynb``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted((p / "notebooks").glob("[0-9][0-9]_*.ipynb"))
            if not found:
                raise VerifyError(f"{p}: no executed notebooks (notebooks/NN_*.ipynb)")
            out += found
        else:
            out.append(p)
    return out


def nbval_command(copies: list[Path], rootdir: Path | None = None) -> list[str]:
    """The nbval run over ``copies``: pytest with NBVAL_ARGS, in this interpreter (its
    kernel), node ids relative to ``rootdir`` (the work folder)."""
    extra = ["--rootdir", str(rootdir)] if rootdir else []
    return [sys.executable, "-m", "pytest", *NBVAL_ARGS, *extra, *map(str, copies)]


def run_nbval(copies: list[Path], rootdir: Path | None = None, capture: bool = False
              ) -> subprocess.CompletedProcess:
    """Run nbval over ``copies`` from the repository root, progress bars off (a bar is
    no result) and no widgets, as in the runner's batch runs; status 0 when every compared
    output regenerated. With ``rootdir`` (the emptied work folder) the scans go to a fresh
    store there, so the rerun recomputes them: the check is also a determinism test."""
    env = {**os.environ, "PAN_UTILS_PROGRESS": "0", "PAN_UTILS_NONINTERACTIVE": "1"}
    if rootdir is not None:
        env["PAN_UTILS_STORE"] = str(Path(rootdir) / "scans")
    return subprocess.run(nbval_command(copies, rootdir), cwd=REPO_ROOT, env=env,
                          capture_output=capture, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pan_utils.study.verify",
        description="Re-execute executed notebooks with nbval and fail on any printed "
                    "number that does not regenerate: copies go to WORK/notebooks "
                    "(out_dir WORK, seeded with the results' tables), then nbval runs.")
    parser.add_argument("notebooks", nargs="*",
                        help="executed notebooks in run order, or a results folder (its "
                             "notebooks/NN_*.ipynb); default: those of --results")
    parser.add_argument("--work", default=str(REPO_ROOT / ".cache" / "nbval" / "verify"),
                        help="scratch folder, emptied (default: .cache/nbval/verify)")
    parser.add_argument("--results", default=None,
                        help="folder whose tables seed WORK (default: the notebooks' parent)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the copies and print the nbval command, do not run it")
    args = parser.parse_args(argv)
    try:
        given = args.notebooks or ([args.results] if args.results else [])
        copies = prepare(expand(given), Path(args.work),
                         Path(args.results) if args.results else None)
    except VerifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    command = nbval_command(copies, work)
    print(f"{len(copies)} notebook(s) ready in {work / 'notebooks'}; nbval:\n"
          f"PAN_UTILS_PROGRESS=0 {shlex.join(command)}", file=sys.stderr, flush=True)
    if args.prepare_only:
        return 0
    return run_nbval(copies, work).returncode


if __name__ == "__main__":
    sys.exit(main())

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

Usage: ``python -m pan_utils.study.verify --work .cache/nbval results/notebooks/*.ipynb``,
then ``pytest --nbval ... .cache/nbval/notebooks/*.ipynb`` (see the Makefile).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .provenance import REPO_ROOT

MARKER = ".nbval-work"  # a work folder this module made (it may be emptied)
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


def prepare(executed: list[Path], work: Path, results: Path | None = None) -> list[Path]:
    """Write nbval-ready copies of ``executed`` into ``work/notebooks`` (emptied first)
    with ``work`` as their ``out_dir``, seeded from ``results`` (default: the folder above
    the first notebook's). Returns the copies, in the order given."""
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
    if (results / "tables").is_dir():
        shutil.copytree(results / "tables", work / "tables", ignore=shutil.ignore_patterns(".*"))
    if (results / "claims.json").is_file():
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pan_utils.study.verify",
        description="Copy executed notebooks into WORK/notebooks, ready for nbval to "
                    "re-execute them (out_dir WORK, seeded with the results' tables).")
    parser.add_argument("notebooks", nargs="*",
                        help="executed notebooks in run order, or a results folder (its "
                             "notebooks/NN_*.ipynb); default: those of --results")
    parser.add_argument("--work", required=True, help="scratch folder (emptied)")
    parser.add_argument("--results", default=None,
                        help="folder whose tables seed WORK (default: the notebooks' parent)")
    args = parser.parse_args(argv)
    try:
        given = args.notebooks or ([args.results] if args.results else [])
        copies = prepare(expand(given), Path(args.work),
                         Path(args.results) if args.results else None)
    except VerifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(copies)} notebook(s) ready for nbval in {Path(args.work) / 'notebooks'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

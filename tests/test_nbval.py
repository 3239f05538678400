"""nbval as `make test` and `make verify` run it: an executed notebook whose printed
numbers regenerate passes; one with a planted changed number fails, showing the diff; and
the smoke run of every notebook regenerates under it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from pan_utils.study import reproduce as R
from pan_utils.study import verify as V


CELLS = [
    # a key number, a table written to out_dir and its path, a time: checked
    ("import pandas as pd\nfrom pan_utils.study.results import write_table\n"
     "df = pd.DataFrame({'pans': [seed * 6 + 42]})\n"
     "print('writing pans ->', write_table(df, out_dir, 'pans'))\n"
     "print(f\"key number: {int(df['pans'][0])} PANs; mean 4.666666666 (done in 0.0123 s)\")",
     []),
    # noise that is no result: run, not compared
    ("import time\nprint('now', time.time_ns())", ["nbval-ignore-output"]),
    # reads back what the first cell wrote into out_dir
    ("from pan_utils.study.results import read_table\n"
     "print('read back:', int(read_table(out_dir, 'pans')['pans'][0]))", []),
]


def _run_nbval(copy: Path) -> subprocess.CompletedProcess:
    """nbval over one copy, with the command make test and make verify run."""
    return V.run_nbval([copy], copy.parents[1], capture=True)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    src_dir = tmp_path_factory.mktemp("src")
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nout_dir = "x"\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params]
    for source, tags in CELLS:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "py", "language": "python"}
    src = src_dir / "01_t.ipynb"
    nbformat.write(nb, str(src))
    out = tmp_path_factory.mktemp("results")
    R.run_notebook(src, out, "smoke", timeout=120, progress=False)
    return out / "notebooks" / "01_t.ipynb"


def _printed(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_the_copy_writes_into_its_work_folder_not_the_results(executed, tmp_path):
    before = (executed.parents[1] / "tables" / "pans.csv").stat().st_mtime_ns
    (copy,) = V.prepare([executed], tmp_path / "work")
    nb = nbformat.read(str(copy), as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.tags)
    assert repr(str((tmp_path / "work").resolve())) in injected.source.replace('"', "'")
    assert (tmp_path / "work" / "tables" / "pans.csv").is_file()  # seeded from the results
    res = _run_nbval(copy)
    assert res.returncode == 0, res.stdout[-3000:]
    assert (executed.parents[1] / "tables" / "pans.csv").stat().st_mtime_ns == before


def test_a_planted_number_fails_with_the_diff(executed, tmp_path):
    (copy,) = V.prepare([executed], tmp_path / "work")
    nb = nbformat.read(str(copy), as_version=4)
    cell = next(c for c in nb.cells if "key number" in c.source)
    out = next(o for o in cell.outputs if "key number: 42" in o.get("text", ""))
    out["text"] = out["text"].replace("key number: 42", "key number: 43")
    nbformat.write(nb, str(copy))
    res = _run_nbval(copy)
    assert res.returncode == 1, res.stdout[-3000:]
    report = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout)
    assert "Cell outputs differ" in report
    assert "key number: 43" in report and "key number: 42" in report
    assert "1 failed" in report


def test_a_different_seed_is_caught_as_a_number_that_does_not_regenerate(executed, tmp_path):
    """The copy runs with the injected parameters it recorded; change one and the key
    number no longer regenerates."""
    nb = nbformat.read(str(executed), as_version=4)
    nb.metadata.papermill.parameters["seed"] = 1
    changed = tmp_path / "changed" / "notebooks" / executed.name
    changed.parent.mkdir(parents=True)
    nbformat.write(nb, str(changed))
    (copy,) = V.prepare([changed], tmp_path / "work", results=executed.parents[1])
    res = _run_nbval(copy)
    assert res.returncode == 1 and "key number: 48" in res.stdout


def test_source_tags_are_carried_onto_an_older_executed_copy(executed, tmp_path):
    nb = nbformat.read(str(executed), as_version=4)
    for c in nb.cells:
        c.metadata["tags"] = [t for t in c.metadata.get("tags", []) if not t.startswith("nbval")]
    old = tmp_path / "old" / "notebooks" / executed.name
    old.parent.mkdir(parents=True)
    nbformat.write(nb, str(old))
    nb.metadata.papermill.input_path = str(Path(executed).parents[1])  # no source: no tags
    source = tmp_path / "src.ipynb"
    shutil.copy(executed, source)
    assert V._merge_tags(nb, source) == 1
    assert any("nbval-ignore-output" in c.metadata.tags for c in nb.cells)


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert V.main(["--work", str(tmp_path / "w"), str(tmp_path / "none.ipynb")]) == 2
    assert "no such executed notebook" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert V.main(["--work", str(tmp_path / "mine"), str(tmp_path)]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert V.main(["--work", str(R.REPO_ROOT), str(tmp_path)]) == 2


def test_the_smoke_run_regenerates_under_nbval(smoke_rerun):
    """make test's nbval step: every cell of every smoke notebook re-executed, every
    output compared (tagged nbval-ignore-output apart), all alike."""
    assert smoke_rerun.returncode == 0, smoke_rerun.report[-6000:]
    cells = sum(c.cell_type == "code" for p in smoke_rerun.copies
                for c in nbformat.read(str(p), as_version=4).cells)
    assert smoke_rerun.passed() == cells, smoke_rerun.report[-2000:]


def test_nbval_runs_strict_with_the_repository_sanitizer():
    argv = V.nbval_command([Path("x.ipynb")])
    assert "--nbval" in argv and "--nbval-lax" not in argv
    cfg = argv[argv.index("--nbval-sanitize-with") + 1]
    assert (R.REPO_ROOT / cfg).is_file() and "--nbval-current-env" in argv


def test_source_notebooks_use_only_known_nbval_tags():
    for path in R.default_notebooks():
        for cell in nbformat.read(str(path), as_version=4).cells:
            tags = [t for t in cell.metadata.get("tags", []) if t.startswith("nbval")]
            assert set(tags) <= set(V.NBVAL_TAGS), (path.name, tags)
            assert "nbval-skip" not in tags, f"{path.name}: a skipped cell is never run"

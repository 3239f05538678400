"""The notebook runner behind `make reproduce`: kernels, atomic outputs, manifest, CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pytest

from pan_utils.study import reproduce as R
from pan_utils.study import settings as S
from pan_utils.study.results import read_table

PARAMS = 'profile = "default"\nout_dir = "../results"\ndata_dir = None\nn = 3'


def _notebook(path: Path, body: str, kernel: str = "python3") -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nbformat.write(nb, str(path))
    return path


WRITES = ("import sys, pandas as pd\n"
          "from pan_utils.study.results import write_table\n"
          "write_table(pd.DataFrame({'n': [n], 'profile': [profile]}), out_dir, '{name}')\n"
          "print('same interpreter:', sys.executable == {exe!r})")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One good notebook saved with a foreign kernel name, then a failing one, into one out."""
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("out")
    import sys

    body = WRITES.replace("{name}", "good").replace("{exe!r}", repr(sys.executable))
    good = _notebook(src / "01_good.ipynb", body, kernel="foo")
    entry = R.run_notebook(good, out, "smoke", extra_params={"n": 5}, timeout=120,
                           progress=False)
    first_manifest = json.loads((out / "manifest.json").read_text())
    bad = _notebook(src / "02_bad.ipynb", "print('before')\nraise ValueError('boom')")
    failed_dir = tmp_path_factory.mktemp("failed")
    with pytest.raises(R.NotebookError) as err:
        R.run_notebook(bad, out, "smoke", timeout=120, progress=False, failed_dir=failed_dir)
    return {"out": out, "failed_dir": failed_dir, "good": good, "entry": entry, "first": first_manifest, "error": err.value}


def test_foreign_kernel_name_runs_on_this_interpreter(runs):
    nb = nbformat.read(runs["out"] / "notebooks" / "01_good.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "same interpreter: True" in printed
    assert nb.metadata.kernelspec.name == "python3"


def test_parameters_are_injected(runs):
    table = read_table(runs["out"], "good")
    assert table.loc[0, "n"] == 5 and table.loc[0, "profile"] == "smoke"
    assert runs["entry"]["parameters"] == {"profile": "smoke", "out_dir": str(runs["out"]),
                                           "n": 5}


def test_failure_leaves_no_executed_notebook_but_keeps_the_partial_run(runs):
    nbs = runs["out"] / "notebooks"
    assert not (nbs / "02_bad.ipynb").exists()
    assert not (nbs / "02_bad.failed.ipynb").exists()  # kept apart from the results
    assert runs["error"].failed_path == runs["failed_dir"] / "02_bad.failed.ipynb"
    partial = nbformat.read(runs["error"].failed_path, as_version=4)
    assert any(o.get("ename") == "ValueError" for c in partial.cells for o in c.get("outputs", []))
    assert "ValueError: boom" in str(runs["error"])
    assert not [p for p in runs["out"].rglob(".*") if p.name.startswith((".tmp", ".staging"))]


def test_manifest_records_the_run(runs):
    m = runs["first"]
    e = m["notebooks"]["01_good"]
    assert m["profile"] == "smoke"
    assert e["wall_time_s"] > 0 and e["settings"]["n_images"] == S.PROFILES["smoke"].n_images
    for name in ("torch", "torchvision", "timm", "numpy", "pandas", "papermill"):
        assert m["packages"][name], name
    assert m["machine"]["cpu_count"] >= 1 and "torch_threads" in m["machine"]
    assert set(m["git"]) == {"commit", "dirty"}


def test_failed_run_keeps_the_previous_manifest_entries(runs):
    m = json.loads((runs["out"] / "manifest.json").read_text())
    assert m["notebooks"] == runs["first"]["notebooks"]


def test_manifest_merges_entries(tmp_path):
    R.update_manifest_file(tmp_path, {"a": {"profile": "smoke", "wall_time_s": 1.0}}, "smoke")
    R.update_manifest_file(tmp_path, {"b": {"profile": "smoke", "wall_time_s": 2.0}}, "smoke")
    R.update_manifest_file(tmp_path, {"b": {"profile": "smoke", "wall_time_s": 3.0}}, "smoke")
    m = R.read_manifest(tmp_path)
    assert m["notebooks"] == {"a": {"profile": "smoke", "wall_time_s": 1.0},
                              "b": {"profile": "smoke", "wall_time_s": 3.0}}


def test_index_lists_what_exists(runs):
    text = R.write_index(runs["out"]).read_text()
    assert "notebooks/01_good.ipynb" in text and "tables/good.csv" in text
    assert "failed" not in text and ".tmp" not in text


def test_executed_notebook_names_no_repository_path(runs):
    nb = nbformat.read(runs["out"] / "notebooks" / "01_good.ipynb", as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert str(R.REPO_ROOT) not in outputs + json.dumps(nb.metadata)
    assert nb.metadata.papermill.input_path == "01_good.ipynb"
    assert ".staging-" not in nbformat.writes(nb)  # the notebook names the results folder
    assert nb.metadata.papermill.parameters["out_dir"] == str(runs["out"])


def test_paths_inside_the_repo_become_relative():
    assert R._portable(R.REPO_ROOT / "results", R.REPO_ROOT / "notebooks") == "../results"
    assert R._portable("/elsewhere/x", R.REPO_ROOT / "notebooks") == "/elsewhere/x"


def test_unknown_extra_parameter_is_refused(runs, tmp_path):
    with pytest.raises(ValueError, match="no parameter"):
        R.run_notebook(runs["good"], tmp_path, "smoke", extra_params={"nope": 1})


@pytest.mark.parametrize("argv, needle", [
    (["--profile", "bogus"], "unknown profile 'bogus'"),
    (["--profile", "paper"], "DATA_DIR"),
    (["--profile", "smoke", "--data-dir", "/no/such/dir"], "not a folder"),
    (["--profile", "smoke", "missing.ipynb"], "no such notebook"),
])
def test_cli_bad_input_is_one_line_and_status_2(argv, needle, capsys, tmp_path):
    assert R.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_git_state_ignores_regenerated_results(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.csv").write_text("a\n1\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    monkeypatch.setattr(R, "REPO_ROOT", tmp_path)
    assert R.git_state()["dirty"] is False
    (tmp_path / "results" / "table.csv").write_text("a\n2\n")  # what a rerun writes
    assert R.git_state()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    state = R.git_state()
    assert state["dirty"] is True and len(state["commit"]) == 40

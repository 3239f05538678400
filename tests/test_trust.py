"""Results you can trust: each fault is injected into a run and must leave one line of
explanation and the previous results byte for byte as they were."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from pan_utils.study import reproduce as R
from pan_utils.study.results import read_table, write_table

PARAMS = 'profile = "smoke"\nout_dir = "x"'


def _notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "py", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones included)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(err: str) -> str:
    """The one error line of the runner's stderr (progress lines start with '[')."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1, err
    return lines[0]


def fake_execute(value: int = 1, fail: BaseException | None = None):
    """Stands in for papermill.execute_notebook: writes tables 't' and 'u' and the
    'executed' notebook into the out_dir it is given (the staging folder), then maybe
    raises."""
    def execute(src, out, parameters, **kw):
        for name in "tu":
            write_table(pd.DataFrame({"v": [value]}), Path(kw["cwd"], parameters["out_dir"]),
                        name)
        shutil.copyfile(src, out)
        if fail is not None:
            raise fail
    return execute


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A results folder with a space in its path, holding one finished run; failed copies
    go to a temporary folder."""
    import papermill

    src = _notebook(tmp_path / "01_t.ipynb", "pass")
    out = tmp_path / "res dir"
    monkeypatch.setattr(R, "FAILED_DIR", tmp_path / "failed")
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute(1))
    assert R.main(["--profile", "smoke", "--out", str(out), "--no-progress", str(src)]) == 0
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute(2))
    return {"src": src, "out": out, "before": snapshot(out), "tmp": tmp_path}


def _main(env, *extra) -> int:
    return R.main(["--profile", "smoke", "--out", str(env["out"]), "--no-progress",
                   *extra, str(env["src"])])


def test_a_good_run_replaces_the_results(env, capsys):
    assert read_table(env["out"], "t")["v"].tolist() == [1]
    assert R.read_manifest(env["out"])["generator"] == R.GENERATOR
    assert _main(env) == 0
    assert read_table(env["out"], "t")["v"].tolist() == [2]
    assert not [p for p in env["out"].iterdir() if p.name.startswith(".")]


def test_notebook_that_raises_midway_changes_nothing(env, capsys, monkeypatch):
    import papermill

    monkeypatch.undo()  # the real papermill and kernel: one tiny notebook
    monkeypatch.setattr(R, "FAILED_DIR", env["tmp"] / "failed")
    src = _notebook(env["tmp"] / "01_t.ipynb",
                    "import pandas as pd\nfrom pan_utils.study.results import write_table\n"
                    "write_table(pd.DataFrame({'v': [3]}), out_dir, 't')\n"
                    "raise RuntimeError('midway')")
    assert papermill.execute_notebook is not None
    code = R.main(["--profile", "smoke", "--out", str(env["out"]), "--no-progress", str(src),
                   "--timeout", "120"])
    line = _error_line(capsys.readouterr().err)
    assert code == 1 and "RuntimeError: midway" in line and "unchanged" in line
    assert snapshot(env["out"]) == env["before"]
    assert (env["tmp"] / "failed" / "01_t.failed.ipynb").is_file()
    assert str(env["tmp"] / "failed") in line


def test_ctrl_c_exits_130_with_one_line(env, capsys, monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute(2, KeyboardInterrupt()))
    assert _main(env) == 130
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("interrupted;") and "unchanged" in line
    assert snapshot(env["out"]) == env["before"]
    assert (env["tmp"] / "failed" / "01_t.failed.ipynb").is_file()


@pytest.mark.parametrize("fail_at", [1, 2])
def test_disk_full_while_moving_rolls_back(env, capsys, monkeypatch, fail_at):
    real, calls = os.replace, []
    out = env["out"].resolve()

    def replace(a, b):
        target = Path(b).resolve()
        if out in target.parents and not target.relative_to(out).parts[0].startswith("."):
            calls.append(b)
            if len(calls) == fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(b))
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    assert _main(env) == 1
    line = _error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "unchanged" in line
    assert len(calls) == fail_at
    assert snapshot(env["out"]) == env["before"]


@pytest.mark.parametrize("where", ["root", "notebooks", "above"])
def test_source_folders_are_refused(where, capsys):
    out = {"root": R.REPO_ROOT, "notebooks": R.REPO_ROOT / "notebooks",
           "above": R.REPO_ROOT.parent}[where]
    before = snapshot(R.REPO_ROOT / "notebooks")
    assert R.main(["--profile", "smoke", "--out", str(out)]) == 2
    assert "--out" in _error_line(capsys.readouterr().err)
    assert snapshot(R.REPO_ROOT / "notebooks") == before


def test_foreign_folder_is_refused_and_untouched(env, tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "README.md").write_text("my notes\n")
    before = snapshot(foreign)
    assert R.main(["--profile", "smoke", "--out", str(foreign), str(env["src"])]) == 2
    assert "no manifest.json of this runner" in _error_line(capsys.readouterr().err)
    with pytest.raises(R.OutDirError):
        R.write_index(foreign)
    with pytest.raises(R.OutDirError):
        R.run_notebook(env["src"], foreign)
    assert snapshot(foreign) == before


def test_legacy_manifest_counts_as_ours(tmp_path):
    (tmp_path / "manifest.json").write_text('{"profile": "default", "notebooks": {}}')
    (tmp_path / "README.md").write_text("old index")
    assert R.check_out_dir(tmp_path) == tmp_path.resolve()
    assert "# Results" in R.write_index(tmp_path).read_text()


def test_a_second_concurrent_run_is_refused(env, capsys):
    fd = os.open(env["out"], os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the folder
        assert _main(env) == 2
        assert "another run is writing to it" in _error_line(capsys.readouterr().err)
    finally:
        os.close(fd)
    assert snapshot(env["out"]) == env["before"]


def test_read_only_results_folder(env, capsys, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == env["out"].resolve()
                        else real(p, mode))  # root ignores chmod, so read-only is simulated
    assert _main(env) == 2
    assert "read-only" in _error_line(capsys.readouterr().err)
    assert snapshot(env["out"]) == env["before"]


def test_leftovers_of_a_killed_run_are_cleaned(env, capsys):
    (env["out"] / ".staging-99999" / "tables").mkdir(parents=True)
    (env["out"] / ".staging-99999" / "tables" / "t.csv").write_text("v\n9\n")
    (env["out"] / "tables" / ".tmp-t.csv.abc").write_text("half")
    assert _main(env) == 0
    assert not [p for p in env["out"].rglob("*") if p.name.startswith((".staging", ".tmp"))]


def test_if_changed_skips_an_up_to_date_notebook(env, capsys):
    assert _main(env, "--if-changed") == 0
    assert "01_t.ipynb up to date" in capsys.readouterr().err
    assert snapshot(env["out"]) == env["before"]
    assert _main(env) == 0  # without it the notebook runs again
    assert read_table(env["out"], "t")["v"].tolist() == [2]


def test_kernel_caches_stay_out_of_home():
    env = R.cache_env({})
    assert set(env) == set(R.CACHE_ENV)
    assert all(Path(v).is_relative_to(R.REPO_ROOT / ".cache") for v in env.values())
    assert R.cache_env({"TORCH_HOME": "/x"}).get("TORCH_HOME") is None

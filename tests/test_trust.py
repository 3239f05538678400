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
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pan_utils.engine.probes import eval_transform
from pan_utils.engine.scan import MIN_IMAGES, ScanError, find_pans
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
    assert papermill.execute_notebook.__module__ == "papermill.execute"  # not fake_execute
    code = R.main(["--profile", "smoke", "--out", str(env["out"]), "--no-progress", str(src),
                   "--timeout", "120"])
    line = _error_line(capsys.readouterr().err)
    assert code == 1 and "RuntimeError: midway" in line and "unchanged" in line
    assert snapshot(env["out"]) == env["before"]
    failed = env["tmp"] / "failed" / "01_t.failed.ipynb"
    errors = [o for c in nbformat.read(str(failed), as_version=4).cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert [(o["ename"], o["evalue"]) for o in errors] == [("RuntimeError", "midway")]
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


# ------------------------------------------------------------------- input guards


def test_sixteen_bit_png_keeps_its_gradient(tmp_path):
    from PIL import Image

    from pan_utils.engine.probes import ImageFiles

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    x, _ = ImageFiles(tmp_path, eval_transform(64, 1.0))[0]
    assert x.shape == (3, 64, 64)
    row = x[0, 32].numpy()
    assert row[0] < 0.05 and row[-1] > 0.95 and np.all(np.diff(row) >= -1e-6)
    assert 0.3 < float(x.mean()) < 0.7  # not all white


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_depth_modes_scale_by_their_range(mode):
    from PIL import Image

    from pan_utils.engine.probes import to_rgb

    top = {"I;16": 65535, "I": 65535, "F": 1.0}[mode]
    a = np.array([[0, top / 2, top]], dtype={"I;16": np.uint16, "I": np.int32,
                                              "F": np.float32}[mode])
    im = Image.fromarray(a).convert(mode) if mode != "I;16" else Image.fromarray(a)
    assert im.mode == mode
    out = np.asarray(to_rgb(im))[0, :, 0]
    assert out[0] == 0 and 126 <= out[1] <= 129 and out[2] == 255


def test_nan_weights_and_outputs_are_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        net[1].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ScanError, match="weights 1.weight hold NaN"):
        find_pans(net, x, progress=False)
    with torch.no_grad():
        net[1].weight[0, 0, 0, 0] = 0.0
    x[0, 0, 5, 5] = float("inf")  # finite weights, an input that overflows
    with pytest.raises(ScanError, match="layer 0 produced NaN or inf outputs"):
        find_pans(net, x, progress=False)


def test_too_few_images_are_refused_by_find_pans():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    with pytest.raises(ScanError, match=f"at least {MIN_IMAGES}"):
        find_pans(net, torch.randn(MIN_IMAGES - 1, 3, 16, 16), progress=False)


def test_a_symlink_loop_in_an_image_folder_lists_each_file_once(tmp_path):
    from PIL import Image

    from pan_utils.engine.probes import ImageFolderProbe

    (tmp_path / "a").mkdir()
    rng = np.random.default_rng(0)  # distinct images with content (flat ones are refused)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / "a" / f"{i}.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    probe = ImageFolderProbe(tmp_path, 16)
    assert len(probe) == 8
    assert sum(x.shape[0] for x, _ in probe.batches(4)) == 8


# ---------------------------------------------------------------- streamed probes


@pytest.mark.parametrize("n, batch_size", [(10, 4), (7, 7), (5, 16)])
def test_bundled_probe_streams_the_same_crops(n, batch_size):
    from pan_utils.engine.probes import BundledProbe, bundled_images

    kw = dict(seed=3, split="eval", mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    whole = bundled_images(n, (24, 32), **kw)
    parts = list(BundledProbe(n, (24, 32), **kw).batches(batch_size))
    assert [p.shape[0] for p in parts[:-1]] == [batch_size] * (len(parts) - 1)
    assert torch.equal(torch.cat(parts), whole)

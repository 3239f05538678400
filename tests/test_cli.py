"""`python -m pan_utils`: results on success; exit 2 and one line on every user error."""

from __future__ import annotations

import os
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


def test_models_lists_offline_first_and_filters(capsys):
    code, stdout, _ = _run(["models", "--filter", "EfficientNet_Lite", "--source"], capsys)
    assert code == 0
    rows = [line.split("\t") for line in stdout.splitlines()]
    assert rows[0] == ["offline", "efficientnet_lite0"]
    assert all("efficientnet_lite" in name for _, name in rows)
    names = [name for _, name in rows]
    assert len(names) == len(set(names)) and any(src == "timm" for src, _ in rows)
    assert _run(["models", "--filter", "no-such-net-xyz"], capsys)[0] == 1


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
    _images_in(tmp_path / "small", 1, size=(1, 1))
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
    assert code == 2 and "--seed: must be 0 or more" in _one_error_line(capsys.readouterr().err)


def test_models_into_a_closed_pipe_prints_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(f"{sys.executable} -m pan_utils models | head -1", shell=True,
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr

"""The paper profile's code paths, offline: an ImageNet-style folder, timm models by name."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pan_utils import ImageFolderProbe, find_pans, load_model, random_init
from pan_utils.cli import main
from pan_utils.engine.zoo import resolve_source
from pan_utils.study.settings import settings

WNIDS = ("n01440764", "n01443537")  # tench, goldfish: ImageNet classes 0 and 1
PER_CLASS = 4  # 8 readable images: find_pans needs MIN_IMAGES
TIMM_MODEL = "resnet10t"  # a small timm ResNet; random init needs no download


@pytest.fixture(scope="module")
def imagenet_val(tmp_path_factory) -> Path:
    """A tiny ImageNet validation folder: wnid sub-folders of JPEGs, one corrupt file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet_val")
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(WNIDS):
        (root / wnid).mkdir()
        for i in range(PER_CLASS):
            h, w = rng.integers(40, 80, size=2)
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / wnid / f"ILSVRC2012_val_{k}{i:07d}.JPEG")
    (root / WNIDS[1] / "ILSVRC2012_val_broken.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def test_wnid_folders_get_imagenet_label_indices(imagenet_val):
    probe = ImageFolderProbe(imagenet_val, size=32)
    assert probe.has_labels and probe.classes == list(WNIDS)
    by_folder = {f.parent.name: y for f, y in zip(probe.files, probe.labels)}
    assert by_folder == {"n01440764": 0, "n01443537": 1}
    assert len(probe) == 2 * PER_CLASS + 1  # the corrupt file is only found out on reading


def test_corrupt_file_is_skipped_with_one_counting_warning(imagenet_val):
    probe = ImageFolderProbe(imagenet_val, size=(32, 40))
    with pytest.warns(UserWarning, match=rf"skipped 1 unreadable image\(s\) of {2 * PER_CLASS + 1}"):
        batches = list(probe.batches(4))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (2 * PER_CLASS, 3, 32, 40)
    assert sorted(y.tolist()) == [0] * PER_CLASS + [1] * PER_CLASS
    assert [p.name for p in probe.skipped] == ["ILSVRC2012_val_broken.JPEG"]


def test_find_pans_runs_on_a_random_init_timm_model_over_the_folder(imagenet_val):
    loaded = load_model(TIMM_MODEL, pretrained=False)
    model = random_init(loaded.model, seed=0)
    prep = loaded.preprocessing
    probe = ImageFolderProbe(imagenet_val, 64, prep.mean, prep.std)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        pans, scores = find_pans(model, probe, batch_size=4, progress=False,
                                 return_scores=True, null=False)  # the CLI test runs the null
    native = scores[scores["mode"] == "native"]
    assert native["n_images"].eq(2 * PER_CLASS).all()
    assert native["layer"].nunique() >= 5
    assert {"layer", "channel", "sides", "polarity", "score", "d_top"} <= set(pans.columns)


def test_cli_scan_over_the_folder_writes_both_tables(imagenet_val, tmp_path, capsys):
    out = tmp_path / "scan"
    code = main(["scan", TIMM_MODEL, "--images", str(imagenet_val), "--random-init",
                 "--image-size", "64", "--batch-size", "4", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    warnings_ = [line for line in cap.err.splitlines() if line.startswith("warning:")]
    # one line each: the corrupt file, and the photos smaller than 64 px (upscaled)
    assert [w.split(" ")[1] for w in warnings_] == ["skipped", "upscaled"], warnings_
    assert "skipped 1 unreadable" in warnings_[0]
    assert f"model:      {TIMM_MODEL} (random init, seed 0)" in cap.out
    assert f"{2 * PER_CLASS} scanned" in cap.out
    scores = pd.read_csv(out / "scores.csv")
    pans = pd.read_csv(out / "pans.csv")
    assert set(scores["model"]) == {TIMM_MODEL} and scores["n_images"].eq(2 * PER_CLASS).all()
    assert list(pans.columns[:3]) == ["model", "layer", "order"]
    assert f"PANs:       {len(pans)} (" in cap.out
    assert not list(out.glob(".tmp-*"))  # no temporary file left behind


def test_paper_models_resolve_offline():
    names = settings("paper").models
    assert len(names) >= 5
    sources = {name: resolve_source(name)[0] for name in names}  # raises ModelError if unknown
    assert sources["mobilenet_v2"] == "offline" and sources["efficientnet_lite0"] == "offline"
    assert sources["resnet50.a1_in1k"] == "timm"


def test_a_paper_timm_model_builds_without_weights():
    name = "mobilenetv3_large_100.ra_in1k"
    assert name in settings("paper").models
    loaded = load_model(name, pretrained=False)
    assert loaded.preprocessing.input_size == (224, 224)
    assert len(loaded.preprocessing.class_names) == 1000
    assert not loaded.model.training


def test_a_cure_of_a_timm_model_on_the_folder_keeps_eval_and_scan_apart(imagenet_val, tmp_path):
    from pan_utils.engine import cure
    from pan_utils.study.cure import cure_data

    S = settings("smoke", data_dir=str(imagenet_val), n_images=4, n_eval=4, cure_n_eval=4,
                 cure_n_placement=2, cure_train_images=4, cure_n_images=4, frames_n_eval=2)
    loaded = load_model(TIMM_MODEL, pretrained=False)
    prep = loaded.preprocessing
    with warnings.catch_warnings():  # the corrupt file, if drawn, is skipped with a warning
        warnings.simplefilter("ignore")
        data = cure_data(prep, S, 32)
        eval_files = set(map(str, data.eval.files))
    scan_files = set(map(str, data.probes.files))
    assert data.train.shape[0] == 4 and eval_files and not eval_files & scan_files
    model = random_init(loaded.model, 0)
    cured, spec = cure.swap_padding(model, "mean", 32, calibration=data.train)
    cure.distill(cured, model, data.train, steps=1, batch_size=2)
    path = cure.save(tmp_path / "timm.pt", cured, spec, TIMM_MODEL)
    again = load_model(TIMM_MODEL, weights=path).model
    x = data.train[:2]
    with torch.no_grad():
        assert torch.equal(again(x), cured(x))

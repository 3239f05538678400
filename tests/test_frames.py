"""Chapter 6's frames, controls, universal patches and mediation, on ground truth.

The planted model's output depends only on a top-border detector: one conv channel whose
top output row reads the zero padding above the image and the image's first row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pan_utils.engine.ablate import ablate
from pan_utils.engine.frames import (FrameError, activation_shift, centre_mask,
                                     compare_predictions, fill_colour, fit_universal_patch,
                                     frame_mask, frame_transform, letterbox_mask,
                                     moved_transform, patch_transform, random_mask)
from pan_utils.engine.policy import padding_policy
from pan_utils.engine.probes import PHOTO_SPLITS
from pan_utils.study import frames
from pan_utils.study.settings import settings

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # black = -2, white = 2, grey = 0
HW = (16, 16)


class TopDetector(nn.Module):
    """Class 0 while the top output row of one conv (pad row + image row 0) is bright."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :, :2, :] = 1.0  # the row above and the row itself

    def forward(self, x):
        g = self.conv(x)[:, 0, 0, :].mean(1)
        return torch.stack([g - 3.0, torch.zeros_like(g)], 1)


@pytest.fixture(scope="module")
def planted():
    return TopDetector().eval()


@pytest.fixture(scope="module")
def bright():
    return torch.rand(12, 3, *HW, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5


def _agreement(model, x, transform, context=None):
    return float(compare_predictions(model, x, {"t": transform}, context=context)
                 ["agreement"][0])


# --------------------------------------------------------------------------- masks, values


def test_frame_of_width_zero_is_the_identity(bright):
    for fill in ("black", "white", "grey", "replicate"):
        assert torch.equal(frame_transform(0, fill, MEAN, STD)(bright), bright)
    assert frame_mask(HW, 0).sum() == 0


@pytest.mark.parametrize("width", [1, 2, 4])
def test_frame_writes_exactly_the_outer_pixels(bright, width):
    h, w = HW
    mask = frame_mask(HW, width)
    assert int(mask.sum()) == h * w - (h - 2 * width) * (w - 2 * width)
    out = frame_transform(width, "black", MEAN, STD)(bright)
    assert torch.equal(out[..., ~mask], bright[..., ~mask])
    assert torch.allclose(out[..., mask], torch.tensor(-2.0))
    grey = frame_transform(width, "grey", MEAN, STD)(bright)
    assert (grey[..., mask] == 0).all()  # mean grey is 0 after normalisation


def test_replicate_repeats_the_last_inner_row_and_column(bright):
    out = frame_transform(2, "replicate", MEAN, STD)(bright)
    assert torch.equal(out[:, :, 0, 5], bright[:, :, 2, 5])
    assert torch.equal(out[:, :, 5, -1], bright[:, :, 5, -3])
    assert torch.equal(out[:, :, 0, 0], bright[:, :, 2, 2])


def test_fill_colours_are_the_normalised_pixels():
    assert torch.allclose(fill_colour("black", MEAN, STD), torch.full((3,), -2.0))
    assert torch.allclose(fill_colour("white", MEAN, STD), torch.full((3,), 2.0))
    with pytest.raises(FrameError):
        fill_colour("pink", MEAN, STD)


def test_letterbox_bars_are_the_rows_a_wider_photo_lacks():
    m = letterbox_mask((224, 224), 4 / 3)
    assert int(m.sum()) == 224 * (224 - 168)
    assert m[:28].all() and m[-28:].all() and not m[28:-28].any()
    tall = letterbox_mask((224, 224), 3 / 4)
    assert tall[:, :28].all() and not tall[:, 28:-28].any()


def test_controls_move_the_same_number_of_pixels_off_the_border(bright):
    src = frame_mask(HW, 1)
    n = int(src.sum())
    centre = centre_mask(HW, n)
    rnd = random_mask(HW, n, exclude=src, seed=3)
    assert int(centre.sum()) == n == int(rnd.sum())
    assert not (centre & src).any() and not (rnd & src).any()
    assert torch.equal(rnd, random_mask(HW, n, exclude=src, seed=3))
    out = moved_transform(src, centre, "replicate", MEAN, STD)(bright)
    assert torch.equal(out[..., ~centre], bright[..., ~centre])  # the frame itself untouched
    framed = frame_transform(1, "replicate", MEAN, STD)(bright)
    assert torch.equal(out[..., centre].sort(-1).values, framed[..., src].sort(-1).values)
    with pytest.raises(FrameError):
        moved_transform(src, centre_mask(HW, n - 1), "black", MEAN, STD)


# --------------------------------------------------------------------------- planted model


def test_planted_detector_flips_under_a_top_frame_not_a_central_patch(planted, bright):
    top = frame_mask(HW, 1, "T")
    assert _agreement(planted, bright, frame_transform(1, "black", MEAN, STD, "T")) == 0
    centre = moved_transform(top, centre_mask(HW, int(top.sum())), "black", MEAN, STD)
    assert _agreement(planted, bright, centre) == 1
    assert _agreement(planted, bright, frame_transform(1, "black", MEAN, STD, "B")) == 1


def test_circular_twin_loses_the_top_bottom_asymmetry(planted, bright):
    circ = lambda m: padding_policy(m, "circular")  # noqa: E731
    bottom = frame_transform(1, "black", MEAN, STD, "B")
    assert _agreement(planted, bright, bottom) == 1
    assert _agreement(planted, bright, bottom, context=circ) == 0
    assert _agreement(planted, bright, frame_transform(1, "black", MEAN, STD, "T"),
                      context=circ) == 0


def test_border_ablation_of_the_detector_removes_the_frame_effect(planted, bright):
    pans = pd.DataFrame({"layer": ["conv"], "channel": [0]})
    ctx = lambda m: ablate(m, pans, "border", {("conv", 0): 6.0})  # noqa: E731
    top = frame_transform(1, "black", MEAN, STD, "T")
    assert _agreement(planted, bright, top) == 0
    assert _agreement(planted, bright, top, context=ctx) == 1


def test_effects_are_measured_against_the_context_s_own_predictions(planted, bright):
    flip = lambda m: ablate(m, pd.DataFrame({"layer": ["conv"], "channel": [0]}),  # noqa: E731
                            "mean", {("conv", 0): -100.0})
    res = compare_predictions(planted, bright, {"id": lambda x: x}, context=flip)
    assert res["agreement"][0] == 1 and res["prob_change"][0] == pytest.approx(0, abs=1e-7)


def test_universal_frame_touches_only_frame_pixels_and_fools(planted, bright):
    mask = frame_mask(HW, 1)
    before = [p.detach().clone() for p in planted.parameters()]
    pattern = fit_universal_patch(planted, bright, mask, MEAN, STD, steps=30, batch_size=4,
                                  lr=0.2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, planted.parameters()))
    assert all(p.requires_grad for p in planted.parameters())
    assert pattern.min() >= -2 - 1e-5 and pattern.max() <= 2 + 1e-5  # a valid image
    out = patch_transform(pattern, mask)(bright)
    assert torch.equal(out[..., ~mask], bright[..., ~mask])  # interior bit-identical
    assert _agreement(planted, bright, patch_transform(pattern, mask)) == 0
    # the same budget on a central patch of the same area cannot reach the top row
    centre = centre_mask(HW, int(mask.sum()))
    pc = fit_universal_patch(planted, bright, centre, MEAN, STD, steps=30, batch_size=4,
                             lr=0.2, seed=0)
    assert _agreement(planted, bright, patch_transform(pc, centre)) == 1


def test_activation_shift_is_zero_for_the_identity_and_local_to_the_frame(planted, bright):
    t = {"id": lambda x: x, "top": frame_transform(1, "black", MEAN, STD, "T")}
    s = activation_shift(planted, bright, t, ["conv"]).set_index("transform")["shift"]
    assert s["id"] == 0 and s["top"] > 0


# --------------------------------------------------------------------------- study


def test_universal_frames_are_fitted_on_scan_photos_and_scored_on_eval_photos(monkeypatch):
    from pan_utils.engine.models import load_model

    S = settings("smoke")
    p = load_model("mobilenet_v2").preprocessing
    fit, fit_names = frames.split_images(p, S, 32, "scan", 6)
    ev, ev_names = frames.split_images(p, S, 32, "eval", 6)
    assert {PHOTO_SPLITS[n] for n in fit_names} == {"scan"}
    assert {PHOTO_SPLITS[n] for n in ev_names} == {"eval"}
    seen = {"fit": [], "eval": []}
    real_fit, real_cmp = frames.fit_universal_patch, frames.compare_predictions

    def spy_fit(model, images, *a, **k):
        seen["fit"].append(images)
        return real_fit(model, images, *a, **k)

    def spy_cmp(model, images, *a, **k):
        seen["eval"].append(images)
        return real_cmp(model, images, *a, **k)

    monkeypatch.setattr(frames, "fit_universal_patch", spy_fit)
    monkeypatch.setattr(frames, "compare_predictions", spy_cmp)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 5)).eval()
    adv = frames.adversarial_frames(model, fit, ev, S.replace(frames_adv_steps=1), p.mean,
                                    p.std, device="cpu")
    assert all(x is fit for x in seen["fit"]) and all(x is ev for x in seen["eval"])
    assert set(adv["fit_split"]) == {"scan"} and set(adv["eval_split"]) == {"eval"}
    assert set(adv["placement"]) == {"frame", "centre"}
    assert adv.groupby("width")["n_pixels"].nunique().eq(1).all()  # same area


def test_folder_splits_are_disjoint_and_the_eval_split_streams(tmp_path):
    from PIL import Image

    from pan_utils.engine.models import load_model

    for i in range(12):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    S = settings("smoke", data_dir=str(tmp_path), n_images=6, n_eval=6)
    p = load_model("mobilenet_v2").preprocessing
    fit, fit_files = frames.split_images(p, S, 32, "scan", 4)
    ev, ev_files = frames.split_images(p, S, 32, "eval", 5)
    assert fit.shape[0] == 4 and len(ev_files) == 5 and not set(fit_files) & set(ev_files)
    assert frames.first_images(ev, 5).shape == (5, 3, 32, 32)


def test_natural_transforms_pair_every_control_with_its_frame():
    S = settings("smoke")
    t, meta = frames.natural_transforms((32, 32), S, MEAN, STD)
    assert set(t) == set(meta["transform"])
    for (fill, width), g in meta[meta["width"] > 0].groupby(["fill", "width"]):
        kinds = set(g["kind"])
        assert kinds == ({"frame", "centre", "random"} if width in S.frames_control_widths
                         else {"frame"})
        assert g["n_pixels"].nunique() == 1


def _synthetic_tables() -> dict[str, pd.DataFrame]:
    nat = pd.DataFrame({"model": "m", "transform": ["black 4px", "black 4px centre",
                                                   "black 4px random", "letterbox black"],
                        "kind": ["frame", "centre", "random", "letterbox"],
                        "fill": "black", "width": [4, 4, 4, 0], "n_pixels": 10,
                        "n_images": 10, "agreement": [0.5, 0.9, 0.8, 0.7],
                        "prob_change": -0.1, "kl": 0.1})
    adv = pd.DataFrame({"model": "m", "width": [4, 4], "placement": ["frame", "centre"],
                        "n_pixels": 10, "fooling_rate": [0.6, 0.2]})
    med = pd.DataFrame({"model": "m", "transform": "black 4px", "fill": "black", "width": 4,
                        "n_images": 10, "condition": ["intact", "pans_border", "random_border",
                                                      "random_border"],
                        "draw": [0, 0, 0, 1], "agreement": [0.5, 0.9, 0.5, 0.6]})
    pad = pd.DataFrame({"model": "m", "transform": "black 4px", "padding": ["zeros", "circular"],
                        "agreement": [0.5, 0.7]})
    shift = pd.DataFrame({"model": "m", "transform": ["black 4px"], "ratio": [2.0]})
    return {"frames_natural": nat, "frames_adversarial": adv,
            "frames_mediation_summary": frames.mediation_summary(med),
            "frames_padding": pad, "frames_activation_shift": shift}


def test_mediation_summary_and_claims_from_tables():
    t = _synthetic_tables()
    s = t["frames_mediation_summary"].iloc[0]
    assert s["effect_intact"] == pytest.approx(0.5) and s["effect_pans"] == pytest.approx(0.1)
    assert s["effect_random"] == pytest.approx(0.45) and s["draws"] == 2
    assert s["gap"] == pytest.approx(0.4 - 0.05)
    c = frames.frames_claims(t)["m"]
    assert c["controls"]["black 4px"]["border_worse"] is True  # 0.5 < 0.8 - 0.05
    assert c["adversarial_frame_stronger"] == {"4": True}
    assert c["mediation"]["black 4px"]["pan_specific"] is True
    assert c["letterbox"] == {"black": 0.7}
    lines = frames.frames_findings(frames.frames_claims(t))
    assert any("PAN-specific" in ln for ln in lines) and any("letterbox" in ln for ln in lines)
    assert frames.frames_findings(frames.frames_claims(t), "padding") == [
        ln for ln in lines if "by padding" in ln]


def test_border_verdict_is_false_when_the_controls_cost_as_much():
    t = _synthetic_tables()
    t["frames_natural"].loc[1, "agreement"] = 0.52
    assert frames.frames_claims(t)["m"]["controls"]["black 4px"]["border_worse"] is False


def test_bad_frames_are_one_clear_error():
    with pytest.raises(FrameError, match="width"):
        frame_mask(HW, 9)
    with pytest.raises(FrameError, match="sides"):
        frame_mask(HW, 1, "X")
    with pytest.raises(FrameError):
        random_mask(HW, 10_000)
    with pytest.raises(ValueError, match="section"):
        frames.frames_findings({"thresholds": {}}, "nope")
    assert np.isfinite(float(fill_colour("grey", MEAN, STD).sum()))


def test_method_doc_frames_table_matches_the_profiles():
    import re

    from pan_utils.study.reproduce import REPO_ROOT
    from pan_utils.study.settings import PROFILES

    text = (REPO_ROOT / "docs" / "METHOD.md").read_text()
    table = text[text.index("### 13.4"):]
    rows = {m.group(1): [c.strip() for c in m.group(2).split(" | ")]
            for m in re.finditer(r"^\| `(frames_\w+)` \| (.*) \|$", table, re.M)}
    shown = lambda v: ", ".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    assert len(rows) >= 10
    for field, row in rows.items():
        assert row == [shown(getattr(PROFILES[n], field)) for n in ("smoke", "default",
                                                                   "paper")], field

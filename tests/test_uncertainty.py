"""Ground truth for the baseline and the uncertainty of a count: resampling the stored
per-image statistics equals scanning the resampled images; BatchNorm recalibration keeps
a planted border detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pan_utils import bundled_images, find_pans, load_model
from pan_utils.engine.state import random_init, recalibrate_batchnorm
from pan_utils.engine.scan import scan
from pan_utils.engine.uncertainty import (bootstrap_counts, count_uncertainty, resampled_pans,
                                          split_half_stability)


@pytest.fixture(scope="module")
def mobilenet_scan():
    loaded = load_model("mobilenet_v2")
    p = loaded.preprocessing
    x = bundled_images(24, 96, mean=p.mean, std=p.std, seed=3)
    scores, stats = scan(loaded.model, x, null=True, per_image=True, progress=False)
    return loaded.model, x, scores, stats


def _set(pans):
    return set(zip(pans["layer"], pans["channel"].astype(int)))


@pytest.mark.parametrize("channels_last", [True, False])
def test_unit_weights_reproduce_find_pans(mobilenet_scan, channels_last):
    model, x, _, _ = mobilenet_scan
    _, stats = scan(model, x, null=True, per_image=True, progress=False,
                    channels_last=channels_last)  # kernel and PyTorch paths
    is_pan, keys = resampled_pans(stats, np.ones((1, len(x))))
    want = find_pans(model, x, progress=False)
    assert {k for k, f in zip(keys, is_pan[0]) if f} == _set(want)


def test_a_half_of_the_weights_equals_scanning_that_half(mobilenet_scan):
    model, x, _, stats = mobilenet_scan
    halves = split_half_stability(stats)
    a, b = find_pans(model, x[:12], progress=False), find_pans(model, x[12:], progress=False)
    assert halves["half_a_pans"] == len(a) and halves["half_b_pans"] == len(b)
    assert halves["both_halves"] == len(_set(a) & _set(b))
    assert halves["jaccard"] == pytest.approx(len(_set(a) & _set(b)) / len(_set(a) | _set(b)))


def test_a_bootstrap_resample_equals_scanning_the_resampled_images(mobilenet_scan):
    model, x, _, stats = mobilenet_scan
    draw = np.random.default_rng(0).integers(0, len(x), len(x))
    w = np.bincount(draw, minlength=len(x))[None, :]
    is_pan, keys = resampled_pans(stats, w)
    want = find_pans(model, x[torch.from_numpy(np.sort(draw))], progress=False)
    assert {k for k, f in zip(keys, is_pan[0]) if f} == _set(want)


def test_interval_brackets_resamples_and_is_deterministic(mobilenet_scan):
    *_, stats = mobilenet_scan
    a = bootstrap_counts(stats, n_boot=40, seed=1)
    assert np.array_equal(a, bootstrap_counts(stats, n_boot=40, seed=1))
    row = count_uncertainty(stats, n_boot=40, seed=1).iloc[0]
    assert row["pans_ci_low"] <= np.median(a) <= row["pans_ci_high"]


def _planted(seed: int = 0) -> nn.Sequential:
    """conv(pad 1) -> BN -> ReLU -> conv(pad 1) -> BN; channel 0 of the first conv sums
    its 3x3 window: with zero padding it drops on the top row (a planted T detector)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[0].weight[0] = 0
        net[0].weight[0, :, 0, :] = 1.0  # reads only the row above: all pad on the top row
    return net.eval()


def test_recalibration_fits_the_statistics_and_keeps_a_planted_detector():
    net = _planted()
    x = torch.rand(64, 3, 16, 16) + 1.0  # positive images: the top row loses all its input
    before = net[1].running_mean.clone()
    recalibrate_batchnorm(net, x, batch_size=16)
    with torch.no_grad():
        y = net[0](x)
    torch.testing.assert_close(net[1].running_mean, y.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.equal(before, net[1].running_mean) and not net.training
    pans = find_pans(net, x, tau=3.0, progress=False)
    hit = pans[(pans["layer"] == "0") & (pans["channel"] == 0)]
    assert len(hit) == 1 and "T" in hit["sides"].item() and hit["polarity"].item() == "-"


def test_recalibrated_random_baseline_has_far_fewer_pans_than_uncalibrated():
    loaded = load_model("mobilenet_v2")
    p = loaded.preprocessing
    x = bundled_images(16, 96, mean=p.mean, std=p.std, seed=5)
    calib = bundled_images(32, 96, mean=p.mean, std=p.std, seed=6, split="eval")
    raw = find_pans(random_init(loaded.model, 0), x, progress=False)
    fitted = find_pans(recalibrate_batchnorm(random_init(loaded.model, 0), calib), x,
                       progress=False)
    assert len(fitted) < len(raw)

"""The scan store: same key loaded, changed key rescanned, corrupt entries never read; and
the count curves that let a new tau re-decide without resampling (ground truth: the rule
applied threshold by threshold)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pan_utils.engine import uncertainty as U
from pan_utils.engine.probes import BundledProbe, bundled_images
from pan_utils.engine.rule import pan_counts_by_tau, significant_regions
from pan_utils.engine.scan import scan
from pan_utils.engine.store import (ScanStore, StoreWarning, model_fingerprint,
                                    probe_fingerprint, stored_scan)


def planted(seed: int = 0) -> nn.Module:
    """A small padded CNN whose channel 0 of its first conv detects the top border."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    with torch.no_grad():
        net[0].weight[0] = 0
        net[0].weight[0, :, 0, :] = -1.0 / 9  # top row minus middle row: +x under the top pad
        net[0].weight[0, :, 1, :] = 1.0 / 9
        net[0].bias[0] = 0
    return net.eval()


@pytest.fixture(scope="module")
def images():
    """Crops in [0, 1], each also upside down (no sky-on-top content bias)."""
    x = bundled_images(8, 32, seed=1, mean=(0, 0, 0), std=(1, 1, 1))
    return torch.cat([x, x.flip(-2)])


class Counting:
    """A scan that counts how often it ran."""

    def __init__(self, model, images, **kw):
        self.model, self.images, self.kw, self.calls = model, images, kw, 0

    def __call__(self):
        self.calls += 1
        return scan(self.model, self.images, progress=False, **self.kw)


def test_same_key_is_loaded_equal(tmp_path, images):
    store = ScanStore(tmp_path)
    net = planted()
    a, sa = stored_scan(net, images, store=store, null=True, per_image=True, progress=False)
    b, sb = stored_scan(net, images, store=store, null=True, per_image=True, progress=False)
    assert (store.misses, store.hits) == (1, 1)
    pd.testing.assert_frame_equal(a, b)
    for la, lb in zip(sa.layers, sb.layers):
        assert la.layer == lb.layer and la.regions == lb.regions
        for mode in la.t:
            np.testing.assert_array_equal(la.t[mode], lb.t[mode])
            np.testing.assert_array_equal(la.s2[mode], lb.s2[mode])
    # the loaded statistics still find the planted top detector
    top = a[(a["layer"] == "0") & (a["channel"] == 0) & (a["side"] == "T") & (a["mode"] == "native")]
    assert float(top["d"].iloc[0]) > 3


def test_changed_weights_probes_or_modes_rescan(tmp_path, images):
    store = ScanStore(tmp_path)
    net = planted()
    stored_scan(net, images, store=store, null=True, progress=False)
    other = planted()
    with torch.no_grad():
        other[2].weight[0, 0, 0, 0] += 1e-3
    assert model_fingerprint(other) != model_fingerprint(net)
    stored_scan(other, images, store=store, null=True, progress=False)
    stored_scan(net, images[:15], store=store, null=True, progress=False)
    stored_scan(net, images, store=store, null=False, progress=False)
    assert (store.misses, store.hits) == (4, 0)
    stored_scan(net, images, store=store, null=True, progress=False)
    assert store.hits == 1


def test_a_probe_recipe_is_its_key():
    a = probe_fingerprint(BundledProbe(8, 32, seed=1))
    assert a == probe_fingerprint(BundledProbe(8, 32, seed=1))
    assert a != probe_fingerprint(BundledProbe(8, 32, seed=2))
    assert probe_fingerprint(iter([torch.zeros(2, 3, 8, 8)])) is None  # not stored


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other key"])
def test_a_corrupt_entry_is_rescanned_with_a_warning(tmp_path, images, damage):
    store = ScanStore(tmp_path)
    net = planted()
    parts = {"k": 1}
    run = Counting(net, images, null=True)
    first, _ = store.get(parts, run)
    path = store.path(parts)
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:  # a valid entry of another key, renamed onto this one
        store.get({"k": 2}, run)
        store.path({"k": 2}).replace(path)
    with pytest.warns(StoreWarning, match="unreadable"):
        again, _ = store.get(parts, run)
    assert run.calls == 2 + (damage == "other key")
    pd.testing.assert_frame_equal(first, again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.get(parts, run)  # rewritten whole: read back without a warning
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_failed_scan_leaves_no_entry(tmp_path):
    store = ScanStore(tmp_path)

    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        store.get({"k": 3}, boom)
    assert not list(tmp_path.iterdir())


def test_per_image_is_a_miss_when_only_scores_were_stored(tmp_path, images):
    store = ScanStore(tmp_path)
    net = planted()
    store.get({"k": 4}, Counting(net, images, null=True))
    _, stats = store.get({"k": 4}, Counting(net, images, null=True, per_image=True),
                         per_image=True)
    assert stats is not None and store.misses == 2
    _, again = store.get({"k": 4}, Counting(net, images), per_image=True)
    assert again.n_images == stats.n_images and store.hits == 1


# --------------------------------------------------------------------------- count curves


@pytest.fixture(scope="module")
def mobilenet_stats():
    from pan_utils import load_model

    loaded = load_model("mobilenet_v2")
    p = loaded.preprocessing
    x = bundled_images(16, 96, mean=p.mean, std=p.std, seed=3)
    return scan(loaded.model, x, null=True, per_image=True, progress=False)


def _brute_counts(scores, taus, **kw):
    out = []
    for tau in taus:
        sig = significant_regions(scores, tau=tau, **kw)
        out.append(sig.loc[sig["significant"], ["layer", "channel"]].drop_duplicates().shape[0])
    return out


TAUS = [0.3, 1.0, 1.7, 2.0, 3.0, 4.4, 6.0, 10.0]


@pytest.mark.parametrize("kw", [{}, {"consistency": 0.8},
                                {"mode": "circular", "null_mode": None}])
def test_count_curve_equals_the_rule_at_every_tau(mobilenet_stats, kw):
    scores, _ = mobilenet_stats
    got = pan_counts_by_tau(scores, TAUS, **kw)["pans"].tolist()
    assert got == _brute_counts(scores, TAUS, **kw)
    assert got[0] > got[-1]  # a curve, not a constant


def test_uncertainty_curves_equal_resampling_at_every_tau(mobilenet_stats):
    _, stats = mobilenet_stats
    curves = U.uncertainty_curves(stats, n_boot=30, seed=2, floor=1.0)
    for tau in (1.0, 2.0, 3.0, 5.0):
        np.testing.assert_array_equal(curves.boot.counts(tau),
                                      U.bootstrap_counts(stats, n_boot=30, seed=2, tau=tau))
        halves = U.split_half_stability(stats, tau=tau)
        row = curves.summary(tau).iloc[0]
        assert row["half_a_pans"] == halves["half_a_pans"]
        assert row["both_halves"] == halves["both_halves"]
        point, _ = U.resampled_pans(stats, np.ones((1, stats.n_images)), tau=tau)
        assert row["pans"] == int(point.sum())
    with pytest.raises(ValueError, match="exact for tau >= 1"):
        curves.summary(0.5)
    back = U.UncertaintyCurves.from_arrays(curves.arrays())
    pd.testing.assert_frame_equal(back.summary(2.5), curves.summary(2.5))

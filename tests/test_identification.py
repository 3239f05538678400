"""Ground truth for chapter 1 helpers: mean maps, per-channel scores, per-layer counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pan_utils.engine.maps import record_maps
from pan_utils.study.identification import (channel_scores, identify, maps_table, per_layer,
                                            pick_examples)
from pan_utils.study.settings import settings


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 4, 3, stride=2, padding=1)).eval()


def test_record_maps_equals_brute_force_mean():
    net = small_net()
    x = torch.randn(10, 3, 12, 12)
    got = record_maps(net, {"2": [3, 0]}, x, batch_size=3)["2"]  # uneven last batch
    with torch.no_grad():
        want = net(x)[:, [3, 0]].mean(0)
    assert got.shape == (2, 6, 6)
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-6)


def test_record_maps_several_layers_signs_and_hooks_removed():
    net = small_net()
    x = torch.randn(5, 3, 8, 8)
    got = record_maps(net, {"0": [1], "2": [2]}, x, signs={"0": [-1.0]})
    with torch.no_grad():
        first = net[0](x)[:, 1].mean(0)
        last = net(x)[:, 2].mean(0)
    torch.testing.assert_close(got["0"][0].float(), -first, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["2"][0].float(), last, rtol=1e-5, atol=1e-6)
    assert all(not m._forward_hooks for m in net.modules())


def test_record_maps_removes_hooks_on_error_and_rejects_unknown_layer():
    net = small_net()
    with pytest.raises(KeyError):
        record_maps(net, {"nope": [0]}, torch.randn(2, 3, 8, 8))
    with pytest.raises(RuntimeError):
        record_maps(net, {"0": [0]}, torch.randn(2, 5, 8, 8))  # wrong channel count
    assert all(not m._forward_hooks for m in net.modules())


def test_maps_table_round_trip():
    maps = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    meta = pd.DataFrame({"channel": [7, 9], "kind": ["PAN", "non-PAN"]})
    t = maps_table(maps, meta)
    assert len(t) == 24
    back = t[t["channel"] == 9].pivot(index="row", columns="col", values="value").to_numpy()
    np.testing.assert_array_equal(back, maps[1].numpy())


def _scores() -> pd.DataFrame:
    rows = []
    for layer, order in (("a", 0), ("b", 1)):
        for c in range(3):
            for side, d, app in (("T", 5.0 * (c == 0), True), ("B", -(c + 1.0), True),
                                 ("L", np.nan, False)):
                for mode in ("native", "circular"):
                    rows.append({"layer": layer, "order": order, "depth": float(order),
                                 "mode": mode, "channel": c, "side": side, "applicable": app,
                                 "d": d if mode == "native" else 0.1})
    return pd.DataFrame(rows)


def test_channel_scores_max_abs_d_over_applicable_sides():
    pans = pd.DataFrame({"layer": ["a"], "channel": [0]})
    cs = channel_scores(_scores(), pans)
    assert len(cs) == 6
    a = cs[cs["layer"] == "a"].set_index("channel")["max_abs_d"]
    assert a.tolist() == [5.0, 2.0, 3.0]
    assert cs["pan"].sum() == 1 and bool(cs.iloc[0]["pan"])
    circ = channel_scores(_scores(), pans.iloc[:0], mode="circular")
    assert np.allclose(circ["max_abs_d"], 0.1) and not circ["pan"].any()


def test_per_layer_keeps_layers_without_pans():
    pans = pd.DataFrame({"layer": ["b", "b"], "channel": [0, 2]})
    layers = per_layer(_scores(), pans)
    assert layers["layer"].tolist() == ["a", "b"]
    assert layers["candidate_channels"].tolist() == [3, 3]
    assert layers["pans"].tolist() == [0, 2]


def test_pick_examples_strongest_pans_and_typical_others():
    pans = pd.DataFrame({"layer": ["a", "a", "b"], "channel": [0, 1, 5], "sides": "T",
                         "score": [4.0, 9.0, 6.0]})
    scores = pd.DataFrame({"layer": "a", "channel": range(8),
                           "max_abs_d": [4, 9, 0.1, 1.0, 1.1, 1.2, 5.0, 0.5],
                           "pan": [True, True] + [False] * 6})
    layer, chosen = pick_examples(pans, scores, n_pans=1, n_other=2)
    assert layer == "a"
    assert chosen["channel"].tolist()[0] == 1
    # non-PAN max |d|: 0.1 0.5 1.0 1.1 1.2 5.0 -> median 1.05 -> channels 3 (1.0), 4 (1.1)
    assert sorted(chosen["channel"].tolist()[1:]) == [3, 4]


def test_identify_counts_match_pan_rows():
    torch.set_num_threads(2)
    s = settings("smoke", n_images=8, image_size=64)
    t = identify("mobilenet_v2", s, progress=False)
    counts = t["pan_counts"].set_index("weights")
    assert set(counts.index) == {"pretrained", "random-init", "random-init (uncalibrated)"}
    by_seed = t["pan_counts_by_seed"].fillna({"init_seed": -1})
    rows = t["pans"].fillna({"init_seed": -1}).groupby(["weights", "init_seed"]).size()
    for r in by_seed[by_seed["weights"] != "random-init (uncalibrated)"].itertuples():
        assert rows.get((r.weights, r.init_seed), 0) == r.pans
    layers = t["pan_layers"].fillna({"init_seed": -1}).groupby(["weights", "init_seed"])[
        "candidate_channels"].sum()
    for (w, seed), n in layers.items():
        assert n == by_seed.set_index(["weights", "init_seed"]).loc[(w, seed),
                                                                    "candidate_channels"]
    sens = t["pan_sensitivity"]
    at_tau = sens[(sens["tau"] == 3.0) & (sens["weights"] == "pretrained")].set_index(
        "condition")["pans"]
    assert at_tau["pretrained"] == counts.loc["pretrained", "pans"]
    assert at_tau["circular null"] == counts.loc["pretrained", "circular_null_pans"]
    # counts never increase with tau
    for _, g in sens.fillna({"init_seed": -1}).groupby(["weights", "init_seed", "condition"]):
        assert (np.diff(g.sort_values("tau")["pans"].to_numpy()) <= 0).all()

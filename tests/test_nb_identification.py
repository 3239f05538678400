"""Assertions on the tables that notebooks 01 and 02 write under the smoke profile.

``smoke_results`` (tests/conftest.py) runs every notebook with profile smoke into a
temporary folder and returns it.
"""

from __future__ import annotations

import numpy as np
import pytest

from pan_utils.study.results import read_table
from pan_utils.engine.types import pan_type

COUNT_COLUMNS = {"model", "weights", "candidate_layers", "candidate_channels", "pans",
                 "pan_fraction", "tau", "q", "n_images", "circular_null_pans"}
PAN_COLUMNS = {"model", "weights", "layer", "channel", "sides", "corners", "polarity", "type",
               "score", "d_top", "d_bottom", "d_left", "d_right", "consistency"}


@pytest.fixture(scope="module")
def tables(smoke_results):
    names = ("pan_counts", "pan_counts_by_seed", "pans", "pan_sensitivity", "pan_layers",
             "channel_scores",
             "taxonomy", "kernel_mass", "uneven_padding_layers", "uneven_padding_pans")
    return {n: read_table(smoke_results, n) for n in names}


def test_columns_present(tables):
    assert COUNT_COLUMNS <= set(tables["pan_counts"].columns)
    assert PAN_COLUMNS <= set(tables["pans"].columns)
    assert {"model", "weights", "condition", "tau", "pans"} <= set(
        tables["pan_sensitivity"].columns)
    assert {"model", "weights", "layer", "order", "depth", "candidate_channels", "pans"} <= set(
        tables["pan_layers"].columns)
    assert set(tables["pan_counts"]["weights"]) == {"pretrained", "random-init",
                                                    "random-init (uncalibrated)"}


def test_pan_rows_match_counts(tables):
    keys = ["model", "weights", "init_seed"]
    by_seed = tables["pan_counts_by_seed"]
    by_seed = by_seed[by_seed["weights"] != "random-init (uncalibrated)"].fillna({"init_seed": -1})
    counts = by_seed.set_index(keys)["pans"]
    rows = tables["pans"].fillna({"init_seed": -1}).groupby(keys).size()
    for key, n in counts.items():
        assert rows.get(key, 0) == n
    layers = tables["pan_layers"].fillna({"init_seed": -1}).groupby(keys)["pans"].sum()
    assert (layers.reindex(counts.index) == counts).all()
    summary = tables["pan_counts"].set_index(["model", "weights"])
    mean = tables["pan_counts_by_seed"].groupby(["model", "weights"])["pans"].mean()
    np.testing.assert_allclose(summary.loc[mean.index, "pans"], mean, rtol=1e-5)
    assert (summary.loc[(slice(None), "random-init"), "seeds"] >= 3).all()


def test_pans_are_significant_and_well_formed(tables):
    pans = tables["pans"]
    counts = tables["pan_counts"].iloc[0]
    assert (pans["score"] >= counts["tau"]).all()
    assert (pans["consistency"] >= counts["q"]).all()
    assert pans["polarity"].isin(["+", "-", "mixed"]).all()
    assert (pans["type"] == [pan_type(s, c) for s, c in zip(pans["sides"], pans["corners"])]).all()
    assert not pans.duplicated(["model", "weights", "init_seed", "layer", "channel"]).any()
    assert pans["depth"].between(0, 1).all()


def test_pretrained_beats_circular_null(tables):
    c = tables["pan_counts"]
    pre = c[c["weights"] == "pretrained"]
    assert (pre["pans"] > 0).all()
    assert (pre["circular_null_pans"] < pre["pans"]).all()


def test_pretrained_beats_random_init(tables):
    counts = tables["pan_counts"]
    # Needs probes of at least ~128 px: below that the deepest MobileNetV2 maps keep a
    # single interior position and random weights score as many border channels.
    assert (counts["image_size"] >= 128).all()
    c = counts.pivot(index="model", columns="weights", values="pans")
    assert (c["random-init"] < c["pretrained"]).all()


def test_sensitivity_matches_counts_and_decreases(tables):
    s = tables["pan_sensitivity"].fillna({"init_seed": -1})
    for r in tables["pan_counts_by_seed"].fillna({"init_seed": -1}).itertuples():
        at = s[(s["model"] == r.model) & (s["weights"] == r.weights)
               & (s["init_seed"] == r.init_seed) & (s["tau"] == r.tau)]
        assert at.loc[at["condition"] == r.weights, "pans"].item() == r.pans
        assert at.loc[at["condition"] == "circular null", "pans"].item() == r.circular_null_pans
    for _, g in s.groupby(["model", "weights", "init_seed", "condition"]):
        assert (np.diff(g.sort_values("tau")["pans"].to_numpy()) <= 0).all()


def test_count_interval_and_stability_are_reported(tables):
    pre = tables["pan_counts"][tables["pan_counts"]["weights"] == "pretrained"]
    assert (pre["pans_ci_low"] <= pre["pans_ci_high"]).all()
    assert (pre["n_boot"] >= 100).all()
    assert pre["jaccard"].between(0, 1).all()
    assert (pre["both_halves"] <= pre[["half_a_pans", "half_b_pans"]].min(axis=1)).all()


def test_taxonomy_totals_equal_pan_rows_per_seed(tables):
    tax, pans = tables["taxonomy"], tables["pans"]
    seeds = tables["pan_counts"].set_index(["model", "weights"])["seeds"]
    per_seed = pans.groupby(["model", "weights"]).size() / seeds.reindex(
        pans.groupby(["model", "weights"]).size().index)
    np.testing.assert_allclose(tax.groupby(["model", "weights"])["pans"].sum()
                               .reindex(per_seed.index), per_seed, rtol=1e-5)


def test_kernel_mass_is_a_fraction(tables):
    m = tables["kernel_mass"]
    assert len(m) and m["mass"].between(0, 1).all()
    assert (m["detects_side"] <= m["pan"]).all()


def test_uneven_padding_stride_two_blind_at_even_size(tables):
    layers = tables["uneven_padding_layers"]
    for model, g in layers.groupby("model"):
        s = g["size"].min()
        even = g[(g["size"] == s) & (g["stride_h"] == 2)]
        if s % 2 == 0 and model == "mobilenet_v2":  # symmetric padding: stride 2 drops B/R
            assert (even["band_bottom"] == 0).all() and (even["band_right"] == 0).all()
            odd = g[(g["size"] == s + 1) & (g["stride_h"] == 2)]
            assert (odd["band_bottom"] > 0).any()
    up = tables["uneven_padding_pans"]
    assert set(up["side"]) >= {"T", "B", "L", "R"}
    assert up["size"].nunique() == 2


def test_claims_of_chapters_1_and_2_equal_their_tables(tables, smoke_results):
    from pan_utils.study.results import read_claims

    claims = read_claims(smoke_results)
    counts = tables["pan_counts"].set_index(["model", "weights"])
    ch1 = claims["01_identification"]
    assert set(ch1) == set(tables["pan_counts"]["model"])
    for model, c in ch1.items():
        pre, rnd = counts.loc[(model, "pretrained")], counts.loc[(model, "random-init")]
        assert c["pans"] == pre["pans"]
        assert c["random_init_pans_mean"] == pytest.approx(rnd["pans"], rel=1e-5)
        assert c["random_init_pans_sd"] == pytest.approx(rnd["pans_sd"], rel=1e-5, abs=1e-9)
        assert c["random_init_seeds"] == rnd["seeds"] >= 3
        assert c["uncalibrated_random_init_pans"] == counts.loc[
            (model, "random-init (uncalibrated)"), "pans"]
        assert c["candidate_channels"] == pre["candidate_channels"]
        assert c["pan_fraction"] == pytest.approx(c["pans"] / c["candidate_channels"], rel=1e-5)
        assert 0 <= c["pan_fraction"] <= 1
        assert c["pans_ci"] == pytest.approx([pre["pans_ci_low"], pre["pans_ci_high"]], rel=1e-5)
        assert c["circular_null_pans"] == pre["circular_null_pans"]
    tax = tables["taxonomy"]
    for model, c in claims["02_taxonomy"].items():
        mine = tax[(tax["model"] == model) & (tax["weights"] == "pretrained")]
        assert sum(c["types"].values()) == ch1[model]["pans"] == mine["pans"].sum()
        assert sum(c["polarity"].values()) == ch1[model]["pans"]
        assert c["types"] == {k: int(v) for k, v in mine.groupby("type")["pans"].sum().items()}
        sizes = sorted(int(s) for s in c["pans_by_size"])
        assert len(sizes) == 2 and sizes[1] == sizes[0] + 1
        assert c["pans_by_size"][str(sizes[0])] == ch1[model]["pans"]

"""Assertions on the tables that notebook 03 writes under the smoke profile.

``smoke_results`` (tests/conftest.py) runs every notebook with profile smoke into a
temporary folder and returns it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pan_utils.study.ablation import ablation_claims
from pan_utils.study.results import read_table
from pan_utils.study.settings import PROFILES

ABLATION_COLUMNS = {"model", "condition", "draw", "n_images", "agreement", "kl", "accuracy",
                    "accuracy_change", "n_ablated"}
SHIFT_COLUMNS = {"model", "condition", "draw", "class_index", "class_name", "count_intact",
                 "count_condition", "shift"}
PLACEMENT_COLUMNS = {"model", "placement", "condition", "agreement"}
CONDITIONS = {"intact", "pans_mean", "pans_border", "random_mean", "random_border",
              "padding_reflect", "padding_replicate", "padding_circular"}
CONTROLS = {"random_mean", "random_border"}


@pytest.fixture(scope="module")
def tables(smoke_results):
    names = ("ablation", "class_shift", "placement", "ablation_summary", "class_bias",
             "dose_response", "dose_response_summary")
    return {n: read_table(smoke_results, n) for n in names}


def test_columns_and_conditions_present(tables):
    abl = tables["ablation"]
    assert ABLATION_COLUMNS <= set(abl.columns)
    assert SHIFT_COLUMNS <= set(tables["class_shift"].columns)
    assert PLACEMENT_COLUMNS <= set(tables["placement"].columns)
    assert set(abl["model"]) == set(PROFILES["smoke"].models)
    for _, g in abl.groupby("model"):
        assert set(g["condition"]) == CONDITIONS or (
            set(g["condition"]) == CONDITIONS - CONTROLS
            and (g["n_ablated"] == 0).all())  # a model without PANs has no control to draw
    assert set(tables["placement"]["placement"]) == {"centre", "corner"}


def test_intact_agrees_with_itself_and_metrics_in_range(tables):
    for name in ("ablation", "placement"):
        df = tables[name]
        intact = df[df["condition"] == "intact"]
        assert len(intact) and (intact["agreement"] == 1).all()
        assert np.allclose(intact["kl"], 0, atol=1e-6)
        assert df["agreement"].between(0, 1).all()
        assert (df["kl"] >= -1e-6).all()
    abl = tables["ablation"]
    assert (abl["n_images"] == PROFILES["smoke"].n_eval).all()


def test_random_controls_match_pan_count(tables):
    abl = tables["ablation"]
    for _, g in abl.groupby("model"):
        n_pans = int(g.loc[g["condition"] == "pans_mean", "n_ablated"].iloc[0])
        for control in CONTROLS:
            rnd = g[g["condition"] == control]
            assert len(rnd) == PROFILES["smoke"].n_random_draws or rnd.empty
            assert (rnd["n_ablated"] <= n_pans).all()


def test_dose_response_grid_controls_and_summary(tables):
    dose, summary = tables["dose_response"], tables["dose_response_summary"]
    smoke = PROFILES["smoke"]
    assert (dose["n_images"] == min(smoke.n_dose, smoke.n_eval)).all()
    for model, g in dose[dose["condition"] != "intact"].groupby("model"):
        ks = sorted(set(g["k"]))
        n_pans = int(tables["ablation"].query("model == @model and condition == 'pans_mean'")
                     ["n_ablated"].iloc[0])
        assert ks[0] == 1 and ks[-1] == n_pans and len(ks) <= smoke.dose_points
        for k, gk in g.groupby("k"):
            assert (gk["n_ablated"] <= k).all()
            assert (gk["condition"] == "random_mean").sum() == smoke.dose_draws
            assert set(gk["condition"]) == {"pans_mean", "pans_border", "random_mean",
                                            "random_border"}
    for r in summary.itertuples():
        sel = dose[(dose["model"] == r.model) & (dose["k"] == r.k)]
        pan = sel.loc[sel["condition"] == f"pans_{r.how}", "agreement"].mean()
        rnd = sel.loc[sel["condition"] == f"random_{r.how}", "agreement"].mean()
        assert r.gap == pytest.approx(rnd - pan, abs=1e-5)


def test_class_shift_counts_sum_to_n_images(tables):
    shift = tables["class_shift"]
    n = tables["ablation"].groupby("model")["n_images"].first()
    sums = shift.groupby(["model", "condition", "draw"])[["count_intact", "count_condition"]].sum()
    for (model, _, _), row in sums.iterrows():
        assert row["count_intact"] == n[model] and row["count_condition"] == n[model]
    assert (shift["shift"] == shift["count_condition"] - shift["count_intact"]).all()
    assert set(shift["condition"]) == CONDITIONS - {"intact"} or not CONTROLS & set(
        shift["condition"])


# --------------------------------------------------------------------------- claims


@pytest.fixture(scope="module")
def claims(smoke_results):
    from pan_utils.study.results import read_claims

    return read_claims(smoke_results).get("03_ablation")


def test_claims_recorded_per_model(claims, tables):
    assert claims, "notebook 03 recorded no claims"
    assert set(claims) == set(tables["ablation"]["model"])


def test_claims_equal_values_recomputed_from_tables(claims, tables):
    abl = tables["ablation"]
    for model, c in claims.items():
        g = abl[abl["model"] == model]
        expected = g[g["condition"] != "intact"].groupby("condition")["agreement"].mean()
        assert set(c["agreement"]) == set(expected.index)
        for cond, value in c["agreement"].items():
            assert value == pytest.approx(expected[cond], abs=1e-9)
        rnd = g.loc[g["condition"] == "random_mean", "agreement"]
        assert c["random_draws"] == len(rnd)
        if len(rnd):
            assert c["random_control_mean"] == pytest.approx(rnd.mean(), abs=1e-9)
            assert c["random_control_mean"] == pytest.approx(c["agreement"]["random_mean"],
                                                             abs=1e-9)
        sd = rnd.std(ddof=1) if len(rnd) > 1 else 0.0
        assert c["random_control_sd"] == pytest.approx(sd, abs=1e-9)
        assert c["n_eval_images"] == int(g["n_images"].iloc[0])
        assert c["n_pans"] == int(g.loc[g["condition"] == "pans_mean", "n_ablated"].max())
        # the summary table agrees with the claims up to its 6 significant digits
        s = tables["ablation_summary"]
        s = s[s["model"] == model].set_index("condition")
        for cond, value in c["agreement"].items():
            assert value == pytest.approx(s.loc[cond, "agreement"], abs=1e-5)


def test_claims_in_range(claims, smoke_results):
    counts = read_table(smoke_results, "pan_counts")
    chapter1 = counts[counts["weights"] == "pretrained"].set_index("model")["pans"]
    for model, c in claims.items():
        agreement = c["agreement"]
        # every condition but the intact model, whose agreement with itself is 1 by definition
        expected = CONDITIONS - {"intact"} if c["random_draws"] else CONDITIONS - CONTROLS - {
            "intact"}
        assert set(agreement) == expected
        assert all(0.0 <= v <= 1.0 for v in agreement.values())
        if c["random_draws"]:
            assert 0.0 <= c["random_control_mean"] <= 1.0
        assert 0.0 <= c["random_control_sd"] <= 1.0
        # the same scan set, rule and null as chapter 1: the same PANs are ablated
        assert c["n_eval_images"] == PROFILES["smoke"].n_eval
        assert c["n_pans"] == chapter1[model] > 0


def test_claims_are_what_the_package_computes_from_the_tables(claims, tables):
    expected = json.loads(json.dumps(ablation_claims(tables["ablation"],
                                                     tables["dose_response_summary"])))
    assert claims == expected

"""Assertions on the tables and claims that notebook 07 writes under the smoke profile
(``smoke_results``, tests/conftest.py: every notebook run with profile smoke)."""

from __future__ import annotations

import pytest

from pan_utils.engine.models import model_task
from pan_utils.study import cure
from pan_utils.study.results import read_claims, read_table, table_params
from pan_utils.study.settings import PROFILES

SMOKE = PROFILES["smoke"]


@pytest.fixture(scope="module")
def table(smoke_results):
    return read_table(smoke_results, "cure")


def test_every_point_of_the_grid_for_every_classifier(table):
    classifiers = [m for m in SMOKE.models if model_task(m) == "classification"]
    assert list(dict.fromkeys(table["model"])) == classifiers
    for _, g in table.groupby("model"):
        assert list(g["kind"][:1]) == ["original"]
        assert list(g["label"]) == [cure.point_label(r) for r in g.to_dict("records")]
        assert set(g.loc[g["kind"] == "swap", "padding"]) == set(SMOKE.cure_paddings)
        assert set(g.loc[g["kind"] == "bn", "padding"]) == set(SMOKE.cure_bn_paddings)
        d = g[g["kind"] == "distill"]
        assert sorted(d["steps"]) == sorted(SMOKE.cure_steps) * len(SMOKE.cure_distill_paddings)
        assert (d["images_seen"] == d["steps"] * SMOKE.cure_batch).all()
        assert set(g.loc[g["kind"] == "ablation", "recovery"]) == {
            f"pans_{h}" for h in SMOKE.cure_ablations}


def test_the_original_is_the_reference_of_every_measure(table):
    o = table[table["kind"] == "original"]
    assert (o["agreement"] == 1).all() and (o["kl"].abs() < 1e-6).all()
    assert (o["agreement_centre"] == 1).all() and (o["agreement_corner"] == 1).all()
    assert (table["pans_original"] == table["model"].map(o.set_index("model")["pans"])).all()
    assert table["pans_removed"].sub(1 - table["pans"] / table["pans_original"]).abs().max() < 1e-4
    assert (table["n_eval"] == SMOKE.cure_n_eval).all()
    assert table[["agreement", "agreement_centre", "agreement_corner", "frame_effect"]].stack(
        ).between(0, 1).all()
    # a circular cure's padding is the rule's null: it cannot have a PAN
    circ = table[(table["kind"] == "swap") & (table["padding"] == "circular")]
    assert (circ["pans"] == 0).all()


def test_the_table_records_its_parameters(smoke_results):
    params = table_params(smoke_results, "cure")
    assert params["tau"] == SMOKE.tau and tuple(params["cure_steps"]) == SMOKE.cure_steps


def test_claims_equal_the_table_and_the_best_cure_is_nearest_the_goal(smoke_results, table):
    claims = read_claims(smoke_results)["07_cure"]
    assert claims["thresholds"] == {"goal_agreement": cure.GOAL_AGREEMENT,
                                    "goal_removed": cure.GOAL_REMOVED}
    for model, c in claims.items():
        if model == "thresholds" or c.get("no_pans"):
            continue
        g = table[(table["model"] == model) & table["kind"].isin(["swap", "bn", "distill"])]
        near = max(cure.closeness(a, r) for a, r in zip(g["agreement"], g["pans_removed"]))
        b = c["best"]
        assert cure.closeness(b["agreement"], b["pans_removed"]) == pytest.approx(near)
        assert c["goal_met"] == bool(table.loc[table["model"] == model, "goal_met"].any())
        line = next(ln for ln in cure.cure_findings(claims, "frontier") if ln.startswith(model))
        assert f"{round(100 * b['agreement'])}% top-1" in line and str(b["pans"]) in line

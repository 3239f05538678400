"""Assertions on the tables that notebook 04 writes under the smoke profile.

``smoke_results`` (tests/conftest.py) runs every notebook with profile smoke into a
temporary folder and returns it.
"""

from __future__ import annotations

import pytest

from pan_utils.study.results import read_table
from pan_utils.study.settings import PROFILES
from pan_utils.study.nets import POLICIES
from pan_utils.study.tasks import TASKS

COLUMNS = {"task", "policy", "seed", "test_accuracy", "chance", "pans", "candidates",
           "pan_fraction", "pans_without_null", "epochs", "n_train"}


@pytest.fixture(scope="module")
def table(smoke_results):
    return read_table(smoke_results, "padding_policy")


def test_columns_present(table):
    assert COLUMNS <= set(table.columns)


def test_one_row_per_task_policy_seed(table):
    seeds = PROFILES["smoke"].train_seeds
    assert len(table) == len(TASKS) * len(POLICIES) * len(seeds)
    assert not table.duplicated(["task", "policy", "seed"]).any()
    assert set(table["task"]) == set(TASKS) and set(table["policy"]) == set(POLICIES)
    assert set(table["seed"]) == set(seeds)
    assert (table["epochs"] == PROFILES["smoke"].train_epochs).all()


def test_values_in_range(table):
    assert table["test_accuracy"].between(0, 1).all()
    assert table["pan_fraction"].between(0, 1).all()
    assert (table["pans"] <= table["candidates"]).all()
    assert not [c for c in table.columns if "seconds" in c]  # a rerun gives the same table
    chance = table.set_index("task")["chance"].groupby(level=0).first()
    assert chance["location"] == pytest.approx(0.25)


def test_valid_nets_have_no_candidates_and_circular_nets_no_pans(table):
    valid = table[table["policy"] == "valid"]
    assert (valid["pans"] == 0).all() and (valid["candidates"] == 0).all()
    assert (valid["pan_fraction"] == 0).all()
    circ = table[table["policy"] == "circular"]
    assert (circ["pans"] == 0).all() and (circ["candidates"] > 0).all()
    padded = table[table["policy"] != "valid"]
    assert (padded["candidates"] > 0).all()


def test_summary_and_figures_written(smoke_results):
    summary = read_table(smoke_results, "padding_policy_summary")
    assert len(summary) == len(TASKS) * len(POLICIES)
    for fig in ("padding_policy_accuracy", "padding_policy_pan_fraction",
                "padding_policy_pans_over_training", "padding_policy_generalisation"):
        assert (smoke_results / "figures" / f"{fig}.png").stat().st_size > 0


# --------------------------------------------------------------------------- claims


@pytest.fixture(scope="module")
def claims(smoke_results):
    from pan_utils.study.results import read_claims

    return read_claims(smoke_results).get("04_padding_policy")


def test_claims_cover_every_task_and_policy(claims):
    assert claims, "notebook 04 recorded no claims"
    assert set(claims) == set(TASKS) | {"per_epoch", "scale", "generalisation"}
    for task in TASKS:
        assert set(claims[task]) == set(POLICIES)
        assert set(claims["per_epoch"][task]) == set(POLICIES)
    assert set(claims["generalisation"]) == set(POLICIES)


def test_claims_equal_values_recomputed_from_tables(claims, table):
    for (task, policy), g in table.groupby(["task", "policy"]):
        c = claims[task][policy]
        assert c["seeds"] == g["seed"].nunique()
        assert c["accuracy_mean"] == pytest.approx(g["test_accuracy"].mean(), abs=1e-9)
        sd = g["test_accuracy"].std(ddof=1) if len(g) > 1 else 0.0
        assert c["accuracy_sd"] == pytest.approx(sd, abs=1e-9)
        assert c["chance"] == pytest.approx(g["chance"].iloc[0], abs=1e-9)
        assert c["pans_mean"] == pytest.approx(g["pans"].mean(), abs=1e-9)
        assert c["pans_half_tau_mean"] == pytest.approx(g["pans_half_tau"].mean(), abs=1e-9)
        assert c["max_abs_d_mean"] == pytest.approx(g["max_abs_d"].mean(), abs=1e-9)


def test_claims_agree_with_summary_table(claims, smoke_results):
    summary = read_table(smoke_results, "padding_policy_summary")
    for r in summary.itertuples():
        c = claims[r.task][r.policy]
        # the summary csv keeps 6 significant digits
        assert c["accuracy_mean"] == pytest.approx(r.accuracy_mean, abs=1e-5)
        assert c["pans_mean"] == pytest.approx(r.pans_mean, abs=1e-5)
        assert c["pans_half_tau_mean"] == pytest.approx(r.pans_half_tau_mean, abs=1e-5)


def test_claims_in_range(claims):
    for task, per_policy in ((t, claims[t]) for t in TASKS):
        for policy, c in per_policy.items():
            assert 0.0 <= c["accuracy_mean"] <= 1.0 and 0.0 <= c["accuracy_sd"] <= 1.0
            assert 0.0 < c["chance"] < 1.0
            assert c["pans_mean"] >= 0
            assert c["pans_half_tau_mean"] >= 0 and c["max_abs_d_mean"] >= 0
            if policy in ("valid", "circular"):
                assert c["pans_mean"] == 0
    assert claims["location"]["zeros"]["chance"] == pytest.approx(0.25)


# --------------------------------------------------------------------------- per epoch, scale,
# generalisation


@pytest.fixture(scope="module")
def epochs(smoke_results):
    return read_table(smoke_results, "padding_policy_epochs")


def test_epoch_table_has_every_epoch_and_ends_at_the_final_row(epochs, table):
    assert {"task", "policy", "seed", "epoch", "pans", "pans_half_tau", "max_abs_d",
            "test_accuracy"} <= set(epochs.columns)
    n_epochs = PROFILES["smoke"].train_epochs
    assert len(epochs) == len(table) * n_epochs
    assert not epochs.duplicated(["task", "policy", "seed", "epoch"]).any()
    final = epochs[epochs["epoch"] == n_epochs].merge(table, on=["task", "policy", "seed"],
                                                       suffixes=("", "_run"))
    assert len(final) == len(table)
    for c in ("pans", "pans_half_tau", "max_abs_d", "test_accuracy"):
        assert final[c].to_numpy() == pytest.approx(final[f"{c}_run"].to_numpy(), abs=1e-5)


def test_per_epoch_claims_equal_values_recomputed(claims, epochs):
    first, last = epochs["epoch"].min(), epochs["epoch"].max()
    for (task, policy), g in epochs.groupby(["task", "policy"]):
        c = claims["per_epoch"][task][policy]
        a, b = g[g["epoch"] == first], g[g["epoch"] == last]
        assert c["epochs"] == last
        for key, col in (("pans", "pans"), ("pans_half_tau", "pans_half_tau"),
                         ("max_abs_d", "max_abs_d")):
            assert c[f"{key}_first"] == pytest.approx(a[col].mean(), abs=1e-5)
            assert c[f"{key}_final"] == pytest.approx(b[col].mean(), abs=1e-5)


def test_scale_claims_equal_values_recomputed(claims, smoke_results):
    scale = read_table(smoke_results, "padding_policy_scale")
    assert {"config", "params", "epochs", "epoch", "final", "pans", "pans_min",
            "pans_half_tau", "max_abs_d"} <= set(scale.columns)
    final = scale[scale["final"].astype(bool)]
    smoke = PROFILES["smoke"]
    assert set(final["epochs"]) == {smoke.train_epochs, smoke.scale_epochs}
    c = claims["scale"]
    assert set(c["configs"]) == set(final["config"])
    for r in final.itertuples():
        k = c["configs"][r.config]
        assert k["params"] == r.params and k["epochs"] == r.epochs and k["seeds"] == r.seeds
        assert k["pans_mean"] == pytest.approx(r.pans, abs=1e-5)
        assert k["pans_min"] == r.pans_min
        assert k["pans_half_tau_mean"] == pytest.approx(r.pans_half_tau, abs=1e-5)
        assert k["max_abs_d_mean"] == pytest.approx(r.max_abs_d, abs=1e-5)
    assert c["crosses_tau"] == [r.config for r in final.itertuples() if r.pans_min >= 1]


def test_generalisation_claims_equal_values_recomputed(claims, smoke_results):
    runs = read_table(smoke_results, "padding_policy_generalisation_runs")
    assert len(runs) == len(POLICIES) * len(PROFILES["smoke"].train_seeds)
    assert runs["similar_accuracy"].between(0, 1).all()
    assert runs["dissimilar_accuracy"].between(0, 1).all()
    for policy, g in runs.groupby("policy"):
        c = claims["generalisation"][policy]
        assert c["seeds"] == g["seed"].nunique()
        assert c["similar_mean"] == pytest.approx(g["similar_accuracy"].mean(), abs=1e-5)
        assert c["dissimilar_mean"] == pytest.approx(g["dissimilar_accuracy"].mean(), abs=1e-5)
        assert c["gap_mean"] == pytest.approx(
            (g["similar_accuracy"] - g["dissimilar_accuracy"]).mean(), abs=1e-5)
        sd = g["dissimilar_accuracy"].std(ddof=1) if len(g) > 1 else 0.0
        assert c["dissimilar_sd"] == pytest.approx(sd, abs=1e-5)

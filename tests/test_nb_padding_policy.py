"""Assertions on the tables that notebook 04 writes under the smoke profile.

``smoke_results`` (tests/conftest.py) runs every notebook with profile smoke into a
temporary folder and returns it.
"""

from __future__ import annotations

import json

import pytest

from pan_utils.study.padding_policy import policy_claims
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


def _claims_from_tables(smoke_results) -> dict:
    """What the package's ``policy_claims`` gives for the written tables, as JSON keeps it."""
    names = ("padding_policy", "padding_policy_epochs", "padding_policy_scale",
             "padding_policy_generalisation")
    got = policy_claims(*(read_table(smoke_results, n) for n in names))
    return json.loads(json.dumps(got))


def test_claims_are_what_the_package_computes_from_the_tables(claims, smoke_results):
    """The notebook records ``padding_policy.policy_claims`` of its tables (its own
    correctness: tests/test_claims.py, on tables with known answers)."""
    assert _close(claims, _claims_from_tables(smoke_results))


def _close(a, b) -> bool:
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in b)
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(map(_close, a, b))
    if isinstance(b, float):
        return a == pytest.approx(b, abs=1e-9)
    return a == b


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
            if policy in ("valid", "circular"):
                assert c["pans_mean"] == 0
            if policy == "valid":  # no padded convolution: nothing to score
                assert c["pans_half_tau_mean"] == 0 and c["max_abs_d_mean"] == 0
    # a zero-padded net has some consistent border contrast
    assert claims["content"]["zeros"]["max_abs_d_mean"] > 0
    assert claims["location"]["zeros"]["chance"] == pytest.approx(0.25)
    assert claims["content"]["zeros"]["chance"] == pytest.approx(0.1)


def test_net_counts_are_consistent(table):
    """The circular null only removes PANs; a PAN needs a consistent |d| of at least tau."""
    tau = PROFILES["smoke"].tau
    assert (table["pans"] <= table["pans_without_null"]).all()
    assert (table.loc[table["pans"] > 0, "max_abs_d"] >= tau).all()
    valid = table[table["policy"] == "valid"]
    assert (valid[["pans_without_null", "pans_half_tau", "max_abs_d"]] == 0).all().all()


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


def test_scale_table_and_its_claims(claims, smoke_results):
    scale = read_table(smoke_results, "padding_policy_scale")
    assert {"config", "params", "epochs", "epoch", "final", "pans", "pans_min",
            "pans_half_tau", "max_abs_d"} <= set(scale.columns)
    final = scale[scale["final"].astype(bool)]
    smoke = PROFILES["smoke"]
    assert set(final["epochs"]) == {smoke.train_epochs, smoke.scale_epochs}
    assert set(claims["scale"]["configs"]) == set(final["config"])
    assert (scale["pans_min"] <= scale["pans"]).all()


def test_generalisation_runs_and_their_claims(claims, smoke_results):
    runs = read_table(smoke_results, "padding_policy_generalisation_runs")
    assert len(runs) == len(POLICIES) * len(PROFILES["smoke"].train_seeds)
    assert runs["similar_accuracy"].between(0, 1).all()
    assert runs["dissimilar_accuracy"].between(0, 1).all()
    assert runs["gap"].to_numpy() == pytest.approx(
        (runs["similar_accuracy"] - runs["dissimilar_accuracy"]).to_numpy(), abs=1e-5)
    summary = read_table(smoke_results, "padding_policy_generalisation")
    for r in summary.itertuples():
        g = runs[runs["policy"] == r.policy]
        assert claims["generalisation"][r.policy]["seeds"] == g["seed"].nunique()
        assert r.gap_mean == pytest.approx(g["gap"].mean(), abs=1e-5)

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
    for fig in ("padding_policy_accuracy", "padding_policy_pan_fraction"):
        assert (smoke_results / "figures" / f"{fig}.png").stat().st_size > 0

"""Assertions on the tables and claims that notebook 05 (the census) writes under the
smoke profile (``smoke_results``, tests/conftest.py)."""

from __future__ import annotations

import pytest

from pan_utils.study.census import CENSUS_COLUMNS, census_claims, census_table, padding_summary
from pan_utils.study.results import read_claims, read_table
from pan_utils.study.settings import PROFILES

SMOKE = PROFILES["smoke"]


@pytest.fixture(scope="module")
def census(smoke_results):
    return census_table(read_table(smoke_results, "census"))


def test_one_row_per_model_in_order(census):
    expected = list(SMOKE.census_models) + list(SMOKE.census_architectures)
    assert list(census["model"]) == expected
    assert list(census.columns) == list(CENSUS_COLUMNS)


def test_every_smoke_model_ran(census):
    assert (census["status"] == "ok").all() and (census["error"] == "").all()
    # TResNet's space-to-depth stem turns 3 input channels into 48 before its first conv:
    # discovery must feed it the 3 it declares, not the first conv's 48
    tresnet = census.set_index("model").loc["tresnet_m"]
    assert tresnet["padded_convs"] > 0 and tresnet["padding_kind"] == "zeros"


def test_geometry_of_known_architectures(census):
    rows = census.set_index("model")
    # torchvision pads symmetrically: 3x3 stride-2 convs on even sizes never read B/R
    assert rows.loc["resnet18", "padding_kind"] == "zeros"
    assert rows.loc["resnet18", "blind_sides"] == "BR"
    assert rows.loc["tf_efficientnet_b0", "padding_kind"] == "tf_same"
    assert rows.loc["tf_efficientnet_b0", "blind_convs"] == 0
    assert rows.loc["mtcnn_pnet", "padding_kind"] == "none"
    assert (rows.loc[list(SMOKE.census_architectures[:2]), "built_on"] == "meta").all()


def test_pretrained_model_scanned_against_its_baseline(census):
    row = census.set_index("model").loc["mobilenet_v2"]
    assert row["weights"] == "pretrained" and row["n_images"] == SMOKE.census_images
    assert row["pans"] > row["baseline_pans"]
    assert row["pans"] <= row["candidate_channels"] * 1.0
    assert row["pan_fraction"] == pytest.approx(row["pans"] / row["candidate_channels"])
    assert row["pans_B"] + row["pans_T"] > 0


def test_summary_and_claims_follow_the_census(smoke_results, census):
    summary = read_table(smoke_results, "census_padding").set_index("padding_kind")
    expected = padding_summary(census).set_index("padding_kind")
    assert (summary["architectures"] == expected["architectures"]).all()
    claims = read_claims(smoke_results)["05_census"]
    assert claims == census_claims(census)
    for name in ("census_padding_kinds", "census_blind_spots", "census_pans"):
        assert (smoke_results / "figures" / f"{name}.png").stat().st_size > 5000

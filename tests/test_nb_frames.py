"""Assertions on the tables and claims that notebook 06 writes under the smoke profile.

``smoke_results`` (tests/conftest.py) runs every notebook with profile smoke into a
temporary folder and returns it.
"""

from __future__ import annotations

import pytest

from pan_utils.engine.models import model_task
from pan_utils.study import frames
from pan_utils.study.results import read_claims, read_table
from pan_utils.study.settings import PROFILES

SMOKE = PROFILES["smoke"]
NAMES = frames.TABLES + ("frames_mediation_summary",)


@pytest.fixture(scope="module")
def tables(smoke_results):
    return {n: read_table(smoke_results, n) for n in NAMES}


def test_every_classifier_of_the_profile_and_only_those(tables):
    classifiers = {m for m in SMOKE.models if model_task(m) == "classification"}
    for name in ("frames_natural", "frames_adversarial", "frames_mediation", "frames_padding"):
        assert set(tables[name]["model"]) == classifiers, name


def test_natural_grid_and_controls(tables):
    nat = tables["frames_natural"]
    assert (nat["n_images"] == min(SMOKE.frames_n_eval, SMOKE.n_eval)).all()
    assert nat["agreement"].between(0, 1).all()
    frames_ = nat[nat["kind"] == "frame"]
    assert set(zip(frames_["fill"], frames_["width"])) == {
        (f, w) for f in SMOKE.frames_fills for w in SMOKE.frames_widths}
    for (_, fill, width), g in nat[nat["width"].isin(SMOKE.frames_control_widths)].groupby(
            ["model", "fill", "width"]):
        assert set(g["kind"]) == {"frame", "centre", "random"}
        assert g["n_pixels"].nunique() == 1  # the same pixel count
    assert (nat.loc[nat["kind"] == "letterbox", "fill"].isin(["black", "grey"])).all()


def test_adversarial_splits_widths_and_equal_areas(tables):
    adv = tables["frames_adversarial"]
    assert set(adv["fit_split"]) == {"scan"} and set(adv["eval_split"]) == {"eval"}
    assert set(adv["width"]) == set(SMOKE.frames_adv_widths)
    assert set(adv["placement"]) == {"frame", "centre"}
    assert adv.groupby(["model", "width"])["n_pixels"].nunique().eq(1).all()
    assert adv["fooling_rate"].between(0, 1).all()


def test_mediation_draws_and_summary_recomputed(tables):
    med, summ = tables["frames_mediation"], tables["frames_mediation_summary"]
    for _, g in med.groupby(["model", "transform"]):
        assert (g["condition"] == "intact").sum() == 1
        assert (g["condition"] == "random_border").sum() == SMOKE.frames_random_draws
        n_pans = int(g.loc[g["condition"] == "pans_border", "n_ablated"].iloc[0])
        assert (g.loc[g["condition"] == "random_border", "n_ablated"] <= n_pans).all()
    for r in summ.itertuples():
        g = med[(med["model"] == r.model) & (med["transform"] == r.transform)]
        pans = g.loc[g["condition"] == "pans_border", "agreement"].iloc[0]
        assert r.effect_pans == pytest.approx(1 - pans, abs=1e-5)


def test_padding_swaps_present(tables):
    assert set(tables["frames_padding"]["padding"]) == set(frames.PADDINGS)


def test_claims_equal_the_tables(smoke_results, tables):
    claims = read_claims(smoke_results).get("06_frames")
    assert claims and claims["thresholds"]["border_margin"] == frames.BORDER_MARGIN
    nat = tables["frames_natural"]
    for model, c in claims.items():
        if model == "thresholds":
            continue
        for name, k in c["controls"].items():
            row = nat[(nat["model"] == model) & (nat["transform"] == name)]
            assert k["frame"] == pytest.approx(float(row["agreement"].iloc[0]), abs=1e-5)
        assert set(c["fooling_rate"]) == {"frame", "centre"}


def test_chapter6_runs_to_its_end_without_a_pan(smoke_results, tmp_path):
    """At a threshold no channel reaches, the chapter says there is nothing to ablate and
    still writes every figure (chapter 1's stored scan, decided at tau 50: no scan)."""
    import nbformat

    from pan_utils.study.reproduce import default_notebooks, run_notebook

    nb = next(p for p in default_notebooks() if p.stem == "06_frames")
    run_notebook(nb, tmp_path, profile="smoke", extra_params={"tau": 50.0}, progress=False)
    executed = nbformat.read(tmp_path / "notebooks" / nb.name, as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "no PAN found at this tau, so there is nothing to border-ablate" in text
    assert "nan%" not in text
    assert (tmp_path / "figures" / "frames_activation_shift.png").is_file()
    assert read_table(tmp_path, "frames_pans").empty or (
        read_table(tmp_path, "frames_pans")["pans"] == 0).all()

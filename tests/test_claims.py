"""The chapters' verdicts and claims functions on small tables with known answers (the
notebooks, claims.json and the README findings all call them)."""

from __future__ import annotations

import pandas as pd
import pytest

from pan_utils.study import identification as ch1
from pan_utils.study import padding_policy as ch4
from pan_utils.study.readme import END, START, check_readme, main


@pytest.mark.parametrize("lo, hi, verdict", [
    (12, 999, "agrees"), (11, 500, "fewer than claimed"), (12, 1000, "more than claimed"),
    (0, 5, "fewer than claimed"), (200, 5000, "more than claimed")])
def test_dozens_to_hundreds_verdict_at_its_thresholds(lo, hi, verdict):
    assert ch1.DOZENS_MIN == 12 and ch1.HUNDREDS_MAX == 1000
    assert ch1.dozens_verdict(lo, hi) == verdict


def test_learned_means_above_the_baseline_by_two_sd():
    assert ch1.is_learned(10.1, 6.0, 2.0) and not ch1.is_learned(10.0, 6.0, 2.0)
    assert ch1.is_learned(1, 0.0, 0.0) and not ch1.is_learned(0, 0.0, 0.0)


def _counts() -> pd.DataFrame:
    rows = []
    for m, pre, base, sd in (("a", 40, 1.0, 0.5), ("b", 3, 2.0, 1.0)):
        rows += [{"model": m, "weights": "pretrained", "candidate_layers": 2,
                  "candidate_channels": 100, "pans": pre, "pans_sd": 0.0, "seeds": 1,
                  "pan_fraction": pre / 100, "circular_null_pans": 1, "pans_ci_low": pre - 1,
                  "pans_ci_high": pre + 1, "jaccard": 0.5},
                 {"model": m, "weights": "random-init", "candidate_layers": 2,
                  "candidate_channels": 100, "pans": base, "pans_sd": sd, "seeds": 3,
                  "pan_fraction": base / 100, "circular_null_pans": 0},
                 {"model": m, "weights": "random-init (uncalibrated)", "candidate_layers": 2,
                  "candidate_channels": 100, "pans": 50, "pans_sd": 0.0, "seeds": 1,
                  "pan_fraction": 0.5, "circular_null_pans": 0}]
    rows += [{"model": "u", "weights": w, "candidate_layers": 0, "candidate_channels": 0,
              "pans": 0, "pans_sd": 0.0, "seeds": 1, "pan_fraction": float("nan"),
              "circular_null_pans": 0} for w in ("pretrained", "random-init")]
    return pd.DataFrame(rows)


def test_identification_findings_and_claims_from_known_counts():
    counts = _counts()
    pans = pd.DataFrame({"model": ["a"] * 3, "weights": ["pretrained"] * 3,
                         "type": ["single side", "single side", "corner only"]})
    lines = ch1.identification_findings(counts, pans, tau=3.0, consistency=0.95)
    assert lines[0].startswith("0. u: no padded convolution")
    assert "1. Existence: 2 of 2 pre-trained models have PANs at tau=3, q=0.95" in lines[1]
    assert "3 to 40 PANs per pre-trained model" in lines[3] and "fewer than claimed" in lines[3]
    assert "a: 40 pre-trained against 1.0 ± 0.5" in lines[4] and "far more" in lines[4]
    assert "b: 3 pre-trained" in lines[5] and "NOT clearly more" in lines[5]
    assert lines[6] == ("4. Types (a): single side: 2, corner only: 1 (2 distinct types; "
                        "see chapter 2).")
    claims = ch1.identification_claims(counts)
    assert claims["a"]["pans"] == 40 and claims["a"]["random_init_pans_sd"] == 0.5
    assert claims["a"]["pans_ci"] == [39.0, 41.0]
    assert claims["u"] == {"pans": 0, "candidate_channels": 0, "pan_fraction": None,
                           "random_init_pans_mean": 0.0, "circular_null_pans": 0.0}


def test_policy_thresholds_halfway_and_at_chance():
    assert ch4.solves(0.625, 0.25) and not ch4.solves(0.6249, 0.25)  # halfway from 0.25 to 1
    assert ch4.at_chance(0.30, 0.0, 0.25) and not ch4.at_chance(0.31, 0.0, 0.25)  # floor 0.05
    assert ch4.at_chance(0.40, 0.08, 0.25) and not ch4.at_chance(0.42, 0.08, 0.25)  # 2 sd


def test_generalisation_verdict_noise_floor():
    assert ch4.NOISE_FLOOR == 0.01
    g = pd.DataFrame({"policy": ["zeros", "circular"], "similar_mean": [0.5, 0.5],
                      "similar_sd": 0.0, "dissimilar_mean": [0.48, 0.5], "dissimilar_sd": 0.0,
                      "gap_mean": [0.02, 0.0], "gap_sd": [0.0, 0.0], "seeds": 2})
    assert "agrees with Kayhan" in ch4.generalisation_lines(g, ["zeros", "circular"])[-1]
    g["gap_mean"] = [0.009, 0.0]  # within the floor although both sds are 0
    assert "does not reproduce" in ch4.generalisation_lines(g, ["zeros", "circular"])[-1]
    g["gap_mean"] = [0.0, 0.05]
    assert "contradicts" in ch4.generalisation_lines(g, ["zeros", "circular"])[-1]


def test_policy_claims_from_known_tables():
    table = pd.DataFrame({"task": "location", "policy": ["zeros", "zeros", "valid"],
                          "seed": [0, 1, 0], "test_accuracy": [0.5, 0.7, 0.3], "chance": 0.25,
                          "pans": [1, 3, 0], "pans_half_tau": [4, 6, 0],
                          "max_abs_d": [3.0, 5.0, 0.0]})
    epochs = pd.DataFrame({"task": "location", "policy": "zeros", "seed": [0, 0, 1, 1],
                           "epoch": [1, 2, 1, 2], "pans": [0, 1, 2, 3],
                           "pans_half_tau": [1, 4, 3, 6], "max_abs_d": [1.0, 3.0, 2.0, 5.0]})
    scale = pd.DataFrame({"config": ["small", "small", "big"], "final": [False, True, True],
                          "params": 10, "epochs": [2, 2, 4], "seeds": 2, "pans": [0.5, 2.0, 0.5],
                          "pans_min": [0, 1, 0], "pans_half_tau": 5.0, "max_abs_d": 3.0,
                          "test_accuracy": 0.5})
    gen = pd.DataFrame({"policy": ["zeros"], "seeds": [2], "similar_mean": [0.6],
                        "similar_sd": [0.1], "dissimilar_mean": [0.4], "dissimilar_sd": [0.1],
                        "gap_mean": [0.2]})
    c = ch4.policy_claims(table, epochs, scale, gen)
    z = c["location"]["zeros"]
    assert z["seeds"] == 2 and z["accuracy_mean"] == pytest.approx(0.6)
    assert z["accuracy_sd"] == pytest.approx(0.1414213, abs=1e-6) and z["pans_mean"] == 2
    assert c["location"]["valid"]["accuracy_sd"] == 0.0
    e = c["per_epoch"]["location"]["zeros"]
    assert (e["epochs"], e["pans_first"], e["pans_final"], e["max_abs_d_final"]) == (2, 1, 2, 4)
    assert set(c["scale"]["configs"]) == {"small", "big"}
    assert c["scale"]["crosses_tau"] == ["small"]
    assert c["generalisation"]["zeros"]["gap_mean"] == pytest.approx(0.2)
    assert ch4.scale_lines(scale, 3.0)[2].startswith("verdict: zero-padded location nets "
                                                     "cross tau = 3 with small")


def test_readme_check_says_when_the_block_is_stale(tmp_path, monkeypatch):
    import pan_utils.study.readme as readme

    monkeypatch.setattr(readme, "findings", lambda results: f"{START}\nnew\n{END}")
    good, stale = tmp_path / "good.md", tmp_path / "stale.md"
    good.write_text(f"# x\n{START}\nnew\n{END}\n")
    stale.write_text(f"# x\n{START}\nold\n{END}\n")
    assert check_readme(good, tmp_path) is None
    assert "differ" in check_readme(stale, tmp_path)
    assert main(["--check", str(good), str(tmp_path)]) == 0
    assert main(["--check", str(stale), str(tmp_path)]) == 1
    assert stale.read_text().count("old") == 1  # --check writes nothing
    assert main(["--check", str(tmp_path / "missing.md"), str(tmp_path)]) == 2

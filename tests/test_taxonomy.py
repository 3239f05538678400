"""Ground truth for the taxonomy: types, counts on a hand-made table, kernel pad mass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pan_utils.engine.padding import discover
from pan_utils.engine.types import pan_type
from pan_utils.study.taxonomy import (first_pan_layer, kernel_mass_table, kernel_padding_mass,
                                      pad_kernel_index, side_counts, type_counts,
                                      uneven_layers)


@pytest.mark.parametrize("sides,corners,want", [
    ("T", "", "single side"), ("TB", "", "opposite pair"), ("LR", "TL", "opposite pair"),
    ("TL", "", "adjacent pair"), ("BR", "", "adjacent pair"), ("TBL", "", "three sides"),
    ("TBLR", "", "full frame"), ("", "TL,BR", "corner only"), ("", "", "none")])
def test_pan_type(sides, corners, want):
    assert pan_type(sides, corners) == want


def hand_pans() -> pd.DataFrame:
    rows = [("m", "pretrained", "T", "", "+"), ("m", "pretrained", "B", "", "+"),
            ("m", "pretrained", "TB", "", "mixed"), ("m", "pretrained", "", "TL", "-"),
            ("m", "pretrained", "TBLR", "", "-"), ("m", "random-init", "L", "", "-"),
            ("n", "pretrained", "LR", "", "+")]
    df = pd.DataFrame(rows, columns=["model", "weights", "sides", "corners", "polarity"])
    df["type"] = [pan_type(s, c) for s, c in zip(df["sides"], df["corners"])]
    df["layer"], df["order"], df["channel"] = ["x", "x", "y", "y", "z", "x", "x"], \
        [0, 0, 1, 1, 2, 0, 0], range(7)
    return df


def test_type_counts_on_hand_made_table():
    t = type_counts(hand_pans())
    assert t["pans"].sum() == 7
    got = {tuple(r[:4]): r[4] for r in t[["model", "weights", "type", "polarity", "pans"]]
           .itertuples(index=False)}
    assert got[("m", "pretrained", "single side", "+")] == 2
    assert got[("m", "pretrained", "opposite pair", "mixed")] == 1
    assert got[("m", "pretrained", "corner only", "-")] == 1
    assert got[("m", "pretrained", "full frame", "-")] == 1
    assert got[("m", "random-init", "single side", "-")] == 1
    assert got[("n", "pretrained", "opposite pair", "+")] == 1
    frac = t.groupby(["model", "weights"])["fraction"].sum()
    assert np.allclose(frac, 1.0)


def test_side_counts_on_hand_made_table():
    s = side_counts(hand_pans()).set_index(["model", "weights", "side"])["pans"]
    assert s[("m", "pretrained", "T")] == 3  # T, TB, TBLR
    assert s[("m", "pretrained", "B")] == 3
    assert s[("m", "pretrained", "L")] == 1
    assert s[("m", "pretrained", "corner only")] == 1
    assert s[("n", "pretrained", "R")] == 1


def test_first_pan_layer_by_order():
    assert first_pan_layer(hand_pans()) == "x"
    assert first_pan_layer(hand_pans(), min_pans=3) is None or \
        first_pan_layer(hand_pans(), min_pans=3) == "x"
    assert first_pan_layer(hand_pans().iloc[:0]) is None


def test_kernel_padding_mass_of_hand_made_kernel():
    w = torch.zeros(2, 1, 3, 3)
    w[0, 0, 0, :] = torch.tensor([1.0, -1.0, 2.0])  # |top row| = 4
    w[0, 0, 1, 1] = -4.0  # total |w| = 8
    w[1] = 1.0  # uniform: 1/3 on any single row or column
    np.testing.assert_allclose(kernel_padding_mass(w, [0], "T"), [0.5, 1 / 3])
    np.testing.assert_allclose(kernel_padding_mass(w, [2], "B"), [0.0, 1 / 3])
    np.testing.assert_allclose(kernel_padding_mass(w, [0], "L"), [1 / 8, 1 / 3])
    np.testing.assert_allclose(kernel_padding_mass(w, [0, 1], "T"), [1.0, 2 / 3])
    assert np.isnan(kernel_padding_mass(w, [], "B")).all()


def test_pad_kernel_index_geometry():
    conv = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1),  # 8 -> 4
                         nn.Conv2d(1, 1, 5, padding=2))  # 4 -> 4
    sites = discover(conv, 8)
    s2, k5 = sites
    assert pad_kernel_index(s2, "T") == [0]
    assert pad_kernel_index(s2, "B") == []  # stride 2 on even input never reads bottom pad
    assert pad_kernel_index(k5, "T") == [0, 1]
    assert pad_kernel_index(k5, "R") == [3, 4]
    s2_odd = discover(conv, 9)[0]  # 9 -> 5: last window covers rows 7, 8, 9(pad)
    assert pad_kernel_index(s2_odd, "B") == [2]


def test_kernel_mass_table_flags_detected_side():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1))
    pans = pd.DataFrame({"layer": ["0"], "channel": [1], "sides": ["T"]})
    t = kernel_mass_table(net, "0", 6, pans)
    assert len(t) == 3 * 4
    assert t["pan"].sum() == 4 and t["detects_side"].sum() == 1
    row = t[t["detects_side"]].iloc[0]
    w = net[0].weight.detach().abs()
    assert row["side"] == "T" and np.isclose(row["mass"], float(w[1, 0, 0].sum() / w[1].sum()))
    assert np.allclose(t["uniform"], 1 / 3)


def test_uneven_layers_bands_change_with_size():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    t = uneven_layers(net, (8, 9), "toy").set_index("size")
    assert t.loc[8, "band_bottom"] == 0 and t.loc[9, "band_bottom"] == 1
    assert t.loc[8, "band_top"] == 1 and t.loc[9, "band_top"] == 1

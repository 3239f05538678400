"""The smoke run's key numbers against tests/expected_smoke.json, within tolerances: a
change that moves a PAN count, an agreement or a training accuracy fails ``make test``, not
only the README check. ``smoke_results`` (tests/conftest.py) runs every notebook once."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pan_utils.study.results import read_table

EXPECTED = json.loads((Path(__file__).with_name("expected_smoke.json")).read_text())["values"]


def _id(v: dict) -> str:
    return f"{v['table']}:{','.join(map(str, v['where'].values()))}:{v['column']}"


def select(df: pd.DataFrame, where: dict[str, str]) -> pd.DataFrame:
    """The rows of ``df`` whose columns equal ``where``'s values (compared as text)."""
    for k, v in where.items():
        df = df[df[k].astype(str) == v]
    return df


def within(value: float, entry: dict) -> bool:
    """|value - expected| <= abs + rel * |expected|."""
    e = entry["expected"]
    return abs(value - e) <= entry.get("abs", 0) + entry.get("rel", 0) * abs(e)


def test_the_tolerance_check_can_fail():
    entry = {"expected": 191, "abs": 2, "rel": 0.05}
    assert within(200, entry) and within(182, entry)  # 191 ± (2 + 9.55)
    assert not within(203, entry) and not within(179, entry)
    assert not within(7169, {"expected": 7168, "abs": 0})
    df = pd.DataFrame({"model": ["a", "b"], "k": [1, 14], "x": [0.5, 0.25]})
    assert select(df, {"model": "b", "k": "14"})["x"].tolist() == [0.25]


@pytest.mark.parametrize("entry", EXPECTED, ids=_id)
def test_smoke_value_is_as_expected(smoke_results, entry):
    rows = select(read_table(smoke_results, entry["table"]), entry["where"])
    assert len(rows) == 1, f"{_id(entry)}: {len(rows)} matching rows, need 1"
    value = float(rows[entry["column"]].iloc[0])
    assert within(value, entry), (
        f"{_id(entry)} = {value:g}, expected {entry['expected']} ± "
        f"{entry.get('abs', 0)} + {entry.get('rel', 0)} × |expected|")

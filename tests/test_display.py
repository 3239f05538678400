"""What the notebooks display: a short parameters table, tidy tables, messages said once."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pan_utils.study.display import (CHAPTER_PARAMETERS, format_number, merge_lines,
                                     merged_messages, parameters_table, show_table, tidy_table)
from pan_utils.study.settings import Settings, settings


def test_the_parameters_table_is_short_and_has_no_repr():
    S = settings("default")
    t = parameters_table(S, "identification")
    assert list(t.index) == list(CHAPTER_PARAMETERS["identification"])
    assert t.loc["models", "value"] == ", ".join(S.models)
    assert t.loc["image_size", "value"] == "each model's own"  # None says what it means
    assert t.loc["tau", "value"] == f"{S.tau:g}"
    text = t.to_string()
    assert "Settings(" not in text and "(" not in "".join(t["value"]) and "[" not in text
    assert len(t) < len([f for f in Settings.__dataclass_fields__]) / 2


def test_every_chapter_list_names_real_settings_and_a_typo_fails():
    S = settings("smoke")
    for chapter in CHAPTER_PARAMETERS:
        assert len(parameters_table(S, chapter)) == len(CHAPTER_PARAMETERS[chapter])
    with pytest.raises(ValueError, match="not a setting: taus"):
        parameters_table(S, ["tau", "taus"])
    with pytest.raises(ValueError, match="no chapter"):
        parameters_table(S, "chapter9")


def test_numbers_lose_spurious_decimals_and_nan_is_a_dash():
    assert format_number(357.0) == "357"
    assert format_number(0.666667, 1) == "0.7"
    assert format_number(404.075, 0) == "404"
    assert format_number(math.nan) == "–" and format_number(None) == "–"
    assert format_number(np.int64(12)) == "12" and format_number(pd.NA) == "–"


def test_tidy_table_drops_empty_and_constant_columns_and_rounds():
    df = pd.DataFrame({"model": ["a", "b", "c"], "pans": [357.0, 0.666667, 82.0],
                       "ci": [np.nan, np.nan, np.nan], "note": ["", "", ""],
                       "seeds": [3, 3, 3], "sd": [0.6, np.nan, 0.0],
                       "k": pd.array([1, None, 2], dtype="Int64")})
    t = tidy_table(df, {"pans": 1}, index=["model"])
    assert list(t.columns) == ["pans", "seeds", "sd", "k"] and list(t["k"]) == ["1", "–", "2"]
    assert list(t["pans"]) == ["357", "0.7", "82"] and list(t["sd"]) == ["0.60", "–", "0"]
    assert list(t.index) == ["a", "b", "c"]
    assert "seeds" not in tidy_table(df, drop_constant=True).columns
    assert len(tidy_table(df, max_rows=2)) == 2


def test_show_table_names_the_csv_when_rows_are_left_out(capsys):
    df = pd.DataFrame({"model": list("abcdef"), "x": range(6)})
    show_table(df, max_rows=4, source="census.csv")
    out = capsys.readouterr().out
    assert "first 4 of 6 rows; all of them in tables/census.csv" in out
    assert "e" not in out.split("first")[0].split("x")[-1]  # rows e, f are not displayed


def test_a_message_shared_by_models_is_said_once_where_it_first_stood():
    lines = ["start", "mtcnn_pnet: no padded convolution", "0. mtcnn_rnet: no PAN possible",
             "mtcnn_rnet: no padded convolution", "mobilenet_v2: 357 PANs",
             "0. mtcnn_onet: no PAN possible", "1. Existence: 2 of 3",
             "m (random-init (uncalibrated)): 0 PANs: none", "m (pretrained): 0 PANs: none"]
    assert merge_lines(lines) == ["start", "mtcnn_pnet, mtcnn_rnet: no padded convolution",
                                  "0. mtcnn_rnet, mtcnn_onet: no PAN possible",
                                  "mobilenet_v2: 357 PANs", "1. Existence: 2 of 3",
                                  "m (random-init (uncalibrated)), m (pretrained): 0 PANs: none"]


def test_merged_messages_prints_the_block_once_merged(capsys):
    with merged_messages():
        for m in ("a", "b", "c"):
            print(f"{m}: skipped, no classification head")
        print("wrote tables x, y")
    assert capsys.readouterr().out == ("a, b, c: skipped, no classification head\n"
                                       "wrote tables x, y\n")


def test_the_shown_parameters_table_cuts_no_value_short(capsys):
    S = settings("default")
    show_table(parameters_table(S, "identification"))
    out = capsys.readouterr().out  # outside IPython, display prints the table's text
    assert ", ".join(S.models) in out and "..." not in out


def test_bars_are_off_in_batch_runs_and_on_interactively(monkeypatch):
    from pan_utils.engine.progress import NONINTERACTIVE_ENV, progress_bar

    monkeypatch.delenv("PAN_UTILS_PROGRESS", raising=False)
    monkeypatch.delenv(NONINTERACTIVE_ENV, raising=False)
    assert not progress_bar(range(3)).disable  # an interactive run keeps its bar
    monkeypatch.setenv(NONINTERACTIVE_ENV, "1")  # what the runner sets for the kernel
    assert progress_bar(range(3)).disable


def test_the_runner_marks_its_kernel_non_interactive():
    from pan_utils.study import reproduce

    with reproduce._project_kernel() as name:
        import json
        import os
        from pathlib import Path

        spec = Path(os.environ["JUPYTER_PATH"].split(os.pathsep)[0]) / "kernels" / name
        env = json.loads((spec / "kernel.json").read_text())["env"]
    assert env["PAN_UTILS_NONINTERACTIVE"] == "1" and env["PAN_UTILS_PROGRESS"] == "0"

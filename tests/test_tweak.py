"""Tweaking a parameter: chapter 2 never mixes chapter 1's threshold with its own, and the
explorer's sliders re-decide from the scan store without a scan (docs/METHOD.md §12)."""

from __future__ import annotations

import json

import nbformat
import pytest

import pan_utils.study.identification as identification
from pan_utils.study.explorer import HOW_TO_OPEN, NONINTERACTIVE_ENV, Explorer, ExplorerData, explore
from pan_utils.study.identification import chapter1_tables
from pan_utils.study.results import read_table, table_mismatches
from pan_utils.study.settings import settings


def sensitivity_at(out_dir, tau: float) -> int:
    sens = read_table(out_dir, "pan_sensitivity")
    row = sens[(sens["weights"] == "pretrained") & (sens["condition"] == "pretrained")
               & (sens["tau"] == tau)]
    return int(row["pans"].iloc[0])


def no_scan(*args, **kwargs):
    raise AssertionError("scanned: a tweak must re-decide from the store")


def test_chapter1_tables_record_their_parameters(smoke_results):
    made = json.loads((smoke_results / "tables" / "pans.params.json").read_text())
    assert made["tau"] == 3.0 and made["profile"] == "smoke"
    assert table_mismatches(smoke_results, "pans", {"tau": 3.0, "models": ["mobilenet_v2"]}) == []
    assert table_mismatches(smoke_results, "pans", {"tau": 2.0}) == ["tau 3.0 (this run: 2.0)"]
    assert table_mismatches(smoke_results, "nope", {"tau": 2.0}) == ["no table"]


def test_matching_tables_are_read_as_they_are(smoke_results, capsys):
    tables = chapter1_tables(smoke_results, settings("smoke"))
    assert capsys.readouterr().out == ""
    assert len(tables["pans"]) == len(read_table(smoke_results, "pans"))


def test_chapter2_at_another_tau_re_decides_chapter1_instead_of_mixing(smoke_results, capsys,
                                                                       monkeypatch):
    """The planted mismatch of the issue: chapter 1 at tau 3, chapter 2 run at tau 2."""
    monkeypatch.setattr(identification, "scan", no_scan)  # the store has chapter 1's scans
    tables = chapter1_tables(smoke_results, settings("smoke", tau=2.0), progress=False)
    line = capsys.readouterr().out
    assert "tau 3.0 (this run: 2.0)" in line and "re-deciding" in line
    pans = tables["pans"]
    pre = pans[pans["weights"] == "pretrained"]
    assert len(pre) == sensitivity_at(smoke_results, 2.0)  # chapter 1's own curve at 2
    assert len(pre) > sensitivity_at(smoke_results, 3.0)
    assert (pre["score"] >= 2.0).all()
    assert set(tables["pan_counts"]["tau"]) == {2.0}
    assert tables["pans"].attrs["params"]["tau"] == 2.0


def test_explorer_slider_redraws_from_the_store(smoke_results, monkeypatch):
    data = ExplorerData(settings("smoke"))
    monkeypatch.setattr(identification, "scan", no_scan)
    ex = Explorer(data)
    ex.tau.value = 2.0  # what moving the slider does
    counts = ex.state["counts"].set_index("model")
    assert int(counts.loc["mobilenet_v2", "pans"]) == sensitivity_at(smoke_results, 2.0)
    assert ex.redraw_s == ex.redraw_s  # a redraw ran and was timed
    ex.q.value = 1.0
    assert int(ex.state["counts"]["pans"].iloc[0]) <= sensitivity_at(smoke_results, 2.0)
    layer = data.layers("mobilenet_v2")[0]
    view = data.channel("mobilenet_v2", layer, 0, 3.0, 0.95)
    assert list(view["scores"].index)[:4] == ["T", "B", "L", "R"]
    assert view["kernel"].shape == (3, 3) and view["map"].ndim == 2


def test_explorer_says_how_to_open_it_without_a_front_end(monkeypatch, capsys):
    monkeypatch.setenv(NONINTERACTIVE_ENV, "1")
    assert explore(settings("smoke")) is None
    assert capsys.readouterr().out.strip() == HOW_TO_OPEN


def test_executed_chapter1_shows_one_line_for_the_explorer(smoke_results):
    nb = nbformat.read(smoke_results / "notebooks" / "01_identification.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "explore(S)" in c.source)
    texts = [o.get("text", "") for o in cell.outputs]
    assert texts == [HOW_TO_OPEN + "\n"]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for o in cell.outputs)

"""The smoke run's claims.json, printed lines and README findings come from the chapter
modules' functions (the same ones ``python -m pan_utils.study.readme`` uses).
``smoke_results`` (tests/conftest.py) runs every notebook once with the smoke profile."""

from __future__ import annotations

import json

import pytest

from pan_utils.study import census, identification, padding_policy, taxonomy
from pan_utils.study.readme import END, START, findings
from pan_utils.study.results import read_claims, read_table
from pan_utils.study.settings import PROFILES


def _plain(x):
    return json.loads(json.dumps(x))


def _stdout(smoke_results, stem: str) -> str:
    nb = json.loads((smoke_results / "notebooks" / f"{stem}.ipynb").read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")


def test_chapter_1_2_5_claims_are_the_package_functions_of_the_tables(smoke_results):
    claims = read_claims(smoke_results)
    t = lambda name: read_table(smoke_results, name)  # noqa: E731
    assert claims["01_identification"] == _plain(
        identification.identification_claims(t("pan_counts")))
    assert claims["02_taxonomy"] == _plain(
        taxonomy.taxonomy_claims(t("taxonomy"), t("uneven_padding_pans")))
    assert claims["05_census"] == _plain(
        census.census_claims(census.census_table(t("census"))))


def test_notebooks_print_the_package_lines(smoke_results):
    S = PROFILES["smoke"]
    t = lambda name: read_table(smoke_results, name)  # noqa: E731
    ch1 = _stdout(smoke_results, "01_identification")
    for line in identification.identification_findings(t("pan_counts"), t("pans"), tau=S.tau,
                                                       consistency=S.consistency):
        assert line in ch1
    assert "'From dozens to hundreds'" in ch1
    ch4 = _stdout(smoke_results, "04_padding_policy")
    for line in padding_policy.generalisation_lines(t("padding_policy_generalisation")):
        assert line in ch4
    for line in padding_policy.scale_lines(t("padding_policy_scale"), S.tau):
        assert line in ch4
    ch5 = _stdout(smoke_results, "05_census")
    for line in census.pan_lines(census.census_table(t("census"))):
        assert line in ch5


def test_readme_findings_build_from_the_smoke_tables(smoke_results):
    block = findings(smoke_results)
    assert block.startswith(START) and block.endswith(END)
    counts = read_table(smoke_results, "pan_counts")
    pre = counts[counts["weights"] == "pretrained"].iloc[0]
    assert f"| {pre['model']} | {pre['pans']:g} |" in block
    for chapter in ("(chapter 1)", "(chapter 2)", "(chapter 3)", "(chapter 4)", "(chapter 5)"):
        assert chapter in block

"""The nbval sanitizer (tests/nbval_sanitize.cfg): what it masks reads alike between two
runs, and a changed result still differs after it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CFG = Path(__file__).with_name("nbval_sanitize.cfg")


def _patterns() -> list[tuple[str, str]]:
    from nbval.plugin import get_sanitize_patterns  # how nbval itself reads the file

    return get_sanitize_patterns(CFG.read_text())


def sanitize(text: str) -> str:
    for regex, replace in _patterns():
        text = re.sub(regex, replace, text)
    return text


def test_every_regex_has_its_replace_and_compiles():
    body = [ln for ln in CFG.read_text().splitlines() if ln and not ln.startswith("#")]
    regexes = [ln for ln in body if ln.startswith("regex: ")]
    assert len(regexes) == len(_patterns()) >= 8
    for regex, _ in _patterns():
        re.compile(regex)


@pytest.mark.parametrize("a, b", [
    # times
    ("mobilenet_v2 done in 12.3 s\n", "mobilenet_v2 done in 7.9 s\n"),
    ("trained in 950 ms; finished 2026-12-02T01:04:43+00:00", "trained in 1200 ms; finished "
     "2026-12-03T11:22:01+00:00"),
    ("census: 142.1 models/min, elapsed 0:02:31", "census: 287.0 models/min, elapsed 0:01:02"),
    # paths: the results folder, a scratch copy, a checkout
    ("writing pans: 18 rows -> ../results/tables/pans.csv",
     "writing pans: 18 rows -> /tmp/checkout/.cache/nbval/verify/tables/pans.csv"),
    ("/opt/env/lib/python3.11/site-packages/torch/nn/x.py:123: UserWarning: w",
     "/opt/venv/lib/python3.11/site-packages/torch/nn/x.py:131: UserWarning: w"),
    # progress bars
    ("scan\n 42%|####      | 21/50 [00:03<00:04,  7.10it/s]\nPANs: 357\n",
     "scan\n100%|##########| 50/50 [00:07<00:00,  6.90it/s]\nPANs: 357\n"),
    # the machine and the cache's state
    ("width 16, 1 block(s) per stage; torch threads 2\n", "width 16, 1 block(s) per stage; "
     "torch threads 16\n"),
    ("census: 6 model(s), 0 from the cache, 6 to run", "census: 6 model(s), 6 from the cache, "
     "0 to run"),
    # memory addresses
    ("<Figure at 0x7f3a2c1b9d90>", "<Figure at 0x7f11aa02cc10>"),
    # float noise below the printed precision
    ("mixed 4.66666, corner 80.6667", "mixed 4.66667, corner 80.6667"),
    ("median 0.991574", "median 0.991575"),
    ("p = 1.234567e-05", "p = 1.234612e-05"),
])
def test_noise_reads_alike(a, b):
    assert sanitize(a) == sanitize(b), (sanitize(a), sanitize(b))


@pytest.mark.parametrize("a, b", [
    ("mobilenet_v2: 357 PANs", "mobilenet_v2: 358 PANs"),
    ("accuracy 0.679 ± 0.067 over 3 seed(s)", "accuracy 0.680 ± 0.067 over 3 seed(s)"),
    ("agreement 72.7%", "agreement 72.8%"),
    ("median 0.991574", "median 0.991674"),
    ("(3 seeds)", "(4 seeds)"),
    ("writing pans: 18 rows -> ../results/tables/pans.csv",
     "writing pans: 19 rows -> ../results/tables/pans.csv"),
    ("-> OUT/tables/pans.csv", "-> OUT/tables/pan_counts.csv"),
    ("sides never read: BR 52", "sides never read: BR 53"),
    ("k=4: +22.9 pts", "k=5: +22.9 pts"),
    ("census: 6 model(s), 0 from the cache", "census: 7 model(s), 0 from the cache"),
])
def test_a_changed_result_still_differs(a, b):
    assert sanitize(a) != sanitize(b), sanitize(a)

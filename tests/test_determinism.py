"""The same parameters give the same tables: a second smoke run (nbval's re-execution of
the first, fixture ``smoke_rerun``) against the first."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pan_utils.study.results import read_table

# Columns that measure the machine, not the study.
TIMING = ("seconds", "wall", "time")


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: read_table(out, p.stem) for p in sorted((out / "tables").glob("*.csv"))}


def test_rerun_gives_identical_tables(smoke_run, smoke_rerun):
    assert not smoke_run.errors, smoke_run.errors
    first, second = _tables(smoke_run.out_dir), _tables(smoke_rerun.out_dir)
    assert first.keys() == second.keys() and first
    for name, a in first.items():
        b = second[name]
        keep = [c for c in a.columns if not any(t in c for t in TIMING)]
        assert list(a.columns) == list(b.columns), name
        try:
            pd.testing.assert_frame_equal(a[keep], b[keep], check_exact=False, rtol=1e-5,
                                          atol=1e-8)
        except AssertionError as exc:
            pytest.fail(f"{name}.csv differs between two runs: {exc}")

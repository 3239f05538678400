"""Tables and figures of a run, written atomically under ``out_dir`` (``tables/*.csv``,
``figures/*.png``) and read back with their text columns intact."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..engine.io import atomic_write

TEXT_COLUMNS = ("model", "weights", "layer", "sides", "corners", "polarity", "type", "side",
                "condition", "mode", "policy", "task", "class_name", "transform", "fill")


TIMINGS_FILE = ".timings.json"  # hidden: the runner moves it into the manifest, not results


PARAMS_SUFFIX = ".params.json"  # beside each table: the parameters it was made with


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str) -> Path:
    """``out_dir/tables/name.csv``, written atomically; floats rounded for stable diffs.

    Wall-clock times must not make a rerun differ: a table carries them in
    ``df.attrs["timings"]``, recorded by ``record_timings`` (the manifest keeps them).
    The parameters a table was made with (``df.attrs["params"]``: tau, q, probes, size,
    profile, seeds) go to ``tables/name.params.json``, so that a chapter reading it can
    check them (``table_mismatches``)."""
    import json

    if df.attrs.get("timings"):
        record_timings(out_dir, name, df.attrs["timings"])
    params = df.attrs.get("params")
    if params:
        text = json.dumps(params, indent=1, sort_keys=True, default=_plain) + "\n"
        atomic_write(Path(out_dir) / "tables" / f"{name}{PARAMS_SUFFIX}",
                     lambda tmp: Path(tmp).write_text(text))
    return atomic_write(Path(out_dir) / "tables" / f"{name}.csv",
                        lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))


def read_table(out_dir: str | Path, name: str) -> pd.DataFrame:
    """A table written by ``write_table``; empty text cells (e.g. no sides) stay ''; its
    recorded parameters, if any, in ``attrs["params"]``. A table with no rows comes back
    with its columns (none for one written without any)."""
    path = Path(out_dir) / "tables" / f"{name}.csv"
    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:  # a table without columns (nothing found): empty
        header = None
    if header is None:
        df = pd.DataFrame()
    else:
        df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS if c in header},
                         keep_default_na=False, na_values={c: ["", "nan"] for c in header
                                                           if c not in TEXT_COLUMNS})
    if df.empty:  # no row to infer types from: numbers are floats, as with NaN
        df = df.astype({c: float for c in df.columns if c not in TEXT_COLUMNS})
    params = table_params(out_dir, name)
    if params is not None:
        df.attrs["params"] = params
    return df


def table_params(out_dir: str | Path, name: str) -> dict | None:
    """The parameters ``name`` was made with, or None when none were recorded."""
    import json

    path = Path(out_dir) / "tables" / f"{name}{PARAMS_SUFFIX}"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def table_mismatches(out_dir: str | Path, name: str, expected: dict) -> list[str]:
    """How table ``name`` differs from ``expected`` parameters, one phrase per difference
    (empty when it matches): 'tau 3 (this run: 2)', 'no table', 'no recorded parameters'.
    A list parameter (``models``) matches when the table holds every expected entry."""
    if not (Path(out_dir) / "tables" / f"{name}.csv").exists():
        return ["no table"]
    made = table_params(out_dir, name)
    if made is None:
        return ["no recorded parameters"]
    out = []
    for k, want in expected.items():
        have = made.get(k)
        if isinstance(want, (list, tuple)):
            missing = [v for v in want if v not in (have or [])]
            if missing:
                out.append(f"{k} without {', '.join(map(str, missing))}")
        elif _plain_json(have) != _plain_json(want):
            out.append(f"{k} {have} (this run: {want})")
    return out


def _plain_json(v):
    import json

    return json.loads(json.dumps(v, default=_plain))


def save_figure(fig, out_dir: str | Path, name: str) -> Path:
    """``out_dir/figures/name.png``, written atomically."""
    return atomic_write(Path(out_dir) / "figures" / f"{name}.png",
                        lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                                metadata={"Software": None}))


def show_figure(fig, out_dir: str | Path, name: str) -> None:
    """Save ``fig`` as ``out_dir/figures/name.png`` and show it once, inline, where the
    notebook discusses it (in a terminal, with no display, only the file is written).

    What is shown is the saved file itself (its PNG bytes), so the rendered notebook and
    the static site show exactly ``figures/name.png``. The figure is closed after it is
    shown, so Jupyter's inline backend does not show it a second time at the end of the
    cell; returns None, so a cell ending with this call prints nothing else.
    """
    import matplotlib.pyplot as plt

    path = save_figure(fig, out_dir, name)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Image(data=Path(path).read_bytes(), format="png"))
    plt.close(fig)


def record_claims(out_dir: str | Path, chapter: str, claims: dict) -> None:
    """Merge ``claims`` (name -> number, string or list) under ``chapter`` into
    ``out_dir/claims.json``, atomically: the key numbers each notebook prints, kept
    machine-readable so the tests and the README can be checked against them. Returns
    None, so a notebook cell ending with this call prints nothing."""
    import json

    path = Path(out_dir) / "claims.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[chapter] = json.loads(json.dumps(claims, default=_plain))
    text = json.dumps(dict(sorted(data.items())), indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def record_timings(out_dir: str | Path, name: str, timings: dict) -> Path:
    """Merge ``timings`` under ``name`` into ``out_dir/.timings.json``: how long things
    took, kept out of the tables; the runner copies them into the notebook's manifest
    entry (``timings``)."""
    import json

    path = Path(out_dir) / TIMINGS_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = json.loads(json.dumps(timings, default=_plain))
    text = json.dumps(dict(sorted(data.items())), indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_claims(out_dir: str | Path) -> dict:
    """``out_dir/claims.json`` as a dict ({} when no notebook has recorded any)."""
    import json

    path = Path(out_dir) / "claims.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _plain(v):
    """numpy scalars and arrays as plain JSON values."""
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else (
        v.tolist() if hasattr(v, "tolist") else str(v))

"""Tables and figures of a run, written atomically under ``out_dir`` (``tables/*.csv``,
``figures/*.png``) and read back with their text columns intact."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..engine.io import atomic_write

TEXT_COLUMNS = ("model", "weights", "layer", "sides", "corners", "polarity", "type", "side",
                "condition", "mode", "policy", "task", "class_name")


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str) -> Path:
    """``out_dir/tables/name.csv``, written atomically; floats rounded for stable diffs."""
    return atomic_write(Path(out_dir) / "tables" / f"{name}.csv",
                        lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))


def read_table(out_dir: str | Path, name: str) -> pd.DataFrame:
    """A table written by ``write_table``; empty text cells (e.g. no sides) stay ''."""
    path = Path(out_dir) / "tables" / f"{name}.csv"
    header = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS if c in header},
                       keep_default_na=False, na_values={c: ["", "nan"] for c in header
                                                         if c not in TEXT_COLUMNS})


def save_figure(fig, out_dir: str | Path, name: str) -> Path:
    """``out_dir/figures/name.png``, written atomically."""
    return atomic_write(Path(out_dir) / "figures" / f"{name}.png",
                        lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                                metadata={"Software": None}))

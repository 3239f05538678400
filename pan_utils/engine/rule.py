"""The decision rule: which (channel, side) pairs are significant and which channels are
PANs, from a score table (docs/METHOD.md §4)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .geometry import CORNERS, REGIONS, SIDES, side_column
from .types import pan_type

NULL_MODE = "circular"


def decide_pans(scores: pd.DataFrame, *, tau: float = 3.0, consistency: float = 0.95,
                null_mode: str | None = NULL_MODE, mode: str = "native") -> pd.DataFrame:
    """The decision rule of docs/METHOD.md §4 on a score table: one row per PAN.

    A (channel, side) is significant when |d| >= tau, consistency >= q and, when the table
    holds the null mode, |d_null| < tau. A channel with any significant side or corner is a
    PAN.

    Args:
        scores: a ``scan`` table.
        tau: threshold on |d|.
        consistency: q, the smallest consistency.
        null_mode: the mode whose contrast disqualifies a side; None for no null.
        mode: the mode judged. ``mode='circular', null_mode=None`` counts what the circular
            null itself would call PANs.

    Returns:
        One row per PAN, by order and channel: layer, order, depth, channel, sides,
        corners, polarity, type, score (the largest significant |d|), d_top, d_bottom,
        d_left, d_right, consistency (the smallest over its significant regions).

    Example:
        >>> pans = decide_pans(scores, tau=3.0, consistency=0.95)
        >>> pans["type"].value_counts()
    """
    sig = significant_regions(scores, tau=tau, consistency=consistency, null_mode=null_mode,
                              mode=mode)
    keys = ["layer", "order", "depth", "channel"]
    cols = keys + ["sides", "corners", "polarity", "type", "score",
                   *(side_column("d", side) for side in SIDES), "consistency"]
    if not sig["significant"].any():
        return pd.DataFrame(columns=cols)
    # One row per channel, one column per region (sides then corners).
    wide = sig.set_index(keys + ["side"])[["d", "significant", "consistency"]].unstack("side")
    flags = wide["significant"].reindex(columns=list(REGIONS)).fillna(False).astype(bool)
    is_pan = flags.any(axis=1).to_numpy()
    present = flags.to_numpy()[is_pan]
    d_all = wide["d"].reindex(columns=list(REGIONS))[is_pan]
    d_sig = d_all.where(present).to_numpy()  # d where significant, else nan
    pans = d_all.index.to_frame(index=False)
    pans["channel"] = pans["channel"].astype(int)
    pans["sides"] = ["".join(s for s, p in zip(SIDES, row) if p) for row in present[:, :4]]
    pans["corners"] = [",".join(c for c, p in zip(CORNERS, row) if p) for row in present[:, 4:]]
    pos, neg, n = (d_sig > 0).sum(1), (d_sig < 0).sum(1), present.sum(1)
    pans["polarity"] = np.where(pos == n, "+", np.where(neg == n, "-", "mixed"))
    pans["type"] = [pan_type(sd, cn) for sd, cn in zip(pans["sides"], pans["corners"])]
    pans["score"] = np.nanmax(np.abs(d_sig), axis=1)
    for side in SIDES:
        pans[side_column("d", side)] = d_all[side].to_numpy(dtype=float)
    consistency_all = wide["consistency"].reindex(columns=list(REGIONS))[is_pan]
    pans["consistency"] = consistency_all.where(present).min(axis=1).to_numpy(dtype=float)
    return pans[cols].sort_values(["order", "channel"], ignore_index=True)


def significant_regions(scores: pd.DataFrame, *, tau: float = 3.0, consistency: float = 0.95,
                        null_mode: str | None = NULL_MODE, mode: str = "native"
                        ) -> pd.DataFrame:
    """The rule of ``decide_pans`` per (channel, region), before grouping into PANs.

    What the sensitivity curves count (docs/METHOD.md §4-5).

    Args:
        scores: a ``scan`` table.
        tau, consistency, null_mode, mode: as for ``decide_pans``.

    Returns:
        The rows of ``mode`` with ``d_null`` (NaN where there is no null band, which
        passes) and a boolean ``significant`` column.

    Example:
        >>> sig = significant_regions(scores, tau=3.0)
        >>> sig.groupby("side")["significant"].sum()
    """
    native = scores[scores["mode"] == mode].copy()
    keys = ["layer", "channel", "side"]
    if null_mode is not None and (scores["mode"] == null_mode).any():
        nulls = scores.loc[scores["mode"] == null_mode, keys + ["d"]].rename(
            columns={"d": "d_null"})
        native = native.merge(nulls, on=keys, how="left")
        null_ok = ~(native["d_null"].abs() >= tau)  # nan (no null band) passes
    else:
        native["d_null"] = np.nan
        null_ok = True
    native["significant"] = (native["applicable"] & (native["d"].abs() >= tau)
                             & (native["consistency"] >= consistency) & null_ok)
    return native


def pan_counts_by_tau(scores: pd.DataFrame, taus: Iterable[float], *,
                      consistency: float = 0.95, null_mode: str | None = NULL_MODE,
                      mode: str = "native") -> pd.DataFrame:
    """PAN count per threshold: the sensitivity curve of docs/METHOD.md §5.

    Args:
        scores: a ``scan`` table.
        taus: thresholds on |d|.
        consistency, null_mode, mode: as for ``decide_pans``.

    Returns:
        One row per threshold: tau, pans.

    Example:
        >>> pan_counts_by_tau(scores, range(1, 11))
    """
    rows = []
    for tau in taus:
        sig = significant_regions(scores, tau=tau, consistency=consistency,
                                  null_mode=null_mode, mode=mode)
        n = sig.loc[sig["significant"], ["layer", "channel"]].drop_duplicates().shape[0]
        rows.append({"tau": float(tau), "pans": n})
    return pd.DataFrame(rows)

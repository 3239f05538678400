"""The decision rule: which (channel, side) pairs are significant and which channels are
PANs, from a score table (docs/METHOD.md §4)."""

from __future__ import annotations

from dataclasses import dataclass
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

    Every threshold is read off one ``count_curve`` (no pass over the table per tau).

    Args:
        scores: a ``scan`` table.
        taus: thresholds on |d|.
        consistency, null_mode, mode: as for ``decide_pans``.

    Returns:
        One row per threshold: tau, pans.

    Example:
        >>> pan_counts_by_tau(scores, range(1, 11))
    """
    curve = count_curve(scores, consistency=consistency, null_mode=null_mode, mode=mode)
    return pd.DataFrame([{"tau": float(t), "pans": int(curve.counts(t)[0])} for t in taus])


# --------------------------------------------------------------------------- count curves
# A region is significant at tau exactly when tau lies in (|d_null|, |d|] (and its
# consistency reaches q): the rule is an interval in tau. A channel is a PAN when tau lies
# in the union of its regions' intervals, so a PAN count is a step function of tau that
# is computed once and read at any threshold.


def significance_intervals(abs_d: np.ndarray, cons: np.ndarray, abs_d_null: np.ndarray | None,
                           consistency: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per region: significant at tau iff lo < tau <= hi; hi is NaN where never.

    lo is |d_null| (0 where there is no null band, which passes), hi is |d| where the
    consistency reaches q."""
    lo = np.zeros_like(abs_d) if abs_d_null is None else np.nan_to_num(abs_d_null, nan=0.0)
    ok = (cons >= consistency) & (abs_d > lo)  # NaN compares False
    return lo, np.where(ok, abs_d, np.nan)


def merge_intervals(lo: np.ndarray, hi: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The disjoint union of each row's intervals (lo, hi] (a NaN hi is no interval).

    Args:
        lo, hi: (M, K) arrays, K intervals per row.

    Returns:
        (seg_lo, seg_hi, row): one entry per merged segment.
    """
    valid = ~np.isnan(hi)
    lo = np.where(valid, lo, np.inf)
    hi = np.where(valid, hi, np.inf)
    order = np.argsort(lo, axis=1, kind="stable")
    lo, hi = np.take_along_axis(lo, order, 1), np.take_along_axis(hi, order, 1)
    rows = np.arange(lo.shape[0])
    cur_lo, cur_hi = lo[:, 0].copy(), hi[:, 0].copy()
    out_lo, out_hi, out_row = [], [], []
    for k in range(1, lo.shape[1]):
        has = np.isfinite(hi[:, k])
        new = has & (lo[:, k] > cur_hi)  # disjoint from the current segment: close it
        out_lo.append(cur_lo[new])
        out_hi.append(cur_hi[new])
        out_row.append(rows[new])
        cur_lo = np.where(new, lo[:, k], cur_lo)
        cur_hi = np.where(new, hi[:, k], np.where(has, np.maximum(cur_hi, hi[:, k]), cur_hi))
    last = np.isfinite(cur_hi)
    out_lo.append(cur_lo[last])
    out_hi.append(cur_hi[last])
    out_row.append(rows[last])
    return np.concatenate(out_lo), np.concatenate(out_hi), np.concatenate(out_row)


@dataclass
class CountCurve:
    """PAN counts as step functions of tau, one per group (a weighting of the images, or
    the whole table), exact for tau >= ``floor``.

    Each merged segment (lo, hi] belongs to one group and one item (a channel); a channel
    is a PAN of its group at tau when one of its segments holds tau.
    """

    lo: np.ndarray
    hi: np.ndarray
    group: np.ndarray
    item: np.ndarray
    n_groups: int
    floor: float = 0.0

    def _holding(self, tau: float) -> np.ndarray:
        if tau < self.floor:
            raise ValueError(f"this count curve is exact for tau >= {self.floor:g}; got {tau}")
        return (self.lo < tau) & (tau <= self.hi)

    def counts(self, tau: float) -> np.ndarray:
        """(n_groups,) PAN counts at tau."""
        return np.bincount(self.group[self._holding(tau)], minlength=self.n_groups)

    def members(self, tau: float, group: int = 0) -> np.ndarray:
        """The sorted items (channel indices) that are PANs of ``group`` at tau."""
        hold = self._holding(tau) & (self.group == group)
        return np.unique(self.item[hold])

    @classmethod
    def from_intervals(cls, lo: np.ndarray, hi: np.ndarray, group: np.ndarray,
                       item: np.ndarray, n_groups: int, floor: float = 0.0) -> CountCurve:
        """From (M, K) region intervals of M (group, item) rows; intervals ending below
        ``floor`` are dropped (they cannot hold a tau >= floor)."""
        hi = np.where(hi >= floor, hi, np.nan)
        keep = ~np.isnan(hi).all(1)
        seg_lo, seg_hi, row = merge_intervals(lo[keep], hi[keep])
        return cls(seg_lo, seg_hi, group[keep][row], item[keep][row], n_groups, floor)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"lo": self.lo, "hi": self.hi, "group": self.group, "item": self.item,
                "n_groups": np.array(self.n_groups), "floor": np.array(self.floor)}

    @classmethod
    def from_arrays(cls, a) -> CountCurve:
        return cls(a["lo"], a["hi"], a["group"], a["item"], int(a["n_groups"]),
                   float(a["floor"]))


def count_curve(scores: pd.DataFrame, *, consistency: float = 0.95,
                null_mode: str | None = NULL_MODE, mode: str = "native") -> CountCurve:
    """The PAN count of a score table as a function of tau (one group; items are the
    table's channels in (order, channel) order)."""
    native = scores[scores["mode"] == mode]
    keys = ["layer", "channel", "side"]
    null = None
    if null_mode is not None and (scores["mode"] == null_mode).any():
        nulls = scores.loc[scores["mode"] == null_mode, keys + ["d"]].rename(
            columns={"d": "d_null"})
        native = native.merge(nulls, on=keys, how="left")
        null = native["d_null"].abs().to_numpy(dtype=float)
    abs_d = np.where(native["applicable"].to_numpy(bool),
                     native["d"].abs().to_numpy(dtype=float), np.nan)
    lo, hi = significance_intervals(abs_d, native["consistency"].to_numpy(dtype=float),
                                    null, consistency)
    if not len(native):
        return CountCurve(*(np.zeros(0) for _ in range(2)),
                          *(np.zeros(0, dtype=np.int64) for _ in range(2)), 1)
    # channels by (order, channel): integer codes, no string keys
    code = (native["order"].to_numpy(np.int64) << 32) + native["channel"].to_numpy(np.int64)
    uniq, item = np.unique(code, return_inverse=True)
    region = pd.Categorical(native["side"], categories=list(REGIONS)).codes
    lo_m = np.zeros((len(uniq), len(REGIONS)))
    hi_m = np.full((len(uniq), len(REGIONS)), np.nan)
    lo_m[item, region], hi_m[item, region] = lo, hi
    return CountCurve.from_intervals(lo_m, hi_m, np.zeros(len(uniq), dtype=np.int64),
                                     np.arange(len(uniq)), 1)

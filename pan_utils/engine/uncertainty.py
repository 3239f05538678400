"""How much a PAN count and a PAN set depend on the probe images (docs/METHOD.md §5.3).

The rule of ``engine.rule`` is re-applied to weighted images: a bootstrap resample is a
weighting by how often each image was drawn, and a half of the probe set is a weighting
of ones and zeros. Weighted sums of the per-image statistics that ``scan(...,
per_image=True)`` keeps give each weighting's d, consistency and null in one matrix
product per layer, with no further forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .rule import NULL_MODE, CountCurve, significance_intervals
from .scan import LayerImages, PerImageStats


def _signs(layer: LayerImages, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(t > 0, t < 0) as (N, K·C) float matrices, made once per layer and mode: the
    bootstrap multiplies them by every chunk of weights."""
    key, cache = ("signs", mode), layer.cache
    if key not in cache:
        t = layer.t[mode]
        flat = t.reshape(t.shape[0], -1)
        cache[key] = ((flat > 0).astype(np.float64), (flat < 0).astype(np.float64))
    return cache[key]


def _region_scores(layer: LayerImages, mode: str, w: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(|d|, consistency), each (B, K, C), of every region under weights w (B, N): the
    quantities the rule thresholds, before any threshold."""
    t, s1, s2 = layer.t[mode], layer.s1[mode], layer.s2[mode]
    n, k, c = t.shape
    total = w.sum(1)  # (B,)
    mean_t = (w @ t.reshape(n, k * c)).reshape(-1, k, c) / total[:, None, None]
    n_pos = total * layer.n_interior
    mean_int = (w @ s1) / n_pos[:, None]
    var = (w @ s2) / n_pos[:, None] - mean_int ** 2
    sigma = np.sqrt(np.clip(var, 0, None))
    degenerate = sigma <= 1e-6 * (np.abs(mean_int) + 1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = mean_t / np.where(degenerate, np.nan, sigma)[:, None, :] * layer.sign
    above, below = _signs(layer, mode)
    pos = (w @ above).reshape(-1, k, c)
    neg = (w @ below).reshape(-1, k, c)
    cons = np.where(mean_t > 0, pos, np.where(mean_t < 0, neg, 0)) / total[:, None, None]
    return np.abs(d), cons


def _significant(layer: LayerImages, mode: str, w: np.ndarray, tau: float, consistency: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(|d| >= tau and consistency >= q, |d| >= tau), each (B, K, C), under weights w (B, N)."""
    absd, cons = _region_scores(layer, mode, w)
    strong = absd >= tau  # nan compares False
    return strong & (cons >= consistency), strong


def resampled_pans(stats: PerImageStats, weights: np.ndarray, *, tau: float = 3.0,
                   consistency: float = 0.95, null: bool = True
                   ) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Which channels are PANs under each weighting of the images.

    Args:
        stats: from ``scan(model, images, null=True, per_image=True)``.
        weights: (B, N) non-negative weights of the N probe images, one row per weighting.
        tau, consistency: the rule's thresholds (docs/METHOD.md §4).
        null: apply the circular null (needs the null's statistics in ``stats``).

    Returns:
        A (B, number of scanned channels) boolean matrix and the (layer, channel) of each
        column.

    Example:
        >>> _, stats = scan(model, images, null=True, per_image=True)
        >>> is_pan, keys = resampled_pans(stats, np.ones((1, stats.n_images)))
        >>> int(is_pan.sum())  # the count of find_pans on the same images
    """
    w = np.asarray(weights, dtype=np.float64)
    cols, keys = [], []
    for layer in stats.layers:
        sig, _ = _significant(layer, "native", w, tau, consistency)
        if null and NULL_MODE in layer.t:
            _, null_strong = _significant(layer, NULL_MODE, w, tau, consistency)
            sig &= ~null_strong
        cols.append(sig.any(1))  # (B, C): any significant region
        keys += [(layer.layer, c) for c in range(sig.shape[2])]
    return np.concatenate(cols, axis=1), keys


def bootstrap_counts(stats: PerImageStats, *, n_boot: int = 200, seed: int = 0,
                     tau: float = 3.0, consistency: float = 0.95, null: bool = True,
                     chunk: int = 25) -> np.ndarray:
    """PAN counts of ``n_boot`` bootstrap resamples of the probe images (drawn with
    replacement, seeded), for a percentile interval of the count."""
    w_all = bootstrap_weights(stats.n_images, n_boot, seed)
    counts = []
    for start in range(0, n_boot, chunk):
        is_pan, _ = resampled_pans(stats, w_all[start:start + chunk], tau=tau,
                                   consistency=consistency, null=null)
        counts.append(is_pan.sum(1))
    return np.concatenate(counts)


def split_half_stability(stats: PerImageStats, *, tau: float = 3.0,
                         consistency: float = 0.95, null: bool = True) -> dict:
    """PANs found on the first and on the second half of the probe images (disjoint sets),
    and the Jaccard index of the two PAN sets (nan when both are empty)."""
    is_pan, _ = resampled_pans(stats, half_weights(stats.n_images), tau=tau, consistency=consistency, null=null)
    a, b = is_pan
    union = int((a | b).sum())
    return {"half_a_pans": int(a.sum()), "half_b_pans": int(b.sum()),
            "both_halves": int((a & b).sum()),
            "jaccard": float((a & b).sum() / union) if union else float("nan")}


def count_uncertainty(stats: PerImageStats, *, n_boot: int = 200, seed: int = 0,
                      tau: float = 3.0, consistency: float = 0.95, level: float = 0.95
                      ) -> pd.DataFrame:
    """One row: the point count, the bootstrap percentile interval at ``level``, and the
    split-half stability, for one scanned model."""
    curves = uncertainty_curves(stats, n_boot=n_boot, seed=seed, consistency=consistency,
                                floor=min(TAU_FLOOR, tau))
    return curves.summary(tau, level=level)


# --------------------------------------------------------------------------- count curves
# The resampled d and consistency do not depend on tau: each weighting's PAN count is a
# step function of tau (engine.rule.CountCurve), made once from the per-image statistics
# and read at any threshold, so a new tau re-decides the intervals without resampling.

TAU_FLOOR = 1.0  # count curves are kept exact for tau >= this (lower taus rebuild them)


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) draw counts of the bootstrap resamples, seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])


def half_weights(n: int) -> np.ndarray:
    """(2, n): the first and the second half of the probe images."""
    w = np.zeros((2, n))
    w[0, : n // 2] = 1
    w[1, n // 2:] = 1
    return w


def weighted_curve(stats: PerImageStats, weights: np.ndarray, *, consistency: float = 0.95,
                   null: bool = True, floor: float = TAU_FLOOR, chunk: int = 25) -> CountCurve:
    """Each weighting's PAN count as a function of tau (items: channels in layer order)."""
    w_all = np.asarray(weights, dtype=np.float64)
    parts: list[CountCurve] = []
    for start in range(0, len(w_all), chunk):
        w = w_all[start:start + chunk]
        offset = 0
        for layer in stats.layers:
            abs_d, cons = _region_scores(layer, "native", w)
            abs_null = (_region_scores(layer, NULL_MODE, w)[0]
                        if null and NULL_MODE in layer.t else None)
            lo, hi = significance_intervals(abs_d, cons, abs_null, consistency)
            b, k, c = lo.shape  # rows (weighting, channel), K intervals each
            parts.append(CountCurve.from_intervals(
                lo.transpose(0, 2, 1).reshape(b * c, k), hi.transpose(0, 2, 1).reshape(b * c, k),
                np.repeat(np.arange(start, start + b), c), np.tile(np.arange(c) + offset, b),
                len(w_all), floor))
            offset += c
    return CountCurve(*(np.concatenate([getattr(p, f) for p in parts]) if parts else
                        np.zeros(0) for f in ("lo", "hi", "group", "item")),
                      len(w_all), floor)


@dataclass
class UncertaintyCurves:
    """The point count, the bootstrap counts and the two halves' PAN sets of one scan, as
    functions of tau (one consistency q, one resampling seed)."""

    point: CountCurve
    boot: CountCurve
    halves: CountCurve
    n_boot: int
    seed: int
    consistency: float

    def summary(self, tau: float, level: float = 0.95) -> pd.DataFrame:
        """``count_uncertainty``'s row at ``tau``."""
        boots = self.boot.counts(tau)
        lo, hi = np.percentile(boots, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
        a, b = self.halves.members(tau, 0), self.halves.members(tau, 1)
        both, union = len(np.intersect1d(a, b)), len(np.union1d(a, b))
        return pd.DataFrame([{"pans": int(self.point.counts(tau)[0]),
                              "pans_boot_mean": float(boots.mean()),
                              "pans_ci_low": float(lo), "pans_ci_high": float(hi),
                              "ci_level": level, "n_boot": self.n_boot,
                              "half_a_pans": len(a), "half_b_pans": len(b), "both_halves": both,
                              "jaccard": both / union if union else float("nan")}])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"n_boot": np.array(self.n_boot), "seed": np.array(self.seed),
               "consistency": np.array(self.consistency)}
        for name in ("point", "boot", "halves"):
            out.update({f"{name}.{k}": v for k, v in getattr(self, name).arrays().items()})
        return out

    @classmethod
    def from_arrays(cls, a) -> UncertaintyCurves:
        curves = {name: CountCurve.from_arrays({k.split(".", 1)[1]: a[k] for k in a
                                                if k.startswith(name + ".")})
                  for name in ("point", "boot", "halves")}
        return cls(**curves, n_boot=int(a["n_boot"]), seed=int(a["seed"]),
                   consistency=float(a["consistency"]))


def uncertainty_curves(stats: PerImageStats, *, n_boot: int = 200, seed: int = 0,
                       consistency: float = 0.95, floor: float = TAU_FLOOR
                       ) -> UncertaintyCurves:
    """Everything ``count_uncertainty`` needs, for every tau >= ``floor`` at once."""
    n = stats.n_images
    kw = dict(consistency=consistency, floor=floor)
    return UncertaintyCurves(weighted_curve(stats, np.ones((1, n)), **kw),
                             weighted_curve(stats, bootstrap_weights(n, n_boot, seed), **kw),
                             weighted_curve(stats, half_weights(n), **kw), n_boot, seed,
                             consistency)

"""How much a PAN count and a PAN set depend on the probe images (docs/METHOD.md §5.3).

The rule of ``engine.rule`` is re-applied to weighted images: a bootstrap resample is a
weighting by how often each image was drawn, and a half of the probe set is a weighting
of ones and zeros. Weighted sums of the per-image statistics that ``scan(...,
per_image=True)`` keeps give each weighting's d, consistency and null in one matrix
product per layer, with no further forward pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .scan import LayerImages, PerImageStats

NULL_MODE = "circular"


def _signs(layer: LayerImages, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(t > 0, t < 0) as (N, K·C) float matrices, made once per layer and mode: the
    bootstrap multiplies them by every chunk of weights."""
    key, cache = ("signs", mode), layer.cache
    if key not in cache:
        t = layer.t[mode]
        flat = t.reshape(t.shape[0], -1)
        cache[key] = ((flat > 0).astype(np.float64), (flat < 0).astype(np.float64))
    return cache[key]


def _significant(layer: LayerImages, mode: str, w: np.ndarray, tau: float, consistency: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(|d| >= tau and consistency >= q, |d| >= tau), each (B, K, C), under weights w (B, N)."""
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
    strong = np.abs(d) >= tau  # nan compares False
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
    rng = np.random.default_rng(seed)
    n = stats.n_images
    counts = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)])
        is_pan, _ = resampled_pans(stats, w, tau=tau, consistency=consistency, null=null)
        counts.append(is_pan.sum(1))
    return np.concatenate(counts)


def split_half_stability(stats: PerImageStats, *, tau: float = 3.0,
                         consistency: float = 0.95, null: bool = True) -> dict:
    """PANs found on the first and on the second half of the probe images (disjoint sets),
    and the Jaccard index of the two PAN sets (nan when both are empty)."""
    n = stats.n_images
    w = np.zeros((2, n))
    w[0, : n // 2] = 1
    w[1, n // 2:] = 1
    is_pan, _ = resampled_pans(stats, w, tau=tau, consistency=consistency, null=null)
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
    point, _ = resampled_pans(stats, np.ones((1, stats.n_images)), tau=tau,
                              consistency=consistency)
    boots = bootstrap_counts(stats, n_boot=n_boot, seed=seed, tau=tau, consistency=consistency)
    lo, hi = np.percentile(boots, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return pd.DataFrame([{"pans": int(point.sum()), "pans_boot_mean": float(boots.mean()),
                          "pans_ci_low": float(lo), "pans_ci_high": float(hi),
                          "ci_level": level, "n_boot": n_boot,
                          **split_half_stability(stats, tau=tau, consistency=consistency)}])

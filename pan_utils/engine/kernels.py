"""A compiled CPU reduction for the scan: each feature map read once.

A scan should cost about one plain forward pass. PyTorch needs several passes over a map
(and a dozen small ops) to get per-image band sums, interior sums and interior sums of
squares; this numba kernel reads a channels-last float32 map once and accumulates in
float64. Numba is optional at run time: without it, and on GPU, other dtypes or layouts,
the scan uses its PyTorch path (``pan_utils.engine.scan``), which the tests hold it equal to.
Compiled code is cached on disk (``cache=True``), so only the first call ever compiles.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=None)
def _compiled():
    """The jitted kernel, or None where numba cannot be imported."""
    try:
        from numba import njit, prange
    except ImportError:  # pragma: no cover - numba is pinned in requirements.txt
        return None

    @njit(parallel=True, cache=True, nogil=True)
    def border_stats(m, rows, counts, n_int, sum_t, n_sign, n_nonzero, s1, s2,
                     t_img, s1_img, s2_img):  # pragma: no cover
        # m: (N, P, C) float32, one row of C values per position (channels-last).
        # rows: (P,) accumulator row (band region) of each position, -1 for the interior.
        n, p, c = m.shape
        k_rows = counts.shape[0]
        band = np.zeros((n, k_rows, c))
        inner = np.zeros((n, c))
        inner_sq = np.zeros((n, c))
        for i in prange(n):  # images in parallel; each image's sums in position order
            b, s, q = band[i], inner[i], inner_sq[i]
            for j in range(p):
                v = m[i, j]
                r = rows[j]
                if r < 0:
                    for k in range(c):
                        x = np.float64(v[k])
                        s[k] += x
                        q[k] += x * x
                else:
                    br = b[r]
                    for k in range(c):
                        br[k] += v[k]
        keep = t_img.shape[0] > 0  # per-image outputs wanted (the bootstrap)
        for k in prange(c):  # channels in parallel; images in order: deterministic
            for i in range(n):
                s1[k] += inner[i, k]
                s2[k] += inner_sq[i, k]
                mean_int = inner[i, k] / n_int
                if keep:
                    s1_img[i, k] = inner[i, k]
                    s2_img[i, k] = inner_sq[i, k]
                for r in range(k_rows):
                    t = band[i, r, k] / counts[r] - mean_int
                    if keep:
                        t_img[i, r, k] = t
                    sum_t[r, k] += t
                    if t > 0:
                        n_sign[r, k] += 1.0
                        n_nonzero[r, k] += 1.0
                    elif t < 0:
                        n_sign[r, k] -= 1.0
                        n_nonzero[r, k] += 1.0

    return border_stats


def available() -> bool:
    return _compiled() is not None


def applies_to(y: torch.Tensor) -> bool:
    """A map the kernel reads: CPU, float32, channels-last contiguous."""
    return (y.device.type == "cpu" and y.dtype == torch.float32 and y.dim() == 4
            and y.is_contiguous(memory_format=torch.channels_last) and available())


def accumulate_border_stats(y: torch.Tensor, rows: np.ndarray, counts: np.ndarray, n_int: int,
                            sum_t: torch.Tensor, n_sign: torch.Tensor,
                            n_nonzero: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
                            per_image: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Add one batch of maps ``y`` (N×C×H×W) to the scan's float64 CPU accumulators, in place.

    ``rows[p]``: accumulator row of flat position p (row-major over H×W), -1 for the
    interior; ``counts``: positions per row. Per image and row, t = band mean - interior
    mean is added to ``sum_t`` and its sign to ``n_sign``/``n_nonzero``; interior sums and
    sums of squares go to ``s1``/``s2``.
    """
    import numba

    n, c = y.shape[:2]
    m = y.permute(0, 2, 3, 1).reshape(n, -1, c).numpy()  # a view, no copy
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    k = counts.shape[0]
    shape = (n, k, c) if per_image else (0, k, c)
    t_img = np.zeros(shape)
    s1_img, s2_img = np.zeros(shape[:1] + (c,)), np.zeros(shape[:1] + (c,))
    _compiled()(m, rows, counts, float(n_int), sum_t.numpy(), n_sign.numpy(),
                n_nonzero.numpy(), s1.numpy(), s2.numpy(), t_img, s1_img, s2_img)
    if per_image:
        return torch.from_numpy(t_img), torch.from_numpy(s1_img), torch.from_numpy(s2_img)
    return None

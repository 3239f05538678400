"""Score every candidate channel's border contrast, and find the PANs (docs/METHOD.md §3-4).

Forward hooks reduce each conv output to a few numbers per image and channel (band sums
and interior sums), accumulated in float64 as running sums on the model's device: no
feature map outlives its hook, so memory does not grow with the number of images, and
nothing is copied to the host until the end. On CPU a compiled kernel
(``pan_utils.engine.kernels``) does this in one read of each map; elsewhere PyTorch ops do.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .geometry import REGIONS
from .hooks import eval_mode, hooks
from .padding import ConvSite, discover, discovering
from .policy import padding_policy
from .probes import iter_batches
from .progress import image_count, progress_bar
from .rule import NULL_MODE, decide_pans
from .state import device_of


MIN_IMAGES = 8  # find_pans: the consistency of a side over fewer images is noise


class ScanError(ValueError):
    """A scan that cannot run (no candidate layer, probe too small, mixed sizes).

    Example:
        >>> try:
        ...     find_pans(model, images, tau=0)
        ... except ScanError as err:
        ...     print(err)
        tau must be a positive number; got 0
    """


def check_finite_weights(model: nn.Module) -> None:
    """Refuse NaN/inf weights: every statistic of the scan would be NaN, and no PAN found
    would look like a plausible result."""
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ScanError(f"weights {name} hold NaN or inf values; refusing to scan")


def _check_finite_outputs(accs: dict[str, dict[nn.Module, _Accumulator]]) -> None:
    """A conv output with NaN/inf leaves a non-finite running sum (checked once, at the
    end: no extra pass over the maps)."""
    for mode, by_module in accs.items():
        for acc in by_module.values():
            sums = [t for t in (acc.s1, acc.s2, acc.sum_t) if t is not None]
            if any(not bool(torch.isfinite(t).all()) for t in sums):
                raise ScanError(f"layer {acc.site.name} produced NaN or inf outputs "
                                f"({mode} padding); refusing to score it")


# Region index (REGIONS order) of an output position by its row band (top, middle,
# bottom) and column band (left, middle, right); -1 is the interior.
_REGION_GRID = torch.tensor([[4, 0, 5], [2, -1, 3], [6, 1, 7]])


@dataclass
class _Accumulator:
    """Running sums for one conv site under one padding mode.

    Only the applicable regions (non-empty bands) are accumulated, in REGIONS order.
    """

    site: ConvSite
    bands: tuple[int, int, int, int] | None = None  # top, bottom, left, right widths
    out_hw: tuple[int, int] | None = None
    region_sizes: tuple[int, ...] = ()  # positions per region, all of REGIONS
    regions: tuple[int, ...] = ()  # indices into REGIONS of the non-empty ones
    n_interior: int = 0  # interior positions per map
    n_images: int = 0
    sum_t: torch.Tensor | None = None  # (K, C) sum over images of band mean - interior mean
    n_sign: torch.Tensor | None = None  # (K, C) images with t > 0 minus images with t < 0
    n_nonzero: torch.Tensor | None = None  # (K, C) images with t != 0
    s1: torch.Tensor | None = None  # (C,) interior sum over images and positions
    s2: torch.Tensor | None = None  # (C,) interior sum of squares
    # For the compiled kernel: accumulator row of each flat (row-major) position, -1 for
    # the interior, and positions per row.
    _rows: np.ndarray | None = None
    _counts: np.ndarray | None = None
    # For the PyTorch path: the border frame (flat positions outside the interior) and the
    # (K+1, F) weights that turn it into every band's mean plus the interior-mean
    # correction (rows 0..K-1) and the frame's sum (row K).
    _frame: torch.Tensor | None = None
    _weights: torch.Tensor | None = None
    # With ``per_image`` (for the bootstrap, engine.uncertainty): per batch, t (N, K, C) and
    # the interior sums and sums of squares (N, C) of every image, in float64 on the CPU.
    per_image: bool = False
    images_t: list = field(default_factory=list)
    images_s1: list = field(default_factory=list)
    images_s2: list = field(default_factory=list)

    def geometry(self, x_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        site = self.site
        in_hw = x_hw
        if site.input_is_padded:
            t, b, l, r = site.pads
            in_hw = (x_hw[0] - t - b, x_hw[1] - l - r)
        if self.out_hw is not None:
            if self.out_hw != out_hw:
                raise ScanError("all probe images of a scan must have the same size "
                                f"(layer {site.name} saw {self.out_hw} and then {out_hw})")
            return
        self.out_hw = (ho, wo) = out_hw
        t, b, l, r = site.band_widths(in_hw, out_hw)
        no_interior = t + b >= ho or l + r >= wo
        if no_interior:
            t = b = l = r = 0  # all border (tiny map): nothing to compare with, not scored
        self.bands = (t, b, l, r)
        self.n_interior = 0 if no_interior else (ho - t - b) * (wo - l - r)
        row = torch.ones(ho, dtype=torch.long)
        row[:t], row[ho - b:] = 0, 2
        col = torch.ones(wo, dtype=torch.long)
        col[:l], col[wo - r:] = 0, 2
        label = _REGION_GRID[row[:, None], col[None, :]].flatten()
        sizes = torch.bincount(label[label >= 0], minlength=len(REGIONS))
        self.region_sizes = tuple(int(v) for v in sizes)
        self.regions = tuple(k for k, v in enumerate(self.region_sizes) if v > 0)
        keep = list(self.regions)
        row_of = torch.full((len(REGIONS) + 1,), -1)  # label -1 indexes the last entry
        row_of[keep] = torch.arange(len(keep))
        self._rows = row_of[label].numpy()
        self._counts = sizes[keep].double().numpy()
        self._frame = (label >= 0).nonzero().flatten()
        member = F.one_hot(label[self._frame], len(REGIONS)).T[keep].double()  # (K, F)
        # t_k = sum_k / n_k - (total - frame sum) / n_int: linear in the frame, except
        # for the total, which update() subtracts.
        self._weights = torch.cat([member / sizes[keep, None] + 1 / max(self.n_interior, 1),
                                   torch.ones(1, len(self._frame), dtype=torch.float64)])

    def update(self, y: torch.Tensor) -> None:
        n, c = y.shape[:2]
        self.n_images += n
        if not self.n_interior:
            return
        if self.sum_t is None:
            z = dict(dtype=torch.float64, device=y.device)
            k = len(self.regions)
            self.sum_t, self.n_sign, self.n_nonzero = (torch.zeros(k, c, **z) for _ in "123")
            self.s1, self.s2 = torch.zeros(c, **z), torch.zeros(c, **z)
        if kernels.applies_to(y):  # CPU: one compiled pass over the map
            per = kernels.accumulate_border_stats(y, self._rows, self._counts, self.n_interior,
                                                  self.sum_t, self.n_sign, self.n_nonzero,
                                                  self.s1, self.s2, self.per_image)
            if per is not None:
                self.images_t.append(per[0])
                self.images_s1.append(per[1])
                self.images_s2.append(per[2])
            return
        # PyTorch (GPU, other dtypes and layouts), in float64 like the kernel: the border
        # frame, a thin strip, is gathered once and reduced to every band by one matmul;
        # the interior is the whole map minus the frame, so no strided view of it is read.
        acc = torch.float64
        if self._frame.device != y.device:
            self._frame, self._weights = self._frame.to(y.device), self._weights.to(y.device)
        if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
            frame = y.permute(0, 2, 3, 1).reshape(n, -1, c).index_select(1, self._frame)
            frame = frame.to(acc)  # N, F, C
            proj = torch.matmul(self._weights, frame)  # N, K+1, C
            ss_img = frame.square().sum(1)  # N, C
        else:
            frame = y.reshape(n, c, -1).index_select(2, self._frame).to(acc)  # N, C, F
            proj = torch.matmul(frame, self._weights.T).transpose(1, 2)  # N, K+1, C
            ss_img = frame.square().sum(2)  # N, C
        total = y.sum(dim=(2, 3), dtype=acc)  # N, C
        tn = proj[:, :-1] - (total / self.n_interior)[:, None]  # N, K, C
        sign = tn.sign()  # counting signs is cheaper than two comparisons
        self.sum_t += tn.sum(0)
        self.n_sign += sign.sum(0)
        self.n_nonzero += sign.abs_().sum(0)
        s1 = total - proj[:, -1]  # N, C: interior sums
        if self.per_image:
            s2 = torch.linalg.vector_norm(y, dim=(2, 3), dtype=acc).square() - ss_img
            self.images_t.append(tn.cpu())
            self.images_s1.append(s1.cpu())
            self.images_s2.append(s2.cpu())
            self.s2 += s2.sum(0)
        else:
            self.s2 += (torch.linalg.vector_norm(y, dim=(0, 2, 3), dtype=acc).square()
                        - ss_img.sum(0))
        self.s1 += s1.sum(0)

    def table(self, mode: str) -> pd.DataFrame:
        site = self.site
        n_ch, n_reg = site.module.out_channels, len(REGIONS)
        sign = site.bn_sign.numpy() if site.bn_sign is not None else np.ones(n_ch)
        mean_t, d, consistency = (np.full((n_ch, n_reg), np.nan) for _ in "123")
        sigma, mean_int = np.full(n_ch, np.nan), np.full(n_ch, np.nan)
        keep = list(self.regions)
        if self.sum_t is not None:
            n_pos_int = self.n_interior * self.n_images
            mean_t[:, keep] = (self.sum_t / self.n_images).T.cpu().numpy()
            mean_int = (self.s1 / n_pos_int).cpu().numpy()
            var = (self.s2 / n_pos_int).cpu().numpy() - mean_int ** 2
            sigma = np.sqrt(np.clip(var, 0, None))
            # A channel constant in the interior has no scale to measure contrast against.
            degenerate = sigma <= 1e-6 * (np.abs(mean_int) + 1e-6)
            with np.errstate(invalid="ignore", divide="ignore"):
                d = mean_t / np.where(degenerate, np.nan, sigma)[:, None] * sign[:, None]
            sg, nz = self.n_sign.T.cpu().numpy(), self.n_nonzero.T.cpu().numpy()
            m = mean_t[:, keep]
            consistency[:, keep] = np.where(m > 0, (nz + sg) / 2,
                                            np.where(m < 0, (nz - sg) / 2, 0)) / self.n_images
        applicable = np.isin(np.arange(n_reg), keep)
        # Region-major rows: all channels of T, then of B, ... (REGIONS order).
        return pd.DataFrame({
            "layer": site.name, "order": site.order, "mode": mode,
            "channel": np.tile(np.arange(n_ch), n_reg),
            "side": np.repeat(REGIONS, n_ch), "applicable": np.repeat(applicable, n_ch),
            "band_positions": np.repeat(self.region_sizes, n_ch),
            "mean_contrast": (mean_t * sign[:, None]).T.ravel(),
            "sigma_interior": np.tile(sigma, n_reg), "mean_interior": np.tile(mean_int, n_reg),
            "d": d.T.ravel(),
            "consistency": consistency.T.ravel(),
            "bn_sign": np.tile(sign.astype(int), n_reg), "n_images": self.n_images,
        })


def scan_hook(accs: dict[nn.Module, _Accumulator],
              found: dict[nn.Module, ConvSite] | None = None, per_image: bool = False):
    """The forward hook that feeds each conv output to its accumulator. With ``found``
    (being filled by ``discovering``), a candidate conv gets its accumulator when first
    called."""

    def hook(mod, inp, out):
        acc = accs.get(mod)
        if acc is None:
            site = found.get(mod) if found is not None else None
            if site is None or not site.is_candidate:
                return
            acc = accs[mod] = _Accumulator(site, per_image=per_image)
        if acc.bands is None or acc.out_hw != tuple(out.shape[-2:]):
            acc.geometry(tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]))
        acc.update(out)

    return hook


def scan(model: nn.Module, images, *, null: bool = False, batch_size: int = 32,
         device: str | torch.device | None = None, progress: bool = True,
         desc: str = "scan", modes: Sequence[str] | None = None,
         channels_last: bool = True, per_image: bool = False):
    """The border contrast of every candidate channel per side and corner (docs/METHOD.md §3).

    The score, before any decision. Each batch is run once per padding mode, so the
    images are read only once, and no feature map outlives its hook, so memory does not
    grow with the number of images.

    Args:
        model: the network.
        images: an N×C×H×W tensor, a probe (``ImageFolderProbe``) or an iterable of
            batches; all of one size.
        null: shorthand for ``modes=('native', 'circular')``.
        batch_size: images per forward pass (tensors and probes).
        device: where to run; must be the model's.
        progress, desc: show a progress bar, and its label.
        modes: padding modes to score, 'native' meaning the model as it is.
        channels_last: feed the batches in that memory format (faster convolutions on
            CPU; the model itself is not changed).
        per_image: also keep every image's statistics (memory then grows with the
            images), for ``engine.uncertainty`` to resample.

    Returns:
        One row per (mode, layer, channel, side/corner). Columns: layer, order, depth,
        mode, channel, side, applicable, band_positions, mean_contrast, sigma_interior,
        mean_interior (the raw conv output's interior mean), d (BatchNorm sign folded in), consistency, bn_sign, n_images. With ``per_image``,
        ``(scores, PerImageStats)``.

    Example:
        >>> scores = scan(model, bundled_images(64), null=True)
        >>> pans = decide_pans(scores, tau=3.0)
    """
    modes = tuple(modes) if modes else (("native", NULL_MODE) if null else ("native",))
    device = torch.device(device) if device is not None else device_of(model)
    if device.type != device_of(model).type:
        raise ScanError(f"the model is on {device_of(model)}, not {device}: move it first "
                        f"(model.to('{device}'))")
    check_finite_weights(model)
    accs: dict[str, dict[nn.Module, _Accumulator]] = {m: {} for m in modes}
    sites: list[ConvSite] | None = None
    bar = progress_bar(total=image_count(images), desc=desc, unit="img", enabled=progress,
                       leave=False)
    try:
        with eval_mode(model), torch.inference_mode():
            for x in iter_batches(images, batch_size):
                x = x.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                todo = modes
                if sites is None:
                    if modes[0] == "native":  # discover the convs on this very forward pass
                        with discovering(model) as found:  # its hooks run before the scan's
                            hook = scan_hook(accs["native"], found, per_image)
                            with hooks([(m, hook) for m in model.modules()
                                        if isinstance(m, nn.Conv2d)]):
                                model(x)
                        sites, todo = [s for s in found.values() if s.is_candidate], modes[1:]
                    else:
                        sites = [s for s in discover(model, tuple(x.shape[-2:]))
                                 if s.is_candidate]
                    if not sites:
                        raise ScanError("the model has no padded convolution with a kernel "
                                        "larger than 1: nothing can detect the border")
                    for mode in todo:
                        accs[mode] = {s.module: _Accumulator(s, per_image=per_image)
                                      for s in sites}
                for mode in todo:
                    policy = nullcontext() if mode == "native" else padding_policy(model, mode)
                    with policy, hooks([(m, scan_hook(accs[mode])) for m in accs[mode]]):
                        model(x)
                bar.update(x.shape[0])
    finally:
        bar.close()
    if sites is None:
        raise ScanError("no probe images were given")
    _check_finite_outputs(accs)
    n = max(len(sites) - 1, 1)
    tables = [acc.table(mode) for mode in modes for acc in accs[mode].values()
              if acc.n_images]
    scores = pd.concat(tables, ignore_index=True)
    # Relative depth among the candidate layers: 0 for the first padded conv, 1 for the last.
    scores.insert(2, "depth", scores["order"].map({s.order: i / n for i, s in enumerate(sites)}))
    if not per_image:
        return scores
    return scores, PerImageStats.from_accumulators(accs)


@dataclass
class LayerImages:
    """One scanned layer's per-image statistics under each padding mode."""

    layer: str
    regions: tuple[int, ...]  # indices into REGIONS of the applicable regions (K)
    n_interior: int
    sign: np.ndarray  # (C,) BatchNorm sign per channel
    t: dict[str, np.ndarray]  # mode -> (N, K, C) band mean - interior mean per image
    s1: dict[str, np.ndarray]  # mode -> (N, C) interior sum per image
    s2: dict[str, np.ndarray]  # mode -> (N, C) interior sum of squares per image
    cache: dict = field(default_factory=dict, repr=False)  # derived matrices (uncertainty)


@dataclass
class PerImageStats:
    """Every image's scan statistics, per layer: the rule can then be re-applied to any
    weighting of the images (bootstrap resamples, halves) without another forward pass."""

    layers: list[LayerImages]
    n_images: int

    @classmethod
    def from_accumulators(cls, accs: dict[str, dict[nn.Module, _Accumulator]]
                          ) -> PerImageStats:
        native = accs["native"]
        layers, n = [], 0
        for mod, acc in native.items():
            if not acc.n_interior or not acc.images_t:
                continue
            n = acc.n_images
            site = acc.site
            sign = (site.bn_sign.numpy() if site.bn_sign is not None
                    else np.ones(site.module.out_channels))
            per_mode = {m: a[mod] for m, a in accs.items() if mod in a and a[mod].images_t}
            layers.append(LayerImages(
                site.name, acc.regions, acc.n_interior, sign,
                {m: torch.cat(a.images_t).numpy() for m, a in per_mode.items()},
                {m: torch.cat(a.images_s1).numpy() for m, a in per_mode.items()},
                {m: torch.cat(a.images_s2).numpy() for m, a in per_mode.items()}))
        return cls(layers, n)


def find_pans(model: nn.Module, images, tau: float = 3.0, consistency: float = 0.95, *,
              null: bool = True, batch_size: int = 32,
              device: str | torch.device | None = None, progress: bool = True,
              return_scores: bool = False, channels_last: bool = True,
              min_images: int = MIN_IMAGES):
    """The PANs of ``model`` on ``images``: ``scan``, then ``decide_pans`` (docs/METHOD.md §3-4).

    Args:
        model: the network.
        images: as for ``scan``.
        tau: threshold on |d| (default 3).
        consistency: q, the smallest fraction of images whose own contrast has the sign of
            the mean (default 0.95).
        null: also run each batch under circular padding and discard the sides that keep
            their contrast there (the null of docs/METHOD.md §5.1; default True).
        return_scores: also return the score table.
        batch_size, device, progress, channels_last: as for ``scan``.
        min_images: fewer images is a ScanError: a consistency over a handful of images
            would pass the rule by chance.

    Returns:
        One row per PAN (the columns of ``decide_pans``); ``(pans, scores)`` with
        ``return_scores=True``.

    Example:
        >>> pans = find_pans(model, bundled_images(64))
        >>> pans[["layer", "channel", "sides", "type"]]
    """
    if not (tau > 0 and math.isfinite(tau)):
        raise ScanError(f"tau must be a positive number; got {tau}")
    if not 0 <= consistency <= 1:
        raise ScanError(f"consistency must be in [0, 1]; got {consistency}")
    scores = scan(model, images, null=null, batch_size=batch_size, device=device,
                  progress=progress, desc="find_pans", channels_last=channels_last)
    n_images = int(scores["n_images"].max()) if len(scores) else 0
    if n_images < min_images:
        raise ScanError(f"only {n_images} probe image(s) were scanned; finding PANs needs at "
                        f"least {min_images}")
    pans = decide_pans(scores, tau=tau, consistency=consistency,
                       null_mode=NULL_MODE if null else None)
    return (pans, scores) if return_scores else pans

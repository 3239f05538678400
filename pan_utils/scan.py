"""Score every candidate channel's border contrast and decide which are PANs (DESIGN 4.3-4.4).

Forward hooks reduce each conv output to a few numbers per image and channel (band sums
and interior sums), accumulated as running sums on the model's device: no feature map
outlives its hook, so memory does not grow with the number of images, and nothing is
copied to the host until the end.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .models import device_of
from .padding import CORNERS, REGIONS, SIDES, ConvSite, discover, padding_policy
from .probes import iter_batches
from .progress import progress_bar
from .taxonomy import pan_type

SIDE_NAMES = {"T": "top", "B": "bottom", "L": "left", "R": "right"}
NULL_MODE = "circular"


class ScanError(ValueError):
    """A scan that cannot run (no candidate layer, probe too small, mixed sizes)."""


@dataclass
class _Accumulator:
    """Running sums for one conv site under one padding mode."""

    site: ConvSite
    bands: tuple[int, int, int, int] | None = None  # top, bottom, left, right widths
    out_hw: tuple[int, int] | None = None
    sum_t: torch.Tensor | None = None  # (C, 8) sum over images of band mean - interior mean
    n_pos: torch.Tensor | None = None  # (C, 8) images with t > 0
    n_neg: torch.Tensor | None = None
    s1: torch.Tensor | None = None  # (C,) interior sum over images and positions
    s2: torch.Tensor | None = None  # (C,) interior sum of squares
    n_images: int = 0
    no_interior: bool = False
    region_sizes: tuple[int, ...] = ()  # positions per region, REGIONS order
    _counts: torch.Tensor | None = None  # the same, as a tensor on the maps' device

    def geometry(self, x_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        site = self.site
        in_hw = x_hw
        if site.input_is_padded:
            t, b, l, r = site.pads
            in_hw = (x_hw[0] - t - b, x_hw[1] - l - r)
        if self.out_hw is None:
            self.out_hw = out_hw
            t, b, l, r = site.band_widths(in_hw, out_hw)
            if t + b >= out_hw[0] or l + r >= out_hw[1]:
                t = b = l = r = 0  # all border (tiny map): no interior, nothing scored
                self.no_interior = True
            self.bands = (t, b, l, r)
            hi, wi = out_hw[0] - t - b, out_hw[1] - l - r
            self.region_sizes = (t * wi, b * wi, hi * l, hi * r, t * l, t * r, b * l, b * r)
        elif self.out_hw != out_hw:
            raise ScanError("all probe images of a scan must have the same size "
                            f"(layer {site.name} saw {self.out_hw} and then {out_hw})")

    def update(self, y: torch.Tensor) -> None:
        # Whole-map sums are cheap, contiguous passes; the thin border strips are summed
        # directly and the interior is what remains, so no strided interior view is read.
        if self.no_interior:
            self.n_images += y.shape[0]
            return
        t, b, l, r = self.bands
        ho, wo = self.out_hw
        hi, wi = ho - t - b, wo - l - r
        acc = torch.float32
        top = y[:, :, :t]
        bot = y[:, :, ho - b:]
        left = y[:, :, t:ho - b, :l]
        right = y[:, :, t:ho - b, wo - r:]
        top_cols = top.sum(dim=2, dtype=acc)  # N, C, W
        bot_cols = bot.sum(dim=2, dtype=acc)
        mid = slice(l, wo - r)
        sums = torch.stack([
            top_cols[..., mid].sum(-1), bot_cols[..., mid].sum(-1),
            left.sum(dim=(2, 3), dtype=acc), right.sum(dim=(2, 3), dtype=acc),
            top_cols[..., :l].sum(-1), top_cols[..., wo - r:].sum(-1),
            bot_cols[..., :l].sum(-1), bot_cols[..., wo - r:].sum(-1),
        ], dim=-1)  # N, C, 8 in REGIONS order
        s_int = y.sum(dim=(2, 3), dtype=acc) - sums.sum(-1)  # N, C
        ss_int = _sum_squares(y) - sum(_sum_squares(s) for s in (top, bot, left, right))
        if self._counts is None:
            self._counts = torch.tensor(self.region_sizes, dtype=acc, device=y.device)
        tn = sums / self._counts - (s_int / (hi * wi))[..., None]  # empty band: 0/0 -> nan
        if self.sum_t is None:
            c = y.shape[1]
            z = dict(dtype=torch.float64, device=y.device)
            self.sum_t, self.s1, self.s2 = torch.zeros(c, 8, **z), torch.zeros(c, **z), \
                torch.zeros(c, **z)
            self.n_pos = torch.zeros(c, 8, dtype=torch.int64, device=y.device)
            self.n_neg = torch.zeros_like(self.n_pos)
        self.sum_t += tn.sum(0)
        self.n_pos += (tn > 0).sum(0)
        self.n_neg += (tn < 0).sum(0)
        self.s1 += s_int.sum(0)
        self.s2 += ss_int
        self.n_images += y.shape[0]

    def table(self, mode: str) -> pd.DataFrame:
        site = self.site
        t, b, l, r = self.bands
        ho, wo = self.out_hw
        n_ch = site.module.out_channels
        sign = site.bn_sign.numpy() if site.bn_sign is not None else np.ones(n_ch)
        if self.no_interior:
            mean_t = np.full((n_ch, len(REGIONS)), np.nan)
            sigma, d, consistency = np.full(n_ch, np.nan), mean_t, mean_t
        else:
            n_pos_int = (ho - t - b) * (wo - l - r) * self.n_images
            mean_t = (self.sum_t / self.n_images).cpu().numpy()
            mean_int = (self.s1 / n_pos_int).cpu().numpy()
            var = (self.s2 / n_pos_int).cpu().numpy() - mean_int ** 2
            sigma = np.sqrt(np.clip(var, 0, None))
            # A channel constant in the interior has no scale to measure contrast against.
            degenerate = sigma <= 1e-6 * (np.abs(mean_int) + 1e-6)
            with np.errstate(invalid="ignore", divide="ignore"):
                d = mean_t / np.where(degenerate, np.nan, sigma)[:, None] * sign[:, None]
            pos, neg = self.n_pos.cpu().numpy(), self.n_neg.cpu().numpy()
            consistency = np.where(mean_t > 0, pos, np.where(mean_t < 0, neg, 0)) / self.n_images
        channels = np.arange(d.shape[0])
        frames = []
        for k, region in enumerate(REGIONS):
            applicable = self.region_sizes[k] > 0 and not self.no_interior
            frames.append(pd.DataFrame({
                "layer": site.name, "order": site.order, "mode": mode, "channel": channels,
                "side": region, "applicable": applicable, "band_positions": self.region_sizes[k],
                "mean_contrast": mean_t[:, k] * sign, "sigma_interior": sigma,
                "d": d[:, k] if applicable else np.nan,
                "consistency": consistency[:, k] if applicable else np.nan,
                "bn_sign": sign.astype(int), "n_images": self.n_images,
            }))
        return pd.concat(frames, ignore_index=True)


def _sum_squares(y: torch.Tensor, block: int = 1 << 18) -> torch.Tensor:
    """Per-channel sum of squares of N×C×H×W ``y`` in float32, without a full-size temporary.

    On CPU a channels-last map is squared in cache-sized row blocks into one reused
    buffer: ``y.square().sum()`` would write and re-read a copy of the whole map, and a
    fresh block per step costs a page-faulting allocation each time.
    """
    acc = torch.float32
    c = y.shape[1]
    if y.numel() == 0:
        return torch.zeros(c, dtype=acc, device=y.device)
    if y.device.type != "cpu" or y.dtype != acc:
        return torch.linalg.vector_norm(y, dim=(0, 2, 3), dtype=acc).square()
    if y.is_contiguous():
        return torch.linalg.vector_norm(y.flatten(2), dim=2).square().sum(0)
    if not y.is_contiguous(memory_format=torch.channels_last):
        return y.square().sum(dim=(0, 2, 3))
    m = y.permute(0, 2, 3, 1).reshape(-1, c)  # a view: one row per position
    rows = max(1, block // c)
    buf = torch.empty(min(rows, m.shape[0]), c, dtype=acc)
    out = torch.zeros(c, dtype=acc)
    for i in range(0, m.shape[0], rows):
        part = m[i:i + rows]
        sq = buf[:part.shape[0]]
        torch.mul(part, part, out=sq)
        out += sq.sum(0)
    return out


@contextmanager
def _hooks(accs: dict[nn.Module, _Accumulator]) -> Iterator[None]:
    def hook(mod, inp, out):
        acc = accs[mod]
        if acc.bands is None or acc.out_hw != tuple(out.shape[-2:]):
            acc.geometry(tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]))
        acc.update(out)

    handles = [m.register_forward_hook(hook) for m in accs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def scan(model: nn.Module, images, *, null: bool = False, batch_size: int = 32,
         device: str | torch.device | None = None, progress: bool = True,
         desc: str = "scan", modes: Sequence[str] | None = None,
         channels_last: bool = True) -> pd.DataFrame:
    """One row per (layer, channel, side/corner) with the statistics of DESIGN 4.3.

    ``modes``: padding modes to score, 'native' meaning the model as it is; each batch
    is run once per mode, so the images are read only once. ``null=True`` is shorthand
    for ``modes=('native', 'circular')``. Columns: layer, order, depth, mode, channel,
    side, applicable, band_positions, mean_contrast, sigma_interior, d (BatchNorm sign
    folded in), consistency, bn_sign, n_images. ``channels_last`` feeds the batches in
    that memory format (faster convolutions on CPU; the model itself is not changed).
    """
    modes = tuple(modes) if modes else (("native", NULL_MODE) if null else ("native",))
    device = torch.device(device) if device is not None else device_of(model)
    if device.type != device_of(model).type:
        raise ScanError(f"the model is on {device_of(model)}, not {device}: move it first "
                        f"(model.to('{device}'))")
    was_training = model.training
    model.eval()
    accs: dict[str, dict[nn.Module, _Accumulator]] | None = None
    sites: list[ConvSite] = []
    bar = progress_bar(desc=desc, unit="img", enabled=progress, leave=False)
    try:
        with torch.inference_mode():
            for x in iter_batches(images, batch_size):
                x = x.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if accs is None:
                    sites = [s for s in discover(model, tuple(x.shape[-2:])) if s.is_candidate]
                    if not sites:
                        raise ScanError("the model has no padded convolution with a kernel "
                                        "larger than 1: nothing can detect the border")
                    accs = {m: {s.module: _Accumulator(s) for s in sites} for m in modes}
                for mode in modes:
                    policy = nullcontext() if mode == "native" else padding_policy(model, mode)
                    with policy, _hooks(accs[mode]):
                        model(x)
                bar.update(x.shape[0])
    finally:
        bar.close()
        model.train(was_training)
    if accs is None:
        raise ScanError("no probe images were given")
    n = max(len(sites) - 1, 1)
    tables = [acc.table(mode) for mode in modes for acc in accs[mode].values()
              if acc.n_images]
    scores = pd.concat(tables, ignore_index=True)
    # Relative depth among the candidate layers: 0 for the first padded conv, 1 for the last.
    scores.insert(2, "depth", scores["order"].map({s.order: i / n for i, s in enumerate(sites)}))
    return scores


def decide_pans(scores: pd.DataFrame, *, tau: float = 3.0, consistency: float = 0.95,
                null_mode: str | None = NULL_MODE, mode: str = "native") -> pd.DataFrame:
    """The decision rule of DESIGN 4.4 on a score table: one row per PAN.

    A (channel, side) is significant when |d| >= tau, consistency >= q and, when the
    table holds the null mode, |d_null| < tau. A channel with any significant side or
    corner is a PAN. ``mode='circular', null_mode=None`` counts what the circular null
    itself would call PANs.
    """
    sig = significant_regions(scores, tau=tau, consistency=consistency, null_mode=null_mode,
                              mode=mode)
    native = scores[scores["mode"] == mode]
    pivot = native.pivot_table(index=["layer", "order", "depth", "channel"], columns="side",
                               values="d", dropna=False)
    sig_native = sig[sig["significant"]]
    cols = ["layer", "order", "depth", "channel", "sides", "corners", "polarity", "type",
            "score", "d_top", "d_bottom", "d_left", "d_right", "consistency"]
    if sig_native.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (layer, order, depth, channel), g in sig_native.groupby(
            ["layer", "order", "depth", "channel"], sort=False):
        present = set(g["side"])
        sides = "".join(s for s in SIDES if s in present)
        corners = ",".join(c for c in CORNERS if c in present)
        signs = np.sign(g["d"].to_numpy())
        polarity = "+" if (signs > 0).all() else "-" if (signs < 0).all() else "mixed"
        d = pivot.loc[(layer, order, depth, channel)]
        rows.append({
            "layer": layer, "order": order, "depth": depth, "channel": int(channel),
            "sides": sides, "corners": corners, "polarity": polarity,
            "type": pan_type(sides, corners),
            "score": float(g["d"].abs().max()),
            **{f"d_{SIDE_NAMES[s]}": float(d.get(s, np.nan)) for s in SIDES},
            "consistency": float(g["consistency"].min()),
        })
    return pd.DataFrame(rows, columns=cols).sort_values(["order", "channel"],
                                                        ignore_index=True)


def significant_regions(scores: pd.DataFrame, *, tau: float = 3.0, consistency: float = 0.95,
                        null_mode: str | None = NULL_MODE, mode: str = "native"
                        ) -> pd.DataFrame:
    """Rows of ``mode`` with ``d_null`` and a boolean ``significant`` column."""
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
    """PAN count per threshold: the sensitivity curve of DESIGN 4.4."""
    rows = []
    for tau in taus:
        sig = significant_regions(scores, tau=tau, consistency=consistency,
                                  null_mode=null_mode, mode=mode)
        n = sig.loc[sig["significant"], ["layer", "channel"]].drop_duplicates().shape[0]
        rows.append({"tau": float(tau), "pans": n})
    return pd.DataFrame(rows)


def find_pans(model: nn.Module, images, tau: float = 3.0, consistency: float = 0.95, *,
              null: bool = True, batch_size: int = 32,
              device: str | torch.device | None = None, progress: bool = True,
              return_scores: bool = False, channels_last: bool = True):
    """PANs of ``model`` on ``images``: one row per PAN (DESIGN 6).

    With ``null=True`` (default) each batch also runs under circular padding and sides
    that keep their contrast there are discarded. ``return_scores=True`` returns
    ``(pans, scores)``.
    """
    if not (tau > 0 and math.isfinite(tau)):
        raise ScanError(f"tau must be a positive number; got {tau}")
    if not 0 <= consistency <= 1:
        raise ScanError(f"consistency must be in [0, 1]; got {consistency}")
    scores = scan(model, images, null=null, batch_size=batch_size, device=device,
                  progress=progress, desc="find_pans", channels_last=channels_last)
    pans = decide_pans(scores, tau=tau, consistency=consistency,
                       null_mode=NULL_MODE if null else None)
    return (pans, scores) if return_scores else pans

"""Ablating conv channels: each chosen channel, or only its border bands, replaced by its
interior mean (docs/METHOD.md §7).

An ablation is a mask ``a`` and a replacement ``r``: a hooked conv returns
``x * (1 - a) + r * a``, where ``a`` covers whole channels (``how="mean"``) or only their
border bands at the size being run (``how="border"``), and ``r`` is each channel's mean
over the interior positions of the scan set. Hooks return new tensors, so parameters and
buffers are never written, and they are removed on exit, also on error.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

import pandas as pd
import torch
from torch import nn

from .hooks import eval_mode, hooks
from .padding import ConvSite, discover
from .probes import iter_batches
from .progress import image_count, progress_bar
from .state import device_of

HOWS = ("mean", "border")
Bands = tuple[int, int, int, int]  # top, bottom, left, right widths


class AblationError(ValueError):
    """An ablation that cannot run (unknown layer or channel, missing interior mean)."""


def channel_pairs(layers_channels: pd.DataFrame | Iterable[tuple[str, int]]
                  ) -> list[tuple[str, int]]:
    """(layer, channel) pairs, unique, in first-seen order, from a table or an iterable."""
    if isinstance(layers_channels, pd.DataFrame):
        it = zip(layers_channels["layer"], layers_channels["channel"])
    else:
        it = layers_channels
    seen: dict[tuple[str, int], None] = {}
    for layer, channel in it:
        seen[(str(layer), int(channel))] = None
    return list(seen)


def conv_module(model: nn.Module, layer: str) -> nn.Conv2d:
    """The Conv2d named ``layer`` (a dotted module name), or an AblationError."""
    try:
        mod = model.get_submodule(layer)
    except AttributeError as err:
        raise AblationError(f"model has no module {layer!r}") from err
    if not isinstance(mod, nn.Conv2d):
        raise AblationError(f"{layer!r} is a {type(mod).__name__}, not a Conv2d")
    return mod


def border_mask(hw: tuple[int, int], bands: Bands) -> torch.Tensor:
    """(H, W) float mask, 1 on the output rows/columns that read padding, 0 inside."""
    h, w = hw
    t, b, l, r = bands
    mask = torch.zeros(h, w)
    mask[:t, :] = mask[h - b:, :] = 1  # a zero width selects nothing: [h - 0:] is empty
    mask[:, :l] = mask[:, w - r:] = 1
    return mask


def interior_means(model: nn.Module, layers_channels, images, *, batch_size: int = 32,
                   device: str | torch.device | None = None, progress: bool = False
                   ) -> pd.DataFrame:
    """Each channel's mean over the interior positions of ``images``.

    The interior is where a conv's window never reads padding (``ConvSite.band_widths``):
    the value a channel takes when it carries no border information.

    Args:
        model: the network, on ``device``.
        layers_channels: a table with ``layer`` and ``channel`` columns, or pairs.
        images: an N×C×H×W tensor or an iterable of batches (the scan set).
        batch_size, device, progress: as for ``scan``.

    Returns:
        One row per (layer, channel): layer, channel, interior_mean, n_images.

    Example:
        >>> means = interior_means(model, pans, images)
        >>> with ablate(model, pans, "border", means):
        ...     logits = model(x)
    """
    pairs = channel_pairs(layers_channels)
    if not pairs:
        return pd.DataFrame(columns=["layer", "channel", "interior_mean", "n_images"])
    device = torch.device(device) if device is not None else device_of(model)
    mods = {layer: conv_module(model, layer) for layer in dict.fromkeys(p[0] for p in pairs)}
    names = {m: n for n, m in mods.items()}
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(mods, 0)
    bands: dict[nn.Module, Bands] = {}
    n_images = 0

    def hook(mod, inp, out):
        t, b, l, r = bands[mod]
        ho, wo = out.shape[-2:]
        y = out[:, :, t:ho - b, l:wo - r]
        s = y.sum(dim=(0, 2, 3), dtype=torch.float64)
        name = names[mod]
        sums[name] = sums[name] + s if name in sums else s
        counts[name] += y.shape[0] * y.shape[2] * y.shape[3]

    bar = progress_bar(total=image_count(images), desc="interior means", unit="img",
                       enabled=progress, leave=False)
    with bar, eval_mode(model), torch.inference_mode():
        for x in iter_batches(images, batch_size):
            x = x.to(device)
            if not bands:
                sites = {s.module: s for s in discover(model, tuple(x.shape[-2:]))}
                bands.update({m: sites[m].band_widths() for m in names})
            with hooks([(m, hook) for m in names]):
                model(x)
            n_images += x.shape[0]
            bar.update(x.shape[0])
    rows = []
    for layer, channel in pairs:
        if counts[layer] == 0:
            raise AblationError(f"layer {layer!r} has no interior position at this size")
        if channel >= sums[layer].shape[0]:
            raise AblationError(f"layer {layer!r} has no channel {channel}")
        rows.append({"layer": layer, "channel": channel,
                     "interior_mean": float(sums[layer][channel] / counts[layer]),
                     "n_images": n_images})
    return pd.DataFrame(rows)


def means_lookup(means: pd.DataFrame | Mapping | None) -> dict[tuple[str, int], float]:
    """{(layer, channel): interior mean} from an ``interior_means`` table or a mapping."""
    if means is None:
        return {}
    if isinstance(means, pd.DataFrame):
        return {(str(r.layer), int(r.channel)): float(r.interior_mean)
                for r in means.itertuples()}
    return {(str(k[0]), int(k[1])): float(v) for k, v in dict(means).items()}


@contextmanager
def ablate(model: nn.Module, pans: pd.DataFrame, how: str = "mean", means=None, *,
           images=None, batch_size: int = 32) -> Iterator[nn.Module]:
    """Channels of ``pans`` replaced by their interior mean in the block (docs/METHOD.md §7).

    Args:
        model: the network; its parameters and buffers are never written.
        pans: a table with ``layer`` and ``channel`` columns (PANs or any channels).
        how: ``"mean"``, the whole channel becomes the constant; ``"border"``, only its
            border bands do (every band row/column of the layer at the input size being
            run, which includes the PAN's own sides), and the interior is untouched.
        means: an ``interior_means`` table or a {(layer, channel): value} mapping; when
            None it is computed from ``images`` (the scan set).
        images, batch_size: the scan set and its batch size, used only when ``means`` is None.

    Yields:
        ``model``; the hooks are removed on exit, also on error.

    Example:
        >>> with ablate(model, pans, "border", images=scan_images):
        ...     logits = model(x)
    """
    if how not in HOWS:
        raise ValueError(f"how must be one of {', '.join(HOWS)}; got {how!r}")
    pairs = channel_pairs(pans) if len(pans) else []
    if not pairs:
        yield model
        return
    lookup = means_lookup(means)
    if means is None:
        if images is None:
            raise AblationError("ablate needs the interior means (means=) or the scan "
                                "images to compute them (images=)")
        lookup = means_lookup(interior_means(model, pairs, images, batch_size=batch_size))
    missing = [p for p in pairs if p not in lookup]
    if missing:
        raise AblationError(f"no interior mean for {len(missing)} channel(s), e.g. "
                            f"{missing[0][0]}:{missing[0][1]}")
    per_layer: dict[nn.Module, tuple[list[int], list[float]]] = {}
    for layer, channel in pairs:
        mod = conv_module(model, layer)
        if channel >= mod.out_channels:
            raise AblationError(f"layer {layer!r} has {mod.out_channels} channels; "
                                f"got channel {channel}")
        chans, vals = per_layer.setdefault(mod, ([], []))
        chans.append(channel)
        vals.append(lookup[(layer, channel)])

    # Border geometry for the input size being run, found once per size with a discover()
    # pass from a model pre-hook (its own forward is not ablated).
    geometry: dict[tuple[int, int], dict[nn.Module, Bands]] = {}
    state: dict = {"busy": False, "hw": None}

    def root_pre_hook(mod, args):
        if state["busy"] or not args or not isinstance(args[0], torch.Tensor):
            return None
        hw = tuple(int(v) for v in args[0].shape[-2:])
        state["hw"] = hw
        if how == "border" and hw not in geometry:
            state["busy"] = True
            try:
                sites: dict[nn.Module, ConvSite] = {s.module: s for s in discover(model, hw)}
            finally:
                state["busy"] = False
            geometry[hw] = {m: sites[m].band_widths() for m in per_layer if m in sites}
        return None

    # (keep, fill) per conv, input size and device/dtype: y = x * keep + fill, with
    # keep = 1 - a and fill = r * a.
    masks: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def mask_for(mod: nn.Module, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (mod, state["hw"], out.device, out.dtype)
        if key not in masks:
            chans, vals = per_layer[mod]
            n_ch = out.shape[1]
            r = torch.zeros(1, n_ch, 1, 1, dtype=out.dtype, device=out.device)
            r[0, chans, 0, 0] = torch.tensor(vals, dtype=out.dtype, device=out.device)
            if how == "mean":
                a = torch.zeros_like(r)
                a[0, chans] = 1
            else:
                a = torch.zeros_like(out[:1])  # out's memory format, so y keeps it
                a[0, chans] = border_mask(tuple(out.shape[-2:]), geometry[state["hw"]][mod]
                                          ).to(out)
            masks[key] = (1 - a, r * a)
        return masks[key]

    def conv_hook(mod, inp, out):
        if state["busy"]:
            return None
        keep, fill = mask_for(mod, out)
        return torch.addcmul(fill, out, keep)

    with hooks(forward=[(m, conv_hook) for m in per_layer],
               pre=[(model, root_pre_hook)]):
        yield model

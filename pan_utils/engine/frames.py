"""Frames, letterboxes and adversarial borders: what a model does when the outer pixels
of its input change (docs/METHOD.md §13).

Every perturbation here is a **mask** (which pixels change) and **values** (what they
become), on normalised N×C×H×W batches. Natural frames write a solid colour (or a
replicate of the edge) over the outer ``width`` pixels; a letterbox paints bars over the
rows a square crop shows beyond a wider photo; a control moves the very same values to a
centred square or to random interior positions, so that only *where* the pixels are
changes. ``compare_predictions`` measures top-1 agreement with the unchanged input and
the change in the top class's probability, optionally under a context (an ablation, a
padding swap); ``fit_universal_patch`` fits one pattern for a mask over many images
(Adversarial Framing, Zajac et al., AAAI 2019, for a frame mask).

Example:
    >>> t = {"black 4px": frame_transform(4, "black", mean, std)}
    >>> compare_predictions(model, images, t)[["transform", "agreement", "prob_change"]]
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, ContextManager, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .hooks import eval_mode, hooks
from .state import device_of
from .probes import iter_batches
from .progress import progress_bar

FILLS = ("black", "white", "grey", "replicate")
SIDES = "TBLR"
Transform = Callable[[torch.Tensor], torch.Tensor]


class FrameError(ValueError):
    """A frame that cannot be drawn (unknown fill or side, a width the image cannot hold)."""


# --------------------------------------------------------------------------- masks


def frame_mask(hw: tuple[int, int], width: int, sides: str = SIDES) -> torch.Tensor:
    """(H, W) bool mask of the outer ``width`` pixels on ``sides`` (any of 'TBLR');
    width 0 selects nothing."""
    h, w = hw
    if width < 0 or 2 * width > min(h, w):
        raise FrameError(f"frame width must be in [0, {min(h, w) // 2}] for {h}x{w}; got {width}")
    if set(sides) - set(SIDES):
        raise FrameError(f"sides must be letters of {SIDES!r}; got {sides!r}")
    m = torch.zeros(h, w, dtype=torch.bool)
    if width:
        if "T" in sides:
            m[:width] = True
        if "B" in sides:
            m[h - width:] = True
        if "L" in sides:
            m[:, :width] = True
        if "R" in sides:
            m[:, w - width:] = True
    return m


def letterbox_mask(hw: tuple[int, int], aspect: float = 4 / 3) -> torch.Tensor:
    """The bars that letterbox a photo of ``aspect`` (width / height) into an H×W input:
    a wider photo (aspect > W/H) is shrunk to the input's width and gets bars above and
    below, a taller one bars left and right; the bars are split evenly (odd pixel after)."""
    h, w = hw
    if not aspect > 0:
        raise FrameError(f"aspect must be positive; got {aspect}")
    m = torch.zeros(h, w, dtype=torch.bool)
    if aspect >= w / h:
        bar = h - int(round(w / aspect))
        m[:bar // 2] = True
        m[h - (bar - bar // 2):] = True
    else:
        bar = w - int(round(h * aspect))
        m[:, :bar // 2] = True
        m[:, w - (bar - bar // 2):] = True
    return m


def centre_mask(hw: tuple[int, int], n: int) -> torch.Tensor:
    """(H, W) mask of exactly ``n`` pixels in a centred square: the first ``n`` pixels, in
    raster order, of the centred ceil(sqrt(n))-sided square."""
    h, w = hw
    side = math.isqrt(n - 1) + 1 if n > 0 else 0
    if side > min(h, w):
        raise FrameError(f"{n} pixels do not fit a centred square in {h}x{w}")
    m = torch.zeros(h, w, dtype=torch.bool)
    if n:
        top, left = (h - side) // 2, (w - side) // 2
        block = torch.zeros(side * side, dtype=torch.bool)
        block[:n] = True
        m[top:top + side, left:left + side] = block.view(side, side)
    return m


def random_mask(hw: tuple[int, int], n: int, exclude: torch.Tensor | None = None,
                seed: int = 0) -> torch.Tensor:
    """(H, W) mask of ``n`` pixels drawn uniformly without replacement among those not in
    ``exclude`` (the frame itself), deterministic in ``seed``."""
    h, w = hw
    free = np.flatnonzero(~exclude.numpy().ravel()) if exclude is not None else np.arange(h * w)
    if n > len(free):
        raise FrameError(f"{n} random pixels do not fit the {len(free)} free pixels")
    pick = np.random.default_rng(seed).choice(free, size=n, replace=False)
    m = torch.zeros(h * w, dtype=torch.bool)
    m[torch.from_numpy(np.sort(pick))] = True
    return m.view(h, w)


# --------------------------------------------------------------------------- values


def fill_colour(fill: str, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A solid fill as normalised per-channel values (C,): black is pixel 0, white pixel 1,
    grey the normalisation mean (0 after normalisation: the value zero padding writes)."""
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if fill == "black":
        return (0 - m) / s
    if fill == "white":
        return (1 - m) / s
    if fill == "grey":
        return torch.zeros_like(m)
    raise FrameError(f"fill must be one of {', '.join(FILLS)}; got {fill!r}")


def _inner_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the unmasked rectangle a frame or letterbox leaves."""
    rows = torch.nonzero(~mask.all(1)).flatten()
    cols = torch.nonzero(~mask.all(0)).flatten()
    if len(rows) == 0 or len(cols) == 0:
        raise FrameError("the mask covers the whole image")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def masked_values(x: torch.Tensor, mask: torch.Tensor, fill: str, mean: Sequence[float],
                  std: Sequence[float]) -> torch.Tensor:
    """The N×C×H×W values a frame ``mask`` of ``fill`` writes (meaningful under the mask):
    a solid colour, or for 'replicate' the image's last unmasked row/column repeated
    outward (the mask must leave one rectangle: a frame or a letterbox)."""
    if fill == "replicate":
        t, b, l, r = _inner_box(mask)
        h, w = x.shape[-2:]
        inner = x[:, :, t:b, l:r]
        return F.pad(inner, (l, w - r, t, h - b), mode="replicate")
    colour = fill_colour(fill, mean, std).to(x)
    if colour.numel() != x.shape[1]:
        raise FrameError(f"{colour.numel()}-channel normalisation for {x.shape[1]}-channel images")
    return colour.view(1, -1, 1, 1).expand_as(x)


def write_mask(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with the pixels of ``mask`` taken from ``values`` (same shape as
    ``x``, or broadcastable); every other pixel is bit-identical."""
    m = mask.to(x.device)
    return torch.where(m, values.to(x), x)


def frame_transform(width: int, fill: str, mean: Sequence[float], std: Sequence[float],
                    sides: str = SIDES) -> Transform:
    """x -> x with its outer ``width`` pixels (on ``sides``) written in ``fill``."""
    def apply(x: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(tuple(x.shape[-2:]), width, sides)
        return write_mask(x, mask, masked_values(x, mask, fill, mean, std)) if width else x
    return apply


def letterbox_transform(aspect: float, fill: str, mean: Sequence[float],
                        std: Sequence[float]) -> Transform:
    """x -> x letterboxed as a photo of ``aspect`` would be: bars of ``fill`` over the rows
    (or columns) the square crop shows beyond that photo."""
    def apply(x: torch.Tensor) -> torch.Tensor:
        mask = letterbox_mask(tuple(x.shape[-2:]), aspect)
        return write_mask(x, mask, masked_values(x, mask, fill, mean, std))
    return apply


def moved_transform(source: torch.Tensor, target: torch.Tensor, fill: str,
                    mean: Sequence[float], std: Sequence[float]) -> Transform:
    """The control of a frame: the values the frame ``source`` (a mask) would write, moved
    in raster order onto ``target`` (a mask of the same pixel count: a centred square,
    random positions), the frame's own pixels left as they are."""
    n_s, n_t = int(source.sum()), int(target.sum())
    if n_s != n_t:
        raise FrameError(f"a control must move as many pixels as the frame has ({n_s}); "
                         f"got {n_t}")

    def apply(x: torch.Tensor) -> torch.Tensor:
        vals = masked_values(x, source, fill, mean, std)
        vals = vals.expand_as(x) if vals.shape != x.shape else vals
        src, dst = source.to(x.device).flatten(), target.to(x.device).flatten()
        out = x.flatten(2).clone()
        out[:, :, dst] = vals.flatten(2)[:, :, src]
        return out.view_as(x)
    return apply


def patch_transform(pattern: torch.Tensor, mask: torch.Tensor) -> Transform:
    """x -> x with the pixels of ``mask`` replaced by a (normalised) 1×C×H×W ``pattern``:
    a universal frame or patch."""
    def apply(x: torch.Tensor) -> torch.Tensor:
        return write_mask(x, mask, pattern.to(x))
    return apply


# --------------------------------------------------------------------------- metrics


def compare_predictions(model: nn.Module, images, transforms: Mapping[str, Transform], *,
                        context: Callable[[nn.Module], ContextManager] | None = None,
                        batch_size: int = 32, device: str | torch.device | None = None,
                        progress: bool = False, desc: str = "frames") -> pd.DataFrame:
    """Each transform against the unchanged images, streaming ``images`` once.

    ``context(model)`` is entered around every forward (reference and transformed), so an
    ablated or re-padded model is compared with its *own* unframed predictions. Returns
    one row per transform: transform, n_images, agreement (top-1 equal to the reference),
    prob_change (mean over images of p(c) transformed minus p(c) reference, c the
    reference's top class) and kl (mean KL(reference || transformed)).
    """
    device = torch.device(device) if device is not None else device_of(model)
    context = context or (lambda m: nullcontext(m))
    names = list(transforms)
    agree = np.zeros(len(names), dtype=np.int64)
    dprob = np.zeros(len(names))
    kl = np.zeros(len(names))
    n = 0
    bar = progress_bar(desc=desc, unit="img", enabled=progress, leave=False)
    with bar, eval_mode(model), torch.inference_mode():
        for x in iter_batches(images, batch_size):
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with context(model):
                ref = F.log_softmax(model(x).float(), 1)
                top = ref.argmax(1, keepdim=True)
                p_top = ref.gather(1, top).exp()
                for i, name in enumerate(names):
                    logp = F.log_softmax(model(transforms[name](x)).float(), 1)
                    agree[i] += int((logp.argmax(1, keepdim=True) == top).sum())
                    dprob[i] += float((logp.gather(1, top).exp() - p_top).sum())
                    kl[i] += float((ref.exp() * (ref - logp)).sum(1).clamp_min(0).sum())
            n += x.shape[0]
            bar.update(x.shape[0])
    if n == 0:
        raise FrameError("no images were given")
    return pd.DataFrame({"transform": names, "n_images": n, "agreement": agree / n,
                         "prob_change": dprob / n, "kl": kl / n})


def predictions(model: nn.Module, images, transform: Transform | None = None, *,
                batch_size: int = 32, device: str | torch.device | None = None
                ) -> torch.Tensor:
    """Top-1 classes of ``images`` (after ``transform``), as a CPU tensor."""
    device = torch.device(device) if device is not None else device_of(model)
    out = []
    with eval_mode(model), torch.inference_mode():
        for x in iter_batches(images, batch_size):
            x = x.to(device)
            out.append(model(transform(x) if transform else x).argmax(1).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- universal patches


def fit_universal_patch(model: nn.Module, images: torch.Tensor, mask: torch.Tensor,
                        mean: Sequence[float], std: Sequence[float], *, steps: int = 100,
                        batch_size: int = 32, lr: float = 0.1, seed: int = 0,
                        device: str | torch.device | None = None, progress: bool = False,
                        clean: torch.Tensor | None = None) -> torch.Tensor:
    """One pattern for the pixels of ``mask`` that changes as many top-1 predictions of
    ``images`` as it can (untargeted, universal): Adversarial Framing for a frame mask.

    The pattern is a valid image (pixels in [0, 1] through a sigmoid, then normalised with
    ``mean``/``std``); Adam on its logits for ``steps`` steps of ``batch_size`` images
    drawn in a seeded order, minimising the margin of each image's clean top class over
    the best other class (clamped at 0: fooled images stop pulling). The model's weights
    get no gradient. ``clean``: the images' clean top-1 classes, when already known
    (``predictions``). Returns the normalised 1×C×H×W pattern (meaningful under ``mask``).
    """
    device = torch.device(device) if device is not None else device_of(model)
    x_all = images.to(device)
    n = x_all.shape[0]
    if n == 0 or steps < 0 or batch_size < 1:
        raise FrameError("fitting needs images, steps >= 0 and batch_size >= 1")
    gen = torch.Generator().manual_seed(seed)
    c, h, w = x_all.shape[1:]
    theta = (torch.rand(1, c, h, w, generator=gen) * 4 - 2).to(device).requires_grad_(True)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    mk = mask.to(device)
    if clean is None:
        clean = predictions(model, x_all, batch_size=batch_size, device=device)
    clean = clean.to(device)
    req = [(p, p.requires_grad) for p in model.parameters()]
    opt = torch.optim.Adam([theta], lr=lr)
    order = torch.randperm(n, generator=gen)
    pos = 0
    try:
        for p, _ in req:
            p.requires_grad_(False)
        with eval_mode(model):
            for _ in progress_bar(range(steps), desc="fit patch", enabled=progress,
                                  leave=False):
                idx = order[torch.arange(pos, pos + min(batch_size, n)) % n]
                pos = (pos + batch_size) % n
                x, y = x_all[idx.to(device)], clean[idx.to(device)]
                pattern = (torch.sigmoid(theta) - m) / s
                xp = torch.where(mk, pattern, x).contiguous(memory_format=torch.channels_last)
                logits = model(xp).float()
                own = logits.gather(1, y[:, None]).squeeze(1)
                other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
                loss = (own - other).clamp_min(0).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for p, flag in req:
            p.requires_grad_(flag)
    with torch.no_grad():
        return ((torch.sigmoid(theta) - m) / s).detach()


# --------------------------------------------------------------------------- activations


def activation_shift(model: nn.Module, images, transforms: Mapping[str, Transform],
                     layers: Sequence[str], *, batch_size: int = 8,
                     device: str | torch.device | None = None) -> pd.DataFrame:
    """How far each transform moves every channel of ``layers`` (conv outputs, before any
    BatchNorm): mean |y(transformed) - y(unchanged)| over images and positions, in units
    of the channel's sd over the unchanged images. One row per transform, layer and
    channel: transform, layer, channel, shift."""
    device = torch.device(device) if device is not None else device_of(model)
    mods = {name: model.get_submodule(name) for name in dict.fromkeys(layers)}
    names = {m: n for n, m in mods.items()}
    store: dict[str, torch.Tensor] = {}
    acc: dict = {}
    stats: dict[str, list[torch.Tensor]] = {}
    state = {"phase": "ref", "t": None}

    def hook(mod, inp, out):
        name = names[mod]
        y = out.detach().float()
        if state["phase"] == "ref":
            store[name] = y
            s = stats.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + y.sum((0, 2, 3), dtype=torch.float64)
            s[1] = s[1] + (y.double() ** 2).sum((0, 2, 3))
            s[2] += y.shape[0] * y.shape[2] * y.shape[3]
        else:
            d = (y - store[name]).abs().sum((0, 2, 3), dtype=torch.float64)
            key = (state["t"], name)
            acc[key] = acc[key] + d if key in acc else d

    with eval_mode(model), torch.inference_mode(), hooks([(m, hook) for m in names]):
        for x in iter_batches(images, batch_size):
            x = x.to(device)
            state["phase"] = "ref"
            model(x)
            state["phase"] = "shift"
            for t, fn in transforms.items():
                state["t"] = t
                model(fn(x))
            store.clear()
    rows = []
    for (t, name), d in acc.items():
        s0, s1, cnt = stats[name]
        sd = (s1 / cnt - (s0 / cnt) ** 2).clamp_min(0).sqrt()
        shift = (d / cnt) / sd.where(sd > 1e-12, torch.full_like(sd, float("nan")))
        rows.append(pd.DataFrame({"transform": t, "layer": name,
                                  "channel": np.arange(len(shift)),
                                  "shift": shift.cpu().numpy()}))
    cols = ["transform", "layer", "channel", "shift"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)

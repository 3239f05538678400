"""Curing a pre-trained model of its PANs: another border, then recovery (docs/METHOD.md §14).

A cure is a copy of the model whose padded convolutions pad in another way, plus optional
recovery of the original's behaviour: BatchNorm recalibration, or distillation from the
zero-padded original on unlabeled crops. The paddings:

- ``reflect``, ``replicate``, ``circular``: torch's own modes;
- ``partial``: partial convolution (Liu et al., "Image Inpainting for Irregular Holes Using
  Partial Convolutions", ECCV 2018; "Partial Convolution based Padding", arXiv 1811.11718,
  NVIDIA/partialconv): zero padding whose border windows are re-weighted by
  ``window size / valid pixels``, on the pre-trained weights;
- ``mean``: each padded conv's input padded with that channel's mean activation over
  calibration images, ``pad(x - mu) + mu``: the border then looks like an average interior.

Every padded conv becomes a ``CuredConv2d`` (same parameters, same state-dict names) that
owns a ``CurePad`` child, so discovery, the scan and ``padding_policy`` (the circular null)
see the new border like any pad module. The spec (which convs, their pads, the mode) is
saved beside the state dict, and ``load`` rebuilds the cure on the bare architecture.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import pair, same_padding
from .hooks import eval_mode, hooks
from .padding import PAD_TYPES, PadModule, discover
from .policy import pad_like
from .probes import iter_batches
from .progress import progress_bar
from .state import device_of, recalibrate_batchnorm

PADDINGS = ("zeros", "reflect", "replicate", "circular", "partial", "mean")
RECOVERIES = ("none", "bn", "distill")
PARAMS = ("all", "bn", "pan_layers")  # what distillation trains
CURE_FORMAT = "pan_utils.cure/1"
# Conv classes whose forward is "pad, then conv2d": a cure may replace their forward.
_PLAIN_CONVS = ("Conv2d", "Conv2dSame", "Conv2dStaticSamePadding", "Conv2dDynamicSamePadding")


class CureError(ValueError):
    """A cure that cannot be made or loaded (unknown padding, a conv it cannot rewrite, a
    file that is not a cure)."""


def check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise CureError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
    return padding


def _check_plain(name: str, conv: nn.Module) -> None:
    """Refuse a conv whose forward does more than pad and convolve: replacing it would
    drop that work."""
    if type(conv).__name__ not in _PLAIN_CONVS and not isinstance(conv, CuredConv2d):
        raise CureError(f"cannot re-pad {name}: {type(conv).__name__} is not a plain "
                        "convolution (its forward does more than pad and convolve)")


# --------------------------------------------------------------------------- modules


class CurePad(PadModule):
    """The border of a cured conv: ``padding`` (left, right, top, bottom) in ``mode``.

    ``dynamic`` (kernel, stride, dilation per axis) recomputes TF-SAME pads from each
    input's size, as timm's ``Conv2dSame`` does. ``mean`` mode keeps the per-channel fill
    as a buffer (saved in the state dict); ``partial`` pads zeros and lets the conv
    re-weight the windows that read them.
    """

    def __init__(self, padding: Sequence[int], mode: str, channels: int,
                 dynamic: Sequence[int] | None = None):
        super().__init__()
        check_padding(mode)
        self.padding = tuple(int(v) for v in padding)
        self.mode = mode
        self.dynamic = tuple(int(v) for v in dynamic) if dynamic else None
        self.register_buffer("mean", torch.zeros(channels))

    def pads_for(self, hw: tuple[int, int]) -> tuple[int, int, int, int]:
        if self.dynamic is None:
            return self.padding
        kh, kw, sh, sw, dh, dw = self.dynamic
        return same_padding(hw[1], kw, sw, dw) + same_padding(hw[0], kh, sh, dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.padding = self.pads_for((int(x.shape[-2]), int(x.shape[-1])))
        if self.mode == "mean":
            mu = self.mean.to(x.dtype).view(1, -1, 1, 1)
            return pad_like(x - mu, self.padding, "zeros") + mu
        return pad_like(x, self.padding, "zeros" if self.mode == "partial" else self.mode)

    def extra_repr(self) -> str:
        return f"{self.padding}, mode={self.mode}" + (", dynamic" if self.dynamic else "")


class CuredConv2d(nn.Conv2d):
    """A conv that pads through its ``cure_pad`` child (any pad module ``padding_policy``
    puts there too) and, under partial padding, re-weights the border windows."""

    cure_pad: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.cure_pad
        partial = isinstance(pad, CurePad) and pad.mode == "partial"
        y = F.conv2d(pad(x), self.weight, None if partial else self.bias, self.stride, 0,
                     self.dilation, self.groups)
        if not partial:
            return y
        y = y * partial_ratio(tuple(x.shape[-2:]), pad.padding, pair(self.kernel_size),
                              pair(self.stride), pair(self.dilation), x.device, y.dtype)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


_RATIOS: dict[tuple, torch.Tensor] = {}


def partial_ratio(hw: tuple[int, int], pads: Sequence[int], kernel: tuple[int, int],
                  stride: tuple[int, int], dilation: tuple[int, int], device, dtype
                  ) -> torch.Tensor:
    """Partial convolution's re-weighting, ``window size / valid input pixels`` at each
    output position (0 where a window reads only padding), as NVIDIA/partialconv computes
    it from a ones mask; cached per geometry."""
    key = (tuple(hw), tuple(pads), kernel, stride, dilation, str(device), dtype)
    if key not in _RATIOS:
        ones = torch.ones(1, 1, *hw, device=device, dtype=torch.float64)
        counts = F.conv2d(F.pad(ones, tuple(pads)), torch.ones(1, 1, *kernel, device=device,
                          dtype=torch.float64), stride=stride, dilation=dilation)
        ratio = (kernel[0] * kernel[1]) / counts.clamp_min(1.0) * (counts > 0)
        _RATIOS[key] = ratio.to(dtype)
    return _RATIOS[key]


# --------------------------------------------------------------------------- the spec


@dataclass
class CureSpec:
    """Which convs a cure rewrites and how: enough to rebuild it on the bare architecture.

    ``layers`` holds one dict per padded conv: layer (dotted name), kind (as discovery
    names it), pads (top, bottom, left, right at ``input_size``), pad_module (the separate
    pad module it replaced, if any) and dynamic (TF-SAME computed per size).
    """

    padding: str
    input_size: tuple[int, int]
    layers: list[dict[str, Any]] = field(default_factory=list)
    recovery: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"padding": self.padding, "input_size": list(self.input_size),
                "layers": self.layers, "recovery": self.recovery}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CureSpec:
        return cls(str(d["padding"]), tuple(int(v) for v in d["input_size"]),
                   [dict(r) for r in d["layers"]], dict(d.get("recovery", {})))


def cure_spec(model: nn.Module, padding: str, input_size: int | tuple[int, int]) -> CureSpec:
    """The spec of curing ``model`` at ``input_size``: every conv that pads some side."""
    check_padding(padding)
    size = pair(input_size)
    layers = []
    for s in discover(model, size):
        if s.kind == "none":
            continue
        _check_plain(s.name, s.module)
        layers.append({"layer": s.name, "kind": s.kind, "pads": list(s.pads),
                       "pad_module": s.pad_module if s.kind == "pad_module" else None,
                       "dynamic": s.kind == "dynamic_same"})
    if not layers:
        raise CureError("the model has no padded convolution: there is nothing to cure")
    return CureSpec(padding, size, layers)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def apply_spec(model: nn.Module, spec: CureSpec) -> nn.Module:
    """Rewrite ``model``'s padded convs as the spec says, in place (fills of mean padding
    start at 0: a state dict or ``calibrate_means`` sets them)."""
    for row in spec.layers:
        conv = model.get_submodule(row["layer"])
        _check_plain(row["layer"], conv)
        if row.get("pad_module"):
            _set_module(model, row["pad_module"], nn.Identity())
        for cname, child in list(conv.named_children()):
            if isinstance(child, PAD_TYPES) or type(child).__name__ == "Identity":
                delattr(conv, cname)
        t, b, l, r = (int(v) for v in row["pads"])
        (kh, kw), (sh, sw), (dh, dw) = (pair(conv.kernel_size), pair(conv.stride),
                                        pair(conv.dilation))
        dynamic = (kh, kw, sh, sw, dh, dw) if row.get("dynamic") else None
        conv.__class__ = CuredConv2d
        conv.padding, conv.padding_mode = (0, 0), "zeros"
        conv.cure_pad = CurePad((l, r, t, b), spec.padding, conv.in_channels, dynamic)
        conv.cure_pad.to(conv.weight.device)
    return model


def cure_pads(model: nn.Module) -> list[CurePad]:
    return [m for m in model.modules() if isinstance(m, CurePad)]


def set_padding(model: nn.Module, padding: str) -> nn.Module:
    """Switch every ``CurePad`` of a cured model to ``padding`` (mean fills are kept)."""
    check_padding(padding)
    for p in cure_pads(model):
        p.mode = padding
    return model


def calibrate_means(cured: nn.Module, images, *, batch_size: int = 32) -> nn.Module:
    """Set each ``CurePad``'s fill to its input's per-channel mean over ``images``, as the
    zero-padded original computes it (the pads run in zero mode while measuring)."""
    pads = cure_pads(cured)
    modes = [p.mode for p in pads]
    device = device_of(cured)
    # summed where the model runs: no host transfer inside the hook, one per pad at the end
    sums = {p: torch.zeros(p.mean.numel(), dtype=torch.float64, device=device) for p in pads}
    counts = {p: 0 for p in pads}

    def pre(mod, args):
        x = args[0].detach()
        sums[mod] += x.double().sum(dim=(0, 2, 3))
        counts[mod] += x.shape[0] * x.shape[2] * x.shape[3]

    set_padding(cured, "zeros")
    try:
        with eval_mode(cured), torch.inference_mode(), hooks(pre=[(p, pre) for p in pads]):
            for x in iter_batches(images, batch_size):
                cured(x.to(device))
    finally:
        for p, m in zip(pads, modes):
            p.mode = m
    with torch.no_grad():
        for p in pads:
            if counts[p]:
                p.mean.copy_((sums[p] / counts[p]).to(p.mean))
    return cured


def swap_padding(model: nn.Module, padding: str, input_size: int | tuple[int, int], *,
                 calibration=None, batch_size: int = 32) -> tuple[nn.Module, CureSpec]:
    """A copy of ``model`` with every padded conv padding in ``padding``; the model itself
    is not touched. Mean padding needs ``calibration`` images (the scan split, never the
    evaluation split)."""
    spec = cure_spec(model, padding, input_size)
    if padding == "mean" and calibration is None:
        raise CureError("mean padding needs calibration images")
    cured = apply_spec(copy.deepcopy(model), spec).eval()
    if padding == "mean":
        calibrate_means(cured, calibration, batch_size=batch_size)
    return cured, spec


# --------------------------------------------------------------------------- recovery


def trainable_parameters(model: nn.Module, which: str = "all",
                         layers: Iterable[str] = ()) -> list[nn.Parameter]:
    """The parameters distillation updates: ``all``; ``bn``, the BatchNorm affine weights
    and biases; ``pan_layers``, the convs named in ``layers`` and the BatchNorms right
    after them (by call order)."""
    if which not in PARAMS:
        raise CureError(f"params must be one of {', '.join(PARAMS)}; got {which!r}")
    if which == "all":
        return [p for p in model.parameters()]
    norms = nn.modules.batchnorm._BatchNorm
    if which == "bn":
        return [p for m in model.modules() if isinstance(m, norms) for p in m.parameters()]
    wanted = set(layers)
    names = dict(model.named_modules())
    missing = wanted - set(names)
    if missing:
        raise CureError(f"no such layer(s): {', '.join(sorted(missing))}")
    out: list[nn.Parameter] = []
    order = list(names)
    for lay in sorted(wanted):
        out += list(names[lay].parameters(recurse=False))
        after = order[order.index(lay) + 1:]
        bn = next((names[n] for n in after if isinstance(names[n], norms)), None)
        if bn is not None:
            out += list(bn.parameters())
    return list({id(p): p for p in out}.values())


def mixup_batch(x: torch.Tensor, generator: torch.Generator, alpha: float = 1.0
                ) -> torch.Tensor:
    """Each image blended with another of the batch by a Beta(alpha, alpha) weight, plus a
    random horizontal flip: more distinct inputs out of a few photos ("function matching",
    Beyer et al., "Knowledge distillation: A good teacher is patient and consistent",
    CVPR 2022)."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator)
    lam = torch.distributions.Beta(alpha, alpha).sample((n,)) if alpha > 0 else torch.ones(n)
    lam = lam.to(x).view(-1, 1, 1, 1)
    flip = torch.rand(n, generator=generator) < 0.5
    y = lam * x + (1 - lam) * x[perm]
    y[flip] = y[flip].flip(-1)
    return y


@dataclass
class DistillLog:
    """What distillation did: loss per step, seconds, the parameters it trained."""

    steps: int
    seconds: float
    n_params: int
    loss: list[float]


def distill(student: nn.Module, teacher: nn.Module, images: torch.Tensor, *, steps: int,
            lr: float = 1e-5, batch_size: int = 16, params: str = "all",
            layers: Iterable[str] = (), mixup: float = 1.0, seed: int = 0,
            progress: bool = False) -> DistillLog:
    """Train ``student`` to match ``teacher``'s logits on unlabeled ``images``, in place.

    The loss is KL(teacher || student) on softmax probabilities; each step draws a batch of
    ``images`` (seeded), blended by mixup and flipped, and both models see the same
    input. Both run in eval mode (BatchNorm statistics frozen, no dropout), so the only
    change is to the trained parameters, and 0 steps leaves the student exactly as it was.

    Args:
        student: the cured model (trained in place).
        teacher: the original; not changed.
        images: N×C×H×W crops of the scan split (never the evaluation split).
        steps: Adam steps; 0 returns at once.
        lr, batch_size: Adam's learning rate (1e-4 on all parameters destroyed MobileNetV2's
            agreement on a few photos; docs/METHOD.md §14.2) and the images per step.
        params, layers: what to train (``trainable_parameters``).
        mixup: Beta parameter of the blend; 0 for none.
        seed: seeds the batches and blends.

    Returns:
        A ``DistillLog``.
    """
    if steps < 0:
        raise CureError(f"steps must be 0 or more; got {steps}")
    t0 = time.perf_counter()
    trained = trainable_parameters(student, params, layers)
    n_params = sum(p.numel() for p in trained)
    if steps == 0 or not trained:
        return DistillLog(0, 0.0, n_params, [])
    device = device_of(student)
    flags = [(p, p.requires_grad) for p in student.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trained, lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    losses: list[float] = []
    bar = progress_bar(total=steps, desc="distill", unit="step", enabled=progress, leave=False)
    try:
        with eval_mode(student), eval_mode(teacher), torch.random.fork_rng(devices=[]), bar:
            torch.manual_seed(int(seed))
            for _ in range(steps):
                idx = torch.randint(images.shape[0], (batch_size,), generator=g)
                x = mixup_batch(images[idx], g, mixup).to(device).contiguous(
                    memory_format=torch.channels_last)  # faster CPU convolutions
                with torch.no_grad():
                    target = F.log_softmax(teacher(x).float(), 1)
                logp = F.log_softmax(student(x).float(), 1)
                loss = F.kl_div(logp, target, log_target=True, reduction="batchmean")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.update(1)
    finally:
        for p, was in flags:
            p.requires_grad_(was)
            p.grad = None
    return DistillLog(steps, time.perf_counter() - t0, n_params, losses)


def recover(cured: nn.Module, original: nn.Module, recovery: str, images: torch.Tensor, *,
            steps: int = 0, batch_size: int = 16, **distill_kw) -> DistillLog:
    """Apply one recovery to ``cured`` in place: ``none``; ``bn``, BatchNorm statistics
    re-estimated on ``images``; ``distill``, ``distill`` for ``steps`` steps."""
    if recovery not in RECOVERIES:
        raise CureError(f"recovery must be one of {', '.join(RECOVERIES)}; got {recovery!r}")
    t0 = time.perf_counter()
    if recovery == "bn":
        recalibrate_batchnorm(cured, images, batch_size=batch_size)
        return DistillLog(0, time.perf_counter() - t0, 0, [])
    if recovery == "distill":
        return distill(cured, original, images, steps=steps, batch_size=batch_size,
                       **distill_kw)
    return DistillLog(0, 0.0, 0, [])


# --------------------------------------------------------------------------- saving


def save(path: str | os.PathLike, cured: nn.Module, spec: CureSpec, model_name: str) -> Path:
    """Write a cure: the state dict, its spec and the model's name, atomically (a temp file
    beside ``path``, then a rename), so a failed save never leaves half a file."""
    path = Path(path)
    blob = {"format": CURE_FORMAT, "model": model_name, "cure": spec.as_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in cured.state_dict().items()}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_cure(path: str | os.PathLike) -> dict[str, Any] | None:
    """The cure saved in ``path``, or None for a file that is not one (a plain state dict)."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CureError(f"cannot read {path}: {str(exc).strip().splitlines()[0][:200]}") from None
    if isinstance(blob, dict) and blob.get("format") == CURE_FORMAT:
        return blob
    return None


def restore(model: nn.Module, blob: dict[str, Any]) -> nn.Module:
    """Rebuild a saved cure on ``model`` (the bare architecture), in place, strictly."""
    apply_spec(model, CureSpec.from_dict(blob["cure"]))
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).strip().splitlines()[:2])[:300]
        raise CureError(f"the cure does not match the architecture: {detail}") from None
    return model.eval()


def load(path: str | os.PathLike):
    """A saved cure as ``LoadedModel(model, preprocessing)``: the architecture of the model
    it was made from, its padding spec, then its weights (``load_model(name, weights=path)``
    does the same for a name given)."""
    blob = read_cure(path)
    if blob is None:
        raise CureError(f"{path} is not a cure (no padding spec): load plain weights with "
                        "load_model(name, weights=path)")
    return models.load_model(str(blob["model"]), weights=path)


# models restores cures (load_weights_file) and so imports this module: imported last, a
# cycle that resolves at load time, with ``load`` reading models.load_model at call time.
from . import models  # noqa: E402

"""Where convolutions get padded, how much on each side, and switching the policy.

Padding hides in many places: a conv's own ``padding``/``padding_mode``, the string
``'same'``, timm's ``Conv2dSame`` (TF-SAME computed in forward), an explicit
``ZeroPad2d`` in front of a conv, or a pad module owned by the conv itself
(EfficientNet-Lite's ``Conv2dStaticSamePadding``). Discovery runs one tiny forward pass
so that tensor identity tells which pad feeds which conv and which BatchNorm consumes
which conv, and so that size-dependent padding is computed for the size being probed.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("zeros", "reflect", "replicate", "circular")
SIDES = ("T", "B", "L", "R")
CORNERS = ("TL", "TR", "BL", "BR")
REGIONS = SIDES + CORNERS

# Classes that compute TF-SAME padding from the input size inside forward.
DYNAMIC_SAME = ("Conv2dSame", "Conv2dDynamicSamePadding")
_PAD_TYPES = (
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.CircularPad2d,
)
_PAD_CLASS = {
    "zeros": nn.ZeroPad2d,
    "reflect": nn.ReflectionPad2d,
    "replicate": nn.ReplicationPad2d,
    "circular": nn.CircularPad2d,
}


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)


def _circular_pad_channels_last(x: torch.Tensor, pads: tuple[int, int, int, int]
                                ) -> torch.Tensor:
    """Circular padding written straight into a channels-last buffer (3x faster than
    ``F.pad(mode='circular')``, which also returns NCHW)."""
    l, r, t, b = pads
    n, c, h, w = x.shape
    out = torch.empty((n, c, h + t + b, w + l + r), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    out[:, :, t:t + h, l:l + w] = x
    out[:, :, :t, l:l + w] = x[:, :, h - t:]
    out[:, :, t + h:, l:l + w] = x[:, :, :b]
    out[:, :, :, :l] = out[:, :, :, w:w + l]  # columns last: corners wrap both ways
    out[:, :, :, l + w:] = out[:, :, :, l:l + r]
    return out


def pad_like(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """``F.pad`` (torch order: left, right, top, bottom) keeping a channels-last input
    channels-last: non-constant modes return NCHW, which halves CPU conv speed after."""
    if not _channels_last(x):
        return F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
    if mode == "circular" and min(pads) >= 0 and max(pads[:2]) <= x.shape[-1] \
            and max(pads[2:]) <= x.shape[-2]:
        return _circular_pad_channels_last(x, pads)
    y = F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
    return y.contiguous(memory_format=torch.channels_last)


class PolicyPad(nn.Module):
    """The pad module that ``padding_policy`` puts in place of a pad module."""

    def __init__(self, padding, mode: str):
        super().__init__()
        self.padding = _PAD_CLASS[mode](padding).padding
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_like(x, self.padding, self.mode)

    def extra_repr(self) -> str:
        return f"{self.padding}, mode={self.mode}"


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF-SAME padding (before, after) for one dimension: extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_module_mode(pad: nn.Module) -> str:
    if isinstance(pad, PolicyPad):
        return pad.mode
    if isinstance(pad, nn.ReflectionPad2d):
        return "reflect"
    if isinstance(pad, nn.ReplicationPad2d):
        return "replicate"
    if isinstance(pad, nn.CircularPad2d):
        return "circular"
    if isinstance(pad, nn.ConstantPad2d) and float(pad.value) != 0.0:
        return f"constant({pad.value:g})"
    return "zeros"


def _pad_module_sides(pad: nn.Module) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from torch's (left, right, top, bottom) order."""
    p = pad.padding
    if isinstance(p, int):
        return (p, p, p, p)
    left, right, top, bottom = (int(v) for v in p)
    return (top, bottom, left, right)


@dataclass
class ConvSite:
    """One 2-D convolution as seen on one forward pass at one input size."""

    name: str
    module: nn.Conv2d
    order: int
    kind: str  # conv | same | dynamic_same | pad_module | child_pad | none
    mode: str
    pads: tuple[int, int, int, int]  # top, bottom, left, right at this input size
    in_hw: tuple[int, int]  # input size before padding
    out_hw: tuple[int, int]
    pad_module: str | None = None
    input_is_padded: bool = False  # True when a separate pad module already padded the input
    bn: str | None = None
    bn_sign: torch.Tensor | None = None  # per output channel, +1/-1

    @property
    def kernel(self) -> tuple[int, int]:
        return _pair(self.module.kernel_size)

    @property
    def stride(self) -> tuple[int, int]:
        return _pair(self.module.stride)

    @property
    def dilation(self) -> tuple[int, int]:
        return _pair(self.module.dilation)

    @property
    def is_candidate(self) -> bool:
        """Padded with a static value on some side where the kernel is larger than 1."""
        (kh, kw), (t, b, l, r) = self.kernel, self.pads
        return (kh > 1 and (t > 0 or b > 0)) or (kw > 1 and (l > 0 or r > 0))

    def band_widths(self, in_hw: tuple[int, int] | None = None, out_hw: tuple[int, int] | None = None):
        """Output rows/cols per side (top, bottom, left, right) whose window reads padding."""
        h, w = in_hw or self.in_hw
        ho, wo = out_hw or self.out_hw
        t, b, l, r = self.pads
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        top, bottom = _bands(h, ho, t, kh, sh, dh) if kh > 1 else (0, 0)
        left, right = _bands(w, wo, l, kw, sw, dw) if kw > 1 else (0, 0)
        return top, bottom, left, right

    def row(self) -> dict:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        t, b, l, r = self.pads
        bt, bb, bl, br = self.band_widths()
        return {
            "layer": self.name,
            "order": self.order,
            "module_type": type(self.module).__name__,
            "padding_kind": self.kind,
            "padding_mode": self.mode,
            "pad_module": self.pad_module,
            "pad_top": t, "pad_bottom": b, "pad_left": l, "pad_right": r,
            "kernel_h": kh, "kernel_w": kw, "stride_h": sh, "stride_w": sw,
            "dilation_h": dh, "dilation_w": dw, "groups": self.module.groups,
            "in_channels": self.module.in_channels, "out_channels": self.module.out_channels,
            "in_h": self.in_hw[0], "in_w": self.in_hw[1],
            "out_h": self.out_hw[0], "out_w": self.out_hw[1],
            "band_top": bt, "band_bottom": bb, "band_left": bl, "band_right": br,
            "batchnorm": self.bn,
            "candidate": self.is_candidate,
        }


def _bands(size: int, out: int, before: int, k: int, s: int, d: int) -> tuple[int, int]:
    """Number of output positions whose window starts before 0 / ends after size-1."""
    first = min(out, -(-before // s))  # i*s < before  <=>  i < ceil(before/s)
    last_inside = (before + size - 1 - (k - 1) * d)  # i*s <= this keeps the window inside
    n_inside_end = 0 if last_inside < 0 else min(out, last_inside // s + 1)
    return first, out - n_inside_end


def _static_pads(conv: nn.Conv2d) -> tuple[str, tuple[int, int, int, int]]:
    kh, kw = _pair(conv.kernel_size)
    dh, dw = _pair(conv.dilation)
    if conv.padding == "valid":
        return "conv", (0, 0, 0, 0)
    if conv.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return "same", (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = _pair(conv.padding)
    return "conv", (ph, ph, pw, pw)


_PAD_TYPES = _PAD_TYPES + (PolicyPad,)


def _child_pad(conv: nn.Module) -> tuple[str, nn.Module] | None:
    for name, child in conv.named_children():
        if isinstance(child, _PAD_TYPES):
            return name, child
    return None


def discover(model: nn.Module, input_size: int | tuple[int, int], *, batch: int = 2,
             device: torch.device | str | None = None) -> list[ConvSite]:
    """Every Conv2d of ``model`` with its padding per side at ``input_size``.

    One forward pass on a zero batch; all hooks are removed before returning and the
    model's train/eval state is restored.
    """
    h, w = _pair(input_size)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    try:
        model.eval()
        with discovering(model) as sites, torch.inference_mode():
            model(torch.zeros(batch, _input_channels(model), h, w, device=device))
    finally:
        model.train(was_training)
    return list(sites.values())


@contextmanager
def discovering(model: nn.Module) -> Iterator[dict[nn.Module, ConvSite]]:
    """Hooks that describe every Conv2d (a ``ConvSite``, in call order) during the forward
    passes run inside, at the size they see; a scan discovers on its first batch."""
    names = {m: n for n, m in model.named_modules()}
    # Outputs by id, held weakly: a scan discovers on a real batch, whose maps must not
    # outlive the forward pass; the weak reference still tells a reused id from the tensor.
    pad_out: dict[int, tuple[str, nn.Module, weakref.ref]] = {}
    conv_out: dict[int, tuple[ConvSite, weakref.ref]] = {}
    sites: dict[nn.Module, ConvSite] = {}
    handles = []

    def pad_hook(mod, inp, out):
        pad_out[id(out)] = (names[mod], mod, weakref.ref(out))

    def conv_hook(mod, inp, out):
        if mod in sites:  # weight sharing: keep the first call's geometry
            return
        x = inp[0]
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        src = pad_out.get(id(x))
        child = _child_pad(mod)
        kh, kw = _pair(mod.kernel_size)
        sh, sw = _pair(mod.stride)
        dh, dw = _pair(mod.dilation)
        pad_module, padded = None, False
        if type(mod).__name__ in DYNAMIC_SAME:
            kind, mode = "dynamic_same", "zeros"
            pads = same_padding(hw[0], kh, sh, dh) + same_padding(hw[1], kw, sw, dw)
        elif child is not None:
            kind, pad_module = "child_pad", f"{names[mod]}.{child[0]}"
            mode, pads = _pad_module_mode(child[1]), _pad_module_sides(child[1])
        elif src is not None and src[2]() is x and _static_pads(mod)[1] == (0, 0, 0, 0):
            kind, pad_module, padded = "pad_module", src[0], True
            mode, pads = _pad_module_mode(src[1]), _pad_module_sides(src[1])
            hw = (hw[0] - pads[0] - pads[1], hw[1] - pads[2] - pads[3])
        else:
            kind, pads = _static_pads(mod)
            mode = mod.padding_mode
        if pads == (0, 0, 0, 0):
            kind = "none"
        site = ConvSite(names[mod], mod, len(sites), kind, mode, pads, hw,
                        (int(out.shape[-2]), int(out.shape[-1])), pad_module, padded)
        sites[mod] = site
        conv_out[id(out)] = (site, weakref.ref(out))

    def bn_hook(mod, inp):
        hit = conv_out.get(id(inp[0]))
        if hit is not None and hit[1]() is inp[0] and hit[0].bn is None:
            hit[0].bn = names[mod]
            weight = mod.weight if mod.affine else torch.ones(mod.num_features)
            hit[0].bn_sign = torch.where(weight.detach() < 0, -1.0, 1.0).float().cpu()

    for m in model.modules():
        if isinstance(m, _PAD_TYPES):
            handles.append(m.register_forward_hook(pad_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_pre_hook(bn_hook))
    try:
        yield sites
    finally:
        for hd in handles:
            hd.remove()


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def padded_convs(model: nn.Module, input_size: int | tuple[int, int] = 224, *,
                 all_convs: bool = False) -> pd.DataFrame:
    """One row per candidate conv (DESIGN 4.1) with its padding per side at ``input_size``."""
    rows = [s.row() for s in discover(model, input_size) if all_convs or s.is_candidate]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- policy


def _padded_conv_forward(conv: nn.Conv2d, mode: str):
    """Forward of ``conv`` with its padding (static, 'same' or TF-SAME) done in ``mode``."""
    kh, kw = _pair(conv.kernel_size)
    sh, sw = _pair(conv.stride)
    dh, dw = _pair(conv.dilation)
    dynamic = type(conv).__name__ in DYNAMIC_SAME
    t, b, l, r = _static_pads(conv)[1]

    def forward(x: torch.Tensor) -> torch.Tensor:
        pads = (l, r, t, b)
        if dynamic:
            pads = same_padding(x.shape[-1], kw, sw, dw) + same_padding(x.shape[-2], kh, sh, dh)
        return F.conv2d(pad_like(x, pads, mode), conv.weight, conv.bias, conv.stride, 0,
                        conv.dilation, conv.groups)

    return forward


@contextmanager
def padding_policy(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Switch every padding of ``model`` to ``mode``; restore it exactly on exit.

    Covers conv ``padding``/``padding_mode`` (including ``'same'``), TF-SAME convs that
    pad in forward, and every pad module (swapped for a pad of the new mode with the same
    widths). Padded convs get an instance-level forward that pads in ``mode`` and keeps
    channels-last inputs channels-last; weights are never touched.
    """
    if mode not in MODES:
        raise ValueError(f"padding mode must be one of {', '.join(MODES)}; got {mode!r}")
    undo: list = []
    try:
        for parent in list(model.modules()):
            for cname, child in list(parent.named_children()):
                if isinstance(child, _PAD_TYPES):
                    new = PolicyPad(child.padding, mode)
                    new.train(child.training)
                    setattr(parent, cname, new)
                    undo.append(lambda p=parent, n=cname, c=child: setattr(p, n, c))
        for m in list(model.modules()):
            if not isinstance(m, nn.Conv2d):
                continue
            if mode == "zeros" and type(m).__name__ not in DYNAMIC_SAME:
                # torch's fused zero padding is the fastest path: just set the mode.
                old_mode = m.padding_mode
                m.padding_mode = mode
                undo.append(lambda m=m, o=old_mode: setattr(m, "padding_mode", o))
            elif type(m).__name__ in DYNAMIC_SAME or _static_pads(m)[1] != (0, 0, 0, 0):
                had = "forward" in m.__dict__
                old = m.__dict__.get("forward")
                m.forward = _padded_conv_forward(m, mode)
                undo.append(lambda m=m, had=had, old=old: (setattr(m, "forward", old) if had
                                                           else m.__dict__.pop("forward", None)))
        yield model
    finally:
        for fn in reversed(undo):
            fn()

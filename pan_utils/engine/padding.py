"""Where convolutions get padded, and how much on each side (docs/METHOD.md §2).

Padding hides in many places: a conv's own ``padding``/``padding_mode``, the string
``'same'``, timm's ``Conv2dSame`` (TF-SAME computed in forward), an explicit
``ZeroPad2d`` in front of a conv, or a pad module owned by the conv itself
(EfficientNet-Lite's ``Conv2dStaticSamePadding``). Discovery runs one forward pass so
that tensor identity tells which pad feeds which conv and which BatchNorm consumes
which conv, and so that size-dependent padding is computed for the size being probed.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pandas as pd
import torch
from torch import nn

from .geometry import SIDES, band_counts, pair, same_padding, side_column
from .hooks import eval_mode, hooks
from .state import device_of

MODES = ("zeros", "reflect", "replicate", "circular")

# Classes that compute TF-SAME padding from the input size inside forward: timm's and
# efficientnet_pytorch's (not a dependency, so matched by name like timm's).
DYNAMIC_SAME = ("Conv2dSame", "Conv2dDynamicSamePadding")


def is_dynamic_same(conv: nn.Module) -> bool:
    """True for a conv that computes TF-SAME padding from the input size in its forward
    (timm's ``Conv2dSame``): its pads change with the image size, so discovery computes
    them per size and a padding switch must pad in front of it (docs/METHOD.md §2)."""
    return type(conv).__name__ in DYNAMIC_SAME


def is_tf_same(conv: nn.Module) -> bool:
    """True for a conv that pads the TF-SAME way, the odd pixel after: dynamically
    (``is_dynamic_same``) or through a pad module of its own sized for one image size
    (EfficientNet-Lite's ``Conv2dStaticSamePadding``)."""
    return is_dynamic_same(conv) or "Same" in type(conv).__name__


class PadModule(nn.Module):
    """Base of pad modules that are not torch's own (``policy.PolicyPad``): they carry
    ``padding`` (left, right, top, bottom) and ``mode``, so discovery can read them."""

    padding: tuple[int, int, int, int]
    mode: str


PAD_TYPES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
             nn.CircularPad2d, PadModule)


def pad_module_mode(pad: nn.Module) -> str:
    if isinstance(pad, PadModule):
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


def pad_module_sides(pad: nn.Module) -> tuple[int, int, int, int]:
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
        return pair(self.module.kernel_size)

    @property
    def stride(self) -> tuple[int, int]:
        return pair(self.module.stride)

    @property
    def dilation(self) -> tuple[int, int]:
        return pair(self.module.dilation)

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
        top, bottom = band_counts(h, ho, t, kh, sh, dh) if kh > 1 else (0, 0)
        left, right = band_counts(w, wo, l, kw, sw, dw) if kw > 1 else (0, 0)
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
            **{side_column("pad", k): v for k, v in zip(SIDES, (t, b, l, r))},
            "kernel_h": kh, "kernel_w": kw, "stride_h": sh, "stride_w": sw,
            "dilation_h": dh, "dilation_w": dw, "groups": self.module.groups,
            "in_channels": self.module.in_channels, "out_channels": self.module.out_channels,
            "in_h": self.in_hw[0], "in_w": self.in_hw[1],
            "out_h": self.out_hw[0], "out_w": self.out_hw[1],
            **{side_column("band", k): v for k, v in zip(SIDES, (bt, bb, bl, br))},
            "batchnorm": self.bn,
            "candidate": self.is_candidate,
        }


def static_pads(conv: nn.Conv2d) -> tuple[str, tuple[int, int, int, int]]:
    kh, kw = pair(conv.kernel_size)
    dh, dw = pair(conv.dilation)
    if conv.padding == "valid":
        return "conv", (0, 0, 0, 0)
    if conv.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return "same", (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = pair(conv.padding)
    return "conv", (ph, ph, pw, pw)


def child_pad(conv: nn.Module) -> tuple[str, nn.Module] | None:
    for name, child in conv.named_children():
        if isinstance(child, PAD_TYPES):
            return name, child
    return None


def discover(model: nn.Module, input_size: int | tuple[int, int], *, batch: int = 2,
             device: torch.device | str | None = None) -> list[ConvSite]:
    """Every Conv2d of ``model`` with its per-side padding at ``input_size``, found by running it.

    A forward pass sees padding wherever it hides (pad modules, TF-SAME computed in
    forward) and which BatchNorm consumes each conv (docs/METHOD.md §2.3). It runs on a
    zero batch; all hooks are removed before returning and the model's train/eval state is
    restored.

    Args:
        model: the network.
        input_size: H or (H, W) of the input.
        batch: images in the zero batch.
        device: where to run it; the model's device when None.

    Returns:
        One ``ConvSite`` per Conv2d, in call order.

    Example:
        >>> sites = discover(model, 224)
        >>> [s.name for s in sites if s.is_candidate][:3]
    """
    h, w = pair(input_size)
    device = device_of(model) if device is None else device
    with eval_mode(model), discovering(model) as sites, torch.inference_mode():
        model(torch.zeros(batch, _input_channels(model), h, w, device=device))
    return list(sites.values())


@contextmanager
def discovering(model: nn.Module) -> Iterator[dict[nn.Module, ConvSite]]:
    """Describe every Conv2d in the passes run inside: a scan discovers on its first batch.

    Hooks on pad modules, convs and BatchNorms read the padding as it is applied
    (docs/METHOD.md §2.3), without an extra forward pass.

    Args:
        model: the network.

    Yields:
        {conv module: ``ConvSite``}, filled in call order at the size each conv sees; the
        hooks are removed on exit, also on error.

    Example:
        >>> with discovering(model) as sites, torch.inference_mode():
        ...     model(x)
        >>> candidates = [s for s in sites.values() if s.is_candidate]
    """
    names = {m: n for n, m in model.named_modules()}
    # Outputs by id, held weakly: a scan discovers on a real batch, whose maps must not
    # outlive the forward pass; the weak reference still tells a reused id from the tensor.
    pad_out: dict[int, tuple[str, nn.Module, weakref.ref]] = {}
    conv_out: dict[int, tuple[ConvSite, weakref.ref]] = {}
    sites: dict[nn.Module, ConvSite] = {}

    def pad_hook(mod, inp, out):
        pad_out[id(out)] = (names[mod], mod, weakref.ref(out))

    def conv_hook(mod, inp, out):
        if mod in sites:  # weight sharing: keep the first call's geometry
            return
        x = inp[0]
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        src = pad_out.get(id(x))
        child = child_pad(mod)
        kh, kw = pair(mod.kernel_size)
        sh, sw = pair(mod.stride)
        dh, dw = pair(mod.dilation)
        pad_module, padded = None, False
        if is_dynamic_same(mod):
            kind, mode = "dynamic_same", "zeros"
            pads = same_padding(hw[0], kh, sh, dh) + same_padding(hw[1], kw, sw, dw)
        elif child is not None:
            kind, pad_module = "child_pad", f"{names[mod]}.{child[0]}"
            mode, pads = pad_module_mode(child[1]), pad_module_sides(child[1])
        elif src is not None and src[2]() is x and static_pads(mod)[1] == (0, 0, 0, 0):
            kind, pad_module, padded = "pad_module", src[0], True
            mode, pads = pad_module_mode(src[1]), pad_module_sides(src[1])
            hw = (hw[0] - pads[0] - pads[1], hw[1] - pads[2] - pads[3])
        else:
            kind, pads = static_pads(mod)
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
            if not weight.is_meta:  # a model on the meta device has shapes, no values
                hit[0].bn_sign = torch.where(weight.detach() < 0, -1.0, 1.0).float().cpu()

    forward, pre = [], []
    for m in model.modules():
        if isinstance(m, PAD_TYPES):
            forward.append((m, pad_hook))
        elif isinstance(m, nn.Conv2d):
            forward.append((m, conv_hook))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            pre.append((m, bn_hook))
    with hooks(forward, pre):
        yield sites


def _input_channels(model: nn.Module) -> int:
    """The channels the model takes: its own declaration (timm's ``pretrained_cfg`` or
    ``in_chans``) before the first conv's, which a parameter-free layer in front of it
    may have changed (TResNet's space-to-depth turns 3 channels into 48)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return int(cfg["input_size"][0])
    declared = getattr(model, "in_chans", None)
    if isinstance(declared, int):
        return declared
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def padded_convs(model: nn.Module, input_size: int | tuple[int, int] = 224, *,
                 all_convs: bool = False) -> pd.DataFrame:
    """Every candidate conv and its padding per side: where PANs can arise (docs/METHOD.md §2).

    Args:
        model: the network.
        input_size: H or (H, W); TF-SAME padding and the band widths depend on it.
        all_convs: list every Conv2d, not only the candidates (padded on some side where
            the kernel is larger than 1).

    Returns:
        One row per conv (``ConvSite.row``), in call order: layer, order, module_type,
        padding_kind, padding_mode, pad_module, pad_* and band_* per side, kernel, stride
        and dilation per axis, groups, in/out channels, in/out size, batchnorm, candidate.

    Example:
        >>> convs = padded_convs(model, 224)
        >>> convs[["layer", "padding_kind", "pad_top", "band_top"]].head()
    """
    rows = [s.row() for s in discover(model, input_size) if all_convs or s.is_candidate]
    return pd.DataFrame(rows)



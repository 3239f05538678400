"""Switching every padding of a model to another mode, and back (docs/METHOD.md §5, §7).

The circular null, the padding swaps of the ablation chapter and the padding-policy
comparison all need the same network with another border; weights are never touched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import pair, same_padding
from .padding import MODES, PAD_TYPES, PadModule, is_dynamic_same, static_pads

PAD_CLASS = {
    "zeros": nn.ZeroPad2d,
    "reflect": nn.ReflectionPad2d,
    "replicate": nn.ReplicationPad2d,
    "circular": nn.CircularPad2d,
}


def is_channels_last(x: torch.Tensor) -> bool:
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
    if not is_channels_last(x):
        return F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
    if mode == "circular" and min(pads) >= 0 and max(pads[:2]) <= x.shape[-1] \
            and max(pads[2:]) <= x.shape[-2]:
        return _circular_pad_channels_last(x, pads)
    y = F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
    return y.contiguous(memory_format=torch.channels_last)


class PolicyPad(PadModule):
    """The pad module that ``padding_policy`` puts in place of a pad module."""

    def __init__(self, padding, mode: str):
        super().__init__()
        self.padding = PAD_CLASS[mode](padding).padding
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_like(x, self.padding, self.mode)

    def extra_repr(self) -> str:
        return f"{self.padding}, mode={self.mode}"


def _padded_conv_forward(conv: nn.Conv2d, mode: str):
    """Forward of ``conv`` with its padding (static, 'same' or TF-SAME) done in ``mode``."""
    kh, kw = pair(conv.kernel_size)
    sh, sw = pair(conv.stride)
    dh, dw = pair(conv.dilation)
    dynamic = is_dynamic_same(conv)
    t, b, l, r = static_pads(conv)[1]

    def forward(x: torch.Tensor) -> torch.Tensor:
        pads = (l, r, t, b)
        if dynamic:
            pads = same_padding(x.shape[-1], kw, sw, dw) + same_padding(x.shape[-2], kh, sh, dh)
        return F.conv2d(pad_like(x, pads, mode), conv.weight, conv.bias, conv.stride, 0,
                        conv.dilation, conv.groups)

    return forward


@contextmanager
def padding_policy(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Every padding of ``model`` in ``mode`` for the block: the same weights, another border.

    Used by the circular null and the padding swaps (docs/METHOD.md §5, §7). Covers conv
    ``padding``/``padding_mode`` (including ``'same'``), TF-SAME convs that pad in forward,
    and every pad module (swapped for a pad of the new mode with the same widths). Padded
    convs get an instance-level forward that pads in ``mode`` and keeps
    channels-last inputs channels-last; weights are never touched.

    Args:
        model: the network.
        mode: one of ``padding.MODES``: 'zeros', 'reflect', 'replicate', 'circular'.

    Yields:
        ``model``; restored exactly on exit, also on error.

    Example:
        >>> with padding_policy(model, "circular"), torch.inference_mode():
        ...     logits = model(x)
    """
    if mode not in MODES:
        raise ValueError(f"padding mode must be one of {', '.join(MODES)}; got {mode!r}")
    undo: list = []
    try:
        for parent in list(model.modules()):
            for cname, child in list(parent.named_children()):
                if isinstance(child, PAD_TYPES):
                    new = PolicyPad(child.padding, mode)
                    new.train(child.training)
                    setattr(parent, cname, new)
                    undo.append(lambda p=parent, n=cname, c=child: setattr(p, n, c))
        for m in list(model.modules()):
            if not isinstance(m, nn.Conv2d):
                continue
            if mode == "zeros" and not is_dynamic_same(m):
                # torch's fused zero padding is the fastest path: just set the mode.
                old_mode = m.padding_mode
                m.padding_mode = mode
                undo.append(lambda m=m, o=old_mode: setattr(m, "padding_mode", o))
            elif is_dynamic_same(m) or static_pads(m)[1] != (0, 0, 0, 0):
                had = "forward" in m.__dict__
                old = m.__dict__.get("forward")
                m.forward = _padded_conv_forward(m, mode)
                undo.append(lambda m=m, had=had, old=old: (setattr(m, "forward", old) if had
                                                           else m.__dict__.pop("forward", None)))
        yield model
    finally:
        for fn in reversed(undo):
            fn()

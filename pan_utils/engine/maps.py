"""Mean activation maps of chosen channels, averaged inside a forward hook so that no
per-image map is kept (what a PAN looks like, docs/METHOD.md §6)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .hooks import eval_mode, hooks
from .padding import discover
from .probes import iter_batches
from .state import device_of


class MapRecorder:
    """Running sums of chosen channels' maps, filled by its ``hook``."""

    def __init__(self, channels: Sequence[int], sign: Sequence[float] | None = None):
        self.channels = [int(c) for c in channels]
        self.sign = None if sign is None else torch.as_tensor(sign, dtype=torch.float64)
        self.total: torch.Tensor | None = None
        self.n = 0

    def hook(self, module: nn.Module, inp, out: torch.Tensor) -> None:
        y = out[:, self.channels].to(torch.float64).sum(0).cpu()
        if self.total is None:
            self.total = torch.zeros_like(y)
        elif self.total.shape != y.shape:
            raise ValueError(f"map size changed from {tuple(self.total.shape[1:])} to "
                             f"{tuple(y.shape[1:])}: probe images must share one size")
        self.total += y
        self.n += out.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """(len(channels), H, W) mean map; BatchNorm sign applied when one was given."""
        if self.total is None:
            raise ValueError("no image went through the recorded layer")
        m = self.total / self.n
        return m * self.sign.view(-1, 1, 1) if self.sign is not None else m


@contextmanager
def recording(model: nn.Module, layers: Mapping[str, Sequence[int]],
              signs: Mapping[str, Sequence[float]] | None = None
              ) -> Iterator[dict[str, MapRecorder]]:
    """Chosen channels' mean maps, summed in hooks, no per-image map kept (docs/METHOD.md §6).

    Args:
        model: the network.
        layers: {layer name: channels}; an unknown name raises ``KeyError``.
        signs: {layer name: one sign per channel}, e.g. the BatchNorm signs of ``bn_signs``.

    Yields:
        {layer name: ``MapRecorder``}, whose ``mean`` is the (len(channels), H, W) mean
        map; the hooks are removed on exit, also on error.

    Example:
        >>> with recording(model, {"features.0.0": [5]}) as recs, torch.inference_mode():
        ...     model(x)
        >>> recs["features.0.0"].mean.shape
    """
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise KeyError(f"no layer named {', '.join(missing)} in the model")
    recs = {n: MapRecorder(ch, (signs or {}).get(n)) for n, ch in layers.items()}
    with hooks([(modules[n], recs[n].hook) for n in layers]):
        yield recs


def record_maps(model: nn.Module, layers: Mapping[str, Sequence[int]], images, *,
                batch_size: int = 32, signs: Mapping[str, Sequence[float]] | None = None
                ) -> dict[str, torch.Tensor]:
    """The mean output map over ``images`` of chosen channels of several layers, one pass.

    Args:
        model: the network.
        layers: {layer name: channels}.
        images: an N×C×H×W tensor or an iterable of batches.
        signs: {layer name: one sign per channel}, e.g. the BatchNorm signs of ``bn_signs``.

    Returns:
        {layer name: (len(channels), H, W) float64 tensor}.

    Example:
        >>> maps = record_maps(model, {"features.1.conv.0.0": [3, 7]}, images)
    """
    device = device_of(model)
    with eval_mode(model), recording(model, layers, signs) as recs, torch.inference_mode():
        for x in iter_batches(images, batch_size):
            model(x.to(device))
    return {n: r.mean for n, r in recs.items()}


def bn_signs(model: nn.Module, size: int) -> dict[str, np.ndarray]:
    """Per padded conv, the sign of the BatchNorm weight that consumes it (+1 without one)."""
    return {s.name: (s.bn_sign.numpy() if s.bn_sign is not None
                     else np.ones(s.module.out_channels)) for s in discover(model, size)}

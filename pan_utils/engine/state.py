"""Where a model runs and the state of its weights: its device, a fresh initialisation
and BatchNorm statistics fitted to it (docs/METHOD.md §5.2)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .hooks import eval_mode
from .probes import iter_batches


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free module)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def recalibrate_batchnorm(model: nn.Module, images, *, batch_size: int = 32) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images``, in place.

    A freshly initialised network keeps BatchNorm statistics of mean 0 and variance 1,
    which do not match its activations: unnormalised, they saturate deep layers and
    inflate a random-init PAN count (docs/METHOD.md §5.2). As ``torch.optim.swa_utils.
    update_bn`` does, the statistics are reset and averaged cumulatively over the images;
    unlike it, only the BatchNorm layers run in train mode, so dropout and stochastic
    depth (EfficientNet's drop-connect) stay off and the result is deterministic. Weights
    are not touched and the model is returned in eval mode.

    Args:
        model: the network (on the device the images should go to).
        images: an N×C×H×W tensor or an iterable of batches, disjoint from the scan set.

    Returns:
        ``model``.

    Example:
        >>> baseline = recalibrate_batchnorm(random_init(model, seed=1), calibration_images)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    device = device_of(model)
    with eval_mode(model), torch.inference_mode(False), torch.no_grad():
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over every batch
            bn.train()
        try:
            for x in iter_batches(images, batch_size):
                model(x.to(device))
        finally:
            for bn, momentum in zip(norms, momenta):
                bn.momentum = momentum
    return model.eval()


def random_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with fresh weights: the untrained baseline (docs/METHOD.md §5.2).

    Args:
        model: the network; left unchanged.
        seed: seeds the initialisation; the global random state is left as it was.

    Returns:
        The copy, in eval mode.

    Example:
        >>> baseline_pans = find_pans(random_init(model, seed=0), images)
    """
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    return fresh.eval()

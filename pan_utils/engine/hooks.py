"""Temporary hooks and eval mode as context managers: model state is global, so every
change to it is undone on exit, also on error (as TransformerLens' ``hooks()`` and
netdissect's ``nethook`` do)."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterable, Iterator

from torch import nn

Hook = Callable[..., object]


@contextmanager
def hooks(forward: Iterable[tuple[nn.Module, Hook]] = (),
          pre: Iterable[tuple[nn.Module, Hook]] = ()) -> Iterator[None]:
    """Forward hooks and pre-hooks for the block only: one left behind would alter later passes.

    Args:
        forward: (module, hook) pairs for ``register_forward_hook``
            (``hook(module, inputs, output)``).
        pre: (module, hook) pairs for ``register_forward_pre_hook``
            (``hook(module, inputs)``).

    Yields:
        None; every hook is removed on exit, also on error.

    Example:
        >>> seen = []
        >>> with hooks(forward=[(model.conv1, lambda m, i, o: seen.append(o.shape))]):
        ...     model(x)
    """
    with ExitStack() as stack:
        for module, fn in pre:
            stack.callback(module.register_forward_pre_hook(fn).remove)
        for module, fn in forward:
            stack.callback(module.register_forward_hook(fn).remove)
        yield


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block: measuring never changes BatchNorm statistics.

    Args:
        model: the network.

    Yields:
        ``model``; each module's own training flag is restored on exit, also on error (a
        model with some modules frozen in eval keeps them so).

    Example:
        >>> with eval_mode(model), torch.inference_mode():
        ...     logits = model(x)
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in flags:
            m.training = was

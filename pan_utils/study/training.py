"""Training and testing a small CNN on a task (docs/METHOD.md §8)."""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.hooks import eval_mode
from ..engine.progress import progress_bar
from .tasks import TaskData


def _train_batches(data: TaskData, batch_size: int, gen: torch.Generator
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if data.train is None:
        perm = torch.randperm(data.n_train, generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            yield data.x_train[idx], data.y_train[idx]
    else:
        from torch.utils.data import DataLoader

        yield from DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=gen,
                              num_workers=0, drop_last=False)


def _test_batches(data: TaskData, batch_size: int):
    if data.test is None:
        for i in range(0, data.n_test, batch_size):
            yield data.x_test[i:i + batch_size], data.y_test[i:i + batch_size]
    else:
        from torch.utils.data import DataLoader

        yield from DataLoader(data.test, batch_size=batch_size, shuffle=False, num_workers=0)


def evaluate(model: nn.Module, data: TaskData, *, batch_size: int = 256,
             device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy on the task's test split (model in eval mode, state restored)."""
    correct = total = 0
    with eval_mode(model), torch.inference_mode():
        for x, y in _test_batches(data, batch_size):
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            correct += int((model(x).argmax(1).cpu() == y).sum())
            total += int(y.numel())
    return correct / max(total, 1)


def train_model(model: nn.Module, data: TaskData, *, epochs: int = 4, batch_size: int = 128,
                lr: float = 3e-3, weight_decay: float = 5e-4, seed: int = 0,
                device: str | torch.device = "cpu", max_steps: int | None = None,
                progress: bool = True, desc: str = "train",
                on_epoch: Callable[[int, nn.Module], None] | None = None) -> dict:
    """AdamW with a one-cycle schedule; deterministic data order from ``seed``.

    ``on_epoch(epoch, model)`` (epochs counted from 1) is called after every pass over the
    training data, and after the last step when ``max_steps`` ends training mid-epoch. It
    runs with the model in eval mode and without gradients, and the global torch RNG state
    is restored afterwards, so a callback that only measures leaves training bit-identical
    to a run without it. Its time is not counted in ``train_seconds``.

    Returns {'train_seconds', 'steps', 'epochs', 'final_loss'}; the model is left in eval
    mode."""
    device = torch.device(device)
    model.to(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps_per_epoch = math.ceil(data.n_train / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps,
                                                                    epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1),
                                                pct_start=0.25)
    model.train()
    step, epoch, loss_v = 0, 0, float("nan")
    spent = 0.0  # seconds inside on_epoch, not training
    t0 = time.perf_counter()
    bar = progress_bar(total=total, desc=desc, unit="step", enabled=progress, leave=False)
    # Training stays in NCHW: oneDNN's channels-last weight gradient for 1x1 convolutions
    # (torch 2.15, AVX2) can deadlock in its OpenMP barrier (about one run in three on the
    # 2-core CI machine); in NCHW it never hung in 16 runs and is only ~1.4x slower.
    try:
        while step < total:
            for x, y in _train_batches(data, batch_size, gen):
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_v = float(loss.detach())
                bar.update(1)
                if step >= total:
                    break
            epoch += 1
            if on_epoch is not None:
                spent += _measure(on_epoch, epoch, model)
    finally:
        bar.close()
        model.eval()
    return {"train_seconds": time.perf_counter() - t0 - spent, "steps": step,
            "epochs": epoch, "final_loss": loss_v}


def _measure(on_epoch: Callable[[int, nn.Module], None], epoch: int, model: nn.Module
             ) -> float:
    """Run the epoch callback in eval mode, without gradients, leaving the RNG state and
    every module's training flag as they were; returns its seconds."""
    t = time.perf_counter()
    rng = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        with eval_mode(model), torch.no_grad():
            on_epoch(epoch, model)
    finally:
        torch.set_rng_state(rng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
    return time.perf_counter() - t

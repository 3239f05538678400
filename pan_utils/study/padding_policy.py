"""Chapter 4: the same small CNN trained from scratch under each padding policy, tested,
and scanned with the engine and rule of chapter 1 (docs/METHOD.md §8)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..engine.maps import record_maps
from ..engine.padding import discover
from ..engine.progress import progress_bar
from ..engine.rule import decide_pans
from ..engine.scan import ScanError, find_pans
from .identification import maps_table
from .nets import POLICIES, build_model, n_parameters
from .tasks import TaskData, dissimilar_split
from .training import evaluate, train_model


def candidate_channels(model: nn.Module, image_size: int) -> int:
    """Output channels of convolutions that read padding at ``image_size`` (docs/METHOD.md §2)."""
    return sum(s.module.out_channels for s in discover(model, image_size) if s.is_candidate)


def top_border_channels(scores: pd.DataFrame, *, consistency: float = 0.95, n: int = 6
                        ) -> pd.DataFrame:
    """The ``n`` channels with the largest consistent border contrast |d| (any side), in
    the PAN table's format: what the rule looked at when nothing passed tau."""
    nat = scores[(scores["mode"] == "native") & scores["applicable"]
                 & (scores["consistency"] >= consistency)].copy()
    if nat.empty:
        return pd.DataFrame(columns=["layer", "channel", "sides", "polarity", "score"])
    nat["score"] = nat["d"].abs()
    best = nat.sort_values("score", ascending=False).drop_duplicates(["layer", "channel"])
    best = best.head(n)
    return pd.DataFrame({"layer": best["layer"].to_numpy(),
                         "channel": best["channel"].astype(int).to_numpy(),
                         "sides": best["side"].to_numpy(),
                         "polarity": np.where(best["d"] > 0, "+", "-"),
                         "score": best["score"].to_numpy()})


def scan_trained(model: nn.Module, images: torch.Tensor, *, tau: float = 3.0,
                 consistency: float = 0.95, batch_size: int = 128, progress: bool = False
                 ) -> tuple[pd.DataFrame, dict]:
    """PANs of a trained net with notebook 01's rule (circular null included).

    Returns (pans, counts): counts has pans, candidates, pan_fraction (0 when there are
    no candidates), pans_without_null (the rule without the null: for a circular net the
    null *is* the model, so this is the only count that can be non-zero), pans_half_tau
    (the rule at tau/2, a sensitivity check) and max_abs_d (the largest consistent border
    contrast of any candidate channel; 0 without candidates). When no channel is a PAN,
    the returned table holds the top border-contrast channels instead, with ``is_pan``
    False, so their maps can still be shown."""
    size = int(images.shape[-1])
    n_cand = candidate_channels(model, size)
    none = {"pans": 0, "candidates": 0, "pan_fraction": 0.0, "pans_without_null": 0,
            "pans_half_tau": 0, "max_abs_d": 0.0}
    empty = pd.DataFrame(columns=["layer", "channel", "sides", "polarity", "score", "is_pan"])
    if n_cand == 0:
        return empty, none
    try:
        pans, scores = find_pans(model, images, tau=tau, consistency=consistency,
                                 batch_size=batch_size, progress=progress, return_scores=True)
    except ScanError:
        return empty, none
    raw = decide_pans(scores, tau=tau, consistency=consistency, null_mode=None)
    half = decide_pans(scores, tau=tau / 2, consistency=consistency)
    top = top_border_channels(scores, consistency=consistency)
    counts = {"pans": len(pans), "candidates": n_cand, "pan_fraction": len(pans) / n_cand,
              "pans_without_null": len(raw), "pans_half_tau": len(half),
              "max_abs_d": float(top["score"].max()) if len(top) else 0.0}
    table = pans.assign(is_pan=True) if len(pans) else top.assign(is_pan=False)
    return table, counts


def run_one(data: TaskData, policy: str, seed: int, *, width: int = 16, depth: int = 1,
            epochs: int = 4, batch_size: int = 128, lr: float = 3e-3, n_scan: int = 256,
            tau: float = 3.0, consistency: float = 0.95, device: str = "cpu",
            max_steps: int | None = None, progress: bool = True,
            epoch_log: list | None = None) -> tuple[dict, nn.Module, pd.DataFrame]:
    """Train one (task, policy, seed), test it, scan it: (row, model, pans).

    With ``epoch_log`` (a list), the net is also tested and scanned after every epoch
    (same scan images and rule) and one dict per epoch is appended: task, policy, seed,
    epoch, pans, pans_half_tau, max_abs_d, test_accuracy. The last epoch's scan is the
    final one, so tracking costs one scan per earlier epoch.

    The row holds no wall-clock time (a rerun must give the same table);
    ``run_comparison`` records ``fit_seconds`` in the table's ``attrs`` instead."""
    model = build_model(policy, len(data.classes), width=width, depth=depth,
                        image_size=data.image_size, seed=seed)
    scan_x = data.x_test[:n_scan].to(device)
    last: dict = {}

    def track(epoch: int, net: nn.Module) -> None:
        table, counts = scan_trained(net, scan_x, tau=tau, consistency=consistency)
        acc = evaluate(net, data, device=device)
        last.update(epoch=epoch, table=table, counts=counts, acc=acc)
        epoch_log.append({"task": data.name, "policy": policy, "seed": seed, "epoch": epoch,
                          "pans": counts["pans"], "pans_half_tau": counts["pans_half_tau"],
                          "max_abs_d": counts["max_abs_d"], "test_accuracy": acc})

    fit = train_model(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      device=device, max_steps=max_steps, progress=progress,
                      desc=f"{data.name}/{policy}/s{seed}",
                      on_epoch=track if epoch_log is not None else None)
    if last.get("epoch") == fit["epochs"]:  # the model the last callback saw
        acc, pans, counts = last["acc"], last["table"], last["counts"]
    else:
        acc = evaluate(model, data, device=device)
        pans, counts = scan_trained(model, scan_x, tau=tau, consistency=consistency)
    row = _Row({"task": data.name, "policy": policy, "seed": seed, "test_accuracy": acc,
           "chance": data.chance, **counts,
           "epochs": epochs, "steps": fit["steps"], "n_train": data.n_train,
           "n_test": data.n_test, "n_scan": int(scan_x.shape[0]),
           "image_size": data.image_size, "width": width, "depth": depth,
           "parameters": n_parameters(model), "final_loss": fit["final_loss"]})
    row.attrs = {"train_seconds": fit["train_seconds"]}  # type: ignore[attr-defined]
    return row, model, pans


class _Row(dict):
    """A table row with room for what must not go in the table (wall-clock time)."""

    attrs: dict


def run_comparison(tasks: Sequence[TaskData], policies: Sequence[str] = POLICIES,
                   seeds: Sequence[int] = (0, 1, 2), *, keep: tuple[str, int] = ("zeros", 0),
                   progress: bool = True, epoch_log: list | None = None, **kw
                   ) -> tuple[pd.DataFrame, dict, dict]:
    """Every task × policy × seed. Returns (table, kept models, their PANs), keeping the
    models of policy/seed ``keep`` per task (for the activation-map figure). With
    ``epoch_log`` (a list), every run appends its per-epoch rows (see ``run_one``).

    Training times go in ``table.attrs["timings"]``, not in a column: ``write_table``
    hands them to the runner's manifest, so the written table is the same on a rerun."""
    rows, models, pans_kept = [], {}, {}
    jobs = [(t, p, s) for t in tasks for p in policies for s in seeds]
    for data, policy, seed in progress_bar(jobs, desc="trainings", enabled=progress):
        row, model, pans = run_one(data, policy, seed, progress=False, epoch_log=epoch_log,
                                   **kw)
        rows.append(row)
        if (policy, seed) == tuple(keep):
            models[data.name], pans_kept[data.name] = model, pans
    table = pd.DataFrame(rows)
    table.attrs["timings"] = {"train_seconds": {
        f"{r['task']}/{r['policy']}/seed{r['seed']}": round(r.attrs["train_seconds"], 2)
        for r in rows}}
    return table, models, pans_kept


def run_generalisation(data: TaskData, policies: Sequence[str] = POLICIES,
                       seeds: Sequence[int] = (0, 1, 2), *, progress: bool = True, **kw
                       ) -> pd.DataFrame:
    """Kayhan & van Gemert's protocol (docs/METHOD.md §8.4) on ``tasks.generalisation_task``:
    every policy × seed trained on the left-half positions, tested at the same positions
    (``similar``) and at right-half positions never seen in training (``dissimilar``).
    One row per run: accuracies on both splits, their gap, and the scan counts (on
    similar-split images)."""
    far = dissimilar_split(data)
    rows = []
    jobs = [(p, s) for p in policies for s in seeds]
    for policy, seed in progress_bar(jobs, desc="generalisation", enabled=progress):
        row, model, _ = run_one(data, policy, seed, progress=False, **kw)
        dev = kw.get("device", "cpu")
        row["similar_accuracy"] = row.pop("test_accuracy")
        row["dissimilar_accuracy"] = evaluate(model, far, device=dev)
        row["gap"] = row["similar_accuracy"] - row["dissimilar_accuracy"]
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_generalisation(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds per policy of the similar and dissimilar accuracies and
    their gap (sd 0 with one seed)."""
    g = table.groupby("policy", sort=False)
    out = g.agg(seeds=("seed", "nunique"), chance=("chance", "first"),
                similar_mean=("similar_accuracy", "mean"),
                similar_sd=("similar_accuracy", "std"),
                dissimilar_mean=("dissimilar_accuracy", "mean"),
                dissimilar_sd=("dissimilar_accuracy", "std"),
                gap_mean=("gap", "mean"), gap_sd=("gap", "std"),
                pans_mean=("pans", "mean"), pans_half_tau_mean=("pans_half_tau", "mean"),
                max_abs_d_mean=("max_abs_d", "mean")).reset_index()
    return out.fillna({"similar_sd": 0.0, "dissimilar_sd": 0.0, "gap_sd": 0.0})


def summarize_epochs(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per task × policy × epoch: mean and sd over seeds of the PAN counts at tau and
    tau/2, max |d| and test accuracy (sd 0 with one seed)."""
    g = epochs.groupby(["task", "policy", "epoch"], sort=False)
    out = g.agg(seeds=("seed", "nunique"), pans_mean=("pans", "mean"),
                pans_sd=("pans", "std"), pans_half_tau_mean=("pans_half_tau", "mean"),
                pans_half_tau_sd=("pans_half_tau", "std"),
                max_abs_d_mean=("max_abs_d", "mean"), max_abs_d_sd=("max_abs_d", "std"),
                accuracy_mean=("test_accuracy", "mean")).reset_index()
    return out.fillna({"pans_sd": 0.0, "pans_half_tau_sd": 0.0, "max_abs_d_sd": 0.0})


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per task × policy (std 0 with one seed)."""
    g = table.groupby(["task", "policy"], sort=False)
    out = g.agg(seeds=("seed", "nunique"), accuracy_mean=("test_accuracy", "mean"),
                accuracy_std=("test_accuracy", "std"), chance=("chance", "first"),
                pans_mean=("pans", "mean"), candidates=("candidates", "first"),
                pan_fraction_mean=("pan_fraction", "mean"),
                pan_fraction_std=("pan_fraction", "std"),
                pans_without_null_mean=("pans_without_null", "mean"),
                pans_half_tau_mean=("pans_half_tau", "mean"),
                max_abs_d_mean=("max_abs_d", "mean")).reset_index()
    out = out.fillna({"accuracy_std": 0.0, "pan_fraction_std": 0.0})
    out.attrs = {}  # the timings stay with the per-training table
    return out


def pan_mean_maps(model: nn.Module, images: torch.Tensor, pans: pd.DataFrame, *,
                  n: int = 6, batch_size: int = 128) -> pd.DataFrame:
    """Mean activation map over ``images`` of the ``n`` highest-scoring PANs (conv
    output, BatchNorm sign folded in as in the scan), one row per (pan, y, x)."""
    cols = ["pan", "layer", "channel", "sides", "score", "is_pan", "y", "x", "activation"]
    if pans is None or len(pans) == 0:
        return pd.DataFrame(columns=cols)
    top = pans.sort_values("score", ascending=False).head(n).reset_index(drop=True)
    top = top.assign(pan=top.index, channel=top["channel"].astype(int),
                     is_pan=top["is_pan"].astype(bool) if "is_pan" in top else True)
    sites = {s.name: s for s in discover(model, int(images.shape[-1]))}
    layers = {layer: g["channel"].tolist() for layer, g in top.groupby("layer", sort=False)}
    signs = {layer: [float(sites[layer].bn_sign[c]) if sites[layer].bn_sign is not None
                     else 1.0 for c in chans] for layer, chans in layers.items()}
    maps = record_maps(model, layers, images, batch_size=batch_size, signs=signs)
    frames = [maps_table(maps[layer][[chans.index(c) for c in g["channel"]]].cpu(),
                         g[["pan", "layer", "channel", "sides", "score", "is_pan"]])
              for layer, g in top.groupby("layer", sort=False)
              for chans in [layers[layer]]]
    out = pd.concat(frames, ignore_index=True).rename(
        columns={"row": "y", "col": "x", "value": "activation"})
    return out.sort_values(["pan", "y", "x"], ignore_index=True)[cols]


def scale_table(runs: dict[str, tuple[pd.DataFrame, pd.DataFrame]], *, task: str = "location",
                policy: str = "zeros") -> pd.DataFrame:
    """The size/length trend of one task × policy (docs/METHOD.md §8.5): for each named
    configuration, given as (run table, its per-epoch table), one row per epoch with the
    net's size, the seeds, and the mean (and the minimum over seeds) of the PAN counts
    at tau and tau/2 and of max |d|; ``final`` marks the trained net's last epoch."""
    rows = []
    for config, (table, epochs) in runs.items():
        t = table[(table["task"] == task) & (table["policy"] == policy)]
        e = epochs[(epochs["task"] == task) & (epochs["policy"] == policy)]
        if t.empty:
            continue
        for epoch, g in e.groupby("epoch"):
            rows.append({"config": config, "task": task, "policy": policy,
                         "width": int(t["width"].iloc[0]), "depth": int(t["depth"].iloc[0]),
                         "n_train": int(t["n_train"].iloc[0]),
                         "params": int(t["parameters"].iloc[0]),
                         "epochs": int(t["epochs"].iloc[0]), "epoch": int(epoch),
                         "final": bool(epoch == int(t["epochs"].iloc[0])),
                         "seeds": int(g["seed"].nunique()), "pans": g["pans"].mean(),
                         "pans_min": int(g["pans"].min()),
                         "pans_half_tau": g["pans_half_tau"].mean(),
                         "max_abs_d": g["max_abs_d"].mean(),
                         "test_accuracy": g["test_accuracy"].mean()})
    return pd.DataFrame(rows)

"""Chapter 4: the same small CNN trained from scratch under each padding policy, tested,
and scanned with the engine and rule of chapter 1 (docs/METHOD.md §8)."""

from __future__ import annotations

from dataclasses import dataclass
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
from . import tasks as _tasks
from .nets import POLICIES, build_model, n_parameters
from .settings import Settings
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


# --------------------------------------------------------------------------- chapter entry point,
# claims and findings (the notebook, the README findings and the tests call these)

# Verdict thresholds (docs/METHOD.md §11.2).
SOLVED_FRACTION = 0.5  # a policy *solves* a task at mean accuracy >= chance + 0.5 (1 - chance)
AT_CHANCE_SD = 2.0  # ...is *at chance* within 2 seed sds of chance...
AT_CHANCE_MIN = 0.05  # ...or within 0.05, whichever is larger
NOISE_FLOOR = 0.01  # generalisation verdict: the gap difference must exceed max(seed sds, 0.01)
BATCH_SIZE = 128  # every training of the chapter (docs/METHOD.md §8.3)
TABLES = ("padding_policy", "padding_policy_summary", "padding_policy_epochs",
          "padding_policy_scale", "padding_policy_pan_maps",
          "padding_policy_generalisation_runs", "padding_policy_generalisation")


@dataclass
class PolicyTasks:
    """The chapter's data: the comparison's tasks (content, location), the scale run's
    location task and the generalisation task."""

    comparison: list[TaskData]
    scale: TaskData
    generalisation: TaskData


def policy_tasks(settings: Settings) -> PolicyTasks:
    """The tasks of docs/METHOD.md §8.2 and §8.4 for ``settings`` (an ImageFolder replaces
    the content task when ``data_dir`` is set)."""
    s, n_test = settings, settings.train_test_patches
    if s.data_dir:
        content = _tasks.imagefolder_task(s.data_dir, size=32, seed=s.seed,
                                         n_scan=s.train_scan_images)
    else:
        content = _tasks.content_task(s.train_patches, n_test, size=32, seed=s.seed)
    location = _tasks.location_task(s.train_patches, n_test, size=40, seed=s.seed)
    scale = (location if s.scale_patches == s.train_patches
             else _tasks.location_task(s.scale_patches, n_test, size=40, seed=s.seed))
    gen = _tasks.generalisation_task(s.gen_patches, n_test, size=48, obj=16, seed=s.seed)
    return PolicyTasks([content, location], scale, gen)


def settings_line(settings: Settings, policies: Sequence[str] = POLICIES) -> str:
    """What the chapter runs: policies, seeds, training and scan settings."""
    s = settings
    return (f"profile {s.profile}: policies {', '.join(policies)}; seeds {s.train_seeds}; "
            f"{s.train_epochs} epoch(s) of {s.train_patches} patches; width {s.train_width}, "
            f"{s.train_depth} block(s) per stage; scan tau={s.tau}, q={s.consistency}; "
            f"generalisation: {s.gen_epochs} epoch(s) of {s.gen_patches} images, width "
            f"{s.gen_width}; scale run: width {s.scale_width}, depth {s.scale_depth}, "
            f"{s.scale_epochs} epochs of {s.scale_patches} patches; "
            f"torch threads {torch.get_num_threads()}")


def task_line(t: TaskData) -> str:
    """A task's classes, chance and split sizes."""
    return (f"{t.name}: {len(t.classes)} classes (chance {t.chance:.3f}), {t.n_train} train / "
            f"{t.n_test} test images of {t.image_size}×{t.image_size}")


def _as_written(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as ``write_table`` stores it (floats to 6 significant digits): the scale
    table is computed from the comparison's tables as written, as the notebook did."""
    import io

    text = df.to_csv(index=False, float_format="%.6g")
    return pd.read_csv(io.StringIO(text), dtype={"task": str, "policy": str})


def scale_label(width: int, depth: int, epochs: int, patches: int) -> str:
    """A configuration's name in ``padding_policy_scale``."""
    return f"width {width}, depth {depth}, {epochs} epochs, {patches} patches"


def policy_study(settings: Settings, data: PolicyTasks | None = None,
                 policies: Sequence[str] = POLICIES) -> dict[str, pd.DataFrame]:
    """Every chapter-4 table (``TABLES``): the task × policy × seed comparison with its
    per-epoch log and summary, the scale run, the activation maps of the kept zero-padded
    nets and the generalisation runs with their summary (docs/METHOD.md §8)."""
    s = settings
    data = data or policy_tasks(s)
    kw = dict(batch_size=BATCH_SIZE, n_scan=s.train_scan_images, tau=s.tau,
              consistency=s.consistency, device=s.device)
    epoch_log: list = []
    table, kept_models, kept_pans = run_comparison(
        data.comparison, policies, s.train_seeds, width=s.train_width, depth=s.train_depth,
        epochs=s.train_epochs, keep=("zeros", s.train_seeds[0]), epoch_log=epoch_log, **kw)
    epochs = pd.DataFrame(epoch_log)
    scale_log: list = []
    scale_runs, _, _ = run_comparison(
        [data.scale], ["zeros"], s.train_seeds, width=s.scale_width, depth=s.scale_depth,
        epochs=s.scale_epochs, epoch_log=scale_log, **kw)
    scale = scale_table({
        scale_label(s.train_width, s.train_depth, s.train_epochs, s.train_patches):
            (_as_written(table), _as_written(epochs)),
        scale_label(s.scale_width, s.scale_depth, s.scale_epochs, s.scale_patches):
            (scale_runs, pd.DataFrame(scale_log))})
    maps = pd.concat([pan_mean_maps(kept_models[t.name],
                                    t.x_test[:s.train_scan_images].to(s.device),
                                    kept_pans[t.name], n=6).assign(task=t.name)
                      for t in data.comparison], ignore_index=True)
    gen = run_generalisation(data.generalisation, policies, s.train_seeds,
                             width=s.gen_width, depth=s.train_depth, epochs=s.gen_epochs, **kw)
    return {"padding_policy": table, "padding_policy_summary": summarize(table),
            "padding_policy_epochs": epochs, "padding_policy_scale": scale,
            "padding_policy_pan_maps": maps, "padding_policy_generalisation_runs": gen,
            "padding_policy_generalisation": summarize_generalisation(gen)}


def accuracy_lines(summary: pd.DataFrame) -> list[str]:
    """Per task: every policy's accuracy, mean ± sd over seeds."""
    lines = []
    for task, d in summary.groupby("task", sort=False):
        lines.append(f"{task} task (chance {d['chance'].iloc[0]:.2f}):")
        lines += [f"  {r.policy:>9}: accuracy {r.accuracy_mean:.3f} ± {r.accuracy_std:.3f} "
                  f"over {r.seeds} seed(s) (training times: manifest.json)"
                  for r in d.itertuples()]
    return lines


def epoch_lines(epochs: pd.DataFrame, tau: float) -> list[str]:
    """Per task and policy, the counts after every epoch (means over seeds), and how the
    zero-padded nets' count at tau/2 and max |d| move from the first to the last epoch."""
    by_epoch = summarize_epochs(epochs)
    last = int(epochs["epoch"].max())
    lines = []
    for task, d in by_epoch.groupby("task", sort=False):
        lines.append(f"{task} task, mean over seeds after epochs 1..{last}:")
        for pol, g in d.groupby("policy", sort=False):
            g = g.sort_values("epoch")
            arrow = lambda col, f="{:.1f}": " → ".join(f.format(v) for v in g[col])  # noqa: E731
            lines.append(f"  {pol:>9}: PANs {arrow('pans_mean')}; at tau/2 "
                         f"{arrow('pans_half_tau_mean')}; max |d| "
                         f"{arrow('max_abs_d_mean', '{:.2f}')}")
        z = d[d["policy"] == "zeros"].sort_values("epoch")
        if len(z) > 1:
            h0, h1 = z["pans_half_tau_mean"].iloc[[0, -1]]
            d0, d1 = z["max_abs_d_mean"].iloc[[0, -1]]
            others = d[(d["policy"] != "zeros") & (d["epoch"] == last)]["pans_half_tau_mean"]
            trend = "grows" if h1 > h0 else "falls" if h1 < h0 else "stays"
            lines.append(f"  reading: in zero-padded nets the count at tau/2 {trend} from "
                         f"epoch 1 to {last} ({h0:.1f} → {h1:.1f}) and max |d| goes {d0:.2f} → "
                         f"{d1:.2f} (tau {tau:g}); the other policies end at most "
                         f"{others.max():.1f} channels at tau/2.")
    return lines


def scale_lines(scale: pd.DataFrame, tau: float) -> list[str]:
    """Each configuration's final counts, the verdict (does every seed of some configuration
    cross tau?) and the trend with training length."""
    final = scale[scale["final"].astype(bool)]
    lines = [f"{r.config} ({r.params:,} parameters, {r.seeds} seeds): PANs {r.pans:.1f} (min "
             f"over seeds {r.pans_min}), at tau/2 {r.pans_half_tau:.1f}, max |d| "
             f"{r.max_abs_d:.2f}, accuracy {r.test_accuracy:.3f}" for r in final.itertuples()]
    crossed = final[final["pans_min"] >= 1]
    if len(crossed):
        c = crossed.iloc[0]
        lines.append(f"verdict: zero-padded location nets cross tau = {tau:g} with {c.config}: "
                     f"every seed has at least one PAN (mean {c.pans:.1f}, max |d| "
                     f"{c.max_abs_d:.2f}).")
    else:
        big = final.sort_values(["params", "epochs"]).iloc[-1]
        lines.append(f"negative result: in no configuration tried does every zero-padded seed "
                     f"cross tau = {tau:g}; the largest, {big.config} ({big.params:,} "
                     f"parameters), reaches a mean max |d| of {big.max_abs_d:.2f} and "
                     f"{big.pans:.1f} PANs.")
    grow = final.sort_values("epochs")
    lines.append(f"trend: from {grow.iloc[0].epochs} to {grow.iloc[-1].epochs} epochs the mean "
                 f"max |d| goes {grow.iloc[0].max_abs_d:.2f} → {grow.iloc[-1].max_abs_d:.2f} "
                 f"and the count at tau/2 {grow.iloc[0].pans_half_tau:.1f} → "
                 f"{grow.iloc[-1].pans_half_tau:.1f}.")
    return lines


def generalisation_verdict(zeros_gap: float, circular_gap: float, noise: float) -> str:
    """Kayhan & van Gemert's finding against the run: zero-padded nets lose more at unseen
    positions than circular ones by more than ``noise`` (docs/METHOD.md §8.4)."""
    if zeros_gap - circular_gap > noise:
        return ("agrees with Kayhan & van Gemert: the zero-padded nets lose more at unseen "
                "positions than the borderless circular nets")
    if abs(zeros_gap - circular_gap) <= noise:
        return ("does not reproduce their finding at this scale: zero-padded and circular nets "
                "lose the same at unseen positions, within the seed sd")
    return ("contradicts their finding: the circular nets lose more at unseen positions "
            "than the zero-padded ones")


def generalisation_lines(gen_summary: pd.DataFrame, policies: Sequence[str] = POLICIES
                         ) -> list[str]:
    """Per policy the similar and dissimilar accuracies and their gap, then the verdict."""
    g = gen_summary.set_index("policy").reindex(list(policies))
    lines = [f"{p:>9}: similar {r.similar_mean:.3f} ± {r.similar_sd:.3f}, dissimilar "
             f"{r.dissimilar_mean:.3f} ± {r.dissimilar_sd:.3f}, gap {r.gap_mean:+.3f} ± "
             f"{r.gap_sd:.3f} ({int(r.seeds)} seeds)" for p, r in g.iterrows()]
    zg, cg = g.loc["zeros", "gap_mean"], g.loc["circular", "gap_mean"]
    noise = max(g.loc["zeros", "gap_sd"], g.loc["circular", "gap_sd"], NOISE_FLOOR)
    lines.append(f"verdict: gap zeros {zg:+.3f} vs circular {cg:+.3f} (larger seed sd "
                 f"{noise:.3f}); the run {generalisation_verdict(zg, cg, noise)}. Largest gap: "
                 f"{g['gap_mean'].idxmax()}, smallest: {g['gap_mean'].idxmin()}.")
    return lines


def solves(accuracy: float, chance: float) -> bool:
    """Mean accuracy at least ``SOLVED_FRACTION`` of the way from chance to 1."""
    return bool(accuracy >= chance + (1 - chance) * SOLVED_FRACTION)


def at_chance(accuracy: float, sd: float, chance: float) -> bool:
    """Mean accuracy within ``AT_CHANCE_SD`` seed sds (at least ``AT_CHANCE_MIN``) of chance."""
    return bool(abs(accuracy - chance) <= max(AT_CHANCE_SD * sd, AT_CHANCE_MIN))


def findings_lines(summary: pd.DataFrame, table: pd.DataFrame, tau: float,
                   policies: Sequence[str] = POLICIES) -> list[str]:
    """The chapter's findings: which policies solve each task or stay at chance, the
    location-task verdict, the content-task spread, which nets grow PANs, and the scale."""
    acc = summary.pivot(index="policy", columns="task", values="accuracy_mean").reindex(
        list(policies))
    chance = summary.groupby("task", sort=False)["chance"].first()
    lines = ["mean test accuracy (chance: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                        chance.items()) + ")",
             acc.round(3).to_string(), ""]
    for task, s in summary.groupby("task", sort=False):
        s = s.set_index("policy").reindex([p for p in policies if p in set(s["policy"])])
        ch = float(s["chance"].iloc[0])
        solved = [p for p, a in s["accuracy_mean"].items() if solves(a, ch)]
        chance_level = [p for p, r in s.iterrows()
                        if at_chance(r["accuracy_mean"], r["accuracy_std"], ch)]
        lines.append(f"{task} task: solved (mean ≥ halfway from chance {ch:.2f} to 1) by "
                     f"{', '.join(solved) or 'none'}; at chance: "
                     f"{', '.join(chance_level) or 'none'}.")
        if task == "location" and "circular" in s.index:
            bordered = [p for p in s.index if p != "circular"]
            verdict = ("every policy with a border solves it and circular stays at chance: "
                       "position comes from the existence of a border"
                       if set(bordered) <= set(solved) and "circular" in chance_level else
                       "the run does NOT show the predicted pattern (every bordered policy "
                       "solved, circular at chance)")
            lines.append(f"  circular {s.loc['circular', 'accuracy_mean']:.3f} ± "
                         f"{s.loc['circular', 'accuracy_std']:.3f} vs chance {ch:.2f}; "
                         f"{verdict}.")
        if task == "content":
            spread = s["accuracy_mean"].max() - s["accuracy_mean"].min()
            lines.append(f"  the policies' mean accuracies span {spread:.3f} "
                         f"({s['accuracy_mean'].idxmin()} lowest, "
                         f"{s['accuracy_mean'].idxmax()} highest); the mean seed sd is "
                         f"{s['accuracy_std'].mean():.3f}.")
        t = table[table["task"] == task]
        with_pan = t[t["pans"] > 0]
        lines.append(
            f"  nets with at least one PAN at tau={tau:g}: {len(with_pan)} of {len(t)}"
            + (" (" + ", ".join(f"{r.policy} seed {r.seed}: {r.pans}"
                                for r in with_pan.itertuples()) + ")" if len(with_pan) else "")
            + "; mean channels passing at tau/2: "
            + ", ".join(f"{p} {v:.1f}" for p, v in s["pans_half_tau_mean"].items())
            + f"; largest mean consistent border |d|: {s['max_abs_d_mean'].idxmax()} "
            f"({s['max_abs_d_mean'].max():.2f}, tau {tau:g}).")
    lines.append("")
    p_min, p_max = int(table["parameters"].min()), int(table["parameters"].max())
    lines.append(f"scale: {p_min:,}–{p_max:,} parameters, {int(table['epochs'].iloc[0])} "
                 "epoch(s), " + ", ".join(f"{k} {int(v):,} training images" for k, v in
                                          table.groupby("task", sort=False)["n_train"]
                                          .first().items()))
    return lines


def policy_claims(table: pd.DataFrame, epochs: pd.DataFrame, scale: pd.DataFrame,
                  gen_summary: pd.DataFrame) -> dict[str, dict]:
    """The chapter's claims.json entry: per task and policy the accuracy and PAN means,
    ``per_epoch`` the first and last epoch's means, ``scale`` each configuration's final
    counts and which cross tau, ``generalisation`` the accuracies on both splits."""
    claims: dict[str, dict] = {}
    for (task, policy), g in table.groupby(["task", "policy"], sort=False):
        claims.setdefault(task, {})[policy] = {
            "seeds": int(g["seed"].nunique()),
            "accuracy_mean": float(g["test_accuracy"].mean()),
            "accuracy_sd": float(g["test_accuracy"].std(ddof=1)) if len(g) > 1 else 0.0,
            "chance": float(g["chance"].iloc[0]),
            "pans_mean": float(g["pans"].mean()),
            "pans_half_tau_mean": float(g["pans_half_tau"].mean()),
            "max_abs_d_mean": float(g["max_abs_d"].mean()),
        }
    first, last = epochs["epoch"].min(), epochs["epoch"].max()
    for (task, policy), g in epochs.groupby(["task", "policy"], sort=False):
        a, b = g[g["epoch"] == first], g[g["epoch"] == last]
        claims.setdefault("per_epoch", {}).setdefault(task, {})[policy] = {
            "epochs": int(last), "pans_first": float(a["pans"].mean()),
            "pans_final": float(b["pans"].mean()),
            "pans_half_tau_first": float(a["pans_half_tau"].mean()),
            "pans_half_tau_final": float(b["pans_half_tau"].mean()),
            "max_abs_d_first": float(a["max_abs_d"].mean()),
            "max_abs_d_final": float(b["max_abs_d"].mean())}
    final = scale[scale["final"].astype(bool)]
    claims["scale"] = {
        "configs": {r.config: {"params": int(r.params), "epochs": int(r.epochs),
                               "seeds": int(r.seeds), "pans_mean": float(r.pans),
                               "pans_min": int(r.pans_min),
                               "pans_half_tau_mean": float(r.pans_half_tau),
                               "max_abs_d_mean": float(r.max_abs_d)}
                    for r in final.itertuples()},
        "crosses_tau": [r.config for r in final.itertuples() if r.pans_min >= 1]}
    claims["generalisation"] = {
        r.policy: {"seeds": int(r.seeds), "similar_mean": float(r.similar_mean),
                   "similar_sd": float(r.similar_sd), "dissimilar_mean": float(r.dissimilar_mean),
                   "dissimilar_sd": float(r.dissimilar_sd), "gap_mean": float(r.gap_mean)}
        for r in gen_summary.itertuples()}
    return claims


def claims_line(claims: dict[str, dict], table: pd.DataFrame) -> str:
    """What ``policy_claims`` recorded, in one line."""
    return (f"recorded claims for {len(table.groupby(['task', 'policy']))} task × policy pairs, "
            f"per-epoch counts, {len(claims['scale']['configs'])} scale configurations and "
            f"{len(claims['generalisation'])} policies' generalisation")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def policy_readme(summary: pd.DataFrame) -> list[str]:
    """The README's chapter-4 accuracy and PAN tables from ``padding_policy_summary``."""
    policies = list(dict.fromkeys(summary["policy"]))
    seeds = int(summary["seeds"].max())
    lines = [f"Test accuracy, mean ± sd over {seeds} seeds (`padding_policy_summary.csv`):",
             "", "| task (chance) | " + " | ".join(policies) + " |",
             "|---|" + "---|" * len(policies)]
    for task, g in summary.groupby("task", sort=False):
        g = g.set_index("policy")
        cells = [f"{_pct(g.loc[p, 'accuracy_mean'])} ± {_pct(g.loc[p, 'accuracy_std'])}"
                 for p in policies]
        lines.append(f"| {task} ({_pct(g['chance'].iloc[0])}) | " + " | ".join(cells) + " |")
    lines += ["", "| task: PANs per net at tau / at tau/2 | " + " | ".join(policies) + " |",
              "|---|" + "---|" * len(policies)]
    for task, g in summary.groupby("task", sort=False):
        g = g.set_index("policy")
        lines.append(f"| {task} | " + " | ".join(
            f"{g.loc[p, 'pans_mean']:.1f} / {g.loc[p, 'pans_half_tau_mean']:.1f}"
            for p in policies) + " |")
    return lines


def training_readme(scale: pd.DataFrame, gen_summary: pd.DataFrame) -> list[str]:
    """The README's scale-run and generalisation findings from ``padding_policy_scale`` and
    ``padding_policy_generalisation``."""
    lines = []
    for r in scale[scale["final"].astype(bool)].itertuples():
        lines.append(f"- {r.task}, {r.policy}, {r.config} (`padding_policy_scale.csv`): "
                     f"{r.pans:.1f} PANs at tau (fewest over {r.seeds} seeds: {r.pans_min}), "
                     f"{r.pans_half_tau:.1f} at tau/2, max |d| {r.max_abs_d:.2f}.")
    gen = gen_summary
    lines += ["", "Generalisation to positions never seen in training (similar / dissimilar "
              f"test positions, mean ± sd over {int(gen['seeds'].max())} seeds, chance "
              f"{_pct(gen['chance'].iloc[0])}; `padding_policy_generalisation.csv`):", "",
              "| policy | similar | dissimilar | gap |", "|---|---|---|---|"]
    for r in gen.itertuples():
        lines.append(f"| {r.policy} | {_pct(r.similar_mean)} ± {_pct(r.similar_sd)} | "
                     f"{_pct(r.dissimilar_mean)} ± {_pct(r.dissimilar_sd)} | "
                     f"{100 * r.gap_mean:+.1f} ± {100 * r.gap_sd:.1f} pts |")
    return lines


def pan_lines(summary: pd.DataFrame) -> list[str]:
    """Per task and policy: PANs of the candidates, without the null, at tau/2, max |d|."""
    return [f"{r.task:>8} {r.policy:>9}: {r.pans_mean:5.1f} PANs of {r.candidates} candidates "
            f"(fraction {r.pan_fraction_mean:.3f} ± {r.pan_fraction_std:.3f}); "
            f"without the circular null {r.pans_without_null_mean:.1f}; at tau/2 "
            f"{r.pans_half_tau_mean:.1f}; largest consistent border |d| {r.max_abs_d_mean:.2f}"
            for r in summary.itertuples()]


def generalisation_task_line(data: TaskData) -> str:
    """The generalisation task's size, classes and chance."""
    return (f"{data.n_train} training images of {data.image_size}×{data.image_size} "
            f"({len(data.classes)} classes, chance {data.chance:.2f}); {data.n_test} test "
            "images per split")

"""Chapter 3: what PANs and padding do to predictions (docs/METHOD.md §7).

Each condition (PANs ablated, random controls, padding swapped) changes the model at
inference only, through the engine's context managers. The evaluation loop streams each
batch once and runs it under every condition, so an image folder is read only once
however many conditions there are.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.ablate import HOWS, AblationError, ablate, channel_pairs
from ..engine.hooks import eval_mode
from ..engine.models import Preprocessing, device_of, load_model, model_task
from ..engine.policy import padding_policy
from ..engine.probes import ImageFolderProbe, bundled_images, iter_batches
from ..engine.progress import progress_bar
from ..engine.scan import find_pans
from .settings import Settings

PLACEMENTS = ("centre", "corner")
PADDING_SWAPS = ("reflect", "replicate", "circular")


# --------------------------------------------------------------------------- helpers


def _n_images(images) -> int | None:
    if isinstance(images, torch.Tensor):
        return int(images.shape[0])
    try:
        return len(images)
    except TypeError:
        return None


def first_images(images, n: int, batch_size: int = 64) -> torch.Tensor:
    """The first ``n`` images of a tensor, probe or iterable of batches, as one tensor."""
    out, have = [], 0
    for x in iter_batches(images, batch_size):
        out.append(x[:n - have])
        have += out[-1].shape[0]
        if have >= n:
            break
    return torch.cat(out)


# --------------------------------------------------------------------------- controls


def random_controls(scores_or_candidates: pd.DataFrame, pans: pd.DataFrame, n_draws: int,
                    seed: int = 0, exclude: pd.DataFrame | None = None) -> pd.DataFrame:
    """Random non-PAN channels, per draw as many from each layer as that layer has PANs.

    ``scores_or_candidates``: a score table (or any table with layer, channel) listing
    the channels that may be drawn; ``exclude``: channels never drawn (default: ``pans``).
    Returns draw, layer, channel; deterministic in ``seed``. A layer with fewer eligible
    channels than PANs gives all it has.
    """
    cols = ["draw", "layer", "channel"]
    cand = scores_or_candidates[["layer", "channel"]].drop_duplicates()
    if "order" in scores_or_candidates:
        order = scores_or_candidates.groupby("layer")["order"].first().to_dict()
    else:
        order = {}
    if pans is None or len(pans) == 0 or n_draws < 1:
        return pd.DataFrame(columns=cols).astype({"draw": int, "channel": int})
    pan_set = set(channel_pairs(pans if exclude is None else exclude))
    need = pans.groupby("layer").size().to_dict()
    layers = sorted(need, key=lambda layer: (order.get(layer, math.inf), layer))
    pool = {layer: np.sort(np.array([c for c in cand.loc[cand["layer"] == layer, "channel"]
                                     if (layer, int(c)) not in pan_set], dtype=int))
            for layer in layers}
    rng = np.random.default_rng(seed)
    rows = []
    for draw in range(n_draws):
        for layer in layers:
            k = min(int(need[layer]), len(pool[layer]))
            for c in np.sort(rng.choice(pool[layer], size=k, replace=False)):
                rows.append({"draw": draw, "layer": layer, "channel": int(c)})
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- conditions


@dataclass
class Condition:
    """One way of changing the model, entered around each batch."""

    name: str
    draw: int
    n_ablated: int
    enter: Callable[[nn.Module], ContextManager]
    k: int | None = None  # dose-response: the number of top PANs (or random channels)


def ablation_conditions(pans: pd.DataFrame, means, controls: pd.DataFrame | None,
                        k: int | None = None) -> list[Condition]:
    """PANs mean- and border-ablated, and the random control (one per draw) ablated the
    same two ways: the matched comparison of docs/METHOD.md §7.2."""
    n = len(channel_pairs(pans)) if len(pans) else 0
    conds = []
    for how in HOWS:
        conds.append(Condition(f"pans_{how}", 0, n,
                               lambda m, how=how: ablate(m, pans, how, means), k))
    if controls is not None and len(controls):
        for how in HOWS:
            for draw, g in controls.groupby("draw", sort=True):
                conds.append(Condition(f"random_{how}", int(draw), len(g),
                                       lambda m, g=g, how=how: ablate(m, g, how, means), k))
    return conds


def standard_conditions(pans: pd.DataFrame, means, controls: pd.DataFrame | None = None,
                        padding_modes: Sequence[str] = PADDING_SWAPS) -> list[Condition]:
    """intact, pans_mean, pans_border, random_mean and random_border (one per draw),
    padding_<mode>."""
    conds = [Condition("intact", 0, 0, lambda m: nullcontext(m)),
             *ablation_conditions(pans, means, controls)]
    for mode in padding_modes:
        conds.append(Condition(f"padding_{mode}", 0, 0,
                               lambda m, mode=mode: padding_policy(m, mode)))
    return conds


def evaluate_conditions(model: nn.Module, images, conditions: Sequence[Condition], *,
                        model_name: str = "", class_names: Sequence[str] | None = None,
                        batch_size: int = 32, device: str | torch.device | None = None,
                        progress: bool = True, channels_last: bool = True
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each condition against the intact model, streaming ``images`` once.

    ``images``: a normalised tensor, an ImageFolderProbe or an iterable of batches or
    (batch, labels) pairs; labels < 0 count as missing. Returns (ablation, class_shift):
    ablation has one row per condition and draw (model, condition, draw, n_images,
    agreement, kl = mean KL(intact || condition), accuracy, accuracy_change,
    n_ablated); class_shift one row per condition, draw and class predicted by either
    (class_index, class_name, count_intact, count_condition, shift).
    """
    device = torch.device(device) if device is not None else device_of(model)
    if not conditions or conditions[0].name != "intact":
        conditions = [Condition("intact", 0, 0, lambda m: nullcontext(m)), *conditions]
    k = len(conditions)
    agree = np.zeros(k, dtype=np.int64)
    kl = np.zeros(k, dtype=np.float64)
    correct = np.zeros(k, dtype=np.int64)
    counts: np.ndarray | None = None
    n, n_labelled = 0, 0
    bar = progress_bar(total=_n_images(images), desc=f"ablation {model_name}".strip(),
                       unit="img", enabled=progress, leave=False)
    try:
        with eval_mode(model), torch.inference_mode():
            for x, y in iter_batches(images, batch_size, labels=True):
                x = x.to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                labelled = None
                if y is not None:
                    y = torch.as_tensor(y).to(device)
                    labelled = y >= 0
                    n_labelled += int(labelled.sum())
                ref = None
                for i, cond in enumerate(conditions):
                    with cond.enter(model):
                        logits = model(x).float()
                    logp = F.log_softmax(logits, dim=1)
                    pred = logp.argmax(1)
                    if counts is None:
                        counts = np.zeros((k, logits.shape[1]), dtype=np.int64)
                    counts[i] += np.bincount(pred.cpu().numpy(), minlength=logits.shape[1])
                    if ref is None:
                        ref = (logp, pred)
                    agree[i] += int((pred == ref[1]).sum())
                    p_ref = ref[0].exp()
                    kl[i] += float((p_ref * (ref[0] - logp)).sum(1).clamp_min(0).sum())
                    if labelled is not None:
                        correct[i] += int(((pred == y) & labelled).sum())
                n += x.shape[0]
                bar.update(x.shape[0])
    finally:
        bar.close()
    if n == 0:
        raise AblationError("no evaluation images were given")
    acc = correct / n_labelled if n_labelled else np.full(k, np.nan)
    ablation = pd.DataFrame({
        "model": model_name, "condition": [c.name for c in conditions],
        "draw": [c.draw for c in conditions], "n_images": n, "agreement": agree / n,
        "kl": kl / n, "accuracy": acc, "accuracy_change": acc - acc[0],
        "n_ablated": [c.n_ablated for c in conditions]})
    if any(c.k is not None for c in conditions):
        ablation.insert(3, "k", [c.k if c.k is not None else 0 for c in conditions])
    names = list(class_names or [])
    frames = []
    for i, cond in enumerate(conditions[1:], start=1):
        keep = np.flatnonzero((counts[0] > 0) | (counts[i] > 0))
        frames.append(pd.DataFrame({
            "model": model_name, "condition": cond.name, "draw": cond.draw,
            "class_index": keep,
            "class_name": [names[j] if j < len(names) else str(j) for j in keep],
            "count_intact": counts[0][keep], "count_condition": counts[i][keep],
            "shift": counts[i][keep] - counts[0][keep]}))
    cols = ["model", "condition", "draw", "class_index", "class_name", "count_intact",
            "count_condition", "shift"]
    shift = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    return ablation, shift


# --------------------------------------------------------------------------- dose-response


def dose_grid(n_pans: int, points: int = 6) -> list[int]:
    """k on a log grid from 1 to ``n_pans`` (both included), at most ``points`` values."""
    if n_pans < 1:
        return []
    return sorted({int(round(v)) for v in np.geomspace(1, n_pans, num=min(points, n_pans))})


def top_pans(pans: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` PANs with the largest score (ties broken by layer order and channel)."""
    return pans.sort_values(["score", "order", "channel"], ascending=[False, True, True],
                            kind="stable").head(k)


def dose_conditions(pans: pd.DataFrame, candidates: pd.DataFrame, means, ks: Sequence[int],
                    n_draws: int, seed: int = 0) -> tuple[list[Condition], pd.DataFrame]:
    """For each k: the top-k PANs and ``n_draws`` draws of k random non-PAN channels of
    the same layers (as many per layer as the top-k have), each mean- and
    border-ablated. Returns the conditions and every channel they ablate (for means)."""
    conds, used = [Condition("intact", 0, 0, lambda m: nullcontext(m))], []
    for i, k in enumerate(ks):
        top = top_pans(pans, k)
        controls = random_controls(candidates, top, n_draws, seed + 1000 * (i + 1),
                                   exclude=pans)
        conds += ablation_conditions(top, means, controls, k)
        used += [top[["layer", "channel"]], controls[["layer", "channel"]]]
    return conds, (pd.concat(used, ignore_index=True) if used
                   else pd.DataFrame(columns=["layer", "channel"]))


def dose_summary(dose: pd.DataFrame) -> pd.DataFrame:
    """Per model, k and ablation (mean, border): PANs' agreement and KL against the random
    control's mean and sd over draws, and the gap (control agreement minus PANs'
    agreement: positive when removing PANs changes more predictions than removing as
    many random channels of the same layers)."""
    cols = ["model", "k", "how", "agreement_pans", "agreement_random", "agreement_sd_random",
            "kl_pans", "kl_random", "kl_sd_random", "draws_random", "gap", "gap_in_sd"]
    d = dose[dose["condition"] != "intact"].copy() if "condition" in dose else dose.iloc[:0]
    if d.empty:  # no PAN, so no dose: the table's columns, no row
        return pd.DataFrame(columns=cols)
    d["how"] = d["condition"].str.split("_").str[1]
    d["what"] = d["condition"].str.split("_").str[0]
    g = d.groupby(["model", "k", "how", "what"])
    s = g.agg(agreement=("agreement", "mean"), agreement_sd=("agreement", "std"),
              kl=("kl", "mean"), kl_sd=("kl", "std"), draws=("draw", "size")).reset_index()
    wide = s.pivot_table(index=["model", "k", "how"], columns="what",
                         values=["agreement", "agreement_sd", "kl", "kl_sd", "draws"])
    wide.columns = [f"{a}_{b}" for a, b in wide.columns]
    out = wide.reset_index()
    out["gap"] = out["agreement_random"] - out["agreement_pans"]
    out["gap_in_sd"] = out["gap"] / out["agreement_sd_random"].where(
        out["agreement_sd_random"] > 0)
    return out[cols].sort_values(["model", "how", "k"], ignore_index=True)


# --------------------------------------------------------------------------- placement


def place_crops(images: torch.Tensor, placement: str, scale: float = 0.5,
                fill: float = 0.0) -> torch.Tensor:
    """Shrink each (normalised) image by ``scale`` and paste it on a ``fill`` canvas
    (0 = the mean grey after normalisation) of the same size: at the centre, or in a
    corner (cycling TL, TR, BL, BR over the images), so the evidence either stays far
    from the padding or touches it."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1]; got {scale}")
    n, c, h, w = images.shape
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(images.float(), size=(sh, sw), mode="bilinear", antialias=True,
                          align_corners=False).to(images.dtype)
    out = torch.full_like(images, fill).contiguous()
    for i in range(n):
        if placement == "centre":
            top, left = (h - sh) // 2, (w - sw) // 2
        else:
            corner = i % 4
            top = 0 if corner in (0, 1) else h - sh
            left = 0 if corner in (0, 2) else w - sw
        out[i, :, top:top + sh, left:left + sw] = small[i]
    return out


def placement_agreement(model: nn.Module, images: torch.Tensor,
                        conditions: Sequence[Condition], *, placements: Iterable[str] = PLACEMENTS,
                        scale: float = 0.5, model_name: str = "", **kwargs) -> pd.DataFrame:
    """Agreement with the intact model when the evidence sits at each placement:
    model, placement, condition, draw, n_images, agreement, kl."""
    frames = []
    for placement in placements:
        df, _ = evaluate_conditions(model, place_crops(images, placement, scale), conditions,
                                    model_name=model_name, **kwargs)
        df.insert(1, "placement", placement)
        frames.append(df[["model", "placement", "condition", "draw", "n_images",
                          "agreement", "kl"]])
    return pd.concat(frames, ignore_index=True)


def summarise(ablation: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over draws per model and condition (sd 0 for single-draw conditions)."""
    g = ablation.groupby(["model", "condition"], sort=False)
    out = g.agg(draws=("draw", "size"), agreement=("agreement", "mean"),
                agreement_sd=("agreement", "std"), kl=("kl", "mean"), kl_sd=("kl", "std"),
                n_ablated=("n_ablated", "mean")).reset_index()
    return out.fillna({"agreement_sd": 0.0, "kl_sd": 0.0})


# --------------------------------------------------------------------------- study


def characteristic_biases(class_shift: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Per model and condition, the ``k`` classes that gain and the ``k`` that lose the
    most predictions (shift averaged over draws): model, condition, direction, rank,
    class_index, class_name, shift, count_intact."""
    cols = ["model", "condition", "direction", "rank", "class_index", "class_name", "shift",
            "count_intact"]
    if class_shift.empty:
        return pd.DataFrame(columns=cols)
    n_draws = class_shift.groupby(["model", "condition"])["draw"].nunique()
    g = (class_shift.groupby(["model", "condition", "class_index", "class_name"],
                             as_index=False, sort=False)[["shift", "count_intact"]].sum())
    g = g.merge(n_draws.rename("n_draws").reset_index(), on=["model", "condition"])
    g["shift"] = g["shift"] / g["n_draws"]
    g["count_intact"] = g["count_intact"] / g["n_draws"]
    frames = []
    for (model, cond), grp in g.groupby(["model", "condition"], sort=False):
        for direction, part in (("gain", grp[grp["shift"] > 0].nlargest(k, "shift")),
                                ("loss", grp[grp["shift"] < 0].nsmallest(k, "shift"))):
            frames.append(part.assign(direction=direction, rank=np.arange(1, len(part) + 1)))
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def eval_images(preprocessing: Preprocessing, settings: Settings, size: int):
    """The evaluation set, disjoint from the scan set: bundled 'eval' photos (seed + 1),
    or the images of ``data_dir`` that the scan probe (n_images, seed) did not draw."""
    p = preprocessing
    seed = int(settings.seed)
    if settings.data_dir:
        scan_probe = ImageFolderProbe(settings.data_dir, size, p.mean, p.std,
                                      n=settings.n_images, seed=seed)
        probe = ImageFolderProbe(settings.data_dir, size, p.mean, p.std)
        used = set(scan_probe.files)
        keep = [i for i, f in enumerate(probe.files) if f not in used]
        n = min(int(settings.n_eval), len(keep))
        pick = np.sort(np.random.default_rng(seed + 1).choice(keep, n, replace=False))
        probe.files = [probe.files[i] for i in pick]
        probe.labels = [probe.labels[i] for i in pick]
        return probe
    return bundled_images(settings.n_eval, size, split="eval", seed=seed + 1,
                          mean=p.mean, std=p.std)


def study_model(model_name: str, settings: Settings, *, n_placement: int = 64,
                placement_scale: float = 0.5, progress: bool = True) -> dict[str, pd.DataFrame]:
    """All chapter-3 tables of one model: find its PANs once on the scan set, draw the
    random controls, then evaluate every condition on the evaluation set and on shrunk
    evaluation crops placed at the centre or in a corner, and the dose-response (top-k
    PANs against k random channels of the same layers) on the first ``n_dose`` images.

    Returns pans, ablation, class_shift, placement and dose_response tables (each with
    ``model``); all empty, with a printed line, for a model that is not a classifier
    (agreement of top-1 classes is this chapter's measure).
    """
    task = model_task(model_name)
    if task != "classification":
        print(f"{model_name}: skipped, a {task} model has no classification head "
              "(chapter 3 measures top-1 agreement)")
        return {k: pd.DataFrame() for k in ("pans", "ablation", "class_shift", "placement",
                                            "dose_response")}
    loaded = load_model(model_name)
    device = torch.device(settings.device)
    model, p = loaded.model.to(device).eval(), loaded.preprocessing
    size = int(settings.image_size or p.input_size[0])
    bs, seed = int(settings.batch_size), int(settings.seed)
    if settings.data_dir:
        scan_x = ImageFolderProbe(settings.data_dir, size, p.mean, p.std,
                                  n=settings.n_images, seed=seed)
    else:
        scan_x = bundled_images(settings.n_images, size, split="scan", seed=seed,
                                mean=p.mean, std=p.std)
    pans, scores = find_pans(model, scan_x, settings.tau, settings.consistency,
                             batch_size=bs, device=device, progress=progress,
                             return_scores=True)
    native = scores[scores["mode"] == "native"]
    controls = random_controls(native, pans, int(settings.n_random_draws), seed)
    means = interior_means_from_scores(scores)
    conditions = standard_conditions(pans, means, controls)
    ev = eval_images(p, settings, size)
    ablation, shift = evaluate_conditions(model, ev, conditions, model_name=model_name,
                                          class_names=p.class_names, batch_size=bs,
                                          device=device, progress=progress)
    # Placement: every condition with the first draw of each control (a spread over draws
    # is the main evaluation's job; this asks where the evidence lies).
    placed = [c for c in conditions if c.draw == 0]
    placement = placement_agreement(model, first_images(ev, n_placement), placed,
                                    scale=placement_scale, model_name=model_name,
                                    batch_size=bs, device=device, progress=progress)
    dose_conds, _ = dose_conditions(pans, native, means,
                                    dose_grid(len(pans), settings.dose_points),
                                    settings.dose_draws, seed)
    dose, _ = evaluate_conditions(model, first_images(ev, settings.n_dose), dose_conds,
                                  model_name=model_name, batch_size=bs, device=device,
                                  progress=progress)
    return {"pans": pans.assign(model=model_name), "ablation": ablation,
            "class_shift": shift, "placement": placement, "dose_response": dose}


def interior_means_from_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Each scanned channel's interior mean on the scan set, as the scan measured it
    (``mean_interior``): the replacement value of an ablation, with no further pass."""
    native = scores[(scores["mode"] == "native") & scores["mean_interior"].notna()]
    return (native.drop_duplicates(["layer", "channel"])[["layer", "channel", "mean_interior"]]
            .rename(columns={"mean_interior": "interior_mean"}).reset_index(drop=True))

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
from ..engine.models import Preprocessing, load_model, model_task
from ..engine.policy import padding_policy
from ..engine.probes import ImageFolderProbe, bundled_images, iter_batches
from ..engine.progress import progress_bar
from ..engine.state import device_of
from .figures import condition_label
from .identification import pretrained_pans
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
    # chapter 1's scan of the same probes, from the store, decided at this run's tau and q
    pans, scores = pretrained_pans(model_name, settings, progress=progress)
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


# --------------------------------------------------------------------------- chapter entry point,
# claims and findings (the notebook, the README findings and the tests call these)

#: The tables ``ablate_all`` returns, in the order the notebook writes them.
TABLES = ("ablation", "ablation_summary", "class_shift", "class_bias", "placement",
          "dose_response", "dose_response_summary")
README_CONDITIONS = {
    "pans_mean": "PANs mean-ablated",
    "random_mean": "as many random channels of the same layers, mean-ablated",
    "pans_border": "PANs ablated on their border bands only",
    "random_border": "as many random channels, border bands only",
    "padding_reflect": "padding switched to reflect",
    "padding_replicate": "padding switched to replicate",
    "padding_circular": "padding switched to circular",
}


def ablate_all(settings: Settings, *, progress: bool = True) -> dict[str, pd.DataFrame]:
    """``study_model`` for every model of the profile, tables concatenated, with the
    summaries (``ablation_summary``, ``class_bias``, ``dose_response_summary``): the
    tables of ``TABLES``."""
    parts: dict[str, list[pd.DataFrame]] = {k: [] for k in ("ablation", "class_shift",
                                                            "placement", "dose_response")}
    for name in settings.models:
        print(f"{name}: scan, controls, {settings.n_eval} evaluation images × conditions, "
              "placement")
        out = study_model(name, settings, n_placement=settings.n_placement,
                          placement_scale=settings.placement_scale, progress=progress)
        for key in parts:
            parts[key].append(out[key])
    t = {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}
    t["ablation_summary"] = summarise(t["ablation"])
    t["class_bias"] = characteristic_biases(t["class_shift"], k=5)
    t["dose_response_summary"] = dose_summary(t["dose_response"])
    return {k: t[k] for k in TABLES}


def _pct1(x: float) -> str:
    return f"{100 * x:.1f}%"


def agreement_lines(summary: pd.DataFrame, ablation: pd.DataFrame) -> list[str]:
    """Per model: the agreement of each condition, against the random controls' spread,
    and how many control draws ablating the PANs beats."""
    lines = []
    for model, g in summary.groupby("model", sort=False):
        s = g.set_index("condition")
        mine = ablation[ablation["model"] == model]
        draws = mine[mine["condition"] == "random_mean"]
        n_pans = int(s.loc["pans_mean", "n_ablated"])
        line = (f"{model}: {n_pans} PANs. Mean-ablating them keeps "
                f"{s.loc['pans_mean', 'agreement']:.1%} of top-1 predictions (KL "
                f"{s.loc['pans_mean', 'kl']:.2f}); ablating only their border bands keeps "
                f"{s.loc['pans_border', 'agreement']:.1%} (KL {s.loc['pans_border', 'kl']:.2f}).")
        if len(draws):
            worse = int((draws["agreement"] > s.loc["pans_mean", "agreement"]).sum())
            line += (f" As many random non-PAN channels keep "
                     f"{s.loc['random_mean', 'agreement']:.1%} ± "
                     f"{s.loc['random_mean', 'agreement_sd']:.1%} (KL "
                     f"{s.loc['random_mean', 'kl']:.2f}); removing the PANs hurts more than "
                     f"{worse} of {len(draws)} random draws.")
        border = mine[mine["condition"] == "random_border"]
        if len(border):
            worse_b = int((border["agreement"] > s.loc["pans_border", "agreement"]).sum())
            line += (f" Border-ablating as many random non-PAN channels keeps "
                     f"{s.loc['random_border', 'agreement']:.1%} ± "
                     f"{s.loc['random_border', 'agreement_sd']:.1%}; border-ablating the PANs "
                     f"hurts more than {worse_b} of {len(border)} draws.")
        pads = ", ".join(f"{c.removeprefix('padding_')} {s.loc[c, 'agreement']:.1%}"
                         for c in s.index if c.startswith("padding_"))
        line += f" Swapping the padding at inference keeps: {pads}."
        if mine["accuracy"].notna().any():
            a = mine.groupby("condition", sort=False)["accuracy_change"].mean()
            line += " Accuracy change: " + ", ".join(
                f"{c} {v:+.1%}" for c, v in a.items() if c != "intact") + "."
        lines.append(line)
    return lines


def dose_lines(dose_summary: pd.DataFrame) -> list[str]:
    """Per model and ablation kind: PANs against the control at every k, and at how many
    k the PANs change more predictions (a positive gap)."""
    lines = []
    for (model, how), g in dose_summary.groupby(["model", "how"], sort=False):
        parts = []
        for r in g.itertuples():
            z = f", {r.gap_in_sd:+.1f} sd" if pd.notna(r.gap_in_sd) else ""
            parts.append(f"k={r.k:.0f}: PANs {r.agreement_pans:.1%} vs random "
                         f"{r.agreement_random:.1%} (gap {r.gap:+.1%}{z})")
        larger = int((g["gap"] > 0).sum())
        lines.append(f"{model}, {how}-ablated: " + "; ".join(parts) + f". PANs change more "
                     f"predictions than the control at {larger} of {len(g)} values of k.")
    return lines


BIAS_CONDITIONS = ("pans_mean", "pans_border", "padding_reflect", "padding_circular")


def bias_lines(biases: pd.DataFrame, n: int = 3) -> list[str]:
    """Per model and condition of ``BIAS_CONDITIONS``: the ``n`` classes that gain and lose
    the most predictions (``class_bias``)."""
    lines = []
    shown = biases[biases["condition"].isin(BIAS_CONDITIONS)]
    for (model, cond), g in shown.groupby(["model", "condition"], sort=False):
        gain, loss = (", ".join(f"{r.class_name} ({r.shift:+.1f})"
                                for r in g[g["direction"] == d].head(n).itertuples())
                      for d in ("gain", "loss"))
        lines.append(f"{model} · {condition_label(cond)}: gains {gain or '-'}; "
                     f"loses {loss or '-'}")
    return lines


def placement_lines(placement: pd.DataFrame) -> list[str]:
    """Per model: each condition's agreement with the evidence at the centre and in a corner."""
    pl = placement.groupby(["model", "condition", "placement"], sort=False)["agreement"].mean()
    pl = pl.unstack("placement")
    return [f"{model}: " + "; ".join(
        f"{condition_label(cond)}: centre {r['centre']:.1%} vs corner {r['corner']:.1%}"
        for (_, cond), r in g.iterrows() if cond != "intact")
        for model, g in pl.groupby(level="model", sort=False)]


def ablation_claims(ablation: pd.DataFrame, dose_summary: pd.DataFrame) -> dict[str, dict]:
    """The chapter's claims.json entry: per model, the top-1 agreement of each condition
    (mean over draws), the random controls' mean and sd over draws, and the dose gaps."""
    claims = {}
    for model, g in ablation.groupby("model", sort=False):
        agree = g[g["condition"] != "intact"].groupby("condition", sort=False)["agreement"]
        rnd = g.loc[g["condition"] == "random_mean", "agreement"]
        rnd_b = g.loc[g["condition"] == "random_border", "agreement"]
        ds = dose_summary[dose_summary["model"] == model]
        claims[model] = {
            "n_eval_images": int(g["n_images"].iloc[0]),
            "n_pans": int(g.loc[g["condition"] == "pans_mean", "n_ablated"].max()),
            "agreement": {c: float(v) for c, v in agree.mean().items()},
            "random_control_mean": float(rnd.mean()) if len(rnd) else None,
            "random_control_sd": float(rnd.std(ddof=1)) if len(rnd) > 1 else 0.0,
            "random_draws": int(len(rnd)),
            "random_border_control_mean": float(rnd_b.mean()) if len(rnd_b) else None,
            "random_border_control_sd": float(rnd_b.std(ddof=1)) if len(rnd_b) > 1 else 0.0,
            "dose_gap": {how: {str(int(r.k)): float(r.gap) for r in d.itertuples()}
                         for how, d in ds.groupby("how")},
        }
    return claims


def claim_lines(claims: dict[str, dict]) -> list[str]:
    """One line per model of ``ablation_claims``: every condition's agreement."""
    return [f"{model}: " + ", ".join(f"{condition_label(k)} {v:.3f}"
                                     for k, v in c["agreement"].items())
            for model, c in claims.items()]


def ablation_readme(summary: pd.DataFrame, ablation: pd.DataFrame,
                    dose_summary: pd.DataFrame, placement: pd.DataFrame) -> list[str]:
    """The README's chapter-3 findings from ``ablation_summary``, ``ablation``,
    ``dose_response_summary`` and ``placement``."""
    models = list(dict.fromkeys(summary["model"]))
    n = int(ablation["n_images"].iloc[0])
    lines = [f"Agreement = top-1 identical to the intact model, on {n} evaluation crops "
             "disjoint from the scan set (`ablation_summary.csv`; random controls: mean ± sd "
             "over draws).", "", "| condition | " + " | ".join(models) + " |",
             "|---|" + "---|" * len(models)]
    s = summary.set_index(["condition", "model"])
    for cond, label in README_CONDITIONS.items():
        if cond not in s.index.get_level_values(0):
            continue
        cells = []
        for m in models:
            r = s.loc[(cond, m)]
            sd = f" ± {_pct1(r['agreement_sd'])}" if r["draws"] > 1 else ""
            cells.append(_pct1(r["agreement"]) + sd)
        draws = int(s.loc[cond]["draws"].max())
        lines.append(f"| {label}" + (f" ({draws} draws)" if draws > 1 else "") + " | "
                     + " | ".join(cells) + " |")
    lines.append("")
    for (m, how), g in dose_summary.groupby(["model", "how"], sort=False):
        gaps = ", ".join(f"k={int(r.k)}: {100 * r.gap:+.1f} pts" for r in g.itertuples())
        lines.append(f"- {m}, dose-response, {how} ablation (`dose_response_summary.csv`; gap = "
                     f"control agreement minus PANs'): {gaps}.")
    pl = placement[placement["condition"] == "pans_border"].groupby(
        ["model", "placement"])["agreement"].mean()
    lines.append("")
    for m in models:
        if (m, "centre") in pl.index and (m, "corner") in pl.index:
            lines.append(f"- {m}, PANs border-ablated (`placement.csv`): agreement "
                         f"{_pct1(pl[(m, 'centre')])} for evidence at the centre, "
                         f"{_pct1(pl[(m, 'corner')])} in a corner.")
    return lines


def settings_line(settings: Settings) -> str:
    """What the chapter runs: models, scan and evaluation images, controls, tau, device."""
    s = settings
    return (f"profile {s.profile}: models {', '.join(s.models)}; {s.n_images} scan + "
            f"{s.n_eval} evaluation images "
            f"({'folder ' + s.data_dir if s.data_dir else 'bundled photos'}), "
            f"{s.n_random_draws} random-control draws, tau={s.tau}, device {s.device}")


def dose_header(dose: pd.DataFrame, dose_summary: pd.DataFrame) -> str:
    """On how many evaluation images the dose-response ran, and its grid of k."""
    return (f"dose-response on {int(dose['n_images'].iloc[0])} evaluation images per model; "
            f"k = {', '.join(str(k) for k in sorted(set(dose_summary['k'].astype(int))))}")

"""Chapter 6: what PANs mean for safety, frames and adversarial borders (docs/METHOD.md §13).

Natural frames (solid colours or a replicate of the edge over the outer pixels, and
letterbox bars) are compared with controls that move the same pixel values to a centred
square or to random interior positions; universal adversarial frames fitted on the scan
photos are compared with a universal central patch of the same area and budget, on the
evaluation photos; and the frames are rerun with the PANs border-ablated against as many
random channels of the same layers (chapter 3's control), and under circular and reflect
padding, each against that model's own unframed predictions.

The findings, claims and their thresholds live here (``frames_claims``,
``frames_findings``); ``frames_all`` is the chapter's one entry point.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..engine.ablate import ablate
from ..engine.frames import (activation_shift, centre_mask, compare_predictions,
                             fit_universal_patch, frame_mask, frame_transform,
                             letterbox_mask, letterbox_transform, moved_transform,
                             patch_transform, predictions, random_mask)
from ..engine.models import load_model, model_task
from ..engine.policy import padding_policy
from ..engine.probes import ImageFolderProbe, bundled_images
from . import figures as plots
from .ablation import eval_images, first_images, interior_means_from_scores, random_controls
from .identification import pretrained_pans
from .settings import Settings

CONTROLS = ("centre", "random")
PADDINGS = ("zeros", "circular", "reflect")
# Thresholds of the chapter's claims (frames_claims):
BORDER_MARGIN = 0.05  # a frame is "worse than its control" when agreement is lower by this
MEDIATION_MIN_SD = 0.02  # floor on the random control's sd when deciding "PAN-specific"
TABLES = ("frames_natural", "frames_adversarial", "frames_mediation", "frames_padding",
          "frames_activation_shift", "frames_pans")


# --------------------------------------------------------------------------- inputs


def split_images(preprocessing, settings: Settings, size: int, split: str, n: int
                 ):
    """The first ``n`` images of a split and where each comes from (photo names, or
    files of ``data_dir``): 'scan', the set PANs and universal patterns are fitted on;
    'eval', chapter 3's evaluation set, disjoint from it (docs/METHOD.md §1). A tensor,
    or for the evaluation files of ``data_dir`` a probe that streams them."""
    p, seed = preprocessing, int(settings.seed)
    if split not in ("scan", "eval"):
        raise ValueError(f"split must be 'scan' or 'eval'; got {split!r}")
    if settings.data_dir:
        if split == "scan":
            probe = ImageFolderProbe(settings.data_dir, size, p.mean, p.std,
                                     n=settings.n_images, seed=seed, channels=p.channels)
            x = first_images(probe, n)
            return x, [str(f) for f in probe.files[:x.shape[0]]]
        probe = eval_images(p, settings, size)  # streamed: an ImageNet split is large
        probe.files, probe.labels = probe.files[:n], probe.labels[:n]
        return probe, [str(f) for f in probe.files]
    n = min(n, settings.n_images if split == "scan" else settings.n_eval)
    x, names = bundled_images(n, size, seed=seed + (split == "eval"), split=split,
                              mean=p.mean, std=p.std, return_names=True, channels=p.channels)
    return x, list(names)


# --------------------------------------------------------------------------- transforms


def natural_transforms(hw: tuple[int, int], settings: Settings, mean, std
                       ) -> tuple[dict[str, Callable], pd.DataFrame]:
    """Every natural frame of the profile and its controls: name -> transform, and a
    table (transform, kind, fill, width, n_pixels). Kinds: frame, letterbox, centre and
    random (the frame's values moved to a centred square or to random interior pixels)."""
    out, rows = {}, []
    for fill in settings.frames_fills:
        for width in settings.frames_widths:
            name = f"{fill} {width}px"
            out[name] = frame_transform(width, fill, mean, std)
            src = frame_mask(hw, width)
            rows.append((name, "frame", fill, width, int(src.sum())))
            if width not in settings.frames_control_widths:
                continue
            targets = {"centre": centre_mask(hw, int(src.sum())),
                       "random": random_mask(hw, int(src.sum()), exclude=src,
                                             seed=int(settings.seed) + width)}
            for kind, target in targets.items():
                out[f"{name} {kind}"] = moved_transform(src, target, fill, mean, std)
                rows.append((f"{name} {kind}", kind, fill, width, int(src.sum())))
        if fill in ("black", "grey"):
            name = f"letterbox {fill}"
            out[name] = letterbox_transform(settings.frames_letterbox_aspect, fill, mean, std)
            bars = letterbox_mask(hw, settings.frames_letterbox_aspect)
            rows.append((name, "letterbox", fill, 0, int(bars.sum())))
    meta = pd.DataFrame(rows, columns=["transform", "kind", "fill", "width", "n_pixels"])
    return out, meta


def mediation_transforms(settings: Settings, mean, std) -> dict[str, Callable]:
    """The frames rerun under ablations and padding swaps: each mediation fill at each
    control width."""
    return {f"{fill} {w}px": frame_transform(w, fill, mean, std)
            for fill in settings.frames_mediation_fills for w in settings.frames_control_widths}


def _split_name(df: pd.DataFrame) -> pd.DataFrame:
    parts = df["transform"].str.extract(r"^(?P<fill>\w+) (?P<width>\d+)px$")
    return df.assign(fill=parts["fill"], width=parts["width"].astype(int))


# --------------------------------------------------------------------------- parts


def adversarial_frames(model, fit_x: torch.Tensor, eval_x: torch.Tensor, settings: Settings,
                       mean, std, *, device, progress: bool = False) -> pd.DataFrame:
    """Universal frames of each width, and universal central patches of the same pixel
    count fitted with the same steps, batch, learning rate and seed, fitted on ``fit_x``
    (scan photos) and scored on ``eval_x`` (evaluation photos): width, placement,
    n_pixels, fooling_rate (1 - agreement with the clean prediction), prob_change."""
    hw = tuple(fit_x.shape[-2:])
    clean = predictions(model, fit_x, batch_size=settings.batch_size, device=device)
    rows, patches = [], {}
    for width in settings.frames_adv_widths:
        frame = frame_mask(hw, width)
        for placement, mask in (("frame", frame), ("centre", centre_mask(hw, int(frame.sum())))):
            pattern = fit_universal_patch(
                model, fit_x, mask, mean, std, steps=settings.frames_adv_steps,
                batch_size=settings.frames_adv_batch, lr=settings.frames_adv_lr,
                seed=int(settings.seed) + width, device=device, progress=progress,
                clean=clean)
            patches[f"{placement} {width}px"] = patch_transform(pattern, mask)
            rows.append({"width": width, "placement": placement, "n_pixels": int(mask.sum()),
                         "fit_split": "scan", "eval_split": "eval",
                         "fit_images": int(fit_x.shape[0]), "steps": settings.frames_adv_steps})
    res = compare_predictions(model, eval_x, patches, batch_size=settings.batch_size,
                              device=device)
    out = pd.DataFrame(rows)
    out["n_images"] = res["n_images"].to_numpy()
    out["fooling_rate"] = 1 - res["agreement"].to_numpy()
    out["prob_change"] = res["prob_change"].to_numpy()
    return out


def mediation_contexts(pans: pd.DataFrame, scores: pd.DataFrame, settings: Settings
                       ) -> list[tuple[str, int, int, Callable]]:
    """(condition, draw, n_ablated, context) of the mediation: intact, the PANs
    border-ablated, and ``frames_random_draws`` draws of as many random non-PAN channels
    of the same layers border-ablated (chapter 3's control, docs/METHOD.md §7.2)."""
    means = interior_means_from_scores(scores)
    native = scores[scores["mode"] == "native"]
    out = [("intact", 0, 0, lambda m: nullcontext(m))]
    if len(pans):
        out.append(("pans_border", 0, len(pans),
                    lambda m: ablate(m, pans, "border", means)))
        controls = random_controls(native, pans, int(settings.frames_random_draws),
                                   int(settings.seed))
        for draw, g in controls.groupby("draw", sort=True):
            out.append(("random_border", int(draw), len(g),
                        lambda m, g=g: ablate(m, g, "border", means)))
    return out


def shift_summary(shift: pd.DataFrame, pans: pd.DataFrame) -> pd.DataFrame:
    """Per transform: the mean and median activation shift of the PAN channels and of the
    other channels of the same layers, and their ratio (PANs / others)."""
    keys = set(zip(pans["layer"], pans["channel"].astype(int)))
    s = shift.assign(group=["pan" if (lay, int(c)) in keys else "other"
                            for lay, c in zip(shift["layer"], shift["channel"])])
    g = s.groupby(["transform", "group"])["shift"].agg(["mean", "median", "size"]).unstack()
    out = pd.DataFrame({"transform": g.index,
                        "shift_pans": g[("mean", "pan")].values,
                        "shift_others": g[("mean", "other")].values,
                        "median_pans": g[("median", "pan")].values,
                        "median_others": g[("median", "other")].values,
                        "channels_pans": g[("size", "pan")].values,
                        "channels_others": g[("size", "other")].values})
    out["ratio"] = out["shift_pans"] / out["shift_others"]
    return out


# --------------------------------------------------------------------------- study


def frames_model(model_name: str, settings: Settings, *, progress: bool = True
                 ) -> dict[str, pd.DataFrame]:
    """Every chapter-6 table of one classifier (empty tables for other tasks)."""
    if model_task(model_name) != "classification":
        return {k: pd.DataFrame() for k in TABLES}
    t0 = time.perf_counter()
    loaded = load_model(model_name)
    device = torch.device(settings.device)
    model, p = loaded.model.to(device).eval(), loaded.preprocessing
    size = int(settings.image_size or p.input_size[0])
    bs = int(settings.batch_size)
    pans, scores = pretrained_pans(model_name, settings, progress=False)  # chapter 1's stored scan
    t_pans = time.perf_counter()
    ev, _ = split_images(p, settings, size, "eval", settings.frames_n_eval)
    transforms, meta = natural_transforms((size, size), settings, p.mean, p.std)
    natural = compare_predictions(model, ev, transforms, batch_size=bs, device=device,
                                  progress=progress, desc=f"frames {model_name}")
    natural = meta.merge(natural, on="transform")
    fit, _ = split_images(p, settings, size, "scan", settings.frames_adv_images)
    adv = adversarial_frames(model, fit, ev, settings, p.mean, p.std, device=device,
                             progress=progress)
    med_t = mediation_transforms(settings, p.mean, p.std)
    contexts = mediation_contexts(pans, scores, settings)
    contexts += [(f"padding_{mode}", 0, 0, lambda m, mode=mode: padding_policy(m, mode))
                 for mode in PADDINGS[1:]]
    rows = []
    for cond, draw, n_abl, ctx in contexts:
        r = compare_predictions(model, ev, med_t, context=ctx, batch_size=bs, device=device)
        rows.append(r.assign(condition=cond, draw=draw, n_ablated=n_abl))
    med = _split_name(pd.concat(rows, ignore_index=True))
    padding = med[med["condition"].isin(["intact", "padding_circular", "padding_reflect"])]
    padding = padding.assign(padding=padding["condition"].str.removeprefix("padding_")
                             .replace({"intact": "zeros"})).drop(columns=["condition", "draw",
                                                                          "n_ablated"])
    mediation = med[~med["condition"].str.startswith("padding_")]
    shift_t = {f"{f} {w}px": frame_transform(w, f, p.mean, p.std)
               for f in settings.frames_fills for w in settings.frames_control_widths}
    layers = list(dict.fromkeys(pans["layer"])) if len(pans) else []
    shift = pd.DataFrame()
    if layers:
        raw = activation_shift(model, first_images(ev, settings.frames_shift_images), shift_t,
                               layers,
                               batch_size=min(bs, 8), device=device)
        shift = _split_name(shift_summary(raw, pans))
    tag = {"model": model_name}
    out = {"frames_natural": natural, "frames_adversarial": adv, "frames_mediation": mediation,
           "frames_padding": padding, "frames_activation_shift": shift,
           "frames_pans": pd.DataFrame([{"pans": len(pans), "layers": len(layers),
                                         "image_size": size, "tau": settings.tau,
                                         "q": settings.consistency}])}
    out = {k: (v.assign(**tag)[["model"] + list(v.columns)] if len(v) else v)
           for k, v in out.items()}
    out["frames_natural"].attrs["timings"] = {
        model_name: {"pans_s": round(t_pans - t0, 1),
                     "frames_s": round(time.perf_counter() - t_pans, 1)}}
    return out


def classifiers(models) -> list[str]:
    """The image classifiers among ``models``; one printed line names the others, which
    have no top-1 class to agree on (chapters 6 and 7 measure top-1 agreement)."""
    skipped = [m for m in models if model_task(m) != "classification"]
    if skipped:
        print(f"skipped (not ImageNet classifiers; this chapter measures top-1 agreement): "
              f"{', '.join(f'{m} ({model_task(m)})' for m in skipped)}")
    return [m for m in models if m not in skipped]


def frames_all(settings: Settings, *, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Every table of the chapter, for every classifier of the profile (one printed line
    names the models skipped because they are not image classifiers), plus
    ``frames_mediation_summary``."""
    parts, timings = [], {}
    for m in classifiers(settings.models):
        print(f"{m}: PANs, natural frames and controls, universal frames, mediation, padding")
        parts.append(frames_model(m, settings, progress=progress))
        timings.update(parts[-1]["frames_natural"].attrs.get("timings", {}))
    tables = {k: pd.concat([p[k] for p in parts if len(p[k])], ignore_index=True)
              if any(len(p[k]) for p in parts) else pd.DataFrame() for k in TABLES}
    tables["frames_natural"].attrs["timings"] = timings
    tables["frames_mediation_summary"] = mediation_summary(tables["frames_mediation"])
    return tables


# --------------------------------------------------------------------------- summaries


def mediation_summary(mediation: pd.DataFrame) -> pd.DataFrame:
    """Per model and frame: the frame's effect (1 - agreement with that model's own
    unframed predictions) on the intact model, with the PANs border-ablated, and with the
    random channels border-ablated (mean and sd over draws); ``mediated`` is how much of
    the effect PAN ablation removes, ``random_mediated`` the control's, and ``gap`` the
    difference (positive: the PANs carry more of the frame's effect than random
    channels)."""
    if mediation.empty:
        return pd.DataFrame()
    m = mediation.assign(effect=1 - mediation["agreement"])
    rows = []
    for (model, t), g in m.groupby(["model", "transform"], sort=False):
        e = g.groupby("condition")["effect"]
        intact = float(e.mean().get("intact", np.nan))
        pan = float(e.mean().get("pans_border", np.nan))
        rnd = g.loc[g["condition"] == "random_border", "effect"]
        rows.append({"model": model, "transform": t, "fill": g["fill"].iloc[0],
                     "width": int(g["width"].iloc[0]), "n_images": int(g["n_images"].iloc[0]),
                     "effect_intact": intact, "effect_pans": pan,
                     "effect_random": float(rnd.mean()) if len(rnd) else np.nan,
                     "effect_random_sd": float(rnd.std(ddof=1)) if len(rnd) > 1 else 0.0,
                     "draws": int(len(rnd)), "mediated": intact - pan,
                     "random_mediated": intact - float(rnd.mean()) if len(rnd) else np.nan})
    out = pd.DataFrame(rows)
    out["gap"] = out["mediated"] - out["random_mediated"]
    return out


def shift_figure(shift, models=None):
    """The activation-shift figure, or a note when no model had a PAN to compare (a run at
    a threshold no channel reaches still writes every figure and runs to its end)."""
    if shift.empty:
        return plots.nothing_to_draw("no PAN found: no activation shift to compare")
    return plots.frames_activation_shift(shift, models=models)


def frames_claims(tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The chapter's key numbers and verdicts per model, from its tables (the notebook's
    sentences and claims.json). Verdicts use BORDER_MARGIN and MEDIATION_MIN_SD."""
    nat, adv = tables["frames_natural"], tables["frames_adversarial"]
    summ, pad = tables["frames_mediation_summary"], tables["frames_padding"]
    shift = tables["frames_activation_shift"]
    claims: dict[str, Any] = {"thresholds": {"border_margin": BORDER_MARGIN,
                                             "mediation_min_sd": MEDIATION_MIN_SD}}
    for model, g in nat.groupby("model", sort=False):
        c: dict[str, Any] = {"n_images": int(g["n_images"].iloc[0])}
        frames = g[g["kind"] == "frame"]
        c["agreement_by_width"] = {f: {str(int(r.width)): float(r.agreement)
                                       for r in d.itertuples()}
                                   for f, d in frames.groupby("fill", sort=False)}
        c["letterbox"] = {r.fill: float(r.agreement)
                          for r in g[g["kind"] == "letterbox"].itertuples()}
        ctrl = {}
        for (fill, width), d in g[g["width"] > 0].groupby(["fill", "width"], sort=False):
            k = d.set_index("kind")["agreement"]
            if not set(CONTROLS) <= set(k.index):
                continue
            ctrl[f"{fill} {int(width)}px"] = {
                "frame": float(k["frame"]), "centre": float(k["centre"]),
                "random": float(k["random"]),
                "frame_prob_change": float(d.set_index("kind").loc["frame", "prob_change"]),
                "border_worse": bool(k["frame"] < min(k["centre"], k["random"]) - BORDER_MARGIN)}
        c["controls"] = ctrl
        a = adv[adv["model"] == model]
        c["fooling_rate"] = {pl: {str(int(r.width)): float(r.fooling_rate) for r in d.itertuples()}
                             for pl, d in a.groupby("placement", sort=False)}
        c["adversarial_frame_stronger"] = {
            str(int(w)): bool(d.set_index("placement").loc["frame", "fooling_rate"]
                              > d.set_index("placement").loc["centre", "fooling_rate"])
            for w, d in a.groupby("width")}
        s = summ[summ["model"] == model] if len(summ) else summ
        c["mediation"] = {r.transform: {
            "effect_intact": float(r.effect_intact), "effect_pans": float(r.effect_pans),
            "effect_random": float(r.effect_random), "effect_random_sd": float(r.effect_random_sd),
            "draws": int(r.draws), "gap": float(r.gap),
            "pan_specific": bool(r.effect_pans < r.effect_random
                                 - max(r.effect_random_sd, MEDIATION_MIN_SD))}
            for r in s.itertuples()}
        p = pad[pad["model"] == model]
        c["padding_agreement"] = {t: {r.padding: float(r.agreement) for r in d.itertuples()}
                                  for t, d in p.groupby("transform", sort=False)}
        sh = shift[shift["model"] == model] if len(shift) else shift
        c["activation_ratio"] = {r.transform: float(r.ratio) for r in sh.itertuples()}
        claims[model] = c
    return claims


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


SECTIONS = ("natural", "adversarial", "mediation", "padding", "shift")


def frames_findings(claims: dict[str, Any], section: str | None = None) -> list[str]:
    """One sentence per model and question, printed from ``frames_claims``; ``section``
    (one of SECTIONS) keeps only that question's sentences."""
    if section is not None and section not in SECTIONS:
        raise ValueError(f"section must be one of {', '.join(SECTIONS)}; got {section!r}")
    out = []
    for model, c in claims.items():
        if model == "thresholds":
            continue
        for sec, lines in _model_findings(model, c, claims["thresholds"]).items():
            if section in (None, sec):
                out += lines
    return out


def _model_findings(model: str, c: dict, thresholds: dict) -> dict[str, list[str]]:
    """The sentences of one model, per section."""
    lines: list[str] = []
    found = {}
    for name, k in c["controls"].items():
        verdict = ("the border costs more than the same pixels elsewhere"
                   if k["border_worse"] else "no border-specific effect beyond "
                   f"{_pct(thresholds['border_margin'])}")
        lines.append(f"{model}, {name} frame: top-1 agreement {_pct(k['frame'])} vs "
                     f"centred square {_pct(k['centre'])} and random pixels "
                     f"{_pct(k['random'])} ({verdict}); top-class probability "
                     f"{k['frame_prob_change']:+.3f}.")
    if c["letterbox"]:
        lines.append(f"{model}, letterbox: agreement " + ", ".join(
            f"{f} bars {_pct(v)}" for f, v in c["letterbox"].items()) + ".")
    found["natural"], lines = lines, []
    fr = c["fooling_rate"]
    if fr:
        lines.append(f"{model}, universal adversarial frame vs central patch (fooling "
                     f"rate on evaluation photos): " + "; ".join(
                         f"{w} px {_pct(v)} vs {_pct(fr.get('centre', {}).get(w, np.nan))}"
                         for w, v in fr.get("frame", {}).items()) + ".")
    found["adversarial"], lines = lines, []
    for t, m in c["mediation"].items():
        if not m["draws"] and not np.isfinite(m["effect_pans"]):
            lines.append(f"{model}, {t} frame changes {_pct(m['effect_intact'])} of top-1 "
                         "predictions; no PAN found at this tau, so there is nothing to "
                         "border-ablate and no mediation to measure.")
            continue
        verdict = ("PAN-specific" if m["pan_specific"]
                   else "not beyond the random control")
        lines.append(f"{model}, {t} frame changes {_pct(m['effect_intact'])} of top-1 "
                     f"predictions intact, {_pct(m['effect_pans'])} with the PANs "
                     f"border-ablated, {_pct(m['effect_random'])} ± "
                     f"{_pct(m['effect_random_sd'])} with as many random channels "
                     f"({m['draws']} draws): {verdict}.")
    found["mediation"], lines = lines, []
    for t, pads in c["padding_agreement"].items():
        lines.append(f"{model}, {t} frame, agreement with the model's own unframed "
                     "predictions by padding: " + ", ".join(
                         f"{k} {_pct(v)}" for k, v in pads.items()) + ".")
    found["padding"], lines = lines, []
    if c["activation_ratio"]:
        lines.append(f"{model}: frames move PAN channels' activations by "
                     + ", ".join(f"{r:.2f}x ({t})" for t, r in c["activation_ratio"].items())
                     + " the other channels' of the same layers.")
    found["shift"] = lines
    return found

"""Chapter 7: a cure, removing the PANs of a pre-trained model and keeping its behaviour
(docs/METHOD.md §14).

Each cure is another padding (``engine.cure``) plus a recovery: none, BatchNorm
recalibration, or distillation from the zero-padded original on unlabeled crops of the scan
photos, measured at every step count of a grid. Every cure, the original and chapter 3's
ablations are measured the same way on the same images: top-1 agreement and KL with the
original on held-out evaluation crops, agreement with the evidence at the centre and in a
corner, PANs by the study's rule (the model's own padding, the circular null), chapter 6's
frame sensitivity, and the cost.

The chapter's one entry point is ``cure_all``; its claims and sentences are ``cure_claims``
and ``cure_findings``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..engine import cure as engine_cure
from ..engine.ablate import ablate
from ..engine.frames import frame_transform
from ..engine.hooks import eval_mode
from ..engine.models import load_model, model_task
from ..engine.probes import BundledProbe, ImageFolderProbe, iter_batches
from ..engine.rule import decide_pans
from ..engine.store import ScanStore, stored_scan
from .ablation import first_images, interior_means_from_scores, place_crops
from .frames import classifiers, split_images
from .identification import pretrained_pans
from .settings import Settings

TABLES = ("cure", "cure_loss")
GOAL_AGREEMENT = 0.90  # the goal: keep at least this top-1 agreement ...
GOAL_REMOVED = 0.90  # ... while removing at least this share of the PANs


# --------------------------------------------------------------------------- inputs


@dataclass
class CureData:
    """The images of one model's cure: evaluation crops (held out), their placed versions,
    the scan-split crops distillation and mean padding see, and the PAN probes."""

    eval: Any
    placed: dict[str, torch.Tensor]
    framed: torch.Tensor
    train: torch.Tensor
    probes: Any


def cure_data(preprocessing, settings: Settings, size: int) -> CureData:
    """The chapter's splits (docs/METHOD.md §14.2): evaluation crops from chapter 3's set,
    training and PAN probes from the scan split only."""
    p = preprocessing
    ev, _ = split_images(p, settings, size, "eval", settings.cure_n_eval)
    first = first_images(ev, min(settings.cure_n_placement, settings.cure_n_eval))
    placed = {pl: place_crops(first, pl, settings.placement_scale)
              for pl in ("centre", "corner")}
    framed = first_images(ev, min(settings.frames_n_eval, settings.cure_n_eval))
    train, _ = split_images(p, settings, size, "scan", settings.cure_train_images)
    if settings.data_dir:
        probes = ImageFolderProbe(settings.data_dir, size, p.mean, p.std,
                                  n=settings.cure_n_images, seed=int(settings.seed),
                                  channels=p.channels)
    else:
        probes = BundledProbe(settings.cure_n_images, size, seed=int(settings.seed),
                              split="scan", mean=p.mean, std=p.std, channels=p.channels)
    return CureData(ev, placed, framed, train, probes)


def _original(model_name: str, settings: Settings):
    """(original on the settings' device, its preprocessing, input size, the cure's data)."""
    loaded = load_model(model_name)
    original, p = loaded.model.to(torch.device(settings.device)).eval(), loaded.preprocessing
    size = int(settings.image_size or p.input_size[0])
    return original, p, size, cure_data(p, settings, size)


# --------------------------------------------------------------------------- measures


def _logits(model: nn.Module, images, context, batch_size: int, device) -> torch.Tensor:
    out = []
    with eval_mode(model), torch.inference_mode(), context(model):
        for x in iter_batches(images, batch_size):  # channels-last: faster CPU convolutions
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu())
    return torch.cat(out)


def agreement_kl(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement with the reference's logits, and mean KL(reference || logits)."""
    agree = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    ref, lp = F.log_softmax(reference, 1), F.log_softmax(logits, 1)
    kl = float((ref.exp() * (ref - lp)).sum(1).clamp_min(0).mean())
    return agree, kl


class Measure:
    """Measures any variant of one model against the original on the same images: the
    original's logits are computed once."""

    def __init__(self, original: nn.Module, data: CureData, settings: Settings, name: str,
                 store: ScanStore, mean, std, progress: bool = False):
        self.original, self.data, self.S, self.name = original, data, settings, name
        self.store, self.progress = store, progress
        self.device = torch.device(settings.device)
        bs = int(settings.batch_size)
        none = lambda m: nullcontext(m)  # noqa: E731
        self.ref = _logits(original, data.eval, none, bs, self.device)
        self.ref_placed = {k: _logits(original, v, none, bs, self.device)
                           for k, v in data.placed.items()}
        self.frame_name = f"{settings.cure_frame_fill} {settings.cure_frame_width}px"
        self.frame = frame_transform(settings.cure_frame_width, settings.cure_frame_fill,
                                     mean, std)

    def pans(self, model: nn.Module, context=None, identity: dict | None = None) -> int:
        """PANs of the variant by the study's rule (its own padding, the circular null) on
        the cure's probes, through the scan store."""
        S = self.S
        run = context or (lambda m: nullcontext(m))
        with run(model):
            scores = stored_scan(model, self.data.probes, store=self.store, null=True,
                                 batch_size=int(S.batch_size), device=self.device,
                                 progress=self.progress, desc=f"scan {self.name}",
                                 identity={"chapter": "cure", "model_name": self.name,
                                           **(identity or {})})
        return int(len(decide_pans(scores, tau=S.tau, consistency=S.consistency)))

    def __call__(self, model: nn.Module, context: Callable[[nn.Module], ContextManager]
                 | None = None, identity: dict | None = None) -> dict[str, Any]:
        ctx = context or (lambda m: nullcontext(m))
        bs = int(self.S.batch_size)
        logits = _logits(model, self.data.eval, ctx, bs, self.device)
        agree, kl = agreement_kl(logits, self.ref)
        row = {"agreement": agree, "kl": kl}
        for pl, x in self.data.placed.items():
            row[f"agreement_{pl}"] = agreement_kl(_logits(model, x, ctx, bs, self.device),
                                                  self.ref_placed[pl])[0]
        # chapter 6's measure against the point's own unframed predictions (the first
        # evaluation crops, whose logits are at hand)
        framed = _logits(model, self.frame(self.data.framed), ctx, bs, self.device)
        own = logits[:framed.shape[0]]
        row["frame_effect"] = 1.0 - agreement_kl(framed, own)[0]
        row["pans"] = self.pans(model, context, identity)
        return row


# --------------------------------------------------------------------------- the grid


def cure_grid(settings: Settings) -> list[dict[str, Any]]:
    """Every cure of the profile: each padding with no recovery (the plain swaps), the
    BatchNorm recalibrations, and each distillation (padding x trained parameters), whose
    step grid is measured along one run."""
    grid = [{"padding": p, "recovery": "none", "params": "", "steps": 0}
            for p in settings.cure_paddings]
    grid += [{"padding": p, "recovery": "bn", "params": "", "steps": 0}
             for p in settings.cure_bn_paddings]
    grid += [{"padding": p, "recovery": "distill", "params": params,
              "steps": tuple(sorted(set(int(s) for s in settings.cure_steps)))}
             for p in settings.cure_distill_paddings for params in settings.cure_params]
    return grid


def _pans_key(pans: pd.DataFrame) -> list:
    return sorted((str(lay), int(c)) for lay, c in zip(pans["layer"], pans["channel"]))


def cure_model(model_name: str, settings: Settings, *, progress: bool = True
               ) -> dict[str, pd.DataFrame]:
    """Every chapter-7 row of one classifier: the original, chapter 3's ablations, and
    every cure of ``cure_grid`` (distillations at each step count)."""
    S = settings
    original, p, size, data = _original(model_name, S)
    measure = Measure(original, data, S, model_name, ScanStore(), p.mean, p.std)
    rows, losses, timings = [], [], {}

    def add(kind, padding, recovery="", params="", steps=0, seconds=None, n_params=0, **m):
        rows.append({"model": model_name, "kind": kind, "padding": padding,
                     "recovery": recovery, "params": params, "steps": int(steps),
                     "images_seen": int(steps) * int(S.cure_batch),
                     "trained_parameters": int(n_params), **m})
        if seconds is not None:  # the cost of making a cure (wall time: kept out of the table)
            timings[point_label(rows[-1])] = round(float(seconds), 2)

    add("original", "zeros", **measure(original, identity={"variant": "original"}))
    # chapter 3's references: chapter 1's PANs (the store's scan of its probes) ablated
    pans, scores = pretrained_pans(model_name, S, progress=False)
    means = interior_means_from_scores(scores)
    for how in S.cure_ablations:
        ctx = (lambda m, how=how: ablate(m, pans, how, means)) if len(pans) else None
        add("ablation", "zeros", f"pans_{how}",
            **measure(original, ctx, identity={"variant": f"pans_{how}",
                                               "pans": _pans_key(pans)}))
    pan_layers = list(dict.fromkeys(pans["layer"]))
    calibration = data.train[:S.cure_n_images]
    for cell in cure_grid(S):
        t0 = time.perf_counter()
        cured, _ = engine_cure.swap_padding(original, cell["padding"], size,
                                            calibration=calibration,
                                            batch_size=int(S.batch_size))
        swap_s = time.perf_counter() - t0
        if cell["recovery"] == "none":
            add("swap", cell["padding"], "none", seconds=swap_s, **measure(cured))
        elif cell["recovery"] == "bn":
            log = engine_cure.recover(cured, original, "bn", calibration,
                                      batch_size=int(S.batch_size))
            add("bn", cell["padding"], "bn", seconds=swap_s + log.seconds, **measure(cured))
        else:
            done, spent = 0, swap_s
            for target in cell["steps"]:
                log = engine_cure.distill(
                    cured, original, data.train, steps=target - done, lr=S.cure_lr,
                    batch_size=int(S.cure_batch), params=cell["params"], layers=pan_layers,
                    mixup=S.cure_mixup, seed=int(S.seed) + done, progress=progress)
                losses += [{"model": model_name, "padding": cell["padding"],
                            "params": cell["params"], "step": done + i + 1, "loss": v}
                           for i, v in enumerate(log.loss)]
                done, spent = target, spent + log.seconds
                add("distill", cell["padding"], "distill", cell["params"], target,
                    seconds=spent, n_params=log.n_params, **measure(cured))
        del cured
    out = pd.DataFrame(rows)
    out.insert(1, "label", [point_label(r) for r in rows])
    first = out.iloc[0]  # the original
    out["pans_original"] = int(first["pans"])
    out["pans_share"] = out["pans"] / first["pans"] if first["pans"] else np.nan
    out["pans_removed"] = 1 - out["pans_share"]
    out["frame_effect_original"] = float(first["frame_effect"])
    out["frame"] = measure.frame_name
    out["n_eval"] = len(measure.ref)
    out["n_probes"] = int(S.cure_n_images)
    out["image_size"] = size
    out["goal_met"] = (out["agreement"] >= GOAL_AGREEMENT) & (out["pans_removed"] >= GOAL_REMOVED)
    out.attrs["timings"] = {model_name: timings}
    loss = pd.DataFrame(losses, columns=["model", "padding", "params", "step", "loss"])
    return {"cure": out, "cure_loss": loss}


def point_label(row) -> str:
    """A point's name in sentences and figures: 'mean padding', 'mean + BatchNorm',
    'mean + distill 24 (all)', 'PANs border-ablated', 'original'."""
    r = row._asdict() if hasattr(row, "_asdict") else row  # a dict, a row or a named tuple
    kind = r["kind"]
    if kind == "original":
        return "original"
    if kind == "ablation":
        return f"PANs {str(r['recovery']).removeprefix('pans_')}-ablated"
    if kind == "swap":
        return f"{r['padding']} padding"
    if kind == "bn":
        return f"{r['padding']} + BatchNorm"
    return f"{r['padding']} + distill {int(r['steps'])} ({r['params']})"


def cure_all(settings: Settings, *, progress: bool = True) -> dict[str, pd.DataFrame]:
    """``cure_model`` for every classifier of the profile (one line names the others,
    which have no top-1 class to agree on), tables concatenated; ``cure`` carries the
    parameters it was made with and the seconds of each cure (``attrs``)."""
    parts, timings = [], {}
    grid = cure_grid(settings)
    for m in classifiers(settings.models):
        print(f"{m}: the original, {len(settings.cure_ablations)} ablation(s) and "
              f"{len(grid)} cures "
              f"({sum(len(c['steps']) if c['recovery'] == 'distill' else 1 for c in grid)}"
              " measured points)")
        parts.append(cure_model(m, settings, progress=progress))
        timings.update(parts[-1]["cure"].attrs["timings"])
    tables = {k: pd.concat([p[k] for p in parts], ignore_index=True) if parts
              else pd.DataFrame() for k in TABLES}
    tables["cure"].attrs["timings"] = timings
    tables["cure"].attrs["params"] = cure_params(settings)
    return tables


def cure_params(settings: Settings) -> dict[str, Any]:
    """The parameters the cure table depends on (written beside it)."""
    S = settings
    keys = ("profile", "models", "tau", "consistency", "seed", "image_size", "data_dir",
            "cure_paddings", "cure_bn_paddings", "cure_distill_paddings", "cure_params",
            "cure_steps", "cure_lr", "cure_batch", "cure_mixup", "cure_n_eval",
            "cure_n_images", "cure_train_images", "cure_n_placement", "frames_n_eval",
            "cure_ablations", "placement_scale",
            "cure_frame_fill", "cure_frame_width", "n_images")
    return {k: getattr(S, k) for k in keys}


# --------------------------------------------------------------------------- one cure (the CLI)


def make_cure(model_name: str, settings: Settings, padding: str, *, steps: int = 0,
              bn: bool = False, params: str = "all", progress: bool = True
              ) -> tuple[nn.Module, engine_cure.CureSpec, dict[str, Any]]:
    """One cure of one model, as the CLI makes it: the padding swap, BatchNorm
    recalibration if asked, ``steps`` of distillation, then the measures of the chapter
    for the original and the cure. Returns (cured model, its spec, summary with a
    ``text`` line)."""
    S = settings
    if steps < 0:
        raise engine_cure.CureError(f"steps must be 0 or more; got {steps}")
    if model_task(model_name) != "classification":
        raise engine_cure.CureError(
            f"{model_name} is a {model_task(model_name)} model: a cure is measured by top-1 "
            "agreement with the original, which needs a classifier (the engine, "
            "pan_utils.engine.cure, re-pads any model)")
    original, p, size, data = _original(model_name, S)
    t0 = time.perf_counter()
    cured, spec = engine_cure.swap_padding(original, padding, size,
                                           calibration=data.train[:S.cure_n_images],
                                           batch_size=int(S.batch_size))
    if bn:
        engine_cure.recover(cured, original, "bn", data.train[:S.cure_n_images],
                            batch_size=int(S.batch_size))
    layers = []
    if params == "pan_layers":
        layers = list(dict.fromkeys(pretrained_pans(model_name, S, progress=progress)[0]["layer"]))
    log = engine_cure.distill(cured, original, data.train, steps=steps, lr=S.cure_lr,
                              batch_size=int(S.cure_batch), params=params, layers=layers,
                              mixup=S.cure_mixup, seed=int(S.seed), progress=progress)
    seconds = time.perf_counter() - t0
    spec.recovery = {"bn": bool(bn), "steps": int(steps), "params": params, "lr": S.cure_lr,
                     "batch": int(S.cure_batch), "mixup": S.cure_mixup, "seed": int(S.seed),
                     "trained_parameters": log.n_params, "seconds": round(seconds, 1)}
    measure = Measure(original, data, S, model_name, ScanStore(), p.mean, p.std,
                      progress=progress)
    before = measure(original, identity={"variant": "original"})
    after = measure(cured)
    what = f"{padding} padding" + (", BatchNorm recalibrated" if bn else "") + (
        f", {steps} distillation steps ({params})" if steps else "")
    text = (f"{model_name}: {what}, in {seconds:.0f} s. On {len(measure.ref)} held-out "
            f"evaluation crops: top-1 agreement with the original {after['agreement']:.2f}, "
            f"KL {after['kl']:.3f} (centre {after['agreement_centre']:.2f}, corner "
            f"{after['agreement_corner']:.2f}). PANs on {S.cure_n_images} scan probes "
            f"(tau {S.tau:g}, circular null): {before['pans']} -> {after['pans']}.")
    return cured, spec, {"original": before, "cured": after, "seconds": seconds, "text": text}


# --------------------------------------------------------------------------- claims, findings


def closeness(agreement: float, removed: float) -> float:
    """How near a point is to the goal: the smaller of its agreement and its share of PANs
    removed (the goal holds when both reach 0.9): the best cure maximises it."""
    return float(min(agreement, removed))


def _point(r) -> dict[str, Any]:
    return {"label": point_label(r), "agreement": float(r["agreement"]),
            "kl": float(r["kl"]), "pans": int(r["pans"]),
            "pans_share": float(r["pans_share"]), "pans_removed": float(r["pans_removed"]),
            "agreement_centre": float(r["agreement_centre"]),
            "agreement_corner": float(r["agreement_corner"]),
            "frame_effect": float(r["frame_effect"]), "steps": int(r["steps"])}


def cure_claims(cure: pd.DataFrame) -> dict[str, Any]:
    """Per model: the original, the plain swaps, chapter 3's ablations, the best cure
    (``closeness``) and whether any cure meets the goal; the thresholds. The notebook's
    sentences, claims.json and the README come from this."""
    out: dict[str, Any] = {"thresholds": {"goal_agreement": GOAL_AGREEMENT,
                                          "goal_removed": GOAL_REMOVED}}
    for model, g in cure.groupby("model", sort=False):
        rows = [r for _, r in g.iterrows()]
        orig = next(r for r in rows if r["kind"] == "original")
        cures = [r for r in rows if r["kind"] in ("swap", "bn", "distill")]
        if not orig["pans"]:
            out[model] = {"original": _point(orig), "no_pans": True}
            continue
        best = max(cures, key=lambda r: (closeness(r["agreement"], r["pans_removed"]),
                                         r["agreement"]))
        out[model] = {
            "original": _point(orig),
            "swaps": {r["padding"]: _point(r) for r in rows
                      if r["kind"] == "swap" and r["padding"] in ("reflect", "replicate",
                                                                   "circular")},
            "ablations": {r["recovery"]: _point(r) for r in rows if r["kind"] == "ablation"},
            "cures": {point_label(r): _point(r) for r in cures},
            "best": _point(best),
            "goal_met": bool(g["goal_met"].any()),
            "frame": str(g["frame"].iloc[0]),
            "dominates_swaps_and_ablations": bool(all(
                best["agreement"] > r["agreement"] and best["pans"] <= r["pans"]
                for r in rows if r["kind"] == "ablation")
                and best["agreement"] > max((r["agreement"] for r in rows if r["kind"] == "swap"
                                             and r["padding"] in ("reflect", "replicate",
                                                                  "circular")), default=0)),
        }
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def cure_findings(claims: dict[str, Any], section: str | None = None) -> list[str]:
    """The chapter's sentences, printed from ``cure_claims``: ``frontier`` (per model, the
    best cure against the plain swaps and ablations, and the goal) or ``placement``
    (centre vs corner, and the frame sensitivity), or all."""
    lines = []
    th = claims["thresholds"]
    for model, c in claims.items():
        if model == "thresholds":
            continue
        o = c["original"]
        if c.get("no_pans"):
            lines.append(f"{model}: no PAN under the study's rule, nothing to cure.")
            continue
        b = c["best"]
        if section in (None, "frontier"):
            refs = "; ".join(f"{k} {_pct(v['agreement'])} agreement, {v['pans']} PANs"
                             for k, v in c["swaps"].items())
            abl = "; ".join(f"{v['label']}, {_pct(v['agreement'])} agreement, {v['pans']} PANs"
                            for v in c["ablations"].values())
            goal = ("meets the goal" if c["goal_met"] else
                    f"misses the goal ({_pct(th['goal_agreement'])} agreement with "
                    f"{_pct(th['goal_removed'])} of the PANs removed)")
            lines.append(
                f"{model}: the best cure, {b['label']}, keeps {_pct(b['agreement'])} top-1 "
                f"agreement (KL {b['kl']:.2f}) with {b['pans']} of the original's {o['pans']} "
                f"PANs left ({_pct(b['pans_removed'])} removed), and {goal}. Plain swaps: "
                f"{refs}. Chapter 3's reference: {abl}. "
                + ("It keeps more agreement than every plain swap, and beats the ablation on "
                   "both axes." if c["dominates_swaps_and_ablations"] else
                   "It does not both keep more agreement than every plain swap and beat the "
                   "ablation on both axes."))
        if section in (None, "placement"):
            lines.append(
                f"{model}: with the evidence at the centre the best cure agrees on "
                f"{_pct(b['agreement_centre'])} of the crops, in a corner on "
                f"{_pct(b['agreement_corner'])}; a {c['frame']} frame changes "
                f"{_pct(b['frame_effect'])} of its top-1 predictions (the original's: "
                f"{_pct(o['frame_effect'])}).")
    return lines


def cost_lines(cure: pd.DataFrame) -> list[str]:
    """What each cure cost, in steps, crops seen and seconds (``attrs['timings']``, the
    wall times the table itself does not hold)."""
    times = cure.attrs.get("timings", {})
    lines = []
    for r in cure[cure["kind"].isin(["swap", "bn", "distill"])].to_dict("records"):
        label = point_label(r)
        secs = times.get(r["model"], {}).get(label)
        what = (f"{r['steps']} steps, {r['images_seen']} crops, "
                f"{r['trained_parameters']:,} parameters trained" if r["kind"] == "distill"
                else "no training")
        lines.append(f"{r['model']}, {label}: {what}, "
                     + (f"{secs:.1f} s" if secs is not None else "time not recorded"))
    return lines

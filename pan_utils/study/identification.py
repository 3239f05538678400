"""Chapter 1: find the PANs of a model, pre-trained and random-init, with their baselines.

``identify`` turns one model into the tables of notebook 01 (counts, one row per PAN,
sensitivity to tau, PANs per layer, per-channel score distribution); ``example_maps``
draws the mean activation maps of the strongest PANs beside typical non-PANs.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..engine.maps import bn_signs, record_maps
from ..engine.models import LoadedModel, load_model, random_init, recalibrate_batchnorm
from ..engine.padding import discover
from ..engine.probes import ImageFolderProbe, bundled_images
from ..engine.rule import decide_pans, pan_counts_by_tau
from ..engine.scan import find_pans, scan
from ..engine.uncertainty import count_uncertainty
from .settings import Settings

MAP_IMAGES = 64  # mean maps settle well before this; the first crops of the scan set
CALIBRATION_IMAGES = 128  # BatchNorm statistics of a random network settle well before this
PRETRAINED, RANDOM, UNCALIBRATED = "pretrained", "random-init", "random-init (uncalibrated)"
TAUS = tuple(float(t) for t in range(1, 11))


NO_PADDING = "trained without padding, it cannot have a PAN"
# count_uncertainty's columns beside the count (pan_counts of a scanned model)
UNCERTAINTY_COLUMNS = ("pans_boot_mean", "pans_ci_low", "pans_ci_high", "ci_level", "n_boot",
                       "half_a_pans", "half_b_pans", "both_halves", "jaccard")


def input_size(loaded: LoadedModel, settings: Settings) -> int | tuple[int, int]:
    """The probe size: the profile's ``image_size`` or else the model's own input size
    (an int when square, else (height, width), e.g. (64, 256) for a text recogniser)."""
    size = settings.image_size
    if size:
        return int(size)
    h, w = (int(v) for v in loaded.preprocessing.input_size)
    return h if h == w else (h, w)


def grown(size: int | tuple[int, int]) -> int | tuple[int, int]:
    """One pixel more on each axis: S + 1 (or (H + 1, W + 1))."""
    return size + 1 if isinstance(size, int) else (size[0] + 1, size[1] + 1)


def size_label(size: int | tuple[int, int]) -> int | str:
    """A table's value for a probe size: S for a square, else 'HxW'."""
    return size if isinstance(size, int) else f"{size[0]}x{size[1]}"


def has_padded_conv(model: torch.nn.Module, size: int | tuple[int, int]) -> bool:
    """Whether any convolution with a kernel larger than 1 reads zero padding at ``size``."""
    return any(s.is_candidate for s in discover(model, size))


def probe_images(loaded: LoadedModel, settings: Settings, size: int | None = None,
                 split: str = "scan", n: int | None = None):
    """The scan probe set (docs/METHOD.md §1) for ``loaded`` (a tensor, or a folder probe);
    ``n`` caps the number of images (the first ``n`` crops of the same set)."""
    size = size or input_size(loaded, settings)
    p = loaded.preprocessing
    n = min(n, settings.n_images) if n else settings.n_images
    if settings.data_dir:
        return ImageFolderProbe(settings.data_dir, size, p.mean, p.std,
                                n=n, seed=settings.seed, channels=p.channels)
    return bundled_images(n, size, seed=settings.seed, split=split,
                          mean=p.mean, std=p.std, channels=p.channels)


def calibration_images(loaded: LoadedModel, settings: Settings, size: int):
    """Images for recalibrating a random network's BatchNorm, disjoint from the scan set:
    crops of the evaluation photos (their own seed), or folder files the scan set did not
    draw (docs/METHOD.md §5.2)."""
    p = loaded.preprocessing
    n = min(settings.n_images, CALIBRATION_IMAGES)
    if settings.data_dir:
        scan_files = set(probe_images(loaded, settings, size).files)
        probe = ImageFolderProbe(settings.data_dir, size, p.mean, p.std,
                                 channels=p.channels)
        rest = [f for f in probe.files if f not in scan_files] or probe.files
        probe.files = rest[:n]
        return probe
    return bundled_images(n, size, seed=settings.seed + 2, split="eval", mean=p.mean,
                          std=p.std, channels=p.channels)


def channel_scores(scores: pd.DataFrame, pans: pd.DataFrame, mode: str = "native"
                   ) -> pd.DataFrame:
    """Per channel: max |d| over its applicable sides and corners, and whether it is a PAN."""
    s = scores[(scores["mode"] == mode) & scores["applicable"]]
    out = (s.assign(abs_d=s["d"].abs())
           .groupby(["layer", "order", "depth", "channel"], as_index=False)["abs_d"].max()
           .rename(columns={"abs_d": "max_abs_d"}))
    keys = set(zip(pans["layer"], pans["channel"].astype(int)))
    out["pan"] = [(lay, int(c)) in keys for lay, c in zip(out["layer"], out["channel"])]
    return out


def per_layer(scores: pd.DataFrame, pans: pd.DataFrame) -> pd.DataFrame:
    """Candidate channels and PANs of every scanned layer (layers without PANs kept)."""
    native = scores[scores["mode"] == "native"]
    layers = (native.groupby(["layer", "order", "depth"], as_index=False)["channel"].nunique()
              .rename(columns={"channel": "candidate_channels"}))
    n = pans.groupby("layer").size().rename("pans")
    layers = layers.merge(n, left_on="layer", right_index=True, how="left")
    layers["pans"] = layers["pans"].fillna(0).astype(int)
    return layers.sort_values("order", ignore_index=True)


def baseline_models(loaded: LoadedModel, settings: Settings, size: int):
    """(weights label, init seed, model) of the random-init baselines: ``baseline_seeds``
    networks with recalibrated BatchNorm, and one left as initialised (secondary)."""
    calib = calibration_images(loaded, settings, size)
    for i in range(settings.baseline_seeds):
        seed = settings.seed + i
        model = random_init(loaded.model, seed).to(settings.device)
        yield RANDOM, seed, recalibrate_batchnorm(model, calib, batch_size=settings.batch_size)
    yield UNCALIBRATED, settings.seed, random_init(loaded.model, settings.seed)


def _summary(by_seed: pd.DataFrame, uncertainty: pd.DataFrame) -> pd.DataFrame:
    """One row per model and weights: counts as mean ± sd over init seeds (sd 0 for one),
    with the pre-trained count's bootstrap interval and split-half stability."""
    keys = ["model", "weights"]
    g = by_seed.groupby(keys, sort=False)
    out = g.agg(candidate_layers=("candidate_layers", "first"),
                candidate_channels=("candidate_channels", "first"),
                pans=("pans", "mean"), pans_sd=("pans", "std"), seeds=("pans", "size"),
                pan_fraction=("pan_fraction", "mean"), pan_fraction_sd=("pan_fraction", "std"),
                circular_null_pans=("circular_null_pans", "mean"), tau=("tau", "first"),
                q=("q", "first"), n_images=("n_images", "first"),
                image_size=("image_size", "first")).reset_index()
    out = out.fillna({"pans_sd": 0.0, "pan_fraction_sd": 0.0})
    return out.merge(uncertainty, on=keys, how="left")


def identify(model_name: str, settings: Settings, *, progress: bool = True,
             taus: Sequence[float] = TAUS) -> dict[str, pd.DataFrame]:
    """All chapter-1 tables of one model: pre-trained weights and the random-init
    baselines, each scanned with the circular null (docs/METHOD.md §4-5).

    Returns ``pan_counts`` (one row per weights: mean ± sd over init seeds, and the
    pre-trained count's bootstrap interval and split-half Jaccard), ``pan_counts_by_seed``,
    ``pans``, ``pan_sensitivity``, ``pan_layers`` and ``channel_scores``; every table
    carries ``model``, ``weights`` and, where seeds differ, ``init_seed``.
    A model without a padded convolution (kernel > 1) has 0 candidates and 0 PANs under
    every weights, and rows only in ``pan_counts`` and ``pan_sensitivity``.
    """
    tau, q = float(settings.tau), float(settings.consistency)
    loaded = load_model(model_name)
    size = input_size(loaded, settings)
    if not has_padded_conv(loaded.model, size):
        if progress:
            print(f"{model_name}: no padded convolution with a kernel larger than 1; "
                  f"{NO_PADDING}.")
        return unpadded_tables(model_name, settings, size, taus)
    images = probe_images(loaded, settings, size)
    device = settings.device
    out: dict[str, list[pd.DataFrame]] = {k: [] for k in
                                          ("pan_counts_by_seed", "pans", "pan_sensitivity",
                                           "pan_layers", "channel_scores", "uncertainty")}
    variants = itertools.chain([(PRETRAINED, None, loaded.model)],
                               baseline_models(loaded, settings, size))
    for weights, seed, model in variants:
        model.to(device)
        tag = {"model": model_name, "weights": weights, "init_seed": seed}
        if weights == PRETRAINED:
            scores, stats = scan(model, images, null=True, batch_size=settings.batch_size,
                                 device=device, progress=progress, desc="find_pans",
                                 per_image=True)
            pans = decide_pans(scores, tau=tau, consistency=q)
            unc = count_uncertainty(stats, n_boot=settings.n_boot, seed=settings.seed,
                                    tau=tau, consistency=q)
            out["uncertainty"].append(unc.drop(columns="pans").assign(
                model=model_name, weights=weights))
            del stats
        else:
            pans, scores = find_pans(model, images, tau, q, batch_size=settings.batch_size,
                                     device=device, progress=progress, return_scores=True)
        circ = decide_pans(scores, tau=tau, consistency=q, mode="circular", null_mode=None)
        layers = per_layer(scores, pans)
        n_cand = int(layers["candidate_channels"].sum())
        out["pan_counts_by_seed"].append(pd.DataFrame([{
            **tag, "candidate_layers": len(layers), "candidate_channels": n_cand,
            "pans": len(pans), "pan_fraction": len(pans) / n_cand, "tau": tau, "q": q,
            "n_images": int(scores["n_images"].iloc[0]), "image_size": size_label(size),
            "circular_null_pans": len(circ)}]))
        for cond, kw in ((weights, {}),
                         ("circular null", {"mode": "circular", "null_mode": None})):
            curve = pan_counts_by_tau(scores, taus, consistency=q, **kw)
            out["pan_sensitivity"].append(curve.assign(**tag, condition=cond))
        if weights != UNCALIBRATED:
            out["pans"].append(pans.assign(**tag))
            out["pan_layers"].append(layers.assign(**tag))
        # Channel score distributions: the pre-trained weights with their null, and the
        # first calibrated baseline.
        if weights == PRETRAINED or (weights == RANDOM and seed == settings.seed):
            modes = (("native", weights), ("circular", "circular null"))
            for mode, cond in modes[:2 if weights == PRETRAINED else 1]:
                p = pans if mode == "native" else circ
                out["channel_scores"].append(channel_scores(scores, p, mode).assign(
                    **tag, condition=cond))
        model.to("cpu")
    first = ["model", "weights", "init_seed"]
    tables = {}
    for name, frames in out.items():
        df = pd.concat([f for f in frames if len(f)] or frames, ignore_index=True)
        df["init_seed"] = df["init_seed"].astype("Int64") if "init_seed" in df else None
        lead = [c for c in first + ["condition"] if c in df.columns]
        tables[name] = df[lead + [c for c in df.columns if c not in lead]]
    tables["pan_sensitivity"] = tables["pan_sensitivity"][
        ["model", "weights", "init_seed", "condition", "tau", "pans"]]
    unc = tables.pop("uncertainty").drop(columns="init_seed")
    tables["pan_counts"] = _summary(tables["pan_counts_by_seed"], unc)
    return tables


def unpadded_tables(model_name: str, settings: Settings, size: int | tuple[int, int],
                    taus: Sequence[float] = TAUS) -> dict[str, pd.DataFrame]:
    """identify's tables for a model without padded convolutions: a count row of zeros
    per weights and init seed (pan_fraction undefined: NaN) and a flat zero sensitivity
    curve."""
    seeds = [(PRETRAINED, None)] + [(RANDOM, settings.seed + i)
                                    for i in range(settings.baseline_seeds)]
    by_seed, sens = [], []
    for weights, seed in seeds + [(UNCALIBRATED, settings.seed)]:
        tag = {"model": model_name, "weights": weights, "init_seed": seed}
        by_seed.append({**tag, "candidate_layers": 0, "candidate_channels": 0, "pans": 0,
                        "pan_fraction": float("nan"), "tau": float(settings.tau),
                        "q": float(settings.consistency), "n_images": 0,
                        "image_size": size_label(size), "circular_null_pans": 0})
        for cond in (weights, "circular null"):
            sens += [{**tag, "condition": cond, "tau": float(t), "pans": 0} for t in taus]
    by_seed = pd.DataFrame(by_seed).astype({"init_seed": "Int64"})
    empty = pd.DataFrame({"model": pd.Series(dtype=str), "weights": pd.Series(dtype=str),
                          "init_seed": pd.Series(dtype="Int64")})
    # no interval nor split-half stability without a scan: the columns, undefined (NaN)
    undefined = empty.drop(columns="init_seed").assign(
        **{c: pd.Series(dtype=float) for c in UNCERTAINTY_COLUMNS})
    return {"pan_counts_by_seed": by_seed,
            "pan_counts": _summary(by_seed, undefined),
            "pans": _no_rows(empty, PAN_COLUMNS),
            "pan_sensitivity": pd.DataFrame(sens).astype({"init_seed": "Int64"}),
            "pan_layers": _no_rows(empty, LAYER_COLUMNS),
            "channel_scores": _no_rows(empty.assign(condition=pd.Series(dtype=str)),
                                       CHANNEL_COLUMNS)}


# The columns of identify's tables after model, weights, init_seed (and condition), so that
# a model without padded convolution gives tables of the same shape, with no row.
PAN_COLUMNS = ("layer", "order", "depth", "channel", "sides", "corners", "polarity", "type",
               "score", "d_top", "d_bottom", "d_left", "d_right", "consistency")
LAYER_COLUMNS = ("layer", "order", "depth", "candidate_channels", "pans")
CHANNEL_COLUMNS = ("layer", "order", "depth", "channel", "max_abs_d", "pan")


def _no_rows(lead: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    return lead.assign(**{c: pd.Series(dtype=object) for c in columns})


def identify_all(settings: Settings, *, progress: bool = True
                 ) -> dict[str, pd.DataFrame]:
    """``identify`` for every model of the profile, tables concatenated."""
    parts = [identify(m, settings, progress=progress) for m in settings.models]
    return {k: pd.concat([p[k] for p in parts if len(p[k])] or [parts[0][k]],
                         ignore_index=True) for k in parts[0]}


# --------------------------------------------------------------------------- maps


def maps_table(maps: torch.Tensor, meta: pd.DataFrame) -> pd.DataFrame:
    """Long table (meta columns..., row, col, value) of (K, H, W) ``maps``, one meta row each."""
    k, h, w = maps.shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    frames = [meta.iloc[[i]].loc[meta.index[[i]].repeat(h * w)].reset_index(drop=True).assign(
        row=rows.ravel(), col=cols.ravel(), value=maps[i].numpy().ravel())
        for i in range(k)]
    return pd.concat(frames, ignore_index=True)


def pick_examples(pans: pd.DataFrame, scores: pd.DataFrame, n_pans: int = 4,
                  n_other: int = 4) -> tuple[str, pd.DataFrame]:
    """The layer of the strongest PAN; its ``n_pans`` strongest PANs and ``n_other`` typical
    non-PANs (max |d| closest to the layer's median among non-PANs)."""
    top = pans.sort_values("score", ascending=False).iloc[0]
    layer = top["layer"]
    chosen = pans[pans["layer"] == layer].nlargest(n_pans, "score")
    chosen = chosen.assign(kind="PAN", max_abs_d=chosen["score"],
                           corners=chosen.get("corners", ""))[
        ["layer", "channel", "kind", "sides", "corners", "max_abs_d"]]
    others = scores[(scores["layer"] == layer) & ~scores["pan"]].copy()
    med = others["max_abs_d"].median()
    others = others.iloc[np.argsort(np.abs(others["max_abs_d"].to_numpy() - med),
                                    kind="stable")[:n_other]]
    others = others.assign(kind="non-PAN", sides="", corners="")[
        ["layer", "channel", "kind", "sides", "corners", "max_abs_d"]]
    return layer, pd.concat([chosen, others], ignore_index=True)


def example_maps(model_name: str, settings: Settings, pans: pd.DataFrame,
                 scores: pd.DataFrame, n_pans: int = 4, n_other: int = 4) -> pd.DataFrame:
    """Mean activation maps (BatchNorm sign folded in) of the strongest PANs of one layer
    beside typical non-PANs of that layer, pre-trained weights, on the scan probes."""
    pans = pans[(pans["model"] == model_name) & (pans["weights"] == "pretrained")]
    scores = scores[(scores["model"] == model_name) & (scores["condition"] == "pretrained")]
    if pans.empty:
        print(f"{model_name}: no PAN found at tau = {settings.tau:g}, so no example maps")
        return pd.DataFrame(columns=["model", "layer", "channel", "kind", "sides", "corners",
                                     "max_abs_d", "row", "col", "value"])
    layer, chosen = pick_examples(pans, scores, n_pans, n_other)
    loaded = load_model(model_name)
    loaded.model.to(settings.device)
    size = input_size(loaded, settings)
    sign = bn_signs(loaded.model, size)[layer][chosen["channel"].to_numpy()]
    maps = record_maps(loaded.model, {layer: chosen["channel"].tolist()},
                       probe_images(loaded, settings, size, n=MAP_IMAGES),
                       batch_size=settings.batch_size, signs={layer: sign})[layer]
    return maps_table(maps.float(), chosen.assign(model=model_name)[
        ["model", "layer", "channel", "kind", "sides", "corners", "max_abs_d"]])

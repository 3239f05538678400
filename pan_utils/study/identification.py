"""Chapter 1: find the PANs of a model, pre-trained and random-init, with their baselines.

``identify`` turns one model into the tables of notebook 01 (counts, one row per PAN,
sensitivity to tau, PANs per layer, per-channel score distribution); ``example_maps``
draws the mean activation maps of the strongest PANs beside typical non-PANs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..engine.maps import bn_signs, record_maps
from ..engine.models import LoadedModel, load_model
from ..engine.padding import discover
from ..engine.probes import BundledProbe, ImageFolderProbe, bundled_images
from ..engine.rule import decide_pans, pan_counts_by_tau
from ..engine.scan import MIN_IMAGES, ScanError, scan
from ..engine.state import random_init, recalibrate_batchnorm
from ..engine.store import ScanStore, model_fingerprint, probe_fingerprint, scan_parts
from ..engine.uncertainty import TAU_FLOOR, UncertaintyCurves, uncertainty_curves
from .results import read_table, table_mismatches
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


def has_padded_conv(model: torch.nn.Module, size: int | tuple[int, int], *,
                    store: ScanStore | None = None, fingerprint: str | None = None) -> bool:
    """Whether any convolution with a kernel larger than 1 reads zero padding at ``size``
    (remembered by the store for a fingerprinted model: no discovery pass on a rerun)."""
    if store is None or fingerprint is None:
        return any(s.is_candidate for s in discover(model, size))
    found = store.arrays({"model": fingerprint, "padded_at": size}, lambda: {
        "padded": np.array(any(s.is_candidate for s in discover(model, size)))})
    return bool(found["padded"])


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
    for weights, seed in variants(settings)[1:]:
        yield weights, seed, build_variant(loaded, settings, size, weights, seed)


def variants(settings: Settings) -> list[tuple[str, int | None]]:
    """(weights label, init seed) of every scanned variant: the pre-trained weights, the
    calibrated baselines (one per seed) and the uncalibrated one."""
    return ([(PRETRAINED, None)]
            + [(RANDOM, settings.seed + i) for i in range(settings.baseline_seeds)]
            + [(UNCALIBRATED, settings.seed)])


def build_variant(loaded: LoadedModel, settings: Settings, size: int, weights: str,
                  seed: int | None) -> torch.nn.Module:
    """The network of one variant: the pre-trained model itself, or a random-init copy
    (BatchNorm recalibrated on the calibration images for ``random-init``)."""
    if weights == PRETRAINED:
        return loaded.model
    model = random_init(loaded.model, seed)
    if weights == RANDOM:
        model = recalibrate_batchnorm(model.to(settings.device),
                                      calibration_images(loaded, settings, size),
                                      batch_size=settings.batch_size)
    return model


def scan_key(model_name: str, loaded: LoadedModel, settings: Settings, size, weights: str,
             seed: int | None, fingerprint: str | None = None) -> dict:
    """Everything that determines one variant's scan statistics (docs/METHOD.md §12): the
    pre-trained weights' fingerprint (for a baseline: its architecture, init seed and
    calibration images), the probe images' recipe, the padding modes and the device."""
    key = {"model_name": model_name, "weights": weights, "init_seed": seed,
           "model": fingerprint or model_fingerprint(loaded.model),
           "probes": probe_fingerprint(probe_recipe(loaded, settings, size)),
           **scan_parts(null=True, device=settings.device)}
    if weights == RANDOM:
        key["calibration"] = probe_fingerprint(calibration_recipe(loaded, settings, size))
        key["calibration_batch"] = int(settings.batch_size)
    return key


def probe_recipe(loaded: LoadedModel, settings: Settings, size):
    """The scan probes as a recipe (``BundledProbe``, or the lazy folder probe): what
    ``probe_images`` makes, without making it."""
    if settings.data_dir:
        return probe_images(loaded, settings, size)
    p = loaded.preprocessing
    return BundledProbe(settings.n_images, size, seed=settings.seed, split="scan",
                        mean=p.mean, std=p.std, channels=p.channels)


def calibration_recipe(loaded: LoadedModel, settings: Settings, size):
    """The calibration images as a recipe (see ``calibration_images``)."""
    if settings.data_dir:
        return calibration_images(loaded, settings, size)
    p = loaded.preprocessing
    return BundledProbe(min(settings.n_images, CALIBRATION_IMAGES), size, seed=settings.seed + 2,
                        split="eval", mean=p.mean, std=p.std, channels=p.channels)


def stored_scores(model_name: str, loaded: LoadedModel, settings: Settings, size, weights: str,
                  seed: int | None, *, store: ScanStore, images=None, per_image: bool = False,
                  progress: bool = True, fingerprint: str | None = None):
    """(key, scores, per-image stats or None) of one variant, from the store or scanned
    (native and circular null; the pre-trained weights keep their per-image statistics
    for the bootstrap). ``images``: a callable giving the probe images on a miss."""
    key = scan_key(model_name, loaded, settings, size, weights, seed, fingerprint)
    images = images or (lambda: probe_images(loaded, settings, size))

    def compute():
        model = build_variant(loaded, settings, size, weights, seed).to(settings.device)
        try:
            return scan(model, images(), null=True, batch_size=settings.batch_size,
                        device=settings.device, progress=progress, desc=f"scan {weights}",
                        per_image=weights == PRETRAINED)
        finally:
            model.to("cpu")

    scores, stats = store.get(key, compute, per_image=per_image)
    n = int(scores["n_images"].max()) if len(scores) else 0
    if n < MIN_IMAGES:
        raise ScanError(f"only {n} probe image(s) were scanned; finding PANs needs at "
                        f"least {MIN_IMAGES}")
    return key, scores, stats


def stored_uncertainty(store: ScanStore, key: dict, settings: Settings, stats_of
                       ) -> UncertaintyCurves:
    """The bootstrap and split-half count curves of a stored scan at the settings' q,
    resamples and seed, from the store or built from the per-image statistics
    (``stats_of()``): any tau >= the curves' floor then re-decides without resampling."""
    floor = min(TAU_FLOOR, float(settings.tau), min(TAUS))
    parts = {**key, "uncertainty": {"n_boot": int(settings.n_boot), "seed": int(settings.seed),
                                    "q": float(settings.consistency), "floor": floor}}
    arrays = store.arrays(parts, lambda: uncertainty_curves(
        stats_of(), n_boot=settings.n_boot, seed=settings.seed,
        consistency=settings.consistency, floor=floor).arrays())
    return UncertaintyCurves.from_arrays(arrays)


def pretrained_pans(model_name: str, settings: Settings, *, progress: bool = True,
                    store: ScanStore | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pans, scores) of the pre-trained model at the settings' tau and q, with the
    circular null, from the scan store (chapter 1's very scan when it ran with the same
    probes): the PANs every later chapter ablates, decided at its own threshold."""
    loaded = load_model(model_name)
    size = input_size(loaded, settings)
    _, scores, _ = stored_scores(model_name, loaded, settings, size, PRETRAINED, None,
                                 store=store or ScanStore(), progress=progress)
    return decide_pans(scores, tau=settings.tau, consistency=settings.consistency), scores


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
             taus: Sequence[float] = TAUS, store: ScanStore | None = None
             ) -> dict[str, pd.DataFrame]:
    """All chapter-1 tables of one model: pre-trained weights and the random-init
    baselines, each scanned with the circular null (docs/METHOD.md §4-5).

    Scan statistics come from the store (docs/METHOD.md §12) when the model, weights,
    probes and engine are the same: a rerun with another tau or q only re-decides.

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
    store = store or ScanStore()
    fingerprint = model_fingerprint(loaded.model)
    if not has_padded_conv(loaded.model, size, store=store, fingerprint=fingerprint):
        if progress:
            print(f"{model_name}: no padded convolution with a kernel larger than 1; "
                  f"{NO_PADDING}.")
        return unpadded_tables(model_name, settings, size, taus)
    cache: dict[str, torch.Tensor] = {}

    def images():  # made once, and only when some variant must be scanned
        if "x" not in cache:
            cache["x"] = probe_images(loaded, settings, size)
        return cache["x"]

    out: dict[str, list[pd.DataFrame]] = {k: [] for k in
                                          ("pan_counts_by_seed", "pans", "pan_sensitivity",
                                           "pan_layers", "channel_scores", "uncertainty")}
    for weights, seed in variants(settings):
        tag = {"model": model_name, "weights": weights, "init_seed": seed}
        key, scores, _ = stored_scores(model_name, loaded, settings, size, weights, seed,
                                       store=store, images=images, progress=progress,
                                       fingerprint=fingerprint)
        pans = decide_pans(scores, tau=tau, consistency=q)
        if weights == PRETRAINED:
            curves = stored_uncertainty(store, key, settings, lambda: stored_scores(
                model_name, loaded, settings, size, weights, seed, store=store,
                images=images, per_image=True, progress=progress,
                fingerprint=fingerprint)[2])
            out["uncertainty"].append(curves.summary(tau).drop(columns="pans").assign(
                model=model_name, weights=weights))
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


# The settings that determine chapter 1's tables: a chapter reading them must run with the
# same (docs/METHOD.md §12).
CHAPTER1_PARAMS = ("tau", "consistency", "n_images", "image_size", "data_dir", "seed",
                   "baseline_seeds")


def chapter1_params(settings: Settings) -> dict:
    """The parameters recorded beside every chapter-1 table."""
    return {**{k: getattr(settings, k) for k in CHAPTER1_PARAMS}, "profile": settings.profile,
            "n_boot": settings.n_boot, "models": list(settings.models)}


def identify_all(settings: Settings, *, progress: bool = True
                 ) -> dict[str, pd.DataFrame]:
    """``identify`` for every model of the profile, tables concatenated, each carrying
    the parameters it was made with (``attrs["params"]``, written by ``write_table``)."""
    parts = [identify(m, settings, progress=progress) for m in settings.models]
    tables = {k: pd.concat([p[k] for p in parts if len(p[k])] or [parts[0][k]],
                           ignore_index=True) for k in parts[0]}
    for df in tables.values():
        df.attrs["params"] = chapter1_params(settings)
    return tables


def chapter1_tables(out_dir, settings: Settings, names: Sequence[str] = ("pans", "pan_counts"),
                    *, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Chapter 1's tables for a later chapter, made with that chapter's own settings.

    The tables in ``out_dir`` are used when their recorded parameters match ``settings``
    (``CHAPTER1_PARAMS``, and every model of the run present); otherwise chapter 1 is
    re-decided for these settings from the scan store (a scan only where the store has
    none), and one line says why: a table never mixes thresholds or probe sets.
    """
    expected = {**{k: getattr(settings, k) for k in CHAPTER1_PARAMS},
                "models": list(settings.models)}
    bad = sorted({m for n in names for m in table_mismatches(out_dir, n, expected)})
    if not bad:
        tables = {n: read_table(out_dir, n) for n in names}
        return {n: df[df["model"].isin(settings.models)].reset_index(drop=True)
                for n, df in tables.items()}
    print(f"chapter 1's tables do not match this run ({'; '.join(bad)}): re-deciding "
          f"chapter 1 with this run's settings from the scan store")
    tables = identify_all(settings, progress=progress)
    return {n: tables[n] for n in names}


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


# --------------------------------------------------------------------------- claims and findings
# The chapter's sentences, verdicts and claims.json entry, computed from its tables: the
# notebook, the README findings (study/readme.py) and the tests call these functions.

# Verdict thresholds (docs/METHOD.md §11.1).
DOZENS_MIN = 12  # "from dozens to hundreds": at least a dozen PANs per pre-trained model...
HUNDREDS_MAX = 1000  # ...and fewer than a thousand
LEARNED_SD = 2.0  # "far more" than the baseline: above its mean + 2 sd over init seeds


def _by_weights(counts: pd.DataFrame, weights: str) -> pd.DataFrame:
    return counts[counts["weights"] == weights].set_index("model")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: float) -> str:
    """Two decimals, or "–" where the value is undefined (a Jaccard of two empty sets)."""
    return "–" if pd.isna(x) else f"{x:.2f}"


def count_lines(counts: pd.DataFrame) -> list[str]:
    """One sentence per model and weights of ``pan_counts``: the count, its spread and,
    for pre-trained weights, its bootstrap interval and split-half stability."""
    lines = []
    for r in counts.itertuples():
        if r.candidate_layers == 0:
            lines.append(f"{r.model} ({r.weights}): no padded convolution, 0 candidate layers, "
                         f"0 channels, 0 PANs: {NO_PADDING}")
            continue
        line = (f"{r.model} ({r.weights}): {r.pans:.1f} PANs" + (
            f" ± {r.pans_sd:.1f} over {r.seeds} seeds" if r.seeds > 1 else "")
            + f" of {r.candidate_channels} candidate channels in {r.candidate_layers} layers "
            f"({100 * r.pan_fraction:.2f}%); circular null alone: {r.circular_null_pans:g}")
        if r.weights == PRETRAINED:
            line += (f"; {100 * r.ci_level:.0f}% bootstrap interval {r.pans_ci_low:.0f}-"
                     f"{r.pans_ci_high:.0f} ({r.n_boot:.0f} resamples); halves of the probe "
                     f"set: {r.half_a_pans:.0f} and {r.half_b_pans:.0f} PANs, Jaccard "
                     f"{r.jaccard:.2f}")
        lines.append(line)
    return lines


def layer_lines(layers: pd.DataFrame, top: int = 3) -> list[str]:
    """Per model and weights, the ``top`` layers with the most PANs (``pan_layers``)."""
    return [f"{m} ({w}): most PANs in " + ", ".join(
        f"{r.layer} (depth {r.depth:.2f}: {r.pans}/{r.candidate_channels})"
        for r in g.nlargest(top, "pans").itertuples())
        for (m, w), g in layers.groupby(["model", "weights"])]


def dozens_verdict(lo: int, hi: int) -> str:
    """The verdict on "from dozens to hundreds" for per-model counts from ``lo`` to ``hi``."""
    if DOZENS_MIN <= lo and hi < HUNDREDS_MAX:
        return "agrees"
    return "more than claimed" if hi >= HUNDREDS_MAX else "fewer than claimed"


def is_learned(pans: float, baseline_mean: float, baseline_sd: float) -> bool:
    """Whether a pre-trained count is far above its random-init baseline (docs/METHOD.md §11.1)."""
    return bool(pans > baseline_mean + LEARNED_SD * baseline_sd)


def identification_findings(counts: pd.DataFrame, pans: pd.DataFrame, *, tau: float,
                            consistency: float) -> list[str]:
    """The abstract's four claims against ``pan_counts`` and ``pans``, one line each
    (and one per model for "learned?" and for the types)."""
    pre, rnd = _by_weights(counts, PRETRAINED), _by_weights(counts, RANDOM)
    raw = _by_weights(counts, UNCALIBRATED)
    unpadded = list(pre.index[pre["candidate_layers"] == 0])
    lines = [f"0. {m}: no padded convolution; trained without padding, it cannot have a PAN "
             "(the no-padding control)." for m in unpadded]
    pre, rnd, raw = pre.drop(unpadded), rnd.drop(unpadded), raw.drop(unpadded, errors="ignore")
    if pre.empty:  # only no-padding controls: no claim to test
        return lines + ["1. Existence: no pre-trained model here has a padded convolution, "
                        "so no PAN can be found and the claims are not tested."]
    n_with = int((pre["pans"] > 0).sum())
    verdict = ("agrees" if n_with == len(pre) else "partly agrees" if n_with
               else f"disagrees: no PAN found at tau={tau:g}")
    lines.append(f"1. Existence: {n_with} of {len(pre)} pre-trained models have PANs at "
                 f"tau={tau:g}, q={consistency:g} with the circular null ({verdict}).")
    lines.append("2. Identifiable through activations: the rule uses only responses to natural "
                 "images; the circular-padded model itself would call "
                 + ", ".join(f"{m}: {r.circular_null_pans:g}" for m, r in pre.iterrows())
                 + " channels PANs, against "
                 + ", ".join(f"{m}: {r.pans:g}" for m, r in pre.iterrows()) + " natively.")
    lo, hi = int(pre["pans"].min()), int(pre["pans"].max())
    lines.append(
        f"3. 'From dozens to hundreds': {lo} to {hi} PANs per pre-trained model "
        f"({100 * pre['pan_fraction'].min():.1f}%-{100 * pre['pan_fraction'].max():.1f}% of "
        f"candidate channels): {dozens_verdict(lo, hi)}. Bootstrap intervals: "
        + ", ".join(f"{m} {r.pans_ci_low:.0f}-{r.pans_ci_high:.0f}" for m, r in pre.iterrows())
        + "; split-half Jaccard: " + ", ".join(f"{m} {r.jaccard:.2f}" for m, r in pre.iterrows())
        + ".")
    for m in pre.index:
        b = rnd.loc[m]
        above = is_learned(pre.loc[m, "pans"], b["pans"], b["pans_sd"])
        lines.append(
            f"   Learned? {m}: {pre.loc[m, 'pans']:g} pre-trained against {b['pans']:.1f} ± "
            f"{b['pans_sd']:.1f} for random-init weights with recalibrated BatchNorm "
            f"({b['seeds']} seeds): " + ("far more, consistent with PANs being learned."
                                         if above else "NOT clearly more: border contrast here "
                                         "is not specific to training.")
            + (f" Uncalibrated random weights give {raw.loc[m, 'pans']:g}: their activations are "
               "unnormalised, so that count measures a network outside its operating regime."
               if m in raw.index else ""))
    types = pans[pans["weights"] == PRETRAINED].groupby(["model", "type"]).size()
    for m in pre.index:
        t = types.get(m)
        if t is not None:
            lines.append(f"4. Types ({m}): " + ", ".join(f"{k}: {v}" for k, v in t.sort_values(
                ascending=False).items()) + f" ({len(t)} distinct types; see chapter 2).")
    return lines


def identification_claims(counts: pd.DataFrame) -> dict[str, dict]:
    """The chapter's claims.json entry: per model, the pre-trained count with its interval
    and stability beside the baselines (zeros for a model without padded convolution)."""
    pre, rnd = _by_weights(counts, PRETRAINED), _by_weights(counts, RANDOM)
    raw = _by_weights(counts, UNCALIBRATED)
    unpadded = list(pre.index[pre["candidate_layers"] == 0])
    pre = pre.drop(unpadded)
    return {
        m: {"pans": int(pre.loc[m, "pans"]),
            "candidate_channels": int(pre.loc[m, "candidate_channels"]),
            "pan_fraction": float(pre.loc[m, "pan_fraction"]),
            "pans_ci": [float(pre.loc[m, "pans_ci_low"]), float(pre.loc[m, "pans_ci_high"])],
            "jaccard_halves": float(pre.loc[m, "jaccard"]),
            "random_init_pans_mean": float(rnd.loc[m, "pans"]),
            "random_init_pans_sd": float(rnd.loc[m, "pans_sd"]),
            "random_init_seeds": int(rnd.loc[m, "seeds"]),
            "uncalibrated_random_init_pans": float(raw.loc[m, "pans"]),
            "circular_null_pans": float(pre.loc[m, "circular_null_pans"])}
        for m in pre.index} | {m: {"pans": 0, "candidate_channels": 0, "pan_fraction": None,
                                   "random_init_pans_mean": 0.0, "circular_null_pans": 0.0}
                               for m in unpadded}


def sensitivity_verdicts(counts: pd.DataFrame, sensitivity: pd.DataFrame) -> dict[str, str]:
    """Per padded pre-trained model: whether pre-trained weights keep more PANs than the
    recalibrated baseline at every tau of ``pan_sensitivity``, or up to which tau not."""
    pre = _by_weights(counts, PRETRAINED)
    out = {}
    for m in pre.index[pre["candidate_channels"] > 0]:
        s = sensitivity[sensitivity["model"] == m].pivot_table(
            index="tau", columns="condition", values="pans", aggfunc="mean")
        if {PRETRAINED, RANDOM} <= set(s.columns):
            below = s.index[s[RANDOM] >= s[PRETRAINED]]
            out[m] = (f"the recalibrated baseline has at least as many up to tau = "
                      f"{below.max():g}" if len(below) else
                      "pre-trained weights have more PANs than the recalibrated baseline at "
                      f"every tau from {s.index.min():g} to {s.index.max():g}")
    return out


def identification_readme(counts: pd.DataFrame, sensitivity: pd.DataFrame) -> list[str]:
    """The README's chapter-1 findings (markdown lines) from ``pan_counts`` and
    ``pan_sensitivity``."""
    by = counts.set_index(["weights", "model"])
    pre = by.loc[PRETRAINED]
    padded = pre[pre["candidate_channels"] > 0]
    first = padded.iloc[0] if len(padded) else pre.iloc[0]
    rnd = by.loc[RANDOM] if RANDOM in by.index else None
    raw = by.loc[UNCALIBRATED] if UNCALIBRATED in by.index else None
    seeds = int(rnd["seeds"].max()) if rnd is not None else 0
    lines = [f"Probes: {first['n_images']} random crops of the bundled photos per model at "
             f"each model's input size; `tau = {first['tau']:g}`, `q = {first['q']:g}`, "
             "circular null on (`pan_counts.csv`). Interval: bootstrap over the probe images "
             f"({first['n_boot']:.0f} resamples, {100 * first['ci_level']:.0f}%); stability: "
             "Jaccard index of the PAN sets of the two halves of the probe set.", "",
             "| model | PANs (pre-trained) | interval | of candidate channels | split-half "
             f"Jaccard | random-init, BatchNorm recalibrated ({seeds} seeds) | random-init, "
             "uncalibrated | circular null alone |", "|---|---|---|---|---|---|---|---|"]
    unpadded = list(pre.index[pre["candidate_channels"] == 0])
    for m in unpadded:
        lines.append(f"| {m} | 0 | – | none: no padded convolution, so no PAN can exist "
                     "| – | 0 | 0 | 0 |")
    pre = pre.drop(unpadded)
    for m, r in pre.iterrows():
        base = (f"{rnd.loc[m, 'pans']:.1f} ± {rnd.loc[m, 'pans_sd']:.1f}"
                if rnd is not None and m in rnd.index else "–")
        unc = f"{raw.loc[m, 'pans']:g}" if raw is not None and m in raw.index else "–"
        lines.append(f"| {m} | {r['pans']:g} | {r['pans_ci_low']:.0f}–{r['pans_ci_high']:.0f} | "
                     f"{r['candidate_channels']} ({_pct(r['pan_fraction'])}) | "
                     f"{_num(r['jaccard'])} | {base} | {unc} | {r['circular_null_pans']:g} |")
    lines.append("")
    lines += [f"- {m}: {where} (`pan_sensitivity.csv`)."
              for m, where in sensitivity_verdicts(counts, sensitivity).items()]
    return lines


def maps_line(settings: Settings, note: str) -> str:
    """The caption of a mean-map figure: over how many probe images, and ``note``."""
    return f"mean maps over the first {min(MAP_IMAGES, settings.n_images)} probe images; {note}"

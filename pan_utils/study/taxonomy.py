"""Chapter 2: the taxonomy of PANs (docs/METHOD.md §6): types and polarity, kernel
weight mass on the pad, and uneven padding between input sizes S and S+1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..engine.geometry import SIDES, VERTICAL, side_column
from ..engine.maps import bn_signs, record_maps
from ..engine.models import load_model
from ..engine.padding import ConvSite, discover, padded_convs
from ..engine.rule import decide_pans
from ..engine.store import ScanStore
from ..engine.types import TYPE_ORDER
from .identification import (MAP_IMAGES, PRETRAINED, grown, input_size, maps_table,
                             probe_images, size_label, stored_scores)
from .settings import Settings

# --------------------------------------------------------------------------- summaries
# (everything below works from the tables of chapter 1; see notebooks/02_taxonomy)




def type_counts(pans: pd.DataFrame, counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """PANs per model × weights × type × polarity (only combinations that occur).

    With ``counts`` (chapter 1's ``pan_counts``, which has ``seeds``), the PANs of weights
    scanned under several init seeds are averaged per seed.
    """
    cols = ["model", "weights", "type", "polarity"]
    if pans.empty:
        return pd.DataFrame(columns=cols + ["pans", "fraction"])
    out = pans.groupby(cols, as_index=False).size().rename(columns={"size": "pans"})
    if counts is not None and "seeds" in counts:
        seeds = counts.set_index(["model", "weights"])["seeds"]
        per = [seeds.get((m, w), 1) for m, w in zip(out["model"], out["weights"])]
        out["pans"] = out["pans"] / pd.Series(per, index=out.index).clip(lower=1)
    total = out.groupby(["model", "weights"])["pans"].transform("sum")
    out["fraction"] = out["pans"] / total
    order = {t: i for i, t in enumerate(TYPE_ORDER)}
    return out.sort_values(["model", "weights", "type", "polarity"],
                           key=lambda s: s.map(order) if s.name == "type" else s,
                           ignore_index=True)


def side_counts(pans: pd.DataFrame, by: tuple[str, ...] = ("model", "weights")) -> pd.DataFrame:
    """PANs that detect each side (a PAN with sides 'TB' counts for T and for B), and
    PANs with corners only; long table by + (side, pans)."""
    rows = []
    for key, g in pans.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        sides = g["sides"].fillna("")
        for s in SIDES:
            rows.append({**dict(zip(by, key)), "side": s,
                         "pans": int(sides.str.contains(s, regex=False).sum())})
        rows.append({**dict(zip(by, key)), "side": "corner only",
                     "pans": int((sides == "").sum())})
    return pd.DataFrame(rows, columns=[*by, "side", "pans"])


def pad_kernel_index(site: ConvSite, side: str) -> list[int]:
    """Kernel rows (T/B) or columns (L/R) that read padding at the outermost band position
    of ``side`` for ``site``: empty when that band is empty."""
    (kh, kw), (sh, sw), (dh, dw) = site.kernel, site.stride, site.dilation
    t, b, l, r = site.pads
    bands = dict(zip(SIDES, site.band_widths()))
    if bands[side] == 0:
        return []
    if side in VERTICAL:
        k, s, d, before, size, out = kh, sh, dh, t, site.in_hw[0], site.out_hw[0]
    else:
        k, s, d, before, size, out = kw, sw, dw, l, site.in_hw[1], site.out_hw[1]
    start = (0 if side in "TL" else out - 1) * s - before
    pos = start + np.arange(k) * d
    return [int(i) for i in np.flatnonzero((pos < 0) | (pos > size - 1))]


def kernel_padding_mass(weight: torch.Tensor | np.ndarray, index: list[int], side: str
                        ) -> np.ndarray:
    """Per output channel, the fraction of |w| on the kernel rows (side T/B) or columns
    (L/R) ``index`` that read the pad. ``weight``: (C_out, C_in/groups, kh, kw)."""
    w = np.abs(np.asarray(weight.detach().cpu() if isinstance(weight, torch.Tensor)
                          else weight, dtype=np.float64))
    total = w.sum(axis=(1, 2, 3))
    if not index:
        return np.full(w.shape[0], np.nan)
    part = w[:, :, index, :] if side in VERTICAL else w[:, :, :, index]
    with np.errstate(invalid="ignore", divide="ignore"):
        return part.sum(axis=(1, 2, 3)) / total


def kernel_mass_table(model, layer: str, size: int, pans: pd.DataFrame) -> pd.DataFrame:
    """One row per (channel, applicable side) of ``layer``: weight mass on the pad rows,
    whether the channel is a PAN and whether it detects that side; ``uniform`` is the mass
    an evenly spread kernel would put there."""
    site = next(s for s in discover(model, size) if s.name == layer)
    w = site.module.weight
    mine = pans[pans["layer"] == layer]
    sides_of = dict(zip(mine["channel"].astype(int), mine["sides"].fillna("")))
    rows = []
    for side in SIDES:
        idx = pad_kernel_index(site, side)
        if not idx:
            continue
        mass = kernel_padding_mass(w, idx, side)
        k = site.kernel[0] if side in VERTICAL else site.kernel[1]
        for c in range(w.shape[0]):
            rows.append({"layer": layer, "channel": c, "side": side,
                         "pad_index": ",".join(map(str, idx)), "uniform": len(idx) / k,
                         "pan": c in sides_of, "detects_side": side in sides_of.get(c, ""),
                         "mass": float(mass[c])})
    return pd.DataFrame(rows)


def kernels_table(model, layer: str, channels: list[int]) -> pd.DataFrame:
    """Long table (layer, channel, row, col, weight) of kernels summed over input channels
    (the response of each channel to a constant input patch)."""
    w = dict(model.named_modules())[layer].weight.detach().cpu().double().sum(1).numpy()
    rows = []
    for c in channels:
        for i in range(w.shape[1]):
            for j in range(w.shape[2]):
                rows.append({"layer": layer, "channel": int(c), "row": i, "col": j,
                             "weight": float(w[c, i, j])})
    return pd.DataFrame(rows)


def first_pan_layer(pans: pd.DataFrame, min_pans: int = 1) -> str | None:
    """The earliest layer (by order) with at least ``min_pans`` PANs."""
    n = pans.groupby(["order", "layer"]).size()
    n = n[n >= min_pans]
    return None if n.empty else n.index[0][1]


def uneven_layers(model, sizes: tuple[int, ...], model_name: str = "") -> pd.DataFrame:
    """Per candidate conv and input size: stride, pads and band widths per side; a side with
    an empty band cannot be seen by that layer (the stride-2 'uneven padding')."""
    frames = []
    for size in sizes:
        df = padded_convs(model, size)
        frames.append(df.assign(model=model_name, size=size_label(size)))
    df = pd.concat(frames, ignore_index=True)
    cols = ["model", "size", "layer", "order", "kernel_h", "stride_h", "in_h", "pad_top",
            "pad_bottom", "pad_left", "pad_right", *(side_column("band", k) for k in SIDES)]
    return df[cols]


# --------------------------------------------------------------------------- recomputation
# (these load the model again: kernels, scans at another size, example maps)


def first_layer_kernels(model_name: str, settings: Settings, pans: pd.DataFrame, n: int = 4
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kernel_mass, kernels) for the first padded layer with PANs of the pre-trained model.

    kernel_mass: every channel × applicable side of that layer (see kernel_mass_table);
    kernels: the ``n`` strongest PANs and the first ``n`` non-PAN channels of the layer.
    """
    mine = pans[(pans["model"] == model_name) & (pans["weights"] == "pretrained")]
    layer = first_pan_layer(mine)
    if layer is None:
        return pd.DataFrame(), pd.DataFrame()
    loaded = load_model(model_name)
    size = input_size(loaded, settings)
    mass = kernel_mass_table(loaded.model, layer, size, mine).assign(model=model_name)
    in_layer = mine[mine["layer"] == layer].nlargest(n, "score")
    pan_ch = set(mine.loc[mine["layer"] == layer, "channel"].astype(int))
    n_out = dict(loaded.model.named_modules())[layer].out_channels
    others = [c for c in range(n_out) if c not in pan_ch][:n]
    parts = []
    for kind, chans, sides in (("PAN", in_layer["channel"].astype(int).tolist(),
                                in_layer["sides"].tolist()),
                               ("non-PAN", others, [""] * len(others))):
        k = kernels_table(loaded.model, layer, chans)
        k = k.merge(pd.DataFrame({"channel": chans, "sides": sides}), on="channel")
        parts.append(k.assign(kind=kind))
    kernels = pd.concat(parts, ignore_index=True).assign(model=model_name)
    kernels = kernels[["model", "layer", "kind", "channel", "sides", "row", "col", "weight"]]
    return mass[["model", *[c for c in mass.columns if c != "model"]]], kernels


def uneven_padding(model_name: str, settings: Settings, pans: pd.DataFrame, *, progress: bool = True
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(layers, side_pans) at input sizes S and S+1 for the pre-trained model.

    layers: band widths per side of every candidate conv at both sizes; side_pans: PANs
    per detected side at both sizes (S from ``pans``, S+1 scanned here on the same crops).
    """
    loaded = load_model(model_name)
    size = input_size(loaded, settings)
    layers = uneven_layers(loaded.model, (size, grown(size)), model_name)
    at_s = pans[(pans["model"] == model_name) & (pans["weights"] == "pretrained")]
    _, scores, _ = stored_scores(model_name, loaded, settings, grown(size), PRETRAINED, None,
                                 store=ScanStore(), progress=progress)
    at_s1 = decide_pans(scores, tau=settings.tau, consistency=settings.consistency)
    frames = []
    for s, p in ((size_label(size), at_s), (size_label(grown(size)), at_s1)):
        p = p.assign(model=model_name, size=s)
        sc = side_counts(p, by=("model", "size")) if len(p) else pd.DataFrame(
            {"model": model_name, "size": s, "side": [*SIDES, "corner only"],
             "pans": 0})
        frames.append(sc.assign(total_pans=len(p)))
    return layers, pd.concat(frames, ignore_index=True)


def type_examples(model_name: str, settings: Settings, pans: pd.DataFrame) -> pd.DataFrame:
    """Mean activation maps (BatchNorm sign folded in) of the strongest pre-trained PAN of
    each type, as a long table (model, type, layer, channel, sides, score, row, col, value)."""
    mine = pans[(pans["model"] == model_name) & (pans["weights"] == "pretrained")]
    if mine.empty:
        return pd.DataFrame()
    best = (mine.sort_values("score", ascending=False).groupby("type", sort=False).head(1))
    best = best.assign(order_t=best["type"].map({t: i for i, t in enumerate(TYPE_ORDER)}))
    best = best.sort_values("order_t")
    loaded = load_model(model_name)
    size = input_size(loaded, settings)
    loaded.model.to(settings.device)
    signs = bn_signs(loaded.model, size)
    layers: dict[str, list[int]] = {}
    for lay, c in zip(best["layer"], best["channel"].astype(int)):
        layers.setdefault(lay, []).append(c)
    maps = record_maps(loaded.model, layers, probe_images(loaded, settings, size, n=MAP_IMAGES),
                       batch_size=settings.batch_size,
                       signs={k: signs[k][v] for k, v in layers.items()})
    frames = []
    for lay, chans in layers.items():
        meta = best[best["layer"] == lay].set_index("channel").loc[chans].reset_index()
        frames.append(maps_table(maps[lay].float(), meta.assign(model=model_name)[
            ["model", "type", "layer", "channel", "sides", "corners", "score"]]))
    out = pd.concat(frames, ignore_index=True)
    rank = {t: i for i, t in enumerate(TYPE_ORDER)}
    return out.sort_values(["type", "row", "col"], key=lambda s: s.map(rank)
                           if s.name == "type" else s, kind="stable", ignore_index=True)


# --------------------------------------------------------------------------- chapter entry point,
# claims and findings (the notebook, the README findings and the tests call these)


def models_with_pans(pans: pd.DataFrame, models: list[str] | tuple[str, ...]) -> list[str]:
    """The models of ``models`` with at least one pre-trained PAN in chapter 1's ``pans``."""
    pre = pans[pans["weights"] == "pretrained"]
    return [m for m in models if (pre["model"] == m).any()]


def classify_all(settings: Settings, pans: pd.DataFrame, counts: pd.DataFrame
                 ) -> dict[str, pd.DataFrame]:
    """Every chapter-2 table from chapter 1's ``pans`` and ``pan_counts``: ``taxonomy``,
    ``kernel_mass``, ``pan_kernels``, ``uneven_padding_layers``, ``uneven_padding_pans`` and
    ``type_example_maps`` (the last five for the models with pre-trained PANs)."""
    with_pans = models_with_pans(pans, settings.models)
    kernels = [first_layer_kernels(m, settings, pans) for m in with_pans]
    uneven = [uneven_padding(m, settings, pans) for m in with_pans]
    def cat(name: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
        if not frames:  # no model with PANs: the table's columns, no row
            return pd.DataFrame(columns=list(PER_MODEL_COLUMNS[name]))
        return pd.concat(frames, ignore_index=True)

    return {"taxonomy": type_counts(pans, counts),
            "kernel_mass": cat("kernel_mass", [k[0] for k in kernels]),
            "pan_kernels": cat("pan_kernels", [k[1] for k in kernels]),
            "uneven_padding_layers": cat("uneven_padding_layers", [u[0] for u in uneven]),
            "uneven_padding_pans": cat("uneven_padding_pans", [u[1] for u in uneven]),
            "type_example_maps": cat("type_example_maps", [type_examples(m, settings, pans)
                                                           for m in with_pans])}


# The columns of classify_all's per-model tables, for a chapter where no model has a PAN.
PER_MODEL_COLUMNS = {
    "kernel_mass": ("model", "layer", "channel", "side", "pad_index", "uniform", "pan",
                    "detects_side", "mass"),
    "pan_kernels": ("model", "layer", "kind", "channel", "sides", "row", "col", "weight"),
    "uneven_padding_layers": ("model", "size", "layer", "order", "kernel_h", "stride_h", "in_h",
                              "pad_top", "pad_bottom", "pad_left", "pad_right", "band_top",
                              "band_bottom", "band_left", "band_right"),
    "uneven_padding_pans": ("model", "size", "side", "pans", "total_pans"),
    "type_example_maps": ("model", "type", "layer", "channel", "sides", "corners", "score",
                          "row", "col", "value"),
}


def type_lines(tax: pd.DataFrame) -> list[str]:
    """Per model and weights of ``taxonomy``: its PANs by type and by polarity."""
    lines = []
    for (m, w), g in tax.groupby(["model", "weights"]):
        top = g.groupby("type")["pans"].sum().sort_values(ascending=False)
        pol = g.groupby("polarity")["pans"].sum()
        lines.append(f"{m} ({w}): {g['pans'].sum():.3g} PANs; "
                     + ", ".join(f"{k} {v:.3g}" for k, v in top.items())
                     + "; polarity " + ", ".join(f"{k} {v:.3g}" for k, v in pol.items()))
    return lines


def mass_groups(mass: pd.DataFrame) -> pd.DataFrame:
    """``kernel_mass`` with a ``group`` column: PAN detecting that side, PAN detecting
    another side, or non-PAN."""
    return mass.assign(group=mass["detects_side"].map({True: "PAN, detects side"})
                       .fillna(mass["pan"].map({True: "PAN, other side", False: "non-PAN"})))


def mass_lines(group: pd.DataFrame) -> list[str]:
    """Per model and layer, the mean pad-row mass of each group against a uniform kernel."""
    lines = []
    for (m, lay), g in group.groupby(["model", "layer"]):
        s = g.groupby("group")["mass"].mean()
        lines.append(f"{m} {lay}: mean pad-row mass " + ", ".join(
            f"{k} {v:.3f}" for k, v in s.items()) + f" (uniform {g['uniform'].iloc[0]:.3f})")
    return lines


def uneven_lines(layers: pd.DataFrame, side_pans: pd.DataFrame) -> list[str]:
    """The strided layers blind to each side at S and S+1, and the PANs per side."""
    lines = []
    for (m, size), g in layers[layers["stride_h"] > 1].groupby(["model", "size"]):
        blind = {s: int((g[side_column("band", s)] == 0).sum()) for s in SIDES}
        lines.append(f"{m} at {size}: {len(g)} stride-2 padded layers; layers blind to each "
                     f"side: {', '.join(f'{k} {v}' for k, v in blind.items())}")
    for m, g in side_pans.groupby("model"):
        w = g.pivot_table(index="side", columns="size", values="pans")
        s0, s1 = sorted(w.columns)
        lines.append(f"{m}: PANs per side at {s0} -> {s1}: " + ", ".join(
            f"{k} {int(w.loc[k, s0])}->{int(w.loc[k, s1])}" for k in w.index))
    return lines


def taxonomy_claims(tax: pd.DataFrame, side_pans: pd.DataFrame) -> dict[str, dict]:
    """The chapter's claims.json entry: per model, pre-trained PANs by type and polarity,
    and the PAN total at S and S+1."""
    claims = {}
    for m, g in tax[tax["weights"] == "pretrained"].groupby("model"):
        w = side_pans[side_pans["model"] == m]
        claims[m] = {"types": {k: int(v) for k, v in g.groupby("type")["pans"].sum().items()},
                     "polarity": {k: int(v) for k, v in
                                  g.groupby("polarity")["pans"].sum().items()},
                     "pans_by_size": {str(k): int(v) for k, v in
                                      w.groupby("size")["total_pans"].first().items()}}
    return claims


def taxonomy_readme(tax: pd.DataFrame, side_pans: pd.DataFrame, order: list[str]
                    ) -> list[str]:
    """The README's chapter-2 findings from ``taxonomy`` and ``uneven_padding_pans``, models
    in ``order`` (chapter 1's)."""
    tax = tax[tax["weights"] == "pretrained"]
    lines = []
    for m, g in sorted(tax.groupby("model"), key=lambda kv: order.index(kv[0])):
        by_type = g.groupby("type")["pans"].sum().sort_values(ascending=False)
        side = by_type.drop("corner only", errors="ignore")
        single = g[g["type"] == "single side"].set_index("polarity")["pans"]
        lines.append(f"- {m} (`taxonomy.csv`): {by_type.size} types; commonest with a side: "
                     f"{side.index[0]} ({side.iloc[0]:g}), of which {single.get('-', 0):g} are "
                     f"silenced at the border (polarity -); corner only: "
                     f"{by_type.get('corner only', 0):g}.")
    for m, g in side_pans.groupby("model", sort=False):
        w = g.pivot_table(index="side", columns="size", values="pans")
        s0, s1 = sorted(w.columns)
        total = g.groupby("size")["total_pans"].first()
        lines.append(f"- {m} at {s0} → {s1} px (`uneven_padding_pans.csv`): PANs "
                     f"{total[s0]} → {total[s1]}; bottom {int(w.loc['B', s0])} → "
                     f"{int(w.loc['B', s1])}, right {int(w.loc['R', s0])} → "
                     f"{int(w.loc['R', s1])}.")
    return lines


def chapter_pans(pans: pd.DataFrame, models: list[str] | tuple[str, ...]
                 ) -> tuple[pd.DataFrame, list[str]]:
    """Chapter 1's ``pans`` of ``models``, and what was read: a line with the count and one
    per model without pre-trained PANs (skipped by this chapter)."""
    pans = pans[pans["model"].isin(models)]
    with_pans = models_with_pans(pans, models)
    return pans, [f"read {len(pans)} PANs of {pans['model'].nunique()} model(s) from "
                  "chapter 1"] + [f"{m}: no pre-trained PANs in chapter 1, nothing to "
                                  "classify: skipped" for m in models if m not in with_pans]

"""Figures of the study, each drawn from a written table (seaborn); a flat module of
functions that take a table and return a matplotlib Figure.

No backend is chosen here: Jupyter's inline backend shows the figures in the notebooks
(``results.show_figure``), and without a display matplotlib falls back to Agg.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from ..engine.types import TYPE_ORDER

sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
PALETTE = sns.color_palette("colorblind")


@contextmanager
def _fixed_jitter(seed: int = 0):
    """seaborn jitters strip plots with numpy's global generator: seed it for the figure
    (so that a rerun draws the same PNG) and restore it after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _model_order(df: pd.DataFrame, models=None) -> list[str]:
    """The models in the order given (the profile's), else in order of appearance."""
    present = list(dict.fromkeys(df["model"]))
    return [m for m in models if m in present] if models else present


def nothing_to_draw(what: str) -> plt.Figure:
    """A small figure that says why there is nothing to draw (no PAN found, say), so that a
    chapter without data still writes every figure and runs to its end."""
    fig, ax = plt.subplots(figsize=(4.5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, what, ha="center", va="center", fontsize=10, wrap=True)
    return fig


def _or_nothing(what: str):
    """A figure function that draws ``nothing_to_draw(what)`` when its table has no row."""
    def wrap(draw):
        @functools.wraps(draw)
        def drawn(table: pd.DataFrame, *args, **kwargs) -> plt.Figure:
            return nothing_to_draw(what) if table.empty else draw(table, *args, **kwargs)
        return drawn
    return wrap


def _tau_line(ax, tau: float | None, vertical: bool = True) -> None:
    if tau is None:
        return
    line = ax.axvline if vertical else ax.axhline
    line(tau, color="0.3", ls="--", lw=1)
    ax.annotate(f"tau = {tau:g}", xy=(tau, 1), xycoords=("data", "axes fraction"),
                xytext=(3, -12), textcoords="offset points", fontsize=8, color="0.3")


# --------------------------------------------------------------------------- 01 identification


def sensitivity_curve(sens: pd.DataFrame, tau: float | None = None, models=None
                      ) -> plt.Figure:
    """PAN count vs tau per model: pre-trained weights, the random-init baseline (mean ±
    sd over init seeds, shaded), its uncalibrated variant and the circular null of the
    pre-trained weights; the zero line is drawn."""
    # A model without a padded convolution has a flat zero curve: the notebook says so in
    # words, and the figure keeps its panels for the models that can have PANs.
    sens = sens[sens.groupby("model")["pans"].transform("max") > 0]
    if sens.empty:
        return nothing_to_draw("no PAN at any tau: nothing to draw")
    null = sens["condition"] == "circular null"
    df = sens[~null | (sens["weights"] == "pretrained")]
    df = df.assign(series=np.where(df["condition"] == "circular null",
                                   "circular null (pretrained)", df["condition"]))
    order = [s for s in ("pretrained", "random-init", "random-init (uncalibrated)",
                         "circular null (pretrained)") if s in set(df["series"])]
    g = sns.relplot(data=df, x="tau", y="pans", hue="series", hue_order=order,
                    style="series", style_order=order, col="model",
                    col_order=_model_order(df, models), kind="line", markers=True,
                    dashes=False, errorbar="sd", height=3.2, aspect=1.2,
                    facet_kws={"sharey": False})
    for ax in g.axes.flat:
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=-0.4)
        ax.axhline(0, color="0.2", lw=0.8)
        _tau_line(ax, tau)
    g.set_titles("{col_name}")
    g.set_axis_labels("tau (|d| threshold)", "PANs (symlog scale)")
    g.legend.set_title("")
    return g.figure


@_or_nothing("no PAN found: nothing to draw")
def pans_per_layer(layers: pd.DataFrame, models=None) -> plt.Figure:
    """Fraction of each candidate layer's channels that are PANs, against relative depth
    (the random-init baseline: mean ± sd over init seeds)."""
    df = layers.assign(fraction=layers["pans"] / layers["candidate_channels"])
    g = sns.relplot(data=df, x="depth", y="fraction", hue="weights", col="model",
                    col_order=_model_order(df, models), kind="line", marker="o",
                    errorbar="sd", height=3.2, aspect=1.3)
    g.set_titles("{col_name}")
    g.set_axis_labels("relative depth (0: first padded conv)",
                      "PANs / channels of the layer")
    return g.figure


@_or_nothing("no candidate channel: nothing to draw")
def d_distribution(channel_scores: pd.DataFrame, tau: float | None = None, models=None
                   ) -> plt.Figure:
    """Complementary ECDF of each channel's max |d| over sides, per condition and model."""
    df = channel_scores[np.isfinite(channel_scores["max_abs_d"])]
    if "weights" in df.columns:  # the null of the pre-trained weights only
        df = df[(df["condition"] != "circular null") | (df["weights"] == "pretrained")]
    g = sns.displot(data=df, x="max_abs_d", hue="condition", col="model",
                    col_order=_model_order(df, models), kind="ecdf", complementary=True,
                    log_scale=(True, True), height=3.2, aspect=1.2)
    for ax in g.axes.flat:
        _tau_line(ax, tau)
    g.set_titles("{col_name}")
    g.set_axis_labels("max |d| over sides and corners", "fraction of channels ≥ x")
    return g.figure


def _label(meta: dict, title: str) -> str:
    """A panel title; a PAN with no significant side is labelled by its corners."""
    text = title.format(**meta)
    if meta.get("kind", "PAN") == "PAN" and not str(meta.get("sides", "") or ""):
        corners = str(meta.get("corners", "") or "")
        text = text.rstrip() + (f" corners {corners}" if corners else " corners")
    return text


def map_grid(maps: pd.DataFrame, title: str = "{kind} c{channel} {sides}",
             row: str = "model", centre: bool = True, what: str = "mean activation"
             ) -> plt.Figure:
    """Maps from a long table (…, channel, row, col, value): one image per map, one figure
    row per value of ``row``, all maps of a row on one colour scale with its colorbar
    (so a weak channel looks weak beside a strong one). Activation maps are centred on
    their median (``centre``); kernels are shown around 0."""
    if maps.empty:
        return nothing_to_draw("no PAN found: no maps to draw")
    key_cols = [c for c in maps.columns if c not in ("row", "col", "value")]
    groups = list(maps.groupby(key_cols, sort=False, dropna=False))
    rows = list(dict.fromkeys(k[key_cols.index(row)] for k, _ in groups))
    ncol = max(sum(1 for k, _ in groups if k[key_cols.index(row)] == r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol + 1, figsize=(1.9 * ncol + 0.6, 2.5 * len(rows)),
                             squeeze=False, gridspec_kw={"width_ratios": [1] * ncol + [0.08]})
    for ax in axes.flat:
        ax.axis("off")
    images = {r: [] for r in rows}
    for key, g in groups:
        meta = dict(zip(key_cols, key))
        img = g.pivot(index="row", columns="col", values="value").to_numpy()
        images[meta[row]].append((meta, img - np.median(img) if centre else img))
    for r_i, r in enumerate(rows):
        lim = max(float(np.abs(img).max()) for _, img in images[r]) or 1.0
        shapes = {img.shape for _, img in images[r]}
        for c_i, (meta, img) in enumerate(images[r]):
            ax = axes[r_i, c_i]
            im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            size = "" if len(shapes) == 1 else f"\n{img.shape[0]}×{img.shape[1]} map"
            ax.set_title(_label(meta, title) + size, fontsize=7.5)
        row_label = f"{r}\n{'×'.join(map(str, shapes.pop()))}" if len(shapes) == 1 else str(r)
        axes[r_i, 0].text(-0.12, 0.5, row_label, transform=axes[r_i, 0].transAxes,
                          rotation=90, va="center", ha="right", fontsize=8)
        cax = axes[r_i, -1]
        cax.axis("on")
        fig.colorbar(im, cax=cax).set_label(what + (" − median" if centre else ""), fontsize=7)
    fig.tight_layout(h_pad=1.6)
    return fig


# --------------------------------------------------------------------------- 02 taxonomy


@_or_nothing("no PAN found: nothing to draw")
def type_bars(taxonomy: pd.DataFrame, models=None) -> plt.Figure:
    """PANs per type and polarity, per model (columns) and weights (rows), on one scale."""
    order = [t for t in TYPE_ORDER if t in set(taxonomy["type"])]
    g = sns.catplot(data=taxonomy, x="pans", y="type", hue="polarity", col="model",
                    col_order=_model_order(taxonomy, models), row="weights",
                    row_order=[w for w in ("pretrained", "random-init")
                               if w in set(taxonomy["weights"])],
                    kind="bar", order=order, hue_order=["+", "-", "mixed"],
                    height=2.8, aspect=1.5, sharex=True, errorbar=None)
    g.set_titles("{col_name} · {row_name}")
    g.set_axis_labels("PANs", "")
    return g.figure


def kernel_grid(kernels: pd.DataFrame, title: str = "{kind} c{channel}") -> plt.Figure:
    """Kernels (summed over input channels) from a long table (…, row, col, weight)."""
    return map_grid(kernels.rename(columns={"weight": "value"}), title=title, centre=False,
                    what="weight summed over input channels")


GROUPS = ("non-PAN", "PAN, other side", "PAN, detects side")


@_or_nothing("no PAN found: nothing to draw")
def kernel_mass(mass: pd.DataFrame, models=None) -> plt.Figure:
    """Weight mass on the kernel rows (T, B) or columns (L, R) that read the pad: channels
    detecting that side vs the others, with the number of channels under each box."""
    df = mass.assign(group=np.where(mass["detects_side"], GROUPS[2],
                                    np.where(mass["pan"], GROUPS[1], GROUPS[0])))
    order = _model_order(df, models)
    g = sns.catplot(data=df, x="side", y="mass", hue="group", col="model", col_order=order,
                    kind="box", hue_order=list(GROUPS), order=["T", "B", "L", "R"],
                    height=3.6, aspect=1.4, fliersize=2)
    width = 0.8 / len(GROUPS)
    for ax, model in zip(g.axes.flat, order):
        sub = df[df["model"] == model]
        ax.axhline(float(sub["uniform"].iloc[0]), color="0.3", ls="--", lw=1)
        n = sub.groupby(["side", "group"]).size()
        for i, side in enumerate("TBLR"):
            for j, grp in enumerate(GROUPS):
                k = int(n.get((side, grp), 0))
                ax.text(i - 0.4 + width * (j + 0.5), 0.99, f"n={k}", ha="center", va="top",
                        fontsize=6, transform=ax.get_xaxis_transform())
        ax.set_ylim(top=max(1.05, ax.get_ylim()[1]))
        ax.set_title(f"{model}: {sub['layer'].iloc[0]}", fontsize=9)
    g.set_axis_labels("side of the input", "|w| fraction on pad rows (T, B) / columns (L, R)")
    g.legend.set_title("")
    return g.figure


@_or_nothing("no PAN found: nothing to draw")
def uneven_sides(side_pans: pd.DataFrame, models=None) -> plt.Figure:
    """PANs per detected side at input size S and S+1, per model."""
    df = side_pans.assign(size=side_pans["size"].astype(str) + " px")
    g = sns.catplot(data=df, x="side", y="pans", hue="size", col="model",
                    col_order=_model_order(df, models), kind="bar", height=3.2, aspect=1.2,
                    sharey=False, errorbar=None)
    g.set_titles("{col_name}")
    g.set_axis_labels("side", "PANs detecting it")
    return g.figure


@_or_nothing("no PAN found: nothing to draw")
def uneven_bands(layers: pd.DataFrame, models=None) -> plt.Figure:
    """Layer × side heatmap of band widths (output rows/columns that read the pad) of the
    strided padded layers at each input size; 0 marks a side the layer cannot see."""
    df = layers[layers["stride_h"] > 1]
    order = _model_order(df, models)
    # each model at its own sizes (S and S+1 of its input size)
    sizes_of = {m: sorted(df.loc[df["model"] == m, "size"].unique()) for m in order}
    sides = [("T", "band_top"), ("B", "band_bottom"), ("L", "band_left"), ("R", "band_right")]
    heights = [df[(df["model"] == m) & (df["size"] == sizes_of[m][0])].shape[0] for m in order]
    n_sizes = max(len(v) for v in sizes_of.values())
    fig, axes = plt.subplots(len(order), 1, figsize=(1.1 * n_sizes * 4 + 3,
                                                     0.32 * sum(heights) + 1.4 * len(order)),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, model in zip(axes[:, 0], order):
        sub = df[df["model"] == model]
        sizes = sizes_of[model]
        layer_rows = sub[sub["size"] == sizes[0]].sort_values("order")
        cols, data = [], []
        for size in sizes:
            at = sub[sub["size"] == size].set_index("layer")
            for side, col in sides:
                cols.append(f"{side}\n{size}")
                data.append(at.loc[layer_rows["layer"], col].to_numpy())
        mat = np.array(data).T
        sns.heatmap(mat, ax=ax, annot=True, fmt="d", cbar=False, cmap="Blues", vmin=-0.5,
                    vmax=max(2, mat.max()), linewidths=0.5, linecolor="white",
                    xticklabels=cols, yticklabels=[f"{o} {lay}" for o, lay in
                                                   zip(layer_rows["order"], layer_rows["layer"])])
        for (i, j), v in np.ndenumerate(mat):
            if v == 0:
                ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, ec="crimson", lw=1.5))
        for k in range(1, len(sizes)):
            ax.axvline(4 * k, color="k", lw=2)
        ax.set_title(f"{model}: band width per side of strided padded layers at each input "
                     "size (red: 0, the side is never read)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- ablation (03)

ABLATION_ORDER = ("pans_mean", "random_mean", "pans_border", "random_border",
                  "padding_reflect", "padding_replicate", "padding_circular")

#: Readable names of the ablation conditions, shared by every chapter-3 figure.
CONDITION_LABELS = {
    "intact": "intact model",
    "pans_mean": "PANs, mean-ablated",
    "random_mean": "random channels, mean-ablated (control)",
    "pans_border": "PANs, border-ablated",
    "random_border": "random channels, border-ablated (control)",
    "padding_reflect": "padding → reflect",
    "padding_replicate": "padding → replicate",
    "padding_circular": "padding → circular",
}

#: Colour-blind-safe palette of every chapter-3/4 figure.
PALETTE = sns.color_palette("colorblind")


def condition_label(condition: str) -> str:
    """The readable name of an ablation condition (the identifier, spaced, if unknown)."""
    return CONDITION_LABELS.get(condition, str(condition).replace("_", " "))


def _condition_order(conditions) -> list[str]:
    present = set(conditions) - {"intact"}
    order = [c for c in ABLATION_ORDER if c in present]
    return order + sorted(present - set(order))


def _wrap(text: str, width: int = 22) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def _grouped_hbars(ax, df: pd.DataFrame, value: str, hue: str, order: list[str],
                   hues: list, colors: dict, fmt: str = "{:.2f}", xmax: float | None = None,
                   label=str) -> None:
    """Horizontal bars, one group per condition (y) and one bar per ``hue`` value: the mean
    over draws, a whisker for the sd where there are several draws, a marker at the mean
    (so a bar of height 0 stays visible) and its value written next to it."""
    stats = df.groupby(["condition", hue], sort=False)[value].agg(["mean", "std", "size"])
    height = 0.8 / max(len(hues), 1)
    top = max(float((stats["mean"] + stats["std"].fillna(0)).max()), 1e-9)
    xmax = xmax if xmax is not None else top * 1.25
    for j, h in enumerate(hues):
        ys, means, sds = [], [], []
        for i, cond in enumerate(order):
            if (cond, h) not in stats.index:
                continue
            s = stats.loc[(cond, h)]
            ys.append(i - 0.4 + height * (j + 0.5))
            means.append(float(s["mean"]))
            sds.append(float(s["std"]) if s["size"] > 1 else 0.0)
        ys, means, sds = map(np.asarray, (ys, means, sds))
        ax.barh(ys, means, height=height * 0.9, color=colors[h], label=label(h))
        ax.scatter(means, ys, marker="D", s=18, color=colors[h], edgecolor="k", lw=0.8,
                   zorder=4, clip_on=False)
        multi = sds > 0
        if multi.any():
            ax.errorbar(means[multi], ys[multi], xerr=sds[multi], fmt="none", ecolor="k",
                        elinewidth=1, capsize=3)
        for y, m, s in zip(ys, means, sds):
            ax.text(m + s + xmax * 0.015, y, fmt.format(m), va="center", fontsize=7)
    ax.set_yticks(range(len(order)), [condition_label(c) for c in order])
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_xlim(0, xmax)
    ax.grid(axis="y", visible=False)


def _draws_note(df: pd.DataFrame) -> str:
    n = df.loc[df["condition"] == "random_mean", "draw"].nunique()
    return (f"bars: mean; whiskers: sd over {n} random draws" if n > 1
            else "one draw per condition")


def _n_images_note(df: pd.DataFrame, what: str) -> str:
    n = sorted(set(int(v) for v in df["n_images"].dropna()))
    return f"n = {' / '.join(map(str, n))} {what}" if n else ""


@_or_nothing("no PAN found: nothing to draw")
def ablation_effects(ablation: pd.DataFrame) -> plt.Figure:
    """Top-1 agreement with the intact model and KL(intact || condition) per condition
    (readable names) and model: bars are means over draws, whiskers the sd of the random
    control; every bar carries its value, and a tick marks it even when it is 0."""
    df = ablation[ablation["condition"] != "intact"]
    order = _condition_order(df["condition"])
    models = list(dict.fromkeys(df["model"]))
    colors = dict(zip(models, PALETTE))
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.32 * len(order) * max(len(models), 1)),
                             sharey=True)
    _grouped_hbars(axes[0], df, "agreement", "model", order, models, colors, fmt="{:.2f}",
                   xmax=1.12)
    axes[0].set_xticks(np.linspace(0, 1, 6))
    axes[0].set_xlabel("top-1 agreement with intact (1 = unchanged)")
    _grouped_hbars(axes[1], df, "kl", "model", order, models, colors, fmt="{:.2f}")
    axes[1].set_xlabel("mean KL(intact ‖ condition) (0 = unchanged)")
    axes[1].tick_params(axis="y", left=False)
    axes[1].legend(title="model", loc="lower right", fontsize=8, title_fontsize=8)
    fig.suptitle(f"Ablations and padding swaps vs the intact model — "
                 f"{_n_images_note(df, 'evaluation images per model')}; {_draws_note(df)}",
                 fontsize=10)
    fig.tight_layout()
    return fig


@_or_nothing("no PAN found: nothing to draw")
def dose_response(summary: pd.DataFrame, models=None) -> plt.Figure:
    """Top-1 agreement and KL against k, the number of ablated channels (log scale): the
    top-k PANs by score (line) against k random channels of the same layers (mean, the
    draws' sd shaded), for mean and border ablation; one row per model."""
    models = _model_order(summary, models)
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.0 * len(models)), squeeze=False)
    colors = {"mean": PALETTE[0], "border": PALETTE[1]}
    for r, model in enumerate(models):
        sub = summary[summary["model"] == model]
        for c, (metric, label) in enumerate((("agreement", "top-1 agreement with intact"),
                                             ("kl", "mean KL(intact ‖ ablated)"))):
            ax = axes[r, c]
            for how, g in sub.groupby("how", sort=False):
                g = g.sort_values("k")
                col = colors.get(how, PALETTE[2])
                ax.plot(g["k"], g[f"{metric}_pans"], "o-", color=col,
                        label=f"top-k PANs, {how}-ablated")
                mean, sd = g[f"{metric}_random"], g[f"{metric}_sd_random"].fillna(0)
                ax.plot(g["k"], mean, "--", color=col, label=f"k random channels, {how}")
                ax.fill_between(g["k"], mean - sd, mean + sd, color=col, alpha=0.2, lw=0)
            ax.set_xscale("log")
            ax.set(xlabel="k, channels ablated (log scale)", ylabel=label,
                   title=f"{model}: {label.split(' (')[0]}")
            if metric == "agreement":
                ax.set_ylim(-0.02, 1.02)
        axes[r, 0].legend(fontsize=7, loc="lower left")
    n = int(summary["draws_random"].max()) if "draws_random" in summary and len(summary) else 0
    fig.suptitle(f"Dose-response: shaded, sd over {n} random draws", fontsize=10)
    fig.tight_layout()
    return fig


@_or_nothing("no PAN found: nothing to draw")
def placement_agreement(placement: pd.DataFrame) -> plt.Figure:
    """Agreement with the intact model when the (shrunk) evidence sits at the centre of
    a grey canvas or in a corner, per condition and model (mean ± sd over draws)."""
    df = placement[placement["condition"] != "intact"]
    order = _condition_order(df["condition"])
    models = list(dict.fromkeys(df["model"]))
    places = [p for p in ("centre", "corner") if p in set(df["placement"])]
    places += sorted(set(df["placement"]) - set(places))
    colors = dict(zip(places, PALETTE[2:] + PALETTE[:2]))
    n = max(len(models), 1)
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n, 1.2 + 0.32 * len(order) * len(places)),
                             sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        _grouped_hbars(ax, df[df["model"] == model], "agreement", "placement", order, places,
                       colors, xmax=1.12,
                       label=lambda p: f"evidence at the {p}")
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("top-1 agreement with the intact model")
    axes[0, -1].legend(loc="lower right", fontsize=8)
    note = _n_images_note(df, "placed images per placement") if "n_images" in df else ""
    fig.suptitle(f"Shrunk crops on a grey canvas, at the centre or in a corner — "
                 f"{note}; {_draws_note(df)}", fontsize=10)
    fig.tight_layout()
    return fig


@_or_nothing("no PAN found: nothing to draw")
def class_biases(biases: pd.DataFrame, conditions=("pans_mean", "padding_reflect",
                                                   "padding_circular"),
                 n_images: int | dict | None = None) -> plt.Figure:
    """The classes that gain and lose the most predictions, per model (rows) and
    condition (columns): the characteristic biases of removing PANs or swapping padding.
    ``n_images`` (one number, or one per model) is the denominator of the counts."""
    df = biases[biases["condition"].isin(conditions)]
    conds = [c for c in conditions if c in set(df["condition"])]
    models = list(dict.fromkeys(df["model"]))
    nrow, ncol = max(len(models), 1), max(len(conds), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 4.0 * nrow), squeeze=False)
    gain, loss = PALETTE[0], PALETTE[3]
    for r, model in enumerate(models):
        n = n_images.get(model) if isinstance(n_images, dict) else n_images
        for c, cond in enumerate(conds):
            ax = axes[r, c]
            sub = df[(df["model"] == model) & (df["condition"] == cond)].sort_values("shift")
            names = [_wrap(n_, 24) for n_ in sub["class_name"]]
            ys = np.arange(len(sub))
            ax.barh(ys, sub["shift"], color=[gain if s > 0 else loss for s in sub["shift"]])
            ax.plot(sub["shift"], ys, "|", color="k", ms=8)
            lim = float(sub["shift"].abs().max()) if len(sub) else 1.0
            for y, s in zip(ys, sub["shift"]):
                ax.text(s + np.sign(s or 1) * lim * 0.04, y, f"{s:+g}", va="center",
                        ha="left" if s >= 0 else "right", fontsize=7)
            ax.set_yticks(ys, names, fontsize=7)
            ax.set_xlim(-lim * 1.3, lim * 1.3)
            ax.axvline(0, color="grey", lw=1)
            ax.grid(axis="y", visible=False)
            if not len(sub):
                ax.text(0.5, 0.5, "no class changes", transform=ax.transAxes, ha="center")
            ax.set_title(f"{model}: {condition_label(cond)}", fontsize=9)
            ax.set_xlabel(f"Δ predictions (of {n} images)" if n else "Δ predictions",
                          fontsize=9)
    fig.suptitle("Classes gaining (blue) and losing (vermilion) the most top-1 predictions "
                 "vs the intact model", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- 04 padding policy


def _policy_colors(policies) -> dict:
    return dict(zip(policies, PALETTE))


def policy_accuracy(table: pd.DataFrame, policies=None) -> plt.Figure:
    """Test accuracy per padding policy and task: seeds as points, mean ± sd as bars,
    chance as a labelled dashed line (one panel per task)."""
    policies = list(policies or table["policy"].drop_duplicates())
    tasks = list(table["task"].drop_duplicates())
    colors = _policy_colors(policies)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        d = table[table["task"] == task]
        sns.barplot(data=d, x="policy", y="test_accuracy", order=policies, errorbar="sd",
                    hue="policy", palette=colors, legend=False, alpha=0.55, ax=ax,
                    capsize=0.15, err_kws={"linewidth": 1.2})
        with _fixed_jitter():
            sns.stripplot(data=d, x="policy", y="test_accuracy", order=policies, color="k",
                          size=4, ax=ax, jitter=0.15)
        chance = float(d["chance"].iloc[0])
        ax.axhline(chance, color="k", ls="--", lw=1)
        ax.text(len(policies) - 0.5, chance + 0.015, f"chance = {chance:.2f}", ha="right",
                va="bottom", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.8})
        n_seeds = d["seed"].nunique()
        n_test = f", {int(d['n_test'].iloc[0])} test images" if "n_test" in d else ""
        ax.set(title=f"{task} task ({n_seeds} seed{'s' if n_seeds != 1 else ''}{n_test})", xlabel="padding policy",
               ylabel="test accuracy", ylim=(0, 1.08))
    fig.suptitle("Accuracy per padding policy: bars mean, whiskers ± sd, dots seeds",
                 fontsize=10)
    fig.tight_layout()
    return fig


def policy_pan_fraction(table: pd.DataFrame, policies=None, tau: float | None = None
                        ) -> plt.Figure:
    """PANs per net at tau and at tau/2, per padding policy (x) and task (panels): one dot
    per seed, a bar for the mean (no error bars; counts cannot go below 0)."""
    policies = list(policies or table["policy"].drop_duplicates())
    tasks = list(table["task"].drop_duplicates())
    t = f"{tau:g}" if tau is not None else "tau"
    t2 = f"{tau / 2:g}" if tau is not None else "tau/2"
    series = [("pans", f"PANs at |d| ≥ {t}", PALETTE[0], "o"),
              ("pans_half_tau", f"same rule at |d| ≥ {t2}", PALETTE[1], "D")]
    ymax = max(float(table[[c for c, *_ in series]].to_numpy().max()), 1.0)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False,
                             sharey=True)
    rng = np.random.default_rng(0)
    for ax, task in zip(axes[0], tasks):
        d = table[table["task"] == task]
        for k, (col, label, color, marker) in enumerate(series):
            off = (k - 0.5) * 0.36
            for i, pol in enumerate(policies):
                v = d.loc[d["policy"] == pol, col].to_numpy(dtype=float)
                if not len(v):
                    continue
                x = i + off + rng.uniform(-0.06, 0.06, len(v))
                ax.scatter(x, v, color=color, marker=marker, s=22, edgecolor="k", lw=0.4,
                           zorder=3, label=label if i == 0 else None)
                ax.hlines(v.mean(), i + off - 0.15, i + off + 0.15, color=color, lw=2.5,
                          zorder=2)
                cand = d.loc[d["policy"] == pol, "candidates"]
                if k == 0 and len(cand) and (cand == 0).all():
                    ax.text(i, ymax * 0.1, "no padded\nconv", ha="center", fontsize=7,
                            color="0.3")
        n_cand = sorted(set(int(c) for c in d["candidates"] if c > 0))
        cand_note = f" (of {'/'.join(map(str, n_cand))} candidates)" if n_cand else ""
        ax.set_xticks(range(len(policies)), policies)
        ax.set(title=f"{task} task", xlabel="padding policy",
               ylabel=f"channels per net{cand_note}", ylim=(-0.06 * ymax, ymax * 1.12))
        ax.grid(axis="x", visible=False)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    n_seeds = table["seed"].nunique()
    fig.suptitle(f"Border channels passing the PAN rule, per net: dots = {n_seeds} "
                 f"seed{'s' if n_seeds != 1 else ''}, "
                 f"line = mean", fontsize=10)
    fig.tight_layout()
    return fig


def policy_pan_maps(maps: pd.DataFrame, tau: float | None = None,
                    seed: int | None = None) -> plt.Figure:
    """Mean activation map (over test images) of the strongest consistent border channels
    of the zero-padded net, one row per task with one colour scale (symmetric around 0)
    and a colorbar; titles say whether each channel is a PAN or stays below tau."""
    tasks = list(dict.fromkeys(maps["task"]))
    per_task = {t: list(dict.fromkeys(maps.loc[maps["task"] == t, "pan"])) for t in tasks}
    ncol = max([len(v) for v in per_task.values()] + [1])
    fig, axes = plt.subplots(max(len(tasks), 1), ncol + 1, figsize=(2.0 * ncol + 0.6,
                             3.0 * max(len(tasks), 1)), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * ncol + [0.07]})
    for ax in axes.flat:
        ax.axis("off")
    is_pan = maps["is_pan"].astype(str).isin(("True", "1", "1.0"))
    t = f"{tau:g}" if tau is not None else "tau"
    for r, task in enumerate(tasks):
        d_task = maps[maps["task"] == task]
        v = float(d_task["activation"].abs().max()) or 1.0
        im = None
        for c, pan in enumerate(per_task[task]):
            d = d_task[d_task["pan"] == pan]
            m = d.pivot(index="y", columns="x", values="activation").to_numpy()
            ax = axes[r, c]
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            im = ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
            row = d.iloc[0]
            tag = "PAN" if bool(is_pan[d.index[0]]) else "below tau"
            ax.set_title(f"{row['layer']} c{int(row['channel'])}\nside {row['sides'] or '-'}, "
                         f"|d| = {float(row['score']):.1f} ({tag})\n{m.shape[0]}×{m.shape[1]} map",
                         fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{task} task", fontsize=9)
        if im is not None:
            cax = axes[r, ncol]
            cax.axis("on")
            fig.colorbar(im, cax=cax).set_label("mean activation", fontsize=7)
            cax.tick_params(labelsize=7)
    n_pan = int(is_pan.groupby([maps["task"], maps["pan"]]).first().sum())
    who = f"zero-padded net{'' if seed is None else f' (seed {seed})'}"
    if n_pan == 0:
        head = f"Strongest consistent border channels of the {who} — none passes tau = {t}"
    else:
        head = (f"Strongest border channels of the {who}: {n_pan} PAN(s) at tau = {t}, "
                f"the others below")
    fig.suptitle(head + "\nmean over test images; one colour scale per row, centred on 0",
                 fontsize=10)
    fig.tight_layout()
    return fig


def policy_pans_over_training(epochs: pd.DataFrame, policies=None, tau: float | None = None
                              ) -> plt.Figure:
    """PAN counts after every epoch, per task (columns): the rule at tau/2 (top row) and
    at tau (bottom row), one line per padding policy (mean over seeds) with a ± sd band."""
    policies = list(policies or epochs["policy"].drop_duplicates())
    tasks = list(epochs["task"].drop_duplicates())
    colors = _policy_colors(policies)
    t = f"{tau:g}" if tau is not None else "tau"
    t2 = f"{tau / 2:g}" if tau is not None else "tau/2"
    rows = [("pans_half_tau", f"channels passing at |d| ≥ {t2}"), ("pans", f"PANs at |d| ≥ {t}")]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 6.2), squeeze=False,
                             sharex=True)
    for j, task in enumerate(tasks):
        d = epochs[epochs["task"] == task]
        for i, (col, label) in enumerate(rows):
            ax = axes[i, j]
            top = 1.0
            for pol in policies:
                g = d[d["policy"] == pol].groupby("epoch")[col]
                if not len(g):
                    continue
                m, s = g.mean(), g.std().fillna(0.0)
                top = max(top, float((m + s).max()))
                ax.plot(m.index, m.to_numpy(), marker="o", ms=3.5, color=colors[pol], label=pol)
                ax.fill_between(m.index, (m - s).clip(lower=0).to_numpy(), (m + s).to_numpy(),
                                color=colors[pol], alpha=0.18, lw=0)
            ax.set_ylabel(label)
            ax.set_ylim(-0.05 * top, top * 1.1)
            if i == 0:
                ax.set_title(f"{task} task")
            if i == 1:
                ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].legend(fontsize=8, title="policy", title_fontsize=8)
    n_seeds = epochs["seed"].nunique()
    fig.suptitle(f"Border channels over training: line = mean over {n_seeds} seed"
                 f"{'s' if n_seeds != 1 else ''}, band = ± sd", fontsize=10)
    fig.tight_layout()
    return fig


def policy_generalisation(table: pd.DataFrame, policies=None) -> plt.Figure:
    """Accuracy at training positions (similar) and at unseen positions (dissimilar) per
    padding policy: bars mean, whiskers ± sd, dots seeds, chance dashed."""
    policies = list(policies or table["policy"].drop_duplicates())
    long = table.melt(id_vars=["policy", "seed"], value_vars=["similar_accuracy",
                      "dissimilar_accuracy"], var_name="split", value_name="accuracy")
    long["split"] = long["split"].str.replace("_accuracy", "")
    order = ["similar", "dissimilar"]
    colors = dict(zip(order, (PALETTE[0], PALETTE[3])))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    sns.barplot(data=long, x="policy", y="accuracy", hue="split", hue_order=order,
                order=policies, errorbar="sd", palette=colors, alpha=0.6, ax=ax,
                capsize=0.1, err_kws={"linewidth": 1.2})
    with _fixed_jitter():
        sns.stripplot(data=long, x="policy", y="accuracy", hue="split", hue_order=order,
                      order=policies, dodge=True, palette=["k", "k"], size=3.5, ax=ax,
                      jitter=0.08, legend=False)
    chance = float(table["chance"].iloc[0])
    ax.axhline(chance, color="k", ls="--", lw=1)
    ax.text(-0.45, chance + 0.015, f"chance = {chance:.2f}", ha="left", va="bottom", fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.8}, zorder=5)
    ax.legend(title="test positions", fontsize=8, title_fontsize=8, loc="upper right")
    n_seeds = table["seed"].nunique()
    ax.set(xlabel="padding policy", ylabel="test accuracy", ylim=(0, 1.1),
           title=f"Trained on left-half positions; tested there (similar) and on the right "
                 f"half (dissimilar)\nbars mean, whiskers ± sd, dots {n_seeds} "
                 f"seed{'s' if n_seeds != 1 else ''}")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 05 census


def census_padding_kinds(summary: pd.DataFrame) -> plt.Figure:
    """Architectures per padding kind (``census.padding_summary``), each bar split into
    those with and without uneven-padding blind spots at their default input size."""
    df = summary[summary["padding_kind"] != "all"].iloc[::-1]
    total = int(summary.loc[summary["padding_kind"] == "all", "architectures"].iloc[0])
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(df) + 1.4))
    blind = df["with_blind_spots"].to_numpy()
    rest = df["architectures"].to_numpy() - blind
    y = np.arange(len(df))
    ax.barh(y, blind, color=PALETTE[3], label="with blind spots (a padded side never read)")
    ax.barh(y, rest, left=blind, color=PALETTE[0], label="without")
    for yi, n, frac, b in zip(y, df["architectures"], df["fraction"], blind):
        ax.annotate(f"{n} ({100 * frac:.0f}%)", xy=(n, yi), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=9)
        if b:
            ax.annotate(str(b), xy=(b / 2, yi), ha="center", va="center", fontsize=9,
                        color="white")
    ax.set_yticks(y, df["padding_kind"])
    ax.set_xlabel(f"architectures (of {total} CNNs, at their default input size)")
    ax.set_ylabel("padding kind")
    ax.set_xlim(0, df["architectures"].max() * 1.25 + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8,
              frameon=False)
    fig.tight_layout()
    return fig


def census_blind_spots(table: pd.DataFrame) -> plt.Figure:
    """Per padded CNN: its strided padded convs and how many of them never read some padded
    side; a marker's area counts the architectures at that point, one colour per kind."""
    df = table[(table["status"] == "ok") & table["cnn"].fillna(False).astype(bool)
               & (table["padded_convs"].fillna(0) > 0)]
    pts = (df.assign(x=df["strided_padded_convs"].astype(int), y=df["blind_convs"].astype(int))
           .groupby(["padding_kind", "x", "y"]).size().rename("n").reset_index())
    kinds = list(df["padding_kind"].value_counts().index)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    width = 0.5 / max(len(kinds), 1)  # kinds side by side around each integer
    for i, kind in enumerate(kinds):
        d = pts[pts["padding_kind"] == kind]
        x = d["x"] + (i - (len(kinds) - 1) / 2) * width
        ax.scatter(x, d["y"], s=30 * d["n"], alpha=0.8, color=PALETTE[i % len(PALETTE)],
                   label=f"{kind} ({int(d['n'].sum())} architectures)", edgecolor="white",
                   linewidth=0.5)
        for xi, yi, n in zip(x, d["y"], d["n"]):
            if n > 1:
                ax.annotate(str(n), (xi, yi), xytext=(0, 6 + 2 * np.sqrt(n)),
                            textcoords="offset points", ha="center", fontsize=7)
    top = max(int(pts["x"].max()) if len(pts) else 1, 1)
    ax.plot([0, top], [0, top], color="0.6", ls=":", lw=1, label="every strided conv blind")
    ax.set_xlabel("strided padded convs (kernel > 1) at the default input size")
    ax.set_ylabel("of which blind to a padded side")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    legend = ax.legend(fontsize=8, loc="upper left")
    for handle in legend.legend_handles[:len(kinds)]:
        handle.set_sizes([30])  # one marker size in the legend: area is a count
    fig.tight_layout()
    return fig


def census_pans(table: pd.DataFrame) -> plt.Figure:
    """PANs of every pre-trained model scanned against its calibrated random-init baseline
    (mean ± sd over init seeds); models without a padded conv are labelled so."""
    df = table[(table["weights"] == "pretrained") & (table["status"] == "ok")].iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(df) + 1.4))
    y = np.arange(len(df))
    h = 0.38
    pans = df["pans"].astype(float).to_numpy()
    base = df["baseline_pans"].astype(float).to_numpy()
    sd = df["baseline_pans_sd"].astype(float).fillna(0).to_numpy()
    ax.barh(y + h / 2, pans, height=h, color=PALETTE[0], label="pre-trained")
    ax.barh(y - h / 2, base, height=h, xerr=sd, color=PALETTE[7], ecolor="0.3",
            label="random-init, BatchNorm recalibrated")
    right = max(np.nanmax(pans) if len(pans) else 0, 1)
    for yi, p, b, padded, frac in zip(y, pans, base, df["padded_convs"], df["pan_fraction"]):
        text = ("no padded conv" if not padded else
                f"{p:.0f} ({100 * frac:.1f}% of candidates)")
        ax.annotate(text, xy=(p, yi + h / 2), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
        ax.annotate(f"{b:.1f}" if padded else "", xy=(b, yi - h / 2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8, color="0.3")
    ax.set_yticks(y, df["model"])
    n = df["n_images"].replace(0, np.nan).dropna()
    probes = f" on {int(n.iloc[0])} probe images" if len(n) else ""
    ax.set_xlabel(f"PANs{probes}")
    ax.set_xlim(0, right * 1.45)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 06 frames


def _frames_models(df: pd.DataFrame, models=None) -> list[str]:
    return _model_order(df, models) if len(df) else []


def frames_natural(natural: pd.DataFrame, models=None) -> plt.Figure:
    """Left, per model: top-1 agreement with the unframed prediction against the frame
    width, one line per fill, letterbox bars as horizontal marks. Right: at each control
    width, the frame against the same pixels as a centred square and at random interior
    positions."""
    models = _frames_models(natural, models)
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.0 * len(models)), squeeze=False)
    kinds = ["frame", "centre", "random"]
    colors = dict(zip(kinds, PALETTE))
    for r, model in enumerate(models):
        g = natural[natural["model"] == model]
        ax = axes[r, 0]
        fills = list(dict.fromkeys(g.loc[g["kind"] == "frame", "fill"]))
        for i, fill in enumerate(fills):
            d = g[(g["kind"] == "frame") & (g["fill"] == fill)].sort_values("width")
            ax.plot(d["width"], d["agreement"], "o-", color=PALETTE[i % len(PALETTE)],
                    label=f"{fill} frame")
        for j, row in enumerate(g[g["kind"] == "letterbox"].itertuples()):
            ax.axhline(row.agreement, color="0.35", ls=("--", ":")[j % 2], lw=1,
                       label=f"letterbox, {row.fill} bars ({row.n_pixels} px)")
        ax.set_xscale("log", base=2)
        widths = sorted(set(g.loc[g["kind"] == "frame", "width"]))
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set(ylim=(-0.02, 1.02), xlabel="frame width, px (outer pixels overwritten)",
               ylabel="top-1 agreement with unframed", title=f"{model}: natural frames")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
        ax = axes[r, 1]
        ctrl = g[g["kind"].isin(kinds) & (g["width"] > 0)]
        keep = ctrl.groupby(["fill", "width"])["kind"].transform("nunique") == len(kinds)
        ctrl = ctrl[keep]
        groups = list(dict.fromkeys(f"{f} {int(w)}px" for f, w in zip(ctrl["fill"], ctrl["width"])))
        x = np.arange(len(groups))
        for k, kind in enumerate(kinds):
            d = ctrl[ctrl["kind"] == kind]
            vals = [float(d.loc[(d["fill"] + " " + d["width"].astype(int).astype(str) + "px")
                                == gname, "agreement"].iloc[0]) for gname in groups]
            ax.bar(x + (k - 1) * 0.27, vals, width=0.25, color=colors[kind],
                   label={"frame": "frame", "centre": "same pixels, centred square",
                          "random": "same pixels, random interior positions"}[kind])
            for xi, v in zip(x + (k - 1) * 0.27, vals):
                ax.text(xi, v + 0.02, f"{v:.2f}", ha="center", fontsize=7)
        ax.set_xticks(x, groups)
        ax.set(ylim=(0, 1.5), ylabel="top-1 agreement with unframed",
               title=f"{model}: frame vs controls of the same pixel count")
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.legend(fontsize=7, loc="upper right")
    n = int(natural["n_images"].iloc[0]) if len(natural) else 0
    fig.suptitle(f"Natural frames — n = {n} evaluation images per model", fontsize=10)
    fig.tight_layout()
    return fig


def frames_adversarial(adv: pd.DataFrame, models=None) -> plt.Figure:
    """Fooling rate on the evaluation photos against width: the universal frame and the
    universal central patch of the same pixel count and fitting budget, per model."""
    models = _frames_models(adv, models)
    fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 3.4), squeeze=False,
                             sharey=True)
    for ax, model in zip(axes[0], models):
        g = adv[adv["model"] == model]
        for i, (pl, label) in enumerate((("frame", "universal frame"),
                                         ("centre", "universal central patch (control)"))):
            d = g[g["placement"] == pl].sort_values("width")
            ax.plot(d["width"], d["fooling_rate"], "o-", color=PALETTE[i], label=label)
        widths = sorted(set(g["width"]))
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [f"{w}\n({int(g.loc[g['width'] == w, 'n_pixels'].iloc[0])} px)"
                               for w in widths])
        ax.set(ylim=(-0.02, 1.02), xlabel="frame width, px (pixels changed)",
               ylabel="fooling rate (top-1 changed)", title=model)
        ax.legend(fontsize=7, loc="upper left")
    if len(adv):
        r = adv.iloc[0]
        fig.suptitle(f"Universal adversarial frames — fitted on {int(r.fit_images)} "
                     f"{r.fit_split}-photo crops ({int(r.steps)} steps), scored on "
                     f"{int(r.n_images)} {r.eval_split}-photo crops", fontsize=10)
    fig.tight_layout()
    return fig


def frames_mediation(summary: pd.DataFrame, models=None) -> plt.Figure:
    """The frame's effect (share of top-1 predictions it changes, against that model's
    own unframed predictions) on the intact model, with the PANs border-ablated, and
    with as many random channels of the same layers border-ablated (mean ± sd)."""
    models = _frames_models(summary, models)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.4), squeeze=False,
                             sharey=True)
    labels = (("effect_intact", "intact"), ("effect_pans", "PANs border-ablated"),
              ("effect_random", "random channels border-ablated"))
    for ax, model in zip(axes[0], models):
        g = summary[summary["model"] == model]
        x = np.arange(len(g))
        for k, (col, label) in enumerate(labels):
            err = g["effect_random_sd"].fillna(0) if col == "effect_random" else None
            ax.bar(x + (k - 1) * 0.27, g[col], width=0.25, color=PALETTE[k], label=label,
                   yerr=err, capsize=3)
            for xi, v in zip(x + (k - 1) * 0.27, g[col]):
                ax.text(xi, v + 0.02, f"{v:.2f}", ha="center", fontsize=7)
        ax.set_xticks(x, list(g["transform"]))
        ax.set(ylim=(0, 1.35), ylabel="share of top-1 changed by the frame", title=model)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    d = int(summary["draws"].max()) if len(summary) else 0
    fig.suptitle(f"Do PANs carry the frame's effect? Whiskers: sd over {d} random draws",
                 fontsize=10)
    fig.tight_layout()
    return fig


def frames_activation_shift(shift: pd.DataFrame, models=None) -> plt.Figure:
    """Mean activation shift (|framed - unframed|, in each channel's sd) of PAN channels
    and of the other channels of the same layers, per frame and model."""
    models = _frames_models(shift, models)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        g = shift[shift["model"] == model]
        x = np.arange(len(g))
        for k, (col, label) in enumerate((("shift_pans", "PAN channels"),
                                          ("shift_others", "other channels, same layers"))):
            ax.bar(x + (k - 0.5) * 0.38, g[col], width=0.36, color=PALETTE[k], label=label)
        for xi, r in zip(x, g.itertuples()):
            ax.text(xi, max(r.shift_pans, r.shift_others) * 1.04, f"{r.ratio:.2f}x",
                    ha="center", fontsize=7)
        ax.set_xticks(x, list(g["transform"]))
        top = float(g[["shift_pans", "shift_others"]].max().max()) if len(g) else 1.0
        ax.set(ylabel="mean |Δ activation| / channel sd", title=model, ylim=(0, top * 1.4))
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.suptitle("How far each frame moves conv outputs (ratio PANs / others above the bars)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def frames_padding(padding: pd.DataFrame, models=None) -> plt.Figure:
    """Top-1 agreement of framed with unframed inputs on the same model under its own zero
    padding and with the padding swapped to circular or reflect."""
    models = _frames_models(padding, models)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.4), squeeze=False,
                             sharey=True)
    for ax, model in zip(axes[0], models):
        g = padding[padding["model"] == model]
        ts = list(dict.fromkeys(g["transform"]))
        pads = list(dict.fromkeys(g["padding"]))
        x = np.arange(len(ts))
        step = 0.8 / max(len(pads), 1)
        for k, pad in enumerate(pads):
            d = g[g["padding"] == pad].set_index("transform").reindex(ts)
            xs = x - 0.4 + step * (k + 0.5)
            ax.bar(xs, d["agreement"], width=step * 0.9, color=PALETTE[k], label=f"{pad} padding")
            for xi, v in zip(xs, d["agreement"]):
                ax.text(xi, v + 0.02, f"{v:.2f}", ha="center", fontsize=7)
        ax.set_xticks(x, ts)
        ax.set(ylim=(0, 1.35), ylabel="top-1 agreement, framed vs unframed", title=model)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.legend(fontsize=7, loc="upper right", ncol=3)
    fig.suptitle("Frames under other paddings (each against its own unframed predictions)",
                 fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- chapter 7: cure

_CURE_MARKERS = {"swap": "o", "bn": "s", "distill": "^", "ablation": "X", "original": "*"}


@_or_nothing("no classifier: nothing to cure")
def cure_frontier(cure: pd.DataFrame, models=None, *, goal_agreement: float = 0.9,
                  goal_removed: float = 0.9) -> plt.Figure:
    """Per model: top-1 agreement with the original against the PANs remaining (symlog
    x), every cure and step count a point (a distillation's points joined from its plain
    swap in step order, named once), the original and chapter 3's ablations as references, the goal shaded."""
    models = _model_order(cure, models)
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 5.0), squeeze=False)
    paddings = list(dict.fromkeys(cure.loc[cure["kind"] != "original", "padding"]))
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(paddings)}
    for ax, model in zip(axes[0], models):
        g = cure[cure["model"] == model]
        n0 = int(g.loc[g["kind"] == "original", "pans"].iloc[0])
        ax.fill_between([0, (1 - goal_removed) * n0], goal_agreement, 1.05, color="#2ca02c",
                        alpha=0.15, lw=0)
        ax.text(0, 1.03, "goal", fontsize=7, color="#2ca02c", va="top")
        for r in g.itertuples():
            ref = r.kind in ("original", "ablation")
            ax.scatter(r.pans, r.agreement, marker=_CURE_MARKERS[r.kind], s=110 if ref else 60,
                       color="0.2" if ref else colors[r.padding], edgecolor="white", zorder=3)
            if r.kind != "distill":  # a distillation is named once, below (its run)
                ax.annotate(r.label, (r.pans, r.agreement), fontsize=6.5,
                            xytext=(4, 4), textcoords="offset points")
        for (pad, params), d in g[g["kind"] == "distill"].groupby(["padding", "params"]):
            start = g[(g["kind"] == "swap") & (g["padding"] == pad)]
            steps = ", ".join(str(v) for v in sorted(d["steps"]))
            last = d.sort_values("steps").iloc[-1]
            d = pd.concat([start, d.sort_values("steps")])
            ax.plot(d["pans"], d["agreement"], "-", color=colors[pad], lw=1, alpha=0.7)
            ax.annotate(f"{pad} + distill ({params}), {steps} steps", (last["pans"],
                        last["agreement"]), fontsize=6.5, xytext=(-4, -11),
                        textcoords="offset points", ha="right", color=colors[pad])
        ax.set_xscale("symlog", linthresh=1)
        ax.set(ylim=(-0.02, 1.05), xlim=(-0.3, max(g["pans"].max() * 2, 2)),
               xlabel="PANs remaining (study's rule, circular null; symlog)",
               ylabel="top-1 agreement with the original", title=model)
        names = {"swap": "plain swap", "bn": "BatchNorm recalibrated",
                 "distill": "distilled (steps)", "ablation": "PANs ablated (chapter 3)",
                 "original": "original"}
        handles = [plt.Line2D([], [], marker=m, ls="", color="0.3", label=names[k])
                   for k, m in _CURE_MARKERS.items() if k in set(g["kind"])]
        handles += [plt.Line2D([], [], marker="o", ls="", color=colors[p], label=f"{p} padding")
                    for p in paddings if p != "zeros"]
    fig.suptitle("The cure frontier: agreement kept against PANs left (top left is better)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=6, frameon=False)
    return fig


@_or_nothing("no classifier: nothing to cure")
def cure_placement(cure: pd.DataFrame, models=None) -> plt.Figure:
    """Per model and point: agreement with the original when the evidence sits at the
    centre or in a corner, and the share of top-1 predictions a frame changes."""
    models = _model_order(cure, models)
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 3.3 * len(models)), squeeze=False)
    measures = [("agreement_centre", "agreement, evidence at the centre"),
                ("agreement_corner", "agreement, evidence in a corner"),
                ("frame_effect", "share changed by the frame")]
    for ax, model in zip(axes[:, 0], models):
        g = cure[cure["model"] == model]
        labels = list(g["label"])
        x = np.arange(len(g))
        for k, (col, name) in enumerate(measures):
            ax.bar(x - 0.3 + 0.2 * (k + 0.5), g[col], width=0.19, color=PALETTE[k], label=name)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set(ylim=(0, 1.3), title=model, ylabel="share of crops")
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.legend(fontsize=7, ncol=3, loc="upper right")
    fig.tight_layout()
    return fig

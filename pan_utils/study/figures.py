"""Figures of the study, each drawn from a written table (seaborn); a flat module of
functions that take a table and return a matplotlib Figure.

No backend is chosen here: Jupyter's inline backend shows the figures in the notebooks
(``results.show_figure``), and without a display matplotlib falls back to Agg.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..engine.types import TYPE_ORDER

sns.set_theme(style="whitegrid", context="notebook")


def sensitivity_curve(sens: pd.DataFrame, tau: float | None = None) -> plt.Figure:
    """PAN count vs tau per condition (pre-trained, random-init, circular null), per model."""
    g = sns.relplot(data=sens, x="tau", y="pans", hue="condition", style="weights",
                    col="model", kind="line", markers=True, height=3.2, aspect=1.2,
                    facet_kws={"sharey": False})
    for ax in g.axes.flat:
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        if tau is not None:
            ax.axvline(tau, color="grey", ls="--", lw=1)
    g.set_axis_labels("tau (|d| threshold)", "PANs")
    return g.figure


def pans_per_layer(layers: pd.DataFrame) -> plt.Figure:
    """PANs per candidate layer against relative depth, pre-trained vs random-init."""
    g = sns.relplot(data=layers, x="depth", y="pans", hue="weights", col="model",
                    kind="line", marker="o", height=3.2, aspect=1.3)
    g.set_axis_labels("relative depth (candidate layer order)", "PANs in layer")
    return g.figure


def d_distribution(channel_scores: pd.DataFrame, tau: float | None = None) -> plt.Figure:
    """Complementary ECDF of each channel's max |d| over sides, per condition and model."""
    df = channel_scores[np.isfinite(channel_scores["max_abs_d"])]
    if "weights" in df.columns:  # the null of the pre-trained weights only
        df = df[(df["condition"] != "circular null") | (df["weights"] == "pretrained")]
    g = sns.displot(data=df, x="max_abs_d", hue="condition", col="model", kind="ecdf",
                    complementary=True, log_scale=(True, True), height=3.2, aspect=1.2)
    for ax in g.axes.flat:
        if tau is not None:
            ax.axvline(tau, color="grey", ls="--", lw=1)
    g.set_axis_labels("max |d| over sides", "fraction of channels ≥ x")
    return g.figure


def map_grid(maps: pd.DataFrame, title: str = "{kind} c{channel} {sides}",
             row: str = "model", centre: bool = True) -> plt.Figure:
    """Mean activation maps from a long table (…, channel, row, col, value): one image per
    map, one figure row per value of ``row``; each map on its own colour scale, symmetric
    around its median (``centre``, for activation maps) or around 0 (kernels)."""
    key_cols = [c for c in maps.columns if c not in ("row", "col", "value")]
    groups = list(maps.groupby(key_cols, sort=False))
    rows = list(dict.fromkeys(k[key_cols.index(row)] for k, _ in groups))
    ncol = max(sum(1 for k, _ in groups if k[key_cols.index(row)] == r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.9 * ncol, 2.1 * len(rows)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    used = {r: 0 for r in rows}
    for key, g in groups:
        meta = dict(zip(key_cols, key))
        r = rows.index(meta[row])
        ax = axes[r, used[meta[row]]]
        used[meta[row]] += 1
        img = g.pivot(index="row", columns="col", values="value").to_numpy()
        centred = img - np.median(img) if centre else img
        lim = np.abs(centred).max() or 1.0
        ax.imshow(centred, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(title.format(**meta), fontsize=8)
        if used[meta[row]] == 1:
            ax.text(-0.1, 0.5, str(meta[row]), transform=ax.transAxes, rotation=90,
                    va="center", ha="right", fontsize=8)
    fig.tight_layout()
    return fig


def type_bars(taxonomy: pd.DataFrame) -> plt.Figure:
    """PANs per type and polarity, per model (columns) and weights (rows)."""
    order = [t for t in TYPE_ORDER if t in set(taxonomy["type"])]
    g = sns.catplot(data=taxonomy, x="pans", y="type", hue="polarity", col="model",
                    row="weights", kind="bar", order=order, hue_order=["+", "-", "mixed"],
                    height=2.8, aspect=1.4, sharex=False, errorbar=None)
    g.set_axis_labels("PANs", "")
    return g.figure


def kernel_grid(kernels: pd.DataFrame, title: str = "{kind} c{channel}") -> plt.Figure:
    """Kernels (summed over input channels) from a long table (…, row, col, weight)."""
    return map_grid(kernels.rename(columns={"weight": "value"}), title=title, centre=False)


def kernel_mass(mass: pd.DataFrame) -> plt.Figure:
    """Weight mass on the pad rows/columns: channels detecting that side vs the others."""
    df = mass.assign(group=np.where(mass["detects_side"], "PAN, detects side",
                                    np.where(mass["pan"], "PAN, other side", "non-PAN")))
    g = sns.catplot(data=df, x="side", y="mass", hue="group", col="model", kind="box",
                    hue_order=["non-PAN", "PAN, other side", "PAN, detects side"],
                    height=3.2, aspect=1.2, fliersize=2)
    for ax, (_, sub) in zip(g.axes.flat, df.groupby("model", sort=False)):
        ax.axhline(float(sub["uniform"].iloc[0]), color="grey", ls="--", lw=1)
    g.set_axis_labels("side", "fraction of |w| on pad rows")
    return g.figure


def uneven_sides(side_pans: pd.DataFrame) -> plt.Figure:
    """PANs per detected side at input size S and S+1, per model."""
    df = side_pans.assign(size=side_pans["size"].astype(str))
    g = sns.catplot(data=df, x="side", y="pans", hue="size", col="model", kind="bar",
                    height=3.2, aspect=1.2, sharey=False, errorbar=None)
    g.set_axis_labels("side", "PANs detecting it")
    return g.figure


def uneven_bands(layers: pd.DataFrame) -> plt.Figure:
    """Which sides each stride-2 layer can see at each size: band width per side."""
    df = layers[layers["stride_h"] > 1].melt(
        id_vars=["model", "size", "layer", "order"],
        value_vars=["band_top", "band_bottom", "band_left", "band_right"],
        var_name="side", value_name="band")
    df["side"] = df["side"].str.replace("band_", "")
    df["layer"] = df["order"].astype(str) + " " + df["layer"]
    g = sns.catplot(data=df, x="band", y="layer", hue="side", row="size", col="model",
                    kind="bar", height=3.0, aspect=1.5, sharey=False, errorbar=None)
    g.set_axis_labels("band width (output rows/cols reading the pad)", "")
    return g.figure


# --------------------------------------------------------------------------- ablation (03)

ABLATION_ORDER = ("pans_mean", "random_mean", "pans_border", "padding_reflect",
                  "padding_replicate", "padding_circular")


def ablation_effects(ablation: pd.DataFrame) -> plt.Figure:
    """Agreement with the intact model and KL(intact || condition) per condition and model;
    bars are means over draws, error bars their sd (the random-control spread)."""
    df = ablation[ablation["condition"] != "intact"]
    order = [c for c in ABLATION_ORDER if c in set(df["condition"])]
    order += sorted(set(df["condition"]) - set(order))
    long = df.melt(id_vars=["model", "condition", "draw"], value_vars=["agreement", "kl"],
                   var_name="metric", value_name="value")
    g = sns.catplot(data=long, x="value", y="condition", hue="model", col="metric",
                    kind="bar", order=order, errorbar="sd", height=3.4, aspect=1.25,
                    sharex=False, capsize=0.2)
    g.axes.flat[0].set_xlim(0, 1)
    g.axes.flat[0].set_xlabel("top-1 agreement with intact")
    g.axes.flat[1].set_xlabel("mean KL(intact || condition)")
    g.set_titles("")
    for ax in g.axes.flat:
        ax.set_ylabel("")
    return g.figure


def class_biases(biases: pd.DataFrame, conditions=("pans_mean", "padding_reflect",
                                                   "padding_circular")) -> plt.Figure:
    """The classes that gain and lose the most predictions, per model (rows) and
    condition (columns): the characteristic biases of removing PANs or swapping padding."""
    df = biases[biases["condition"].isin(conditions)]
    conds = [c for c in conditions if c in set(df["condition"])]
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(max(len(models), 1), max(len(conds), 1),
                             figsize=(3.6 * max(len(conds), 1), 2.8 * max(len(models), 1)),
                             squeeze=False)
    for r, model in enumerate(models):
        for c, cond in enumerate(conds):
            ax = axes[r, c]
            sub = df[(df["model"] == model) & (df["condition"] == cond)].sort_values("shift")
            colors = np.where(sub["shift"] > 0, "tab:green", "tab:red")
            ax.barh([str(n)[:22] for n in sub["class_name"]], sub["shift"], color=colors)
            ax.axvline(0, color="grey", lw=1)
            ax.set_title(f"{model}\n{cond}", fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
            ax.set_xlabel("Δ predicted images")
    fig.tight_layout()
    return fig


def placement_agreement(placement: pd.DataFrame) -> plt.Figure:
    """Agreement with the intact model when the (shrunk) evidence sits at the centre of
    a grey canvas or in a corner, per condition and model (mean ± sd over draws)."""
    df = placement[placement["condition"] != "intact"]
    order = [c for c in ABLATION_ORDER if c in set(df["condition"])]
    order += sorted(set(df["condition"]) - set(order))
    g = sns.catplot(data=df, x="agreement", y="condition", hue="placement", col="model",
                    kind="bar", order=order, errorbar="sd", height=3.4, aspect=1.2,
                    capsize=0.2)
    g.set(xlim=(0, 1))
    g.set_axis_labels("top-1 agreement with intact", "")
    return g.figure


# ---------------------------------------------------------------- 04 padding policy


def policy_accuracy(table: pd.DataFrame, policies=None) -> plt.Figure:
    """Test accuracy per padding policy and task: seeds as points, mean ± std as bars,
    chance as a dashed line (one panel per task)."""
    policies = list(policies or table["policy"].drop_duplicates())
    tasks = list(table["task"].drop_duplicates())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        d = table[table["task"] == task]
        sns.barplot(data=d, x="policy", y="test_accuracy", order=policies, errorbar="sd",
                    color="#9ecae1", ax=ax, capsize=0.15)
        sns.stripplot(data=d, x="policy", y="test_accuracy", order=policies, color="k",
                      size=4, ax=ax)
        ax.axhline(float(d["chance"].iloc[0]), color="crimson", ls="--", lw=1, label="chance")
        ax.set(title=f"{task} task", xlabel="padding", ylabel="test accuracy", ylim=(0, 1.02))
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def policy_pan_fraction(table: pd.DataFrame, policies=None) -> plt.Figure:
    """PAN fraction (PANs / candidate channels) per padding policy, hue = task."""
    policies = list(policies or table["policy"].drop_duplicates())
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.barplot(data=table, x="policy", y="pan_fraction", hue="task", order=policies,
                errorbar="sd", capsize=0.1, ax=ax)
    ax.set(xlabel="padding", ylabel="PANs / candidate channels")
    fig.tight_layout()
    return fig


def policy_pan_maps(maps: pd.DataFrame) -> plt.Figure:
    """Mean activation map (over test images) of the top PANs of zero-padded nets, one
    panel per PAN; colour scale centred on zero per panel."""
    keys = maps[["task", "pan"]].drop_duplicates().values.tolist()
    n = max(len(keys), 1)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (task, pan) in zip(axes.flat, keys):
        d = maps[(maps["task"] == task) & (maps["pan"] == pan)]
        m = d.pivot(index="y", columns="x", values="activation").to_numpy()
        v = float(np.abs(m).max()) or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
        r = d.iloc[0]
        tag = "PAN" if str(r.get("is_pan", True)) in ("True", "1", "1.0") else "below tau"
        ax.set_title(f"{task}: {r['layer']} c{r['channel']}\n{r['sides']} |d|={r['score']:.1f} "
                     f"({tag})", fontsize=7)
    fig.tight_layout()
    return fig

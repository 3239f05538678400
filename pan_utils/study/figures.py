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

sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
PALETTE = sns.color_palette("colorblind")


def _model_order(df: pd.DataFrame, models=None) -> list[str]:
    """The models in the order given (the profile's), else in order of appearance."""
    present = list(dict.fromkeys(df["model"]))
    return [m for m in models if m in present] if models else present


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
    """PAN count vs tau, one line per condition (pre-trained, random-init, and the
    circular null of each), one panel per model; the zero line is drawn."""
    df = sens.assign(series=np.where(sens["condition"] == "circular null",
                                     "circular null (" + sens["weights"] + ")",
                                     sens["condition"]))
    order = [s for s in ("pretrained", "random-init", "circular null (pretrained)",
                         "circular null (random-init)") if s in set(df["series"])]
    g = sns.relplot(data=df, x="tau", y="pans", hue="series", hue_order=order,
                    style="series", style_order=order, col="model",
                    col_order=_model_order(df, models), kind="line", markers=True,
                    dashes=False, height=3.2, aspect=1.2, facet_kws={"sharey": False})
    for ax in g.axes.flat:
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=-0.4)
        ax.axhline(0, color="0.2", lw=0.8)
        _tau_line(ax, tau)
    g.set_titles("{col_name}")
    g.set_axis_labels("tau (|d| threshold)", "PANs (symlog scale)")
    g.legend.set_title("")
    return g.figure


def pans_per_layer(layers: pd.DataFrame, models=None) -> plt.Figure:
    """Fraction of each candidate layer's channels that are PANs, against relative depth."""
    df = layers.assign(fraction=layers["pans"] / layers["candidate_channels"])
    g = sns.relplot(data=df, x="depth", y="fraction", hue="weights", col="model",
                    col_order=_model_order(df, models), kind="line", marker="o",
                    height=3.2, aspect=1.3)
    g.set_titles("{col_name}")
    g.set_axis_labels("relative depth (0: first padded conv)",
                      "PANs / channels of the layer")
    return g.figure


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
        for c_i, (meta, img) in enumerate(images[r]):
            ax = axes[r_i, c_i]
            im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(_label(meta, title), fontsize=7.5)
        h, w = images[r][0][1].shape
        axes[r_i, 0].text(-0.12, 0.5, f"{r}\n{h}×{w}", transform=axes[r_i, 0].transAxes,
                          rotation=90, va="center", ha="right", fontsize=8)
        cax = axes[r_i, -1]
        cax.axis("on")
        fig.colorbar(im, cax=cax).set_label(what + (" − median" if centre else ""), fontsize=7)
    fig.tight_layout(h_pad=1.6)
    return fig


# --------------------------------------------------------------------------- 02 taxonomy


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


def uneven_sides(side_pans: pd.DataFrame, models=None) -> plt.Figure:
    """PANs per detected side at input size S and S+1, per model."""
    df = side_pans.assign(size=side_pans["size"].astype(str) + " px")
    g = sns.catplot(data=df, x="side", y="pans", hue="size", col="model",
                    col_order=_model_order(df, models), kind="bar", height=3.2, aspect=1.2,
                    sharey=False, errorbar=None)
    g.set_titles("{col_name}")
    g.set_axis_labels("side", "PANs detecting it")
    return g.figure


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

"""An interactive explorer of chapter 1 in Jupyter: tau and q sliders re-decide the PANs from
the scan store (no scan), and a model / layer / channel picker shows one channel's mean
map, kernel and scores (docs/METHOD.md §12).

Widgets do not render in a static view (the rendered notebooks, papermill runs), so there
the explorer prints one line saying how to open it, and the chapter's static figures
stand for it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..engine.geometry import REGIONS
from ..engine.maps import bn_signs, record_maps
from ..engine.models import LoadedModel, load_model
from ..engine.rule import decide_pans, significant_regions
from ..engine.store import ScanStore, model_fingerprint
from . import figures as plots
from .identification import (MAP_IMAGES, PRETRAINED, has_padded_conv, input_size, per_layer,
                             probe_images, stored_scores)
from .settings import Settings
from .taxonomy import kernels_table, type_counts

NONINTERACTIVE_ENV = "PAN_UTILS_NONINTERACTIVE"  # set by the runner: no widget front-end
HOW_TO_OPEN = ("explorer: widgets need a live Jupyter front-end; open this notebook with "
               "`make lab` and run this cell to move tau and q and to pick a channel")


@dataclass
class ModelState:
    """One model's stored pre-trained scan: enough to re-decide at any tau and q."""

    name: str
    loaded: LoadedModel
    size: int | tuple[int, int]
    scores: pd.DataFrame
    maps: dict = field(default_factory=dict)  # layer -> (C, H, W) mean maps, on demand


class ExplorerData:
    """The stored scans of the profile's padded models, and what a slider move redraws.

    Example:
        >>> data = ExplorerData(settings("default"))
        >>> data.decide(tau=2.0, consistency=0.9)["counts"]
    """

    def __init__(self, settings: Settings, models=None, store: ScanStore | None = None,
                 progress: bool = False):
        self.settings = settings
        self.store = store or ScanStore()
        self.models: dict[str, ModelState] = {}
        for name in models or settings.models:
            loaded = load_model(name)
            size = input_size(loaded, settings)
            fp = model_fingerprint(loaded.model)
            if not has_padded_conv(loaded.model, size, store=self.store, fingerprint=fp):
                continue  # nothing to explore: no candidate channel
            _, scores, _ = stored_scores(name, loaded, settings, size, PRETRAINED, None,
                                         store=self.store, progress=progress, fingerprint=fp)
            self.models[name] = ModelState(name, loaded, size, scores)

    def decide(self, tau: float, consistency: float) -> dict[str, pd.DataFrame]:
        """counts, layers (per-layer PANs) and types at (tau, q), from the stored scans."""
        counts, layers, pans_all = [], [], []
        for name, m in self.models.items():
            tag = {"model": name, "weights": PRETRAINED}
            pans = decide_pans(m.scores, tau=tau, consistency=consistency).assign(**tag)
            circ = decide_pans(m.scores, tau=tau, consistency=consistency, mode="circular",
                               null_mode=None)
            lay = per_layer(m.scores, pans).assign(**tag)
            n_cand = int(lay["candidate_channels"].sum())
            counts.append({**tag, "tau": tau, "q": consistency, "pans": len(pans),
                           "candidate_channels": n_cand, "pan_fraction": len(pans) / n_cand,
                           "circular_null_pans": len(circ)})
            layers.append(lay)
            pans_all.append(pans)
        pans = pd.concat(pans_all, ignore_index=True) if pans_all else pd.DataFrame()
        return {"counts": pd.DataFrame(counts), "pans": pans,
                "layers": pd.concat(layers, ignore_index=True) if layers else pd.DataFrame(),
                "types": type_counts(pans)}

    def channel(self, model: str, layer: str, channel: int, tau: float, consistency: float
                ) -> dict:
        """One channel: its scores per side and corner at (tau, q), its kernel summed over
        input channels, and its mean map over the first probe images (computed once per
        layer, then kept)."""
        m = self.models[model]
        sig = significant_regions(m.scores[m.scores["layer"] == layer], tau=tau,
                                  consistency=consistency)
        rows = sig[sig["channel"] == channel].set_index("side").reindex(list(REGIONS))
        scores = rows[["applicable", "d", "consistency", "d_null", "significant"]]
        kernel = kernels_table(m.loaded.model, layer, [channel])
        kernel = kernel.pivot(index="row", columns="col", values="weight").to_numpy()
        return {"scores": scores, "kernel": kernel, "map": self.mean_map(model, layer)[channel]}

    def mean_map(self, model: str, layer: str) -> np.ndarray:
        m = self.models[model]
        if layer not in m.maps:
            n_out = dict(m.loaded.model.named_modules())[layer].out_channels
            sign = bn_signs(m.loaded.model, m.size)[layer]
            images = probe_images(m.loaded, self.settings, m.size, n=MAP_IMAGES)
            maps = record_maps(m.loaded.model, {layer: list(range(n_out))}, images,
                               batch_size=self.settings.batch_size, signs={layer: sign})
            m.maps[layer] = maps[layer].float().numpy()
        return m.maps[layer]

    def layers(self, model: str) -> list[str]:
        s = self.models[model].scores
        return list(s.drop_duplicates("layer").sort_values("order")["layer"])


def channel_figure(view: dict, title: str) -> plt.Figure:
    """The picked channel: mean map (BatchNorm sign folded in) beside its kernel."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3.2))
    im = a.imshow(view["map"] - np.median(view["map"]), cmap="RdBu_r")
    a.set_title("mean map (median subtracted)")
    fig.colorbar(im, ax=a, shrink=0.8)
    k = view["kernel"]
    lim = float(np.abs(k).max()) or 1.0
    im = b.imshow(k, cmap="PuOr_r", vmin=-lim, vmax=lim)
    b.set_title("kernel, summed over inputs")
    fig.colorbar(im, ax=b, shrink=0.8)
    for ax in (a, b):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return fig


class Explorer:
    """The widgets: tau and q sliders over the counts, the per-layer figure and the type
    counts; a model / layer / channel picker over one channel. ``redraw`` is what a
    slider move calls; ``redraw_s`` says how long the last one took."""

    def __init__(self, data: ExplorerData):
        import ipywidgets as w

        self.data = data
        s = data.settings
        self.tau = w.FloatSlider(value=float(s.tau), min=1.0, max=10.0, step=0.25,
                                 description="tau", continuous_update=False)
        self.q = w.FloatSlider(value=float(s.consistency), min=0.5, max=1.0, step=0.01,
                               description="q", continuous_update=False)
        names = list(data.models)
        self.model = w.Dropdown(options=names, description="model")
        self.layer = w.Dropdown(options=data.layers(names[0]) if names else [],
                                description="layer")
        self.channel = w.BoundedIntText(value=0, min=0, max=self._channels() - 1,
                                        description="channel")
        self.summary, self.picked = w.Output(), w.Output()
        self.state: dict[str, pd.DataFrame] = {}
        self.redraw_s = float("nan")
        for slider in (self.tau, self.q):
            slider.observe(lambda _: (self.redraw(), self.show_channel()), names="value")
        self.model.observe(self._model_changed, names="value")
        self.layer.observe(self._layer_changed, names="value")
        self.channel.observe(lambda _: self.show_channel(), names="value")
        self.widget = w.VBox([w.HBox([self.tau, self.q]), self.summary,
                              w.HBox([self.model, self.layer, self.channel]), self.picked])

    def _channels(self) -> int:
        if not self.model.value:
            return 1
        return int(dict(self.data.models[self.model.value].loaded.model.named_modules())[
            self.layer.value].out_channels)

    def _model_changed(self, _):
        self.layer.options = self.data.layers(self.model.value)

    def _layer_changed(self, _):
        self.channel.max = self._channels() - 1
        self.show_channel()

    def redraw(self) -> None:
        """Re-decide at the sliders' tau and q and redraw counts, layers and types."""
        from IPython.display import display

        t0 = time.perf_counter()
        self.state = self.data.decide(self.tau.value, self.q.value)
        with self.summary:
            self.summary.clear_output(wait=True)
            display(self.state["counts"].round(4))
            if len(self.state["layers"]):
                fig = plots.pans_per_layer(self.state["layers"])
                display(fig)
                plt.close(fig)
            if len(self.state["types"]):
                display(self.state["types"].pivot_table(
                    index=["model", "type"], columns="polarity", values="pans",
                    fill_value=0, aggfunc="sum"))
        self.redraw_s = time.perf_counter() - t0

    def show_channel(self) -> None:
        from IPython.display import display

        if not self.model.value or self.layer.value is None:
            return
        view = self.data.channel(self.model.value, self.layer.value, int(self.channel.value),
                                 self.tau.value, self.q.value)
        with self.picked:
            self.picked.clear_output(wait=True)
            display(view["scores"].round(3))
            fig = channel_figure(view, f"{self.model.value} {self.layer.value} "
                                       f"channel {self.channel.value}")
            display(fig)
            plt.close(fig)


def interactive() -> bool:
    """Whether widgets can be shown: inside IPython, and not in a batch run (the runner
    sets ``PAN_UTILS_NONINTERACTIVE``)."""
    if os.environ.get(NONINTERACTIVE_ENV):
        return False
    try:
        from IPython import get_ipython

        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return get_ipython() is not None


def explore(settings: Settings, models=None, *, store: ScanStore | None = None
            ) -> Explorer | None:
    """Open the explorer on the profile's stored scans (chapter 1 run first), or print
    how to open it where widgets cannot render. Returns the explorer, or None.

    Example:
        >>> explore(settings("default"))  # in JupyterLab
    """
    if not interactive():
        print(HOW_TO_OPEN)
        return None
    from IPython.display import display

    ex = Explorer(ExplorerData(settings, models, store=store))
    display(ex.widget)
    ex.redraw()
    ex.show_channel()
    return ex

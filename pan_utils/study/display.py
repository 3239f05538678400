"""What a notebook shows a reader: the parameters that matter to a chapter as a short
table, tables rounded to meaningful precision without empty columns, and a message that
would repeat for each model said once. Nothing here computes a result."""

from __future__ import annotations

import contextlib
import io
import math
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

import pandas as pd

from .settings import Settings

# What a parameter means, for the chapter's opening table (docs/METHOD.md states each).
MEANING = {
    "profile": "settings profile",
    "models": "pre-trained models studied",
    "n_images": "probe images per model (scan)",
    "n_eval": "evaluation images per model (not the scan's)",
    "image_size": "input size",
    "data_dir": "probe images",
    "tau": "threshold on the border contrast |d|, in sds",
    "consistency": "fraction q of images on which |d| must pass tau",
    "seed": "random seed",
    "device": "device",
    "baseline_seeds": "random-init baseline seeds",
    "n_boot": "bootstrap resamples",
    "n_random_draws": "random-control draws",
    "n_dose": "dose-response images",
    "dose_points": "dose-response points",
    "n_placement": "placement images",
    "placement_scale": "placement: evidence scale",
    "train_seeds": "training seeds",
    "train_epochs": "training epochs",
    "train_patches": "training patches",
    "train_width": "network width",
    "train_depth": "network depth",
    "gen_patches": "generalisation: training patches",
    "gen_epochs": "generalisation: epochs",
    "gen_width": "generalisation: network width",
    "scale_width": "scale run: network width",
    "scale_depth": "scale run: network depth",
    "scale_epochs": "scale run: epochs",
    "scale_patches": "scale run: training patches",
    "census_models": "census: models with weights",
    "census_architectures": "census: architectures without weights",
    "census_images": "census: probe images per model",
    "census_baseline_seeds": "census: random-init baseline seeds",
    "scheduler": "Dask scheduler",
    "workers": "Dask workers",
    "frames_n_eval": "frames: evaluation images per model",
    "frames_widths": "frames: natural frame widths, px",
    "frames_fills": "frames: fills",
    "frames_control_widths": "frames: widths with centred and random controls, px",
    "frames_mediation_fills": "frames: fills of the mediation test",
    "frames_random_draws": "frames: random-channel draws (mediation control)",
    "frames_adv_widths": "frames: universal frame widths, px",
    "frames_adv_images": "frames: scan crops the universal frames are fitted on",
    "frames_adv_steps": "frames: Adam steps per universal fit",
    "cure_paddings": "cure: paddings swapped in",
    "cure_bn_paddings": "cure: paddings also recalibrated (BatchNorm)",
    "cure_distill_paddings": "cure: paddings distilled from the original",
    "cure_params": "cure: parameters distillation trains",
    "cure_steps": "cure: distillation steps measured",
    "cure_lr": "cure: Adam learning rate",
    "cure_batch": "cure: crops per distillation step",
    "cure_mixup": "cure: mixup Beta parameter",
    "cure_n_eval": "cure: held-out evaluation crops",
    "cure_n_images": "cure: PAN probes (scan split)",
    "cure_train_images": "cure: distillation crops (scan split)",
    "cure_n_placement": "cure: placement crops",
    "cure_ablations": "cure: chapter 3 ablations as references",
}
# The parameters that matter to each chapter, in the order its opening table lists them.
CHAPTER_PARAMETERS = {
    "identification": ("profile", "models", "n_images", "image_size", "data_dir", "tau",
                       "consistency", "baseline_seeds", "n_boot", "seed", "device"),
    "taxonomy": ("profile", "models", "n_images", "image_size", "data_dir", "tau",
                 "consistency", "seed"),
    "ablation": ("profile", "models", "n_images", "n_eval", "data_dir", "n_random_draws",
                 "n_dose", "dose_points", "n_placement", "placement_scale", "tau",
                 "consistency", "seed", "device"),
    "padding_policy": ("profile", "train_seeds", "train_epochs", "train_patches", "train_width",
                       "train_depth", "gen_epochs", "gen_patches", "gen_width", "scale_width",
                       "scale_depth", "scale_epochs", "scale_patches", "tau", "consistency",
                       "device"),
    "census": ("profile", "census_models", "census_architectures", "census_images",
               "census_baseline_seeds", "image_size", "tau", "consistency", "seed", "device",
               "scheduler", "workers"),
    "frames": ("profile", "models", "tau", "consistency", "frames_n_eval", "frames_widths",
               "frames_fills", "frames_control_widths", "frames_mediation_fills",
               "frames_random_draws", "frames_adv_widths", "frames_adv_images",
               "frames_adv_steps", "seed", "device"),
    "cure": ("profile", "models", "tau", "consistency", "cure_paddings", "cure_bn_paddings",
             "cure_distill_paddings", "cure_params", "cure_steps", "cure_lr", "cure_batch",
             "cure_mixup", "cure_n_eval", "cure_n_images", "cure_train_images",
             "cure_n_placement", "cure_ablations", "seed", "device"),
}
# What None means for a parameter (its profile leaves the choice to the model or the machine).
NONE_MEANS = {"image_size": "each model's own", "data_dir": "bundled photos",
              "scheduler": "local cluster", "workers": "one per core (or GPU)"}


def format_value(value) -> str:
    """A parameter's value as a reader writes it: ``a, b, c`` for a sequence, never a repr."""
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return "–" if value is None else str(value)


def parameters_table(settings: Settings, names: Sequence[str] | str) -> pd.DataFrame:
    """The parameters that matter to a chapter, one row each (value and meaning): what a
    chapter opens with instead of the whole ``Settings`` repr. ``names``: the settings'
    names, or a chapter of ``CHAPTER_PARAMETERS`` (``"taxonomy"``)."""
    if isinstance(names, str):
        if names not in CHAPTER_PARAMETERS:
            raise ValueError(f"no chapter {names!r}; choose one of "
                             f"{', '.join(CHAPTER_PARAMETERS)}")
        names = CHAPTER_PARAMETERS[names]
    unknown = [n for n in names if not hasattr(settings, n)]
    if unknown:
        raise ValueError(f"not a setting: {', '.join(unknown)}")
    rows = []
    for n in names:
        v = getattr(settings, n)
        rows.append({"parameter": n,
                     "value": NONE_MEANS.get(n, "–") if v is None else format_value(v),
                     "meaning": MEANING.get(n, "")})
    return pd.DataFrame(rows).set_index("parameter")


def format_number(value, digits: int = 2) -> str:
    """An integral value without decimals (``357``, not ``357.000000``), any other rounded
    to ``digits`` decimals; missing values as an en dash."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    f = float(value)
    if f.is_integer():
        return f"{int(f)}"
    return f"{f:.{digits}f}"


def tidy_table(df: pd.DataFrame, digits: int | dict = 2, *, index: Sequence[str] = (),
               drop_constant: bool = False, max_rows: int | None = None) -> pd.DataFrame:
    """``df`` as a reader should see it: numbers rounded (``digits``: one for all, or per
    column, default 2), integral numbers without decimals, missing or empty cells ``–``;
    columns that are empty everywhere dropped (and, with ``drop_constant``, columns with
    one value in every row); ``index`` columns made the index; at most ``max_rows`` rows."""
    out = df.copy()
    if index:
        out = out.reset_index(drop=not any(n is not None for n in out.index.names))
        out = out.set_index(list(index))
    empty = [c for c in out.columns
             if out[c].isna().all() or (out[c].astype(str).str.strip() == "").all()]
    out = out.drop(columns=empty)
    if drop_constant and len(out) > 1:
        out = out.drop(columns=[c for c in out.columns if out[c].nunique(dropna=False) == 1])
    if max_rows is not None:
        out = out.head(max_rows)
    for c in out.columns:
        if pd.api.types.is_numeric_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c]):
            d = digits.get(c, 2) if isinstance(digits, dict) else digits
            out[c] = [format_number(v, d) for v in out[c]]
        else:
            out[c] = out[c].where(out[c].notna() & (out[c].astype(str) != ""), "–")
    return out


def show_table(df: pd.DataFrame, digits: int | dict = 2, *, index: Sequence[str] = (),
               drop_constant: bool = False, max_rows: int | None = None,
               source: str | None = None) -> None:
    """Display ``tidy_table(df, ...)`` with no cell cut short; when rows are left out, say
    how many and which CSV (``source``, e.g. ``"census.csv"``) holds them all."""
    from IPython.display import display

    with pd.option_context("display.max_colwidth", None):
        display(tidy_table(df, digits, index=index, drop_constant=drop_constant,
                           max_rows=max_rows))
    if max_rows is not None and len(df) > max_rows:
        where = f"; all of them in tables/{source}" if source else ""
        print(f"first {max_rows} of {len(df)} rows{where}")
    elif source:
        print(f"the full table: tables/{source}")


# "name: message", "0. name: message" or "name (weights): message"
_SUBJECT = re.compile(r"^(?P<lead>\s*(?:\d+\.\s+)?)"
                      r"(?P<name>[A-Za-z0-9_][\w.:\-]*(?: \((?:[^()]|\([^()]*\))*\))?)"
                      r": (?P<msg>.+)$")


def merge_lines(lines: Iterable[str]) -> list[str]:
    """Lines ``name: message`` with the same message merged into one, ``a, b, c: message``,
    where the first of them stood; every other line kept in its place."""
    lines = list(lines)
    groups: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        m = _SUBJECT.match(line)
        if m:
            groups.setdefault((m["lead"], m["msg"]), []).append(m["name"])
    out, done = [], set()
    for line in lines:
        m = _SUBJECT.match(line)
        if not m:
            out.append(line)
            continue
        key = (m["lead"], m["msg"])
        if key in done:
            continue
        done.add(key)
        names = list(dict.fromkeys(groups[key]))
        out.append(f"{key[0]}{', '.join(names)}: {key[1]}")
    return out


@contextlib.contextmanager
def merged_messages() -> Iterator[None]:
    """Print what the block prints, at its end, with each per-model message said once
    (``merge_lines``): "mtcnn_pnet, mtcnn_rnet, mtcnn_onet: no padded convolution ...".
    Progress bars (stderr, widgets) are not held back."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue()
        if text:
            sys.stdout.write("\n".join(merge_lines(text.rstrip("\n").split("\n"))) + "\n")

"""Profiles, safe result writing, and the papermill runner behind `make reproduce`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

# Every notebook reads its settings from here: a parameter left at None takes the
# profile's value, so the notebooks' `parameters` cells hold only independent literals.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "models": ["mobilenet_v2"],
        "n_images": 16,
        "n_eval": 16,
        "image_size": 96,
        "batch_size": 16,
        "n_random_draws": 2,
        "train_seeds": [0],
        "train_epochs": 1,
        "train_patches": 256,
        "data_dir": None,
        "device": "cpu",
    },
    "default": {
        "models": ["mobilenet_v2", "efficientnet_lite0"],
        "n_images": 256,
        "n_eval": 256,
        "image_size": None,  # None: the model's own input size
        "batch_size": 32,
        "n_random_draws": 5,
        "train_seeds": [0, 1, 2],
        "train_epochs": 6,
        "train_patches": 2048,
        "data_dir": None,
        "device": "cpu",
    },
    "paper": {
        "models": [
            "resnet50.tv_in1k", "resnet50.tv2_in1k", "resnet50.a1_in1k",
            "mobilenetv3_large_100.ra_in1k", "efficientnet_b0.ra_in1k",
            "convnext_tiny.fb_in1k", "vgg16_bn.tv_in1k", "densenet121.tv_in1k",
            "regnety_016.tv2_in1k", "mobilenet_v2", "efficientnet_lite0",
        ],
        "n_images": 1024,
        "n_eval": 5000,
        "image_size": None,
        "batch_size": 64,
        "n_random_draws": 10,
        "train_seeds": [0, 1, 2, 3, 4],
        "train_epochs": 30,
        "train_patches": 8192,
        "data_dir": None,  # required: an ImageNet validation folder (DATA_DIR=...)
        "device": "auto",
    },
}
COMMON = {"tau": 3.0, "consistency": 0.95, "seed": 0}


def settings(profile: str = "default", **overrides: Any) -> dict[str, Any]:
    """The profile's settings with every non-None override applied."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    merged = {"profile": profile, **COMMON, **PROFILES[profile]}
    unknown = set(overrides) - set(merged)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    merged.update({k: v for k, v in overrides.items() if v is not None})
    if merged["device"] == "auto":
        import torch

        merged["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return merged


def _atomic(path: Path, write) -> Path:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str) -> Path:
    """``out_dir/tables/name.csv``, written atomically; floats rounded for stable diffs."""
    return _atomic(Path(out_dir) / "tables" / f"{name}.csv",
                   lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))


TEXT_COLUMNS = ("model", "weights", "layer", "sides", "corners", "polarity", "type", "side",
                "condition", "mode", "policy", "task", "class_name")


def read_table(out_dir: str | Path, name: str) -> pd.DataFrame:
    """A table written by ``write_table``; empty text cells (e.g. no sides) stay ''."""
    path = Path(out_dir) / "tables" / f"{name}.csv"
    header = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS if c in header},
                       keep_default_na=False, na_values={c: ["", "nan"] for c in header
                                                         if c not in TEXT_COLUMNS})


def save_figure(fig, out_dir: str | Path, name: str) -> Path:
    """``out_dir/figures/name.png``, written atomically."""
    return _atomic(Path(out_dir) / "figures" / f"{name}.png",
                   lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                           metadata={"Software": None}))

"""Padding Aware Neurons: find, classify and ablate the border detectors of CNNs.

The public API is the engine's (``pan_utils.engine``); the study's chapters, figures and
runner live in ``pan_utils.study``. The method is in docs/METHOD.md.
"""

from .engine.ablate import ablate, interior_means
from .engine.hooks import eval_mode, hooks
from .engine.models import LoadedModel, ModelError, Preprocessing, list_models, load_model
from .engine.padding import padded_convs
from .engine.policy import padding_policy
from .engine.probes import (BundledProbe, ImageFolderProbe, ProbeError, bundled_images,
                            bundled_photos)
from .engine.rule import decide_pans, pan_counts_by_tau
from .engine.scan import ScanError, find_pans, scan
from .engine.state import random_init
from .engine.types import pan_type

__all__ = [
    "ImageFolderProbe", "LoadedModel", "ModelError", "Preprocessing", "ProbeError",
    "ScanError", "ablate", "BundledProbe",
    "bundled_images", "bundled_photos", "decide_pans", "eval_mode",
    "find_pans", "hooks", "interior_means", "list_models", "load_model", "pan_counts_by_tau",
    "pan_type", "padded_convs", "padding_policy", "random_init", "scan",
]
__version__ = "0.1.0"

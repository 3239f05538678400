"""Padding Aware Neurons: find, classify and ablate the border detectors of CNNs.

The public API is the engine's (``pan_utils.engine``); the study's chapters, figures and
runner live in ``pan_utils.study``. The method is in docs/METHOD.md.

The names below are imported on first use (PEP 562), so that ``python -m pan_utils
--help`` and the CLI's argument errors answer without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> engine module that defines it
_EXPORTS = {
    "ablate": "ablate", "interior_means": "ablate",
    "eval_mode": "hooks", "hooks": "hooks",
    "LoadedModel": "models", "ModelError": "models", "Preprocessing": "models",
    "list_models": "zoo", "load_model": "models", "random_init": "state",
    "padded_convs": "padding",
    "padding_policy": "policy",
    "BundledProbe": "probes", "ImageFolderProbe": "probes", "ProbeError": "probes",
    "bundled_images": "probes", "bundled_photos": "probes",
    "decide_pans": "rule", "pan_counts_by_tau": "rule",
    "ScanError": "scan", "find_pans": "scan", "scan": "scan",
    "pan_type": "types",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them
    from .engine.ablate import ablate, interior_means
    from .engine.hooks import eval_mode, hooks
    from .engine.models import LoadedModel, ModelError, Preprocessing, load_model
    from .engine.padding import padded_convs
    from .engine.policy import padding_policy
    from .engine.probes import (BundledProbe, ImageFolderProbe, ProbeError, bundled_images,
                                bundled_photos)
    from .engine.rule import decide_pans, pan_counts_by_tau
    from .engine.scan import ScanError, find_pans, scan
    from .engine.state import random_init
    from .engine.types import pan_type
    from .engine.zoo import list_models


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pan_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".engine.{module}", __name__), name)
    globals()[name] = value  # cached: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

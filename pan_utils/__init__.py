"""Padding Aware Neurons: find, classify and ablate the border detectors of CNNs."""

from .models import LoadedModel, ModelError, Preprocessing, list_models, load_model, random_init
from .padding import padded_convs, padding_policy
from .probes import ImageFolderProbe, ProbeError, bundled_images, bundled_photos
from .scan import ScanError, decide_pans, find_pans, pan_counts_by_tau, scan
from .taxonomy import pan_type

__all__ = [
    "ImageFolderProbe", "LoadedModel", "ModelError", "Preprocessing", "ProbeError",
    "ScanError", "bundled_images", "bundled_photos", "decide_pans", "find_pans",
    "list_models", "load_model", "pan_counts_by_tau", "pan_type", "padded_convs",
    "padding_policy", "random_init", "scan",
]
__version__ = "0.1.0"

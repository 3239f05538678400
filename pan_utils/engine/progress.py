"""Progress bars: tqdm in terminals and in Jupyter, silent inside `make reproduce`.

The runner sets ``PAN_UTILS_PROGRESS=0`` for the notebook kernel: papermill already
shows progress per cell, and a bar stored in an executed notebook only shows its
first frame ("0 img") to a reader.

A bar over images gets its total from ``image_count`` whenever the number of images is
known without reading them, so that it shows a percentage and an ETA.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


def image_count(images) -> int | None:
    """The number of images in ``images`` when it is known without reading them, else None.

    An N×C×H×W tensor: N. A probe (an object with ``batches``, e.g. ``BundledProbe`` or
    ``ImageFolderProbe``), a ``Dataset`` such as ``ImageFiles``, or any object with an
    ``n_images`` attribute: its length. A list or tuple of batches (tensors or
    (tensor, labels) pairs): the sum of their first dimensions. A ``DataLoader``: its
    dataset's length. A generator or any other iterable: None (no total).

    Example:
        >>> image_count(torch.zeros(10, 3, 8, 8)), image_count(BundledProbe(64))
        (10, 64)
    """
    n = getattr(images, "n_images", None)
    if isinstance(n, int):
        return n
    shape = getattr(images, "shape", None)
    if shape is not None and hasattr(images, "ndim"):  # a tensor (or array)
        return int(shape[0]) if images.ndim == 4 else None
    if isinstance(images, (list, tuple)):
        total = 0
        for item in images:
            x = item[0] if isinstance(item, (list, tuple)) and item else item
            s = getattr(x, "shape", None)
            if s is None or len(s) != 4:
                return None
            total += int(s[0])
        return total
    dataset = getattr(images, "dataset", None)  # a torch DataLoader
    if dataset is not None and hasattr(images, "batch_size"):
        return len(dataset) if hasattr(dataset, "__len__") else None
    if hasattr(images, "__len__") and (hasattr(images, "batches")
                                       or hasattr(images, "__getitem__")):
        try:
            return len(images)
        except TypeError:
            return None
    return None


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled when ``enabled`` is false or by the env.

    Pass ``total`` (e.g. ``image_count(images)``) whenever it is known: tqdm then shows
    a percentage and an ETA.
    """
    from tqdm.auto import tqdm  # imported here: `python -m pan_utils --help` stays light

    off = os.environ.get("PAN_UTILS_PROGRESS", "1").strip().lower() in ("0", "false", "no")
    return tqdm(iterable, disable=(not enabled) or off, **kwargs)

"""Progress bars: tqdm in terminals and in Jupyter, silent inside `make reproduce`.

The runner sets ``PAN_UTILS_PROGRESS=0`` for the notebook kernel: papermill already
shows progress per cell, and a bar stored in an executed notebook only shows its
first frame ("0 img") to a reader.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled when ``enabled`` is false or by the env."""
    off = os.environ.get("PAN_UTILS_PROGRESS", "1").strip().lower() in ("0", "false", "no")
    return tqdm(iterable, disable=(not enabled) or off, **kwargs)

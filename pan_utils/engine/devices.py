"""Which device a run uses: the one place 'auto' becomes a device. Light on purpose (torch is
imported only when 'auto' must be resolved), so that the settings and the CLI's argument
handling load without torch."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """'auto' as 'cuda' when a CUDA device is available, else 'cpu'; any other name as is.

    The one place the study, the census workers and the CLI turn 'auto' into a device.

    Example:
        >>> resolve_device("auto") in ("cuda", "cpu")
        True
    """
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device

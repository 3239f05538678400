"""Writing files so that a failed or interrupted run never leaves a truncated one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    Args:
        path: the file to create or replace; its folder is created if needed.
        write: writes the whole content to the temporary path it is given.

    Returns:
        ``path``. On any error (or Ctrl-C) the temporary file is removed and ``path`` is
        left as it was.

    Example:
        >>> atomic_write("out/pans.csv", lambda tmp: pans.to_csv(tmp, index=False))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def readable(path: str | os.PathLike) -> None:
    """mkstemp creates 0600 files; results are shared, so give them the usual umask mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

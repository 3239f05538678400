"""A store of scan statistics on disk, so that a threshold is re-decided, not re-scanned
(docs/METHOD.md §12).

A scan's score table (per layer, channel, padding mode and side or corner) and, where the
bootstrap needs them, its per-image statistics are kept in one ``.npz`` file per key under
``.cache/scans/``. The key is everything that determines the numbers: the model and its
weights (a fingerprint of its structure and state), the probe images (their recipe, or a
fingerprint of their pixels), the padding modes, the device type and memory format, and
the version of the engine code and libraries that compute them. The rule (tau, q) is not
in the key: changing it re-decides from the stored statistics in seconds.

Same key: loaded. Changed key: rescanned. Entries are written atomically (temporary file,
then rename); an unreadable or mismatching entry is rescanned with a warning, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .io import atomic_write
from .rule import NULL_MODE
from .scan import LayerImages, PerImageStats, scan
from .state import device_of

FORMAT = 1  # bump when the layout of an entry changes
STORE_ENV = "PAN_UTILS_STORE"  # where the store lives (default: ./.cache/scans)
ENGINE = Path(__file__).resolve().parent
# The engine modules whose code determines a stored entry: model building, probes, padding
# discovery, policy and cures, the scan and its kernel, the rule and the count curves, this file.
SCAN_MODULES = ("archs", "cure", "geometry", "hooks", "io", "kernels", "models", "padding",
                "policy",
                "probes", "progress", "rule", "scan", "state", "store", "types", "uncertainty",
                "zoo")

ScanResult = tuple[pd.DataFrame, "PerImageStats | None"]


class StoreWarning(UserWarning):
    """An entry of the store could not be used and is being recomputed."""


def engine_version() -> str:
    """A hash of the engine's scan code (``SCAN_MODULES``) and of the libraries that compute
    a scan: any change to either is another key, so no stored statistic outlives the code
    that made it."""
    if not hasattr(engine_version, "_cached"):
        h = hashlib.sha256()
        for name in sorted(SCAN_MODULES):
            path = ENGINE / f"{name}.py"
            h.update(path.name.encode())
            h.update(path.read_bytes())
        import numba

        for lib in (torch, np, pd, numba):
            h.update(f"{lib.__name__}={lib.__version__};".encode())
        engine_version._cached = h.hexdigest()[:16]
    return engine_version._cached


def model_fingerprint(model: nn.Module) -> str:
    """A hash of a model's structure (its repr: layers, paddings, padding modes) and of
    every parameter and buffer: two models with one weight apart get different keys."""
    h = hashlib.sha256(repr(model).encode())
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def probe_fingerprint(images: Any) -> dict | str | None:
    """What determines a probe set's pixels: a probe's recipe (its dataclass fields; for a
    folder, every file's path, size and modification time), or a hash of a tensor's bytes.
    None for a generator or any other iterable: such a scan is not stored."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu().contiguous()
        h = hashlib.sha256(f"{x.dtype}:{tuple(x.shape)}".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
        return "tensor:" + h.hexdigest()[:24]
    if is_dataclass(images) and not isinstance(images, type):
        recipe: dict[str, Any] = {"class": type(images).__name__}
        for f in fields(images):
            if not f.init:
                continue
            v = getattr(images, f.name)
            recipe[f.name] = str(v) if isinstance(v, os.PathLike) else v
        files = getattr(images, "files", None)
        if files is not None:
            h = hashlib.sha256()
            for p in files:
                st = os.stat(p)
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns};".encode())
            recipe["files"] = h.hexdigest()[:24]
        return recipe
    return None


def default_root() -> Path:
    """``$PAN_UTILS_STORE``; else ``.cache/scans`` of the project checkout the package runs
    from (the notebooks, the CLI and the tests share it), or of the working folder."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    checkout = ENGINE.parents[1]
    base = checkout if (checkout / "pyproject.toml").exists() else Path.cwd()
    return base / ".cache" / "scans"


class ScanStore:
    """Scan statistics on disk, one ``.npz`` per key.

    Example:
        >>> store = ScanStore()
        >>> scores, stats = store.get(key, lambda: scan(model, images, null=True,
        ...                                                per_image=True), per_image=True)
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.hits = self.misses = 0

    @staticmethod
    def key(parts: dict) -> tuple[str, str]:
        """(file name, canonical JSON) of a key: the JSON is stored in the entry and compared
        on load, so a hash collision or a renamed file cannot pass for the right entry."""
        text = json.dumps({"format": FORMAT, "engine": engine_version(), **parts},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32], text

    def path(self, parts: dict) -> Path:
        return self.root / f"{self.key(parts)[0]}.npz"

    def get(self, parts: dict, compute: Callable[[], ScanResult | pd.DataFrame], *,
            per_image: bool = False) -> ScanResult:
        """The stored statistics of ``parts``, or ``compute()``'s, stored.

        The score table and the per-image statistics are two files, so that re-deciding
        reads only the small one.

        Args:
            parts: the key (JSON-able): everything that determines the statistics.
            compute: runs the scan on a miss; returns scores or (scores, PerImageStats).
            per_image: the caller needs the per-image statistics; an entry without them
                is a miss.

        Returns:
            (scores, PerImageStats, or None when not asked for).
        """
        name, text = self.key(parts)
        scores_path, images_path = self.root / f"{name}.npz", self.root / f"{name}.images.npz"
        if scores_path.exists() and (images_path.exists() or not per_image):
            try:
                scores = _read_scores(scores_path, text)
                stats = _read_images(images_path, text) if per_image else None
                self.hits += 1
                return scores, stats
            except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed
                _warn(scores_path, exc)
        self.misses += 1
        out = compute()
        scores, stats = out if isinstance(out, tuple) else (out, None)
        if stats is not None:
            atomic_write(images_path, lambda tmp: _write_images(tmp, text, stats))
        atomic_write(scores_path, lambda tmp: _write_scores(tmp, text, scores))
        return scores, stats

    def arrays(self, parts: dict, compute: Callable[[], dict[str, np.ndarray]]
               ) -> dict[str, np.ndarray]:
        """Any other derived arrays (e.g. count curves) under their own key."""
        name, text = self.key(parts)
        path = self.root / f"{name}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["key"]) != text:
                        raise ValueError("its key does not match")
                    out = {k: z[k] for k in z.files if k != "key"}
                self.hits += 1
                return out
            except Exception as exc:  # noqa: BLE001
                _warn(path, exc)
        self.misses += 1
        out = compute()
        atomic_write(path, lambda tmp: _savez(tmp, key=np.array(text), **out))
        return out


def _warn(path: Path, exc: BaseException) -> None:
    warnings.warn(f"scan store: entry {path.name} is unreadable ({type(exc).__name__}: "
                  f"{exc}); recomputing it", StoreWarning, stacklevel=3)


def _savez(tmp: str, **arrays: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def stored_scan(model: nn.Module, images, *, store: ScanStore | None = None,
                identity: dict | None = None, **scan_kwargs) -> ScanResult | pd.DataFrame:
    """``scan`` through the store: the same model, probes and scan options load the stored
    statistics instead of running the model.

    Args:
        model: the network (fingerprinted: structure and weights).
        images: as for ``scan``; a tensor or a probe object is fingerprinted, anything else
            is scanned without the store.
        store: where; ``ScanStore()`` by default.
        identity: extra key parts (e.g. the model's name), for readable keys.
        **scan_kwargs: as for ``scan`` (``null``, ``modes``, ``per_image``, ...).

    Returns:
        What ``scan`` returns with the same arguments.
    """
    per_image = bool(scan_kwargs.get("per_image", False))
    probes = probe_fingerprint(images)
    if probes is None:
        return scan(model, images, **scan_kwargs)
    store = store or ScanStore()
    parts = {**(identity or {}), "model": model_fingerprint(model), "probes": probes,
             **scan_parts(model, **scan_kwargs)}
    run = dict(scan_kwargs, per_image=True) if per_image else scan_kwargs
    scores, stats = store.get(parts, lambda: scan(model, images, **run), per_image=per_image)
    return (scores, stats) if per_image else scores


def scan_parts(model: nn.Module | None = None, *, null: bool = False, modes=None,
               device=None, channels_last: bool = True, **_: Any) -> dict:
    """The scan options that change its statistics (not the batch size, progress or
    labels): padding modes, device type and input memory format."""
    modes = list(modes) if modes else (["native", NULL_MODE] if null else ["native"])
    if device is None and model is not None:
        device = device_of(model)
    dev = torch.device(device).type if device is not None else "cpu"
    return {"modes": modes, "device": dev, "channels_last": bool(channels_last)}


# --------------------------------------------------------------------------- the file


def _write_scores(tmp: str, text: str, scores: pd.DataFrame) -> None:
    arrays: dict[str, np.ndarray] = {"key": np.array(text),
                                     "columns": np.array(list(scores.columns))}
    for i, col in enumerate(scores.columns):
        v = scores[col]
        if v.dtype.kind in "biuf":
            arrays[f"c{i}"] = v.to_numpy()
        else:  # text: codes and categories (few distinct values: layers, sides, modes)
            codes, cats = pd.factorize(v.astype(str))
            arrays[f"c{i}"], arrays[f"c{i}.text"] = codes, np.asarray(cats, dtype=str)
    _savez(tmp, **arrays)


def _write_images(tmp: str, text: str, stats: PerImageStats) -> None:
    arrays = {"key": np.array(text), "n_images": np.array(stats.n_images),
              "layers": np.array([lay.layer for lay in stats.layers])}
    for j, lay in enumerate(stats.layers):
        arrays[f"l{j}.regions"] = np.array(lay.regions, dtype=np.int64)
        arrays[f"l{j}.n_interior"] = np.array(lay.n_interior)
        arrays[f"l{j}.sign"] = np.asarray(lay.sign)
        arrays[f"l{j}.modes"] = np.array(list(lay.t))
        for mode in lay.t:
            for part in ("t", "s1", "s2"):
                arrays[f"l{j}.{part}.{mode}"] = getattr(lay, part)[mode]
    _savez(tmp, **arrays)


def _check_key(z, text: str) -> None:
    if str(z["key"]) != text:
        raise ValueError("its key does not match (another scan's statistics)")


def _read_scores(path: Path, text: str) -> pd.DataFrame:
    with np.load(path, allow_pickle=False) as z:
        _check_key(z, text)
        cols = [str(c) for c in z["columns"]]
        data = {}
        for i, col in enumerate(cols):
            v = z[f"c{i}"]
            if f"c{i}.text" in z.files:
                v = pd.Series(z[f"c{i}.text"].astype(object)[v], dtype="str")
            data[col] = v
        return pd.DataFrame(data, columns=cols)


def _read_images(path: Path, text: str) -> PerImageStats:
    with np.load(path, allow_pickle=False) as z:
        _check_key(z, text)
        layers = []
        for j, name in enumerate(z["layers"]):
            modes = [str(m) for m in z[f"l{j}.modes"]]
            layers.append(LayerImages(
                str(name), tuple(int(r) for r in z[f"l{j}.regions"]),
                int(z[f"l{j}.n_interior"]), z[f"l{j}.sign"],
                {m: z[f"l{j}.t.{m}"] for m in modes}, {m: z[f"l{j}.s1.{m}"] for m in modes},
                {m: z[f"l{j}.s2.{m}"] for m in modes}))
        return PerImageStats(layers, int(z["n_images"]))


def clear(root: str | os.PathLike | None = None) -> int:
    """Remove every entry of the store; returns how many."""
    root = Path(root) if root is not None else default_root()
    n = 0
    for p in root.glob("*.npz") if root.is_dir() else []:
        p.unlink()
        n += 1
    return n


__all__ = ["ScanStore", "StoreWarning", "clear", "engine_version", "model_fingerprint",
           "probe_fingerprint", "stored_scan"]

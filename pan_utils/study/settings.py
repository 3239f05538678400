"""The study's settings: one typed object, declared once per profile (docs/METHOD.md §9).

A notebook's ``parameters`` cell holds literals only (papermill overrides them);
``from_parameters(globals())`` turns them into a ``Settings`` where every parameter left
at None takes the profile's value, so each name is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..engine.devices import resolve_device


@dataclass(frozen=True)
class Settings:
    """Everything a chapter needs to know; the defaults are the rule's (docs/METHOD.md §4).

    Example:
        >>> S = settings("smoke", n_images=8)
        >>> S.tau, S.n_images
        (3.0, 8)
    """

    profile: str
    models: tuple[str, ...]
    n_images: int  # scan probes per model
    n_eval: int  # evaluation images of the ablation chapter (disjoint from the scan set)
    batch_size: int
    n_random_draws: int  # random-control draws of the ablation chapter
    train_seeds: tuple[int, ...]
    train_epochs: int
    train_patches: int
    train_width: int
    train_depth: int
    train_test_patches: int
    train_scan_images: int
    # generalisation task (docs/METHOD.md §8.4): its own, smaller budget
    gen_patches: int = 1024
    gen_epochs: int = 3
    gen_width: int = 8
    # scale run (§8.5): one larger zero-padded net on the location task, first seed
    scale_width: int = 16
    scale_depth: int = 1
    scale_epochs: int = 6
    scale_patches: int = 1536
    image_size: int | None = None  # None: each model's own input size
    data_dir: str | None = None  # an image folder instead of the bundled photos
    device: str = "cpu"  # cpu, cuda or auto
    tau: float = 3.0
    consistency: float = 0.95
    seed: int = 0
    baseline_seeds: int = 3  # random-init baselines (BatchNorm recalibrated), one per seed
    n_boot: int = 200  # bootstrap resamples of the probe images for a count's interval
    n_dose: int = 32  # evaluation images of the dose-response (first of the set)
    dose_points: int = 5  # values of k on the log grid, 1 .. all PANs
    dose_draws: int = 3  # random-control draws per k
    n_placement: int = 64  # evaluation images placed at the centre / in a corner
    placement_scale: float = 0.5
    # census (docs/METHOD.md §10): models scanned with their weights, architectures
    # discovered without; a keyword, or names and glob patterns (census.census_names)
    census_models: str | tuple[str, ...] = "offline"
    census_architectures: str | tuple[str, ...] = "curated"
    census_images: int = 32  # probes per model with weights (the scan's n_images)
    census_baseline_seeds: int = 1  # calibrated random-init baselines per model
    scheduler: str | None = None  # Dask: None = LocalCluster, 'slurm'/'pbs'/..., or an address
    workers: int | None = None  # Dask workers (LocalCluster) or jobs (jobqueue)
    # frames (docs/METHOD.md §13): natural frames, controls, adversarial frames, mediation
    frames_n_eval: int = 32  # evaluation images (the first of chapter 3's set)
    frames_widths: tuple[int, ...] = (1, 2, 4, 8)  # natural frame widths, px
    frames_fills: tuple[str, ...] = ("black", "white", "grey", "replicate")
    frames_control_widths: tuple[int, ...] = (4,)  # widths with centred/random controls
    frames_letterbox_aspect: float = 4 / 3  # the letterboxed photo's width / height
    frames_mediation_fills: tuple[str, ...] = ("black", "grey")  # at the control widths
    frames_random_draws: int = 2  # random-channel draws of the mediation control
    frames_adv_widths: tuple[int, ...] = (2, 4, 8)  # universal frame widths, px
    frames_adv_images: int = 32  # scan-photo crops the universal frames are fitted on
    frames_adv_steps: int = 4  # Adam steps per fit (frame and central patch alike)
    frames_adv_batch: int = 8
    frames_adv_lr: float = 0.1
    frames_shift_images: int = 8  # evaluation images of the activation-shift measure
    # cure (docs/METHOD.md §14): paddings, recoveries, the distillation grid, the measures
    cure_paddings: tuple[str, ...] = ("reflect", "replicate", "circular", "partial", "mean")
    cure_bn_paddings: tuple[str, ...] = ("mean",)  # also measured after BatchNorm recalibration
    cure_distill_paddings: tuple[str, ...] = ("mean",)  # distilled from the original
    cure_params: tuple[str, ...] = ("all",)  # what distillation trains: all, bn, pan_layers
    cure_steps: tuple[int, ...] = (8, 40)  # distillation steps measured (one run each)
    cure_lr: float = 1e-5  # Adam
    cure_batch: int = 16  # crops per distillation step
    cure_mixup: float = 1.0  # Beta parameter of the mixup blend; 0 for none
    cure_n_eval: int = 96  # held-out evaluation crops (the first of chapter 3's set)
    cure_n_images: int = 40  # scan-split probes of the PAN counts (and mean padding's fill)
    cure_train_images: int = 256  # scan-split crops distillation draws from
    cure_n_placement: int = 32  # evaluation crops placed at the centre / in a corner
    cure_frame_fill: str = "black"  # chapter 6's frame of the frame-sensitivity measure
    cure_frame_width: int = 4
    cure_ablations: tuple[str, ...] = ("border",)  # chapter 3's ablations, as references

    def replace(self, **overrides: Any) -> Settings:
        """A copy with every non-None override applied; unknown names are an error."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        given = {k: _frozen(v) for k, v in overrides.items() if v is not None}
        out = dataclasses.replace(self, **given)
        if out.device == "auto":
            out = dataclasses.replace(out, device=resolve_device(out.device))
        return out

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _frozen(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


_TRAIN_SMALL = dict(train_seeds=(0,), train_epochs=1, train_patches=64, train_width=4,
                    train_depth=1, train_test_patches=32, train_scan_images=32,
                    gen_patches=40, gen_epochs=1, gen_width=4, scale_width=4, scale_depth=1,
                    scale_epochs=2, scale_patches=64)

DEFAULT_MODELS = ("mobilenet_v2", "efficientnet_lite0", "crnn_english", "mtcnn_pnet",
                  "mtcnn_rnet", "mtcnn_onet")

PROFILES: dict[str, Settings] = {
    # seconds per notebook, for the tests; below ~128 px the deepest maps have almost
    # no interior
    "smoke": Settings("smoke", ("mobilenet_v2",), n_images=16, n_eval=16, batch_size=16,
                      n_random_draws=2, image_size=128, n_dose=16, dose_points=3,
                      dose_draws=2, census_models=("mobilenet_v2",),
                      census_architectures=("resnet18", "tf_efficientnet_b0", "tresnet_m",
                                            "tv:mobilenet_v3_small", "mtcnn_pnet"),
                      census_images=16, frames_n_eval=8, frames_widths=(1, 4),
                      frames_fills=("black", "replicate"), frames_mediation_fills=("black",),
                      frames_random_draws=1, frames_adv_widths=(2,), frames_adv_images=8,
                      frames_adv_steps=2, frames_adv_batch=4, frames_shift_images=4,
                      cure_paddings=("reflect", "partial", "mean"), cure_steps=(2,),
                      cure_batch=4, cure_n_eval=16, cure_n_images=16, cure_train_images=16,
                      cure_n_placement=8, **_TRAIN_SMALL),
    # the offline study committed in results/: 6 pre-trained models, 4 families, 3 tasks
    # (ImageNet classification; EasyOCR text recognition, grey 64x128 probes; MTCNN face
    # detection, unpadded: the no-padding control). efficientnet_lite1/2 and craft load
    # offline too but cost too much CPU for this profile's ~15-minute budget.
    "default": Settings("default", DEFAULT_MODELS, n_images=256,
                        n_eval=256, batch_size=32, n_random_draws=3,
                        train_seeds=(0, 1, 2), train_epochs=3, train_patches=1536,
                        train_width=16, train_depth=1, train_test_patches=384,
                        train_scan_images=256),
    # timm/torchvision ImageNet models on an ImageNet validation folder (DATA_DIR=...)
    "paper": Settings("paper", (
        "resnet50.tv_in1k", "resnet50.tv2_in1k", "resnet50.a1_in1k",
        "mobilenetv3_large_100.ra_in1k", "efficientnet_b0.ra_in1k", "convnext_tiny.fb_in1k",
        "vgg16_bn.tv_in1k", "densenet121.tv_in1k", "regnety_016.tv2_in1k", "mobilenet_v2",
        "efficientnet_lite0"), n_images=1024, n_eval=5000, batch_size=64,
        n_random_draws=10, train_seeds=(0, 1, 2, 3, 4), train_epochs=30, train_patches=8192,
        train_width=32, train_depth=2, train_test_patches=2048, train_scan_images=512,
        gen_patches=8192, gen_epochs=30, gen_width=32, scale_width=64, scale_depth=3,
        scale_epochs=60, scale_patches=16384, device="auto",
        census_models="all-pretrained", census_architectures="all", census_images=256,
        census_baseline_seeds=3, frames_n_eval=5000, frames_control_widths=(1, 2, 4, 8),
        frames_mediation_fills=("black", "white", "grey", "replicate"),
        frames_random_draws=10, frames_adv_widths=(1, 2, 4, 8), frames_adv_images=1024,
        frames_adv_steps=300, frames_adv_batch=64, frames_shift_images=256,
        cure_bn_paddings=("reflect", "replicate", "partial", "mean"),
        cure_distill_paddings=("reflect", "replicate", "partial", "mean"),
        cure_params=("all", "bn"), cure_steps=(250, 1000, 4000), cure_lr=1e-5, cure_batch=64,
        cure_n_eval=5000, cure_n_images=512, cure_train_images=1024, cure_n_placement=512,
        cure_ablations=("border", "mean")),
}


def settings(profile: str = "default", **overrides: Any) -> Settings:
    """The profile's settings with every non-None override applied.

    Args:
        profile: ``smoke``, ``default`` or ``paper``.
        **overrides: any ``Settings`` field; None keeps the profile's value.

    Returns:
        A frozen ``Settings`` (device ``auto`` resolved to cuda or cpu).

    Example:
        >>> settings("default", models=["mobilenet_v2"]).models
        ('mobilenet_v2',)
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile].replace(**overrides)


def from_parameters(namespace: Mapping[str, Any]) -> Settings:
    """The settings of a notebook run: ``profile`` and every ``Settings`` field found in
    ``namespace`` (a notebook's ``globals()`` after its parameters cell); other names
    are ignored."""
    names = {f.name for f in dataclasses.fields(Settings)} - {"profile"}
    return settings(namespace.get("profile", "default"),
                    **{k: v for k, v in namespace.items() if k in names})

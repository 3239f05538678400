"""Probe images: random crops of the bundled photos, image folders, tensors, in batches
(docs/METHOD.md §1)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import pair


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Natural photos that ship with scikit-image and scikit-learn (no download), split into
# two fixed halves so that a scan set and an evaluation set never share a photo.
PHOTO_SPLITS: dict[str, str] = {
    "astronaut": "scan", "coffee": "scan", "rocket": "scan", "retina": "scan",
    "china": "scan", "camera": "scan", "moon": "scan", "grass": "scan", "clock": "scan",
    "chelsea": "eval", "hubble_deep_field": "eval", "immunohistochemistry": "eval",
    "stereo_motorcycle": "eval", "flower": "eval", "coins": "eval", "brick": "eval",
    "gravel": "eval", "cell": "eval",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}


class ProbeError(ValueError):
    """Probe data the study cannot use (missing folder, no readable image, bad size).

    Example:
        >>> try:
        ...     bundled_images(0)
        ... except ProbeError as err:
        ...     print(err)
        number of images must be at least 1; got 0
    """


class ProbeWarning(UserWarning):
    """A probe set that is legal but suspect (unreadable or upscaled files, near-duplicate or
    constant images): the scan runs, and the warning says how many images it concerns."""


_HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def to_rgb(im):
    """A PIL image as 8-bit RGB, high-depth modes scaled by their real range first.

    PIL's own ``convert("RGB")`` clips 16-bit and 32-bit values at 255, so a 16-bit
    photo comes out almost all white. I;16* is divided by 65535; I (how PIL opens many
    16-bit PNGs) by 65535 when its values fit in 16 bits, else by 2**31 - 1; F is taken
    as [0, 1] when it lies there, else scaled by its maximum.
    """
    from PIL import Image

    if im.mode not in _HIGH_DEPTH and im.mode not in ("I", "F"):
        return im.convert("RGB")
    a = np.asarray(im, dtype=np.float64)
    if im.mode in _HIGH_DEPTH:
        top = _HIGH_DEPTH[im.mode]
    elif im.mode == "I":
        top = 65535 if a.size and a.min() >= 0 and a.max() <= 65535 else 2 ** 31 - 1
    else:
        top = 1.0 if not a.size or (a.min() >= 0 and a.max() <= 1) else max(float(a.max()), 1e-12)
    gray = np.clip(np.nan_to_num(a / top) * 255 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _load_photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
            img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


@lru_cache(maxsize=4)
def bundled_photos(split: str = "all") -> tuple[tuple[str, np.ndarray], ...]:
    """The offline photos of ``split``, so probing needs no download (docs/METHOD.md §1.1).

    Natural photos that ship with scikit-image and scikit-learn.

    Args:
        split: 'scan', 'eval' or 'all'; the scan and eval halves never share a photo.

    Returns:
        (name, H×W×3 uint8) pairs, cached.

    Example:
        >>> [name for name, _ in bundled_photos("eval")][:2]
        ['chelsea', 'hubble_deep_field']
    """
    if split not in ("scan", "eval", "all"):
        raise ProbeError(f"split must be 'scan', 'eval' or 'all'; got {split!r}")
    return tuple((n, _load_photo(n)) for n, s in PHOTO_SPLITS.items() if split in ("all", s))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of an N×C×H×W batch in [0, 1]: the one
    normalisation of the study (probes, folders and the training tasks)."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's "L" and OpenCV's RGB2GRAY


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """An N×3×H×W RGB batch as ``channels`` channels: itself for 3, its luminance for 1."""
    if channels == x.shape[1]:
        return x
    if channels == 1 and x.shape[1] == 3:
        return torch.tensordot(x, torch.tensor(LUMA, dtype=x.dtype), dims=([1], [0]))[:, None]
    raise ProbeError(f"cannot turn {x.shape[1]}-channel images into {channels} channels "
                     "(1: grey, 3: RGB)")


def random_crop_box(rng: np.random.Generator, h: int, w: int, min_scale: float
                    ) -> tuple[int, int, int, int]:
    """(top, left, height, width): area fraction in [min_scale, 1], aspect in [3/4, 4/3]."""
    area = rng.uniform(min_scale, 1.0) * h * w
    ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    ch = int(min(h, round(np.sqrt(area / ratio))))
    cw = int(min(w, round(np.sqrt(area * ratio))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return top, left, ch, cw


def _bundled_crops(n: int, size: tuple[int, int], seed: int, split: str, min_scale: float
                   ) -> Iterator[tuple[torch.Tensor, str]]:
    """The crops of ``bundled_images``, one at a time: (1×3×H×W in [0, 1], photo name)."""
    if n < 1:
        raise ProbeError(f"number of images must be at least 1; got {n}")
    photos = bundled_photos(split)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        name, img = photos[int(rng.integers(len(photos)))]
        top, left, ch, cw = random_crop_box(rng, img.shape[0], img.shape[1], min_scale)
        crop = torch.from_numpy(img[top:top + ch, left:left + cw]).permute(2, 0, 1)[None]
        crop = F.interpolate(crop.float() / 255.0, size=size, mode="bilinear",
                             antialias=True, align_corners=False)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        yield crop.clamp_(0, 1), name


def bundled_images(n: int, size: int | tuple[int, int] = 224, *, seed: int = 0,
                   split: str = "scan", mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, min_scale: float = 0.15,
                   return_names: bool = False, channels: int = 3):
    """``n`` random crops of the bundled photos: the default probe set (docs/METHOD.md §1.2).
    ``BundledProbe`` gives the same crops batch by batch, in constant memory.

    Args:
        n: number of images.
        size: H or (H, W) the crops are resized to.
        seed: crops, flips and photo draws are deterministic given it.
        split: which photos: 'scan', 'eval' or 'all' (``bundled_photos``).
        mean, std: per-channel normalisation (ImageNet's by default).
        min_scale: the smallest crop area as a fraction of the photo; the aspect ratio is
            drawn in [3/4, 4/3], and half the crops are flipped.
        return_names: also return the photo of each crop.
        channels: 3, or 1 for grey probes (the luminance of the same RGB crops).

    Returns:
        An N×C×H×W float tensor, normalised; ``(tensor, names)`` with ``return_names=True``.

    Example:
        >>> bundled_images(64, 224, seed=0).shape
        torch.Size([64, 3, 224, 224])
    """
    if n < 1:
        raise ProbeError(f"number of images must be at least 1; got {n}")
    crops, names = [], []
    for crop, name in _bundled_crops(n, pair(size), seed, split, min_scale):
        crops.append(crop)
        names.append(name)
    x = normalize(to_channels(torch.cat(crops), channels), mean, std).contiguous()
    return (x, names) if return_names else x


@dataclass
class BundledProbe:
    """The crops of ``bundled_images(n, size, seed=..., ...)``, image for image, made
    batch by batch: memory stays flat in ``n`` (a scan of thousands of crops)."""

    n: int
    size: int | tuple[int, int] = 224
    seed: int = 0
    split: str = "scan"
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    min_scale: float = 0.15
    channels: int = 3

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ProbeError(f"number of images must be at least 1; got {self.n}")

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int = 32) -> Iterator[torch.Tensor]:
        """Normalised N×C×H×W batches of ``batch_size`` (the last may be smaller)."""
        buf: list[torch.Tensor] = []
        for crop, _ in _bundled_crops(self.n, pair(self.size), self.seed, self.split,
                                      self.min_scale):
            buf.append(crop)
            if len(buf) == batch_size:
                yield self._normalised(buf)
                buf = []
        if buf:
            yield self._normalised(buf)

    def _normalised(self, crops: list[torch.Tensor]) -> torch.Tensor:
        return normalize(to_channels(torch.cat(crops), self.channels), self.mean, self.std)


# --------------------------------------------------------------------------- folders


def _wnid_index() -> dict[str, int]:
    try:
        from timm.data import ImageNetInfo

        return {w: i for i, w in enumerate(ImageNetInfo().label_names())}
    except Exception:  # noqa: BLE001 - no ImageNet labels is a plain folder
        return {}


def list_image_files(root: str | Path) -> list[Path]:
    """Image files under ``root`` (any depth), sorted; symbolic links to folders are not
    followed, so a link loop cannot repeat files."""
    root = Path(root)
    if not root.exists():
        raise ProbeError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ProbeError(f"not a folder: {root}")
    files = [Path(d, f) for d, _, names in os.walk(root, followlinks=False) for f in names
             if Path(f).suffix.lower() in IMAGE_SUFFIXES and Path(d, f).is_file()]
    if not files:
        raise ProbeError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
    return sorted(files)


class ImageFiles(torch.utils.data.Dataset):
    """The one image-folder reader: a folder's images as a torch ``Dataset`` of (image, label).

    The folder is flat or has one sub-folder per class; images go through torchvision
    transforms. Labels come from the folder layout only: class folders named by ImageNet
    WordNet ids (``n01440764`` ...) get the standard ImageNet indices (unless
    ``imagenet_labels`` is false), other class folders their sorted rank, and files
    directly in ``root`` -1. An unreadable file gives ``None`` as its image;
    ``ImageFolderProbe`` skips and counts those.

    Args:
        root: the folder (any depth; symbolic links to folders are not followed).
        transform: applied to each PIL image; the PIL image itself when None.
        files: a subset of the folder's files; all of them when None.
        imagenet_labels: give WordNet-id folders the ImageNet indices.

    Example:
        >>> data = ImageFiles("data/val", eval_transform(224))
        >>> x, label = data[0]
    """

    def __init__(self, root: str | Path, transform: Callable | None = None,
                 files: Sequence[Path] | None = None, imagenet_labels: bool = True):
        self.root = Path(root)
        self.transform = transform
        all_files = list_image_files(self.root)
        self.classes = sorted({p.parent.relative_to(self.root).as_posix()
                               for p in all_files} - {"."})
        wnids = _wnid_index() if imagenet_labels else {}
        if self.classes and wnids and all(c in wnids for c in self.classes):
            self.class_index = {c: wnids[c] for c in self.classes}
        else:
            self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.files = list(all_files if files is None else files)
        self.labels = [self.label_of(p) for p in self.files]

    def label_of(self, path: Path) -> int:
        return self.class_index.get(Path(path).parent.relative_to(self.root).as_posix(), -1)

    def subset(self, files: Sequence[Path], transform: Callable | None = None) -> ImageFiles:
        """The same folder restricted to ``files`` (e.g. a train or test split)."""
        out = object.__new__(ImageFiles)
        out.__dict__.update(self.__dict__)
        out.transform = self.transform if transform is None else transform
        out.files = list(files)
        out.labels = [self.label_of(p) for p in out.files]
        return out

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int):
        """File ``i`` as an 8-bit RGB PIL image, or None when it cannot be read or is
        oversized (PIL's decompression-bomb limit: skipped, not decoded)."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(self.files[i]) as im:
                    return to_rgb(ImageOps.exif_transpose(im))  # phone photos upright
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                Image.DecompressionBombError, Image.DecompressionBombWarning):
            return None

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        img = self.load(i)
        x = img if img is None or self.transform is None else self.transform(img)
        return x, self.labels[i]


def eval_transform(size: int | tuple[int, int], crop_fraction: float = 0.875) -> Callable:
    """Resize the shorter side to ``max(size) / crop_fraction`` and take the centre crop
    (the usual ImageNet evaluation transform), as a float tensor in [0, 1]."""
    from torchvision import transforms

    out_h, out_w = pair(size)
    return transforms.Compose([
        transforms.Resize(round(max(out_h, out_w) / crop_fraction), antialias=True),
        transforms.CenterCrop((out_h, out_w)), transforms.ToTensor()])


@dataclass
class ImageFolderProbe:
    """A folder's images, evaluation-transformed, in normalised batches (docs/METHOD.md §1.3).

    A probe set of one's own, read through ``ImageFiles``. Iterating yields (images,
    labels) batches of 32; ``batches(batch_size)`` picks the size. Unreadable files are
    skipped with one warning that counts them (listed in ``skipped``).

    Args:
        root: the folder, flat or one sub-folder per class.
        size: H or (H, W) of the centre crop.
        mean, std: per-channel normalisation (ImageNet's by default).
        n: draws that many files with ``seed``; every file when None.
        seed: the draw.
        crop_fraction: the crop's share of the resized shorter side (``eval_transform``).

    Example:
        >>> probe = ImageFolderProbe("data/val", size=224, n=500)
        >>> pans = find_pans(model, probe)
    """

    root: str | Path
    size: int | tuple[int, int] = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    n: int | None = None
    seed: int = 0
    crop_fraction: float = 0.875
    channels: int = 3  # 1: grey (luminance)
    files: list[Path] = field(init=False)
    labels: list[int] = field(init=False)
    classes: list[str] = field(init=False)
    skipped: list[Path] = field(init=False, default_factory=list)
    upscaled: list[Path] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        data = ImageFiles(self.root, eval_transform(self.size, self.crop_fraction))
        files = data.files
        if self.n is not None and self.n < len(files):
            pick = np.sort(np.random.default_rng(self.seed).choice(len(files), self.n,
                                                                  replace=False))
            files = [files[i] for i in pick]
        self.data = data.subset(files)
        self.files, self.labels, self.classes = self.data.files, self.data.labels, data.classes

    @property
    def has_labels(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, batch_size: int = 32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (images, labels) batches; after the last, unreadable and upscaled files
        and near-duplicate images are reported (``ProbeWarning``), and a set whose images
        are all constant is refused (``ProbeError``): see ``check_probe_set``."""
        self.skipped, self.upscaled = [], []
        thumbs: list[torch.Tensor] = []
        data = self.data.subset(self.files)  # files may have been narrowed after init
        out_h, out_w = pair(self.size)
        xs, ys = [], []
        for i in range(len(data)):
            img = data.load(i)
            if img is None:
                self.skipped.append(data.files[i])
                continue
            if img.height < out_h or img.width < out_w:
                self.upscaled.append(data.files[i])
            xs.append(data.transform(img))
            ys.append(data.labels[i])
            thumbs.append(thumbnail(xs[-1]))
            if len(xs) == batch_size:
                yield self._normalize(xs), torch.tensor(ys)
                xs, ys = [], []
        if xs:
            yield self._normalize(xs), torch.tensor(ys)
        if self.skipped:
            if len(self.skipped) == len(self.files):
                raise ProbeError(f"none of the {len(self.files)} images in {self.root} "
                                 "could be read")
            warnings.warn(f"skipped {len(self.skipped)} unreadable image(s) of "
                          f"{len(self.files)} in {self.root} (corrupt, not an image, or "
                          f"oversized), e.g. {self.skipped[0].name}", ProbeWarning,
                          stacklevel=2)
        if self.upscaled:
            warnings.warn(f"upscaled {len(self.upscaled)} image(s) of {len(self.files)} in "
                          f"{self.root} smaller than {out_h}x{out_w}, e.g. "
                          f"{self.upscaled[0].name}", ProbeWarning, stacklevel=2)
        if thumbs:
            check_probe_set(torch.stack(thumbs), str(self.root))


    def _normalize(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return normalize(to_channels(torch.stack(xs), self.channels), self.mean, self.std)


# --------------------------------------------------------------------------- probe sets

THUMBNAIL = 16  # px: the side of the grey thumbnails that probe sets are compared on
CONSTANT_STD = 1e-3  # an image whose pixels vary less than this (on [0, 1]) is one colour
DUPLICATE_DIFF = 0.01  # mean absolute thumbnail difference (on [0, 1]) of near-duplicates
MAX_COMPARED = 4096  # pairwise comparison over at most this many images (evenly spaced)


def thumbnail(x: torch.Tensor) -> torch.Tensor:
    """A C×H×W image on [0, 1] as a THUMBNAIL² grey vector, and its pixel std (last entry):
    what ``check_probe_set`` compares."""
    grey = x.float().mean(0, keepdim=True)[None]
    small = F.adaptive_avg_pool2d(grey, THUMBNAIL).flatten()
    return torch.cat([small, grey.std().reshape(1)])


def probe_set_issues(thumbs: torch.Tensor) -> dict[str, int]:
    """Counts of what makes a probe set suspect, from ``thumbnail`` rows: images, constant
    ones (a single colour), near-duplicates (mean absolute thumbnail difference below
    ``DUPLICATE_DIFF`` from an earlier image), distinct ones, and how many were compared."""
    n = thumbs.shape[0]
    constant = int((thumbs[:, -1] < CONSTANT_STD).sum())
    idx = torch.linspace(0, n - 1, min(n, MAX_COMPARED)).round().long().unique()
    v = thumbs[idx, :-1].double()
    dup = torch.zeros(len(v), dtype=torch.bool)
    for start in range(0, len(v), 512):
        d = torch.cdist(v[start:start + 512], v, p=1) / v.shape[1]  # (b, m) mean |diff|
        earlier = torch.arange(len(v))[None, :] < torch.arange(start, start + d.shape[0])[:, None]
        dup[start:start + d.shape[0]] = ((d < DUPLICATE_DIFF) & earlier).any(1)
    return {"images": n, "compared": len(v), "constant": constant,
            "duplicates": int(dup.sum()), "distinct": len(v) - int(dup.sum())}


def check_probe_set(thumbs: torch.Tensor, where: str = "the probe set") -> dict[str, int]:
    """Refuse a probe set whose images are all constant (no content: every border contrast
    would be the padding's; unreadable float data reads as black), and warn, with counts,
    when some images are constant or near-duplicates of others (repeated images make a
    side's sign look consistent, so the PAN count comes out too high; docs/METHOD.md §1.3).

    Args:
        thumbs: one ``thumbnail`` row per image.
        where: named in the messages (the folder).

    Returns:
        ``probe_set_issues`` of the set.
    """
    issues = probe_set_issues(thumbs)
    n = issues["images"]
    if issues["constant"] == n:
        raise ProbeError(f"all {n} images in {where} are constant (one colour each: blank, "
                         "or data PIL reads as black, such as NaN floats); a probe set needs "
                         "image content")
    if issues["constant"]:
        warnings.warn(f"{issues['constant']} of {n} images in {where} are constant (one "
                      "colour): they carry no content", ProbeWarning, stacklevel=3)
    if issues["duplicates"]:
        of = (f"of {n}" if issues["compared"] == n
              else f"of {issues['compared']} compared (evenly spaced, of {n})")
        warnings.warn(f"{issues['duplicates']} images {of} in {where} are near-duplicates of "
                      f"another (mean thumbnail difference below {DUPLICATE_DIFF:g}): only "
                      f"{issues['distinct']} distinct; repeated images inflate the PAN count",
                      ProbeWarning, stacklevel=3)
    return issues


def iter_batches(images, batch_size: int = 32, *, labels: bool = False) -> Iterator:
    """Image batches from a tensor, a probe or an iterable: the one way every pass reads images.

    Items may be tensors or (tensor, labels) pairs. A tensor is cut so that no batch holds
    a single image (unless it has only one): a last lone image joins the batch before it,
    since some models cannot run a batch of 1.

    Args:
        images: an N×C×H×W tensor, an object with ``batches(batch_size)``, or an iterable
            of batches.
        batch_size: images per batch, for tensors and probe objects.
        labels: yield (images, labels or None) pairs instead of images.

    Yields:
        N×C×H×W tensors, or (images, labels or None) pairs with ``labels=True``.

    Example:
        >>> [x.shape[0] for x in iter_batches(torch.zeros(65, 3, 8, 8), 32)]
        [32, 33]
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ProbeError(f"images must be N×C×H×W; got shape {tuple(images.shape)}")
        n = images.shape[0]
        starts = list(range(0, n, batch_size))
        if batch_size > 1 and len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        for k, i in enumerate(starts):
            x = images[i:starts[k + 1] if k + 1 < len(starts) else n]
            yield (x, None) if labels else x
        return
    source: Iterable = images.batches(batch_size) if hasattr(images, "batches") else images
    for item in source:
        paired = isinstance(item, (tuple, list))
        x = item[0] if paired else item
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ProbeError("each batch must be an N×C×H×W tensor or a (tensor, labels) pair")
        y = item[1] if paired and len(item) > 1 else None
        yield (x, y) if labels else x

"""Probe images: random crops of the bundled photos, image folders, tensors, in batches."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .models import IMAGENET_MEAN, IMAGENET_STD

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
    """Probe data the study cannot use (missing folder, no readable image, bad size)."""


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
    """(name, H×W×3 uint8) for the offline photos of ``split`` ('scan', 'eval' or 'all')."""
    if split not in ("scan", "eval", "all"):
        raise ProbeError(f"split must be 'scan', 'eval' or 'all'; got {split!r}")
    return tuple((n, _load_photo(n)) for n, s in PHOTO_SPLITS.items() if split in ("all", s))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


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


def bundled_images(n: int, size: int | tuple[int, int] = 224, *, seed: int = 0,
                   split: str = "scan", mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, min_scale: float = 0.15,
                   return_names: bool = False):
    """``n`` random crops (scale, position, flip jitter) of the bundled photos, resized to
    ``size`` and normalised: an N×3×H×W float tensor, deterministic given ``seed``."""
    if n < 1:
        raise ProbeError(f"number of images must be at least 1; got {n}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    photos = bundled_photos(split)
    rng = np.random.default_rng(seed)
    crops, names = [], []
    for _ in range(n):
        name, img = photos[int(rng.integers(len(photos)))]
        top, left, ch, cw = random_crop_box(rng, img.shape[0], img.shape[1], min_scale)
        crop = torch.from_numpy(img[top:top + ch, left:left + cw]).permute(2, 0, 1)[None]
        crop = F.interpolate(crop.float() / 255.0, size=(out_h, out_w), mode="bilinear",
                             antialias=True, align_corners=False)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        crops.append(crop.clamp_(0, 1))
        names.append(name)
    x = normalize(torch.cat(crops), mean, std).contiguous()
    return (x, names) if return_names else x


# --------------------------------------------------------------------------- folders


def _wnid_index() -> dict[str, int]:
    try:
        from timm.data import ImageNetInfo

        return {w: i for i, w in enumerate(ImageNetInfo().label_names())}
    except Exception:  # noqa: BLE001
        return {}


@dataclass
class ImageFolderProbe:
    """Images of a folder, flat or one sub-folder per class, streamed in batches.

    Class folders named by ImageNet WordNet ids (``n01440764`` ...) get the standard
    ImageNet label indices, so accuracy can be measured against a 1000-class model.
    Unreadable files are skipped with one warning that counts them.
    """

    root: str | Path
    size: int | tuple[int, int] = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    n: int | None = None
    seed: int = 0
    crop_fraction: float = 0.875
    files: list[Path] = field(init=False)
    labels: list[int] = field(init=False)
    classes: list[str] = field(init=False)
    skipped: list[Path] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.exists():
            raise ProbeError(f"image folder not found: {root}")
        if not root.is_dir():
            raise ProbeError(f"not a folder: {root}")
        files = sorted(p for p in root.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ProbeError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
        self.classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."})
        wnids = _wnid_index()
        if self.classes and wnids and all(c in wnids for c in self.classes):
            index = {c: wnids[c] for c in self.classes}
        else:
            index = {c: i for i, c in enumerate(self.classes)}
        labels = [index.get(p.parent.relative_to(root).as_posix(), -1) for p in files]
        if self.n is not None and self.n < len(files):
            pick = np.sort(np.random.default_rng(self.seed).choice(len(files), self.n,
                                                                  replace=False))
            files, labels = [files[i] for i in pick], [labels[i] for i in pick]
        self.files, self.labels = files, labels

    @property
    def has_labels(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> torch.Tensor | None:
        from PIL import Image, UnidentifiedImageError

        out_h, out_w = (self.size, self.size) if isinstance(self.size, int) else self.size
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = max(out_h, out_w) / self.crop_fraction / min(h, w)
                im = im.resize((max(out_w, round(w * scale)), max(out_h, round(h * scale))),
                               Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
        top, left = (arr.shape[0] - out_h) // 2, (arr.shape[1] - out_w) // 2
        arr = arr[top:top + out_h, left:left + out_w]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, batch_size: int = 32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = []
        xs, ys = [], []
        for path, label in zip(self.files, self.labels):
            x = self._read(path)
            if x is None:
                self.skipped.append(path)
                continue
            xs.append(x)
            ys.append(label)
            if len(xs) == batch_size:
                yield normalize(torch.stack(xs), self.mean, self.std), torch.tensor(ys)
                xs, ys = [], []
        if xs:
            yield normalize(torch.stack(xs), self.mean, self.std), torch.tensor(ys)
        if self.skipped:
            if len(self.skipped) == len(self.files):
                raise ProbeError(f"none of the {len(self.files)} images in {self.root} "
                                 "could be read")
            warnings.warn(f"skipped {len(self.skipped)} unreadable image(s) of "
                          f"{len(self.files)} in {self.root}, e.g. {self.skipped[0].name}",
                          stacklevel=2)


def iter_batches(images, batch_size: int = 32, *, labels: bool = False) -> Iterator:
    """Image batches from a tensor, a probe object or an iterable of batches.

    Items may be tensors or (tensor, labels) pairs; only the images are yielded, or
    (images, labels or None) pairs with ``labels=True``. A tensor
    is cut so that no batch holds a single image (unless it has only one): a last lone
    image joins the batch before it, since some models cannot run a batch of 1.
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
        pair = isinstance(item, (tuple, list))
        x = item[0] if pair else item
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ProbeError("each batch must be an N×C×H×W tensor or a (tensor, labels) pair")
        y = item[1] if pair and len(item) > 1 else None
        yield (x, y) if labels else x

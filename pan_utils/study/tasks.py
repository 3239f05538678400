"""The two offline tasks of the padding-policy comparison (docs/METHOD.md §8), built from
the bundled photos, and a user's image folder as the content task (paper profile).

- content: which photo a patch comes from (train and test patches from disjoint
  column ranges of each photo);
- generalisation: which photo a patch comes from (as content), pasted on a textured
  canvas; training positions lie in the left half only, and the test has a *similar*
  split (left half) and a *dissimilar* split (right half, never seen in training), the
  protocol of Kayhan & van Gemert (CVPR 2020);
- location: in which quadrant of a canvas a small object sits. The background is a
  texture tile repeated 2×2, and the object's jitter is the same in every quadrant, so
  rolling a canvas by half its size maps one class onto another without changing the
  input distribution. A circular-padded net with global average pooling whose total
  stride divides that half size gives the same logits for both: it is at chance *by
  construction*; only the border (padding) can tell the quadrants apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..engine.probes import (IMAGENET_MEAN, IMAGENET_STD, ImageFiles, ProbeError,
                             bundled_photos, eval_transform, normalize, random_crop_box)
from .nets import TrainingError

TASKS = ("content", "location")
GENERALISATION = "generalisation"
# Fixed normalisation for the synthetic tasks (images in [0, 1]).
TASK_MEAN = (0.5, 0.5, 0.5)
TASK_STD = (0.25, 0.25, 0.25)
CONTENT_PHOTOS = ("astronaut", "coffee", "rocket", "retina", "china", "camera", "chelsea",
                  "immunohistochemistry", "stereo_motorcycle", "flower")
TEXTURE_PHOTOS = ("brick", "gravel", "grass", "moon", "hubble_deep_field")
OBJECT_PHOTOS = ("coins", "clock", "cell", "astronaut", "coffee", "china", "flower")


@dataclass
class TaskData:
    """Train and test splits of one task, already normalised with ``mean``/``std``.

    For the bundled tasks ``x_*`` are N×3×S×S tensors; for an image folder ``train``/
    ``test`` are torchvision datasets and ``x_test``/``y_test`` hold a fixed test sample
    used for scanning."""

    name: str
    classes: list[str]
    image_size: int
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    train: object | None = None
    test: object | None = None
    mean: tuple[float, ...] = TASK_MEAN
    std: tuple[float, ...] = TASK_STD
    info: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train) if self.train is not None else int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return len(self.test) if self.test is not None else int(self.x_test.shape[0])

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)


def _resize(crop: np.ndarray, size: int) -> torch.Tensor:
    """H×W×3 uint8 crop -> 3×size×size float in [0, 1] (PIL bilinear, antialiased when
    shrinking: far cheaper per call than torch for thousands of tiny images)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    """Photo downsampled (antialiased) so that its longer side is at most ``max_side``:
    small synthetic images need no megapixels, and resizing huge crops is slow."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))


def _photos(names: Sequence, max_side: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Bundled photos by name; (name, H×W×3 uint8) pairs pass through (own images)."""
    own = [(n[0], np.asarray(n[1], dtype=np.uint8)) for n in names if not isinstance(n, str)]
    if own:
        if len(own) != len(names):
            raise ProbeError("give either photo names or (name, image) pairs, not both")
        return [(n, im if max_side is None else _shrink(im, max_side)) for n, im in own]
    photos = dict(bundled_photos("all"))
    missing = [n for n in names if n not in photos]
    if missing:
        raise ProbeError(f"unknown bundled photo(s): {', '.join(missing)}")
    return [(n, photos[n] if max_side is None else _shrink(photos[n], max_side))
            for n in names]


def content_regions(width: int, train_frac: float = 0.7) -> tuple[tuple[int, int], tuple[int, int]]:
    """Column ranges [start, stop) of a photo used for train and for test: disjoint."""
    cut = int(round(width * train_frac))
    return (0, cut), (cut, width)


def _content_split(photos, n: int, size: int, cols: str, rng: np.random.Generator,
                   train_frac: float, min_crop: int, max_crop: int):
    xs, ys = [], []
    for i in range(n):
        label = i % len(photos)
        img = photos[label][1]
        tr, te = content_regions(img.shape[1], train_frac)
        c0, c1 = tr if cols == "train" else te
        region = img[:, c0:c1]
        h, w = region.shape[:2]
        side = int(rng.integers(min(min_crop, h, w), min(max_crop, h, w) + 1))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        patch = _resize(region[top:top + side, left:left + side], size)
        if rng.random() < 0.5:
            patch = patch.flip(-1)
        xs.append(patch)
        ys.append(label)
    order = rng.permutation(n)
    x = torch.stack(xs)[torch.from_numpy(order)]
    y = torch.tensor(ys, dtype=torch.long)[torch.from_numpy(order)]
    return normalize(x, TASK_MEAN, TASK_STD), y


def content_task(n_train: int = 2048, n_test: int = 512, *, size: int = 32, seed: int = 0,
                 photos: Sequence[str] = CONTENT_PHOTOS, train_frac: float = 0.7,
                 min_crop: int = 24, max_crop: int = 96, photo_side: int | None = 384
                 ) -> TaskData:
    """Which photo a patch comes from. Square crops of random side in [min_crop,
    max_crop] px of the photo downsampled to ``photo_side`` px (longer side), resized to
    ``size``, random horizontal flips; train crops come from the
    left ``train_frac`` of each photo's columns and test crops from the rest, so no test
    pixel was ever seen in training. Balanced classes; deterministic given ``seed``."""
    ph = _photos(photos, photo_side)
    rng = np.random.default_rng([seed, 1])
    x_tr, y_tr = _content_split(ph, n_train, size, "train", rng, train_frac, min_crop, max_crop)
    rng = np.random.default_rng([seed, 2])
    x_te, y_te = _content_split(ph, n_test, size, "test", rng, train_frac, min_crop, max_crop)
    return TaskData("content", [n for n, _ in ph], size, x_tr, y_tr, x_te, y_te,
                    info={"train_frac": train_frac})


LOCATION_CLASSES = ["top-left", "top-right", "bottom-left", "bottom-right"]


def _location_split(textures, objects, n: int, size: int, obj: int,
                    rng: np.random.Generator, background_contrast: float):
    half = size // 2
    xs, ys = [], []
    for i in range(n):
        label = i % 4
        _, tex = textures[int(rng.integers(len(textures)))]
        top, left, ch, cw = random_crop_box(rng, tex.shape[0], tex.shape[1], 0.02)
        tile = _resize(tex[top:top + ch, left:left + cw], half)
        tile = tile.mean() + background_contrast * (tile - tile.mean())
        canvas = tile.repeat(1, 2, 2)  # 2×2 periodic: invariant to a half-canvas roll
        _, im = objects[int(rng.integers(len(objects)))]
        top, left, ch, cw = random_crop_box(rng, im.shape[0], im.shape[1], 0.05)
        patch = _resize(im[top:top + ch, left:left + cw], obj)
        patch[:, 0, :] = patch[:, -1, :] = 1.0  # white frame: a salient object
        patch[:, :, 0] = patch[:, :, -1] = 1.0
        oy = int(rng.integers(0, half - obj + 1))
        ox = int(rng.integers(0, half - obj + 1))
        qy, qx = divmod(label, 2)
        y0, x0 = qy * half + oy, qx * half + ox
        canvas[:, y0:y0 + obj, x0:x0 + obj] = patch
        xs.append(canvas.clamp_(0, 1))
        ys.append(label)
    order = torch.from_numpy(rng.permutation(n))
    return normalize(torch.stack(xs), TASK_MEAN, TASK_STD)[order], torch.tensor(ys, dtype=torch.long)[order]


def location_task(n_train: int = 2048, n_test: int = 512, *, size: int = 40, obj: int = 12,
                  seed: int = 0, textures: Sequence[str] = TEXTURE_PHOTOS,
                  objects: Sequence[str] = OBJECT_PHOTOS,
                  background_contrast: float = 0.5) -> TaskData:
    """In which quadrant of a ``size``² canvas an ``obj``² framed photo patch sits.

    The background is a texture tile of ``size/2`` repeated 2×2, and the object's offset
    inside its quadrant has the same distribution in all four: a roll by ``size/2``
    permutes the classes and leaves the input distribution unchanged. So a circular
    net whose total stride divides ``size/2`` scores exactly chance in expectation,
    while a net that sees the canvas border can solve the task."""
    if size % 2 or obj > size // 2:
        raise TrainingError(f"size must be even and obj at most size/2; got {size}, {obj}")
    tex, objs = _photos(textures, 160), _photos(objects, 96)
    rng = np.random.default_rng([seed, 3])
    x_tr, y_tr = _location_split(tex, objs, n_train, size, obj, rng, background_contrast)
    rng = np.random.default_rng([seed, 4])
    x_te, y_te = _location_split(tex, objs, n_test, size, obj, rng, background_contrast)
    return TaskData("location", list(LOCATION_CLASSES), size, x_tr, y_tr, x_te, y_te,
                    info={"object": obj})


def generalisation_regions(size: int, obj: int) -> dict[str, tuple[int, int]]:
    """Ranges [lo, hi] (inclusive) of a pasted patch's left column ``x0`` per split: the
    patch (``obj`` px wide) lies wholly in the left half of the canvas for 'train' and
    'similar', wholly in the right half for 'dissimilar'. Rows are free: y0 in [0, size-obj]."""
    half = size // 2
    return {"train": (0, half - obj), "similar": (0, half - obj),
            "dissimilar": (half, size - obj)}


def _generalisation_split(photos, textures, n: int, size: int, obj: int, region: str,
                          cols: str, rng: np.random.Generator, train_frac: float,
                          min_crop: int, max_crop: int, background_contrast: float):
    lo, hi = generalisation_regions(size, obj)[region]
    xs, ys, pos = [], [], []
    for i in range(n):
        label = i % len(photos)
        _, tex = textures[int(rng.integers(len(textures)))]
        top, left, ch, cw = random_crop_box(rng, tex.shape[0], tex.shape[1], 0.05)
        canvas = _resize(tex[top:top + ch, left:left + cw], size)
        canvas = canvas.mean() + background_contrast * (canvas - canvas.mean())
        img = photos[label][1]
        c0, c1 = content_regions(img.shape[1], train_frac)[0 if cols == "train" else 1]
        part = img[:, c0:c1]
        h, w = part.shape[:2]
        side = int(rng.integers(min(min_crop, h, w), min(max_crop, h, w) + 1))
        t = int(rng.integers(0, h - side + 1))
        l = int(rng.integers(0, w - side + 1))
        patch = _resize(part[t:t + side, l:l + side], obj)
        if rng.random() < 0.5:
            patch = patch.flip(-1)
        y0 = int(rng.integers(0, size - obj + 1))
        x0 = lo + int(rng.integers(0, hi - lo + 1))  # same draws for every region
        canvas[:, y0:y0 + obj, x0:x0 + obj] = patch
        xs.append(canvas.clamp_(0, 1))
        ys.append(label)
        pos.append((y0, x0))
    order = rng.permutation(n)
    x = normalize(torch.stack(xs), TASK_MEAN, TASK_STD)[torch.from_numpy(order)]
    y = torch.tensor(ys, dtype=torch.long)[torch.from_numpy(order)]
    return x, y, np.asarray(pos, dtype=int).reshape(-1, 2)[order]


def generalisation_task(n_train: int = 2048, n_test: int = 512, *, size: int = 48,
                        obj: int = 16, seed: int = 0, photos: Sequence = CONTENT_PHOTOS,
                        textures: Sequence[str] = TEXTURE_PHOTOS, train_frac: float = 0.7,
                        min_crop: int = 24, max_crop: int = 96, photo_side: int | None = 384,
                        background_contrast: float = 0.5) -> TaskData:
    """Kayhan & van Gemert's similar/dissimilar protocol on the content classes.

    Each image is a texture canvas (``size``², contrast scaled by
    ``background_contrast``) with an ``obj``² crop of one of the content photos pasted
    on it; the label is the photo. Training patches sit wholly in the left half of the
    canvas; the test has a *similar* split at the same positions (``x_test``/``y_test``)
    and a *dissimilar* split wholly in the right half, positions never seen in training
    (``info['dissimilar']``: a (x, y) pair). Patch pixels are disjoint between train and
    test as in ``content_task`` (left ``train_frac`` of each photo's columns for training,
    the rest for both test splits). The two test splits are drawn from the same stream:
    image i of the dissimilar split is image i of the similar one with its patch moved
    right by ``size/2``, so they differ in position only. ``info['positions']`` holds each image's (y0, x0)
    per split and ``info['regions']`` the x0 ranges of ``generalisation_regions``."""
    if size % 2 or obj > size // 2:
        raise TrainingError(f"size must be even and obj at most size/2; got {size}, {obj}")
    ph, tex = _photos(photos, photo_side), _photos(textures, 160)
    args = (train_frac, min_crop, max_crop, background_contrast)
    x_tr, y_tr, p_tr = _generalisation_split(ph, tex, n_train, size, obj, "train", "train",
                                             np.random.default_rng([seed, 5]), *args)
    x_si, y_si, p_si = _generalisation_split(ph, tex, n_test, size, obj, "similar", "test",
                                             np.random.default_rng([seed, 6]), *args)
    x_di, y_di, p_di = _generalisation_split(ph, tex, n_test, size, obj, "dissimilar", "test",
                                             np.random.default_rng([seed, 6]), *args)
    return TaskData(GENERALISATION, [n for n, _ in ph], size, x_tr, y_tr, x_si, y_si,
                    info={"object": obj, "dissimilar": (x_di, y_di),
                          "positions": {"train": p_tr, "similar": p_si, "dissimilar": p_di},
                          "regions": generalisation_regions(size, obj)})


def dissimilar_split(data: TaskData) -> TaskData:
    """The generalisation task with its dissimilar split as the test split."""
    import dataclasses

    x, y = data.info["dissimilar"]
    return dataclasses.replace(data, x_test=x, y_test=y)


def imagefolder_task(root: str | Path, *, size: int = 32, test_frac: float = 0.2,
                     seed: int = 0, n_scan: int = 256,
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> TaskData:
    """A user's image folder (``root/class/*.jpg``) as the content task (paper profile).

    ``root/train`` and ``root/val`` (or ``test``) are used when present; otherwise a
    seeded ``test_frac`` of each class's files is held out, so train and test never
    share a file. Labels are the classes' sorted ranks. Train images get random resized
    crops and flips; test images are resized and centre-cropped."""
    from torchvision import transforms

    root = Path(root)
    if not root.is_dir():
        raise ProbeError(f"image folder not found: {root}")
    norm = transforms.Normalize(mean, std)
    tf_train = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    tf_test = transforms.Compose([eval_transform(size, crop_fraction=1.0), norm])
    split_test = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and split_test is not None:
        train = ImageFiles(root / "train", tf_train, imagenet_labels=False)
        test = ImageFiles(split_test, tf_test, imagenet_labels=False)
    else:
        full = ImageFiles(root, tf_train, imagenet_labels=False)
        if not full.classes:
            raise ProbeError(f"no usable image folder at {root}: it needs one sub-folder "
                             "per class")
        rng = np.random.default_rng(seed)
        labels = np.asarray(full.labels)
        test_idx: list[int] = []
        for c in np.unique(labels[labels >= 0]):
            idx = np.flatnonzero(labels == c)
            k = max(1, int(round(len(idx) * test_frac))) if len(idx) > 1 else 0
            test_idx.extend(rng.choice(idx, size=k, replace=False).tolist())
        held = set(test_idx)
        train = full.subset([f for i, f in enumerate(full.files)
                             if i not in held and labels[i] >= 0])
        test = full.subset([full.files[i] for i in sorted(held)], tf_test)
    if len(train) == 0 or len(test) == 0:
        raise ProbeError(f"{root}: need images for both training and testing")
    pairs = [test[i] for i in range(min(n_scan, len(test)))]
    x_test = torch.stack([p[0] for p in pairs])
    y_test = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return TaskData("content", list(train.classes), size, x_test=x_test, y_test=y_test,
                    train=train, test=test, mean=tuple(mean), std=tuple(std),
                    info={"root": str(root)})

"""Training small CNNs from scratch under each padding policy (DESIGN 4.8).

The comparison needs one architecture whose only difference between runs is what its
convolutions do at the border: zeros, reflect, replicate, circular, or no padding at
all ('valid'). Two offline tasks built from the bundled photos separate *what* a net
sees from *where* it sees it:

- content: which photo a patch comes from (train and test patches from disjoint
  column ranges of each photo);
- location: in which quadrant of a canvas a small object sits. The background is a
  texture tile repeated 2×2, and the object's jitter is the same in every quadrant, so
  rolling a canvas by half its size maps one class onto another without changing the
  input distribution. A circular-padded net with global average pooling whose total
  stride divides that half size gives the same logits for both: it is at chance *by
  construction*; only the border (padding) can tell the quadrants apart.

Then the trained weights are scanned with the same engine and rule as notebook 01.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .padding import discover
from .probes import ProbeError, bundled_photos, random_crop_box
from .progress import progress_bar
from .scan import ScanError, decide_pans, find_pans

POLICIES = ("zeros", "reflect", "replicate", "circular", "valid")
TASKS = ("content", "location")
# Fixed normalisation for the synthetic tasks (images in [0, 1]).
TASK_MEAN = (0.5, 0.5, 0.5)
TASK_STD = (0.25, 0.25, 0.25)
CONTENT_PHOTOS = ("astronaut", "coffee", "rocket", "retina", "china", "camera", "chelsea",
                  "immunohistochemistry", "stereo_motorcycle", "flower")
TEXTURE_PHOTOS = ("brick", "gravel", "grass", "moon", "hubble_deep_field")
OBJECT_PHOTOS = ("coins", "clock", "cell", "astronaut", "coffee", "china", "flower")


class TrainingError(ValueError):
    """A training setting the study cannot use (unknown policy or task, too small input)."""


# --------------------------------------------------------------------------- models


def _conv(cin: int, cout: int, k: int, stride: int, padding: str) -> nn.Conv2d:
    if padding not in POLICIES:
        raise TrainingError(f"padding must be one of {', '.join(POLICIES)}; got {padding!r}")
    if padding == "valid" or k == 1:
        return nn.Conv2d(cin, cout, k, stride, 0, bias=False)
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False, padding_mode=padding)


class BasicBlock(nn.Module):
    """CIFAR ResNet block. With 'valid' padding each 3×3 conv trims one pixel per side,
    so the shortcut crops the identity to the window centres the residual path used."""

    def __init__(self, cin: int, cout: int, stride: int, padding: str, residual: bool = True):
        super().__init__()
        self.valid = padding == "valid"
        self.stride = stride
        self.residual = residual
        self.conv1 = _conv(cin, cout, 3, stride, padding)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3, 1, padding)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or cin != cout):
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def _identity(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        if self.valid:
            # output (i, j) of conv2 is centred on conv1 output (i+1, j+1), i.e. on input
            # pixel ((i+1)*s + 1): crop there, then the 1×1 stride-s projection aligns.
            off = self.stride + 1
            h, w = out_hw
            span_h, span_w = (h - 1) * self.stride + 1, (w - 1) * self.stride + 1
            x = x[:, :, off:off + span_h, off:off + span_w]
            if isinstance(self.shortcut, nn.Identity) and self.stride > 1:
                x = x[:, :, ::self.stride, ::self.stride]
            if not isinstance(self.shortcut, nn.Identity):
                # the projection's own stride samples the cropped grid
                return self.shortcut(x)
            return x
        return self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self._identity(x, tuple(out.shape[-2:]))
        return F.relu(out)


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stem, three stages (strides 1, 2, 2) of ``depth`` blocks
    with widths w, 2w, 4w, global average pooling, linear. ``residual=False`` gives the
    VGG-style plain net of the same shape. Total stride 4."""

    total_stride = 4

    def __init__(self, num_classes: int, *, width: int = 16, depth: int = 1,
                 padding: str = "zeros", residual: bool = True, in_channels: int = 3):
        super().__init__()
        if padding not in POLICIES:
            raise TrainingError(f"padding must be one of {', '.join(POLICIES)}; got {padding!r}")
        if width < 1 or depth < 1:
            raise TrainingError(f"width and depth must be positive; got {width}, {depth}")
        self.padding = padding
        self.stem = nn.Sequential(_conv(in_channels, width, 3, 1, padding),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, stride in enumerate((1, 2, 2)):
            cout = width * 2 ** i
            blocks = [BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1,
                                 padding, residual) for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((-2, -1)))


def feature_size(size: int, depth: int, padding: str) -> int:
    """Side of the final feature map for a ``size``×``size`` input."""
    if padding != "valid":
        return math.ceil(math.ceil(size / 2) / 2)
    s = size - 2  # stem
    for stride in (1, 2, 2):
        for j in range(depth):
            st = stride if j == 0 else 1
            s = (s - 3) // st + 1  # conv1
            s = s - 2  # conv2
    return s


def min_valid_size(depth: int) -> int:
    """Smallest input side for which a 'valid' net of ``depth`` still has a feature map."""
    size = 8
    while feature_size(size, depth, "valid") < 1:
        size += 1
    return size


def build_model(policy: str, num_classes: int, *, width: int = 16, depth: int = 1,
                residual: bool = True, image_size: int | None = None, seed: int = 0
                ) -> SmallResNet:
    """The study's small CNN for one padding policy, initialised from ``seed``.

    Raises TrainingError when a 'valid' net would have no output for ``image_size``."""
    if image_size is not None and feature_size(image_size, depth, policy) < 1:
        raise TrainingError(f"a valid-padded net of depth {depth} needs inputs of at least "
                            f"{min_valid_size(depth)} px; got {image_size}")
    torch.manual_seed(seed)
    return SmallResNet(num_classes, width=width, depth=depth, padding=policy,
                       residual=residual)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- data


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


def _norm(x: torch.Tensor, mean=TASK_MEAN, std=TASK_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


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
    return _norm(x), y


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
    return _norm(torch.stack(xs))[order], torch.tensor(ys, dtype=torch.long)[order]


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


def imagefolder_task(root: str | Path, *, size: int = 32, test_frac: float = 0.2,
                     seed: int = 0, n_scan: int = 256,
                     mean: Sequence[float] = (0.485, 0.456, 0.406),
                     std: Sequence[float] = (0.229, 0.224, 0.225)) -> TaskData:
    """A user's ImageFolder (``root/class/*.jpg``) as the content task (paper profile).

    ``root/train`` and ``root/val`` (or ``test``) are used when present; otherwise a
    seeded ``test_frac`` of each folder's images is held out. Train images get random
    resized crops and flips; test images are resized and centre-cropped."""
    from torch.utils.data import Subset
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise ProbeError(f"image folder not found: {root}")
    tf_train = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std)])
    tf_test = transforms.Compose([
        transforms.Resize(size, antialias=True), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(mean, std)])
    split_test = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    try:
        if (root / "train").is_dir() and split_test is not None:
            train = datasets.ImageFolder(root / "train", transform=tf_train)
            test = datasets.ImageFolder(split_test, transform=tf_test)
            classes = train.classes
        else:
            full_train = datasets.ImageFolder(root, transform=tf_train)
            full_test = datasets.ImageFolder(root, transform=tf_test)
            rng = np.random.default_rng(seed)
            targets = np.asarray(full_train.targets)
            test_idx = []
            for c in np.unique(targets):
                idx = np.flatnonzero(targets == c)
                k = max(1, int(round(len(idx) * test_frac))) if len(idx) > 1 else 0
                test_idx.extend(rng.choice(idx, size=k, replace=False).tolist())
            test_set = set(test_idx)
            train_idx = [i for i in range(len(targets)) if i not in test_set]
            train, test = Subset(full_train, train_idx), Subset(full_test, sorted(test_set))
            classes = full_train.classes
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images
        raise ProbeError(f"no usable ImageFolder at {root}: {e}") from e
    if len(train) == 0 or len(test) == 0:
        raise ProbeError(f"{root}: need images for both training and testing")
    k = min(n_scan, len(test))
    pairs = [test[i] for i in range(k)]
    x_test = torch.stack([p[0] for p in pairs])
    y_test = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return TaskData("content", list(classes), size, x_test=x_test, y_test=y_test,
                    train=train, test=test, mean=tuple(mean), std=tuple(std),
                    info={"root": str(root)})


# --------------------------------------------------------------------------- training


def _train_batches(data: TaskData, batch_size: int, gen: torch.Generator
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if data.train is None:
        perm = torch.randperm(data.n_train, generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            yield data.x_train[idx], data.y_train[idx]
    else:
        from torch.utils.data import DataLoader

        yield from DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=gen,
                              num_workers=0, drop_last=False)


def _test_batches(data: TaskData, batch_size: int):
    if data.test is None:
        for i in range(0, data.n_test, batch_size):
            yield data.x_test[i:i + batch_size], data.y_test[i:i + batch_size]
    else:
        from torch.utils.data import DataLoader

        yield from DataLoader(data.test, batch_size=batch_size, shuffle=False, num_workers=0)


def evaluate(model: nn.Module, data: TaskData, *, batch_size: int = 256,
             device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy on the task's test split (model in eval mode, state restored)."""
    was = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.inference_mode():
            for x, y in _test_batches(data, batch_size):
                x = x.to(device).contiguous(memory_format=torch.channels_last)
                correct += int((model(x).argmax(1).cpu() == y).sum())
                total += int(y.numel())
    finally:
        model.train(was)
    return correct / max(total, 1)


def train_model(model: nn.Module, data: TaskData, *, epochs: int = 4, batch_size: int = 128,
                lr: float = 3e-3, weight_decay: float = 5e-4, seed: int = 0,
                device: str | torch.device = "cpu", max_steps: int | None = None,
                progress: bool = True, desc: str = "train") -> dict:
    """AdamW with a one-cycle schedule; deterministic data order from ``seed``.

    Returns {'train_seconds', 'steps', 'final_loss'}; the model is left in eval mode."""
    device = torch.device(device)
    model.to(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps_per_epoch = math.ceil(data.n_train / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps,
                                                                    epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1),
                                                pct_start=0.25)
    model.train()
    step, loss_v = 0, float("nan")
    t0 = time.perf_counter()
    bar = progress_bar(total=total, desc=desc, unit="step", enabled=progress, leave=False)
    # Training stays in NCHW: oneDNN's channels-last weight gradient for 1x1 convolutions
    # (torch 2.15, AVX2) can deadlock in its OpenMP barrier (about one run in three on the
    # 2-core CI machine); in NCHW it never hung in 16 runs and is only ~1.4x slower.
    try:
        while step < total:
            for x, y in _train_batches(data, batch_size, gen):
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_v = float(loss.detach())
                bar.update(1)
                if step >= total:
                    break
    finally:
        bar.close()
        model.eval()
    return {"train_seconds": time.perf_counter() - t0, "steps": step, "final_loss": loss_v}


def candidate_channels(model: nn.Module, image_size: int) -> int:
    """Output channels of convolutions that read padding at ``image_size`` (DESIGN 4.1)."""
    return sum(s.module.out_channels for s in discover(model, image_size) if s.is_candidate)


def top_border_channels(scores: pd.DataFrame, *, consistency: float = 0.95, n: int = 6
                        ) -> pd.DataFrame:
    """The ``n`` channels with the largest consistent border contrast |d| (any side), in
    the PAN table's format: what the rule looked at when nothing passed tau."""
    nat = scores[(scores["mode"] == "native") & scores["applicable"]
                 & (scores["consistency"] >= consistency)].copy()
    if nat.empty:
        return pd.DataFrame(columns=["layer", "channel", "sides", "polarity", "score"])
    nat["score"] = nat["d"].abs()
    best = nat.sort_values("score", ascending=False).drop_duplicates(["layer", "channel"])
    best = best.head(n)
    return pd.DataFrame({"layer": best["layer"].to_numpy(),
                         "channel": best["channel"].astype(int).to_numpy(),
                         "sides": best["side"].to_numpy(),
                         "polarity": np.where(best["d"] > 0, "+", "-"),
                         "score": best["score"].to_numpy()})


def scan_trained(model: nn.Module, images: torch.Tensor, *, tau: float = 3.0,
                 consistency: float = 0.95, batch_size: int = 128, progress: bool = False
                 ) -> tuple[pd.DataFrame, dict]:
    """PANs of a trained net with notebook 01's rule (circular null included).

    Returns (pans, counts): counts has pans, candidates, pan_fraction (0 when there are
    no candidates), pans_without_null (the rule without the null: for a circular net the
    null *is* the model, so this is the only count that can be non-zero), pans_half_tau
    (the rule at tau/2, a sensitivity check) and max_abs_d (the largest consistent border
    contrast of any candidate channel; 0 without candidates). When no channel is a PAN,
    the returned table holds the top border-contrast channels instead, with ``is_pan``
    False, so their maps can still be shown."""
    model.eval()
    size = int(images.shape[-1])
    n_cand = candidate_channels(model, size)
    none = {"pans": 0, "candidates": 0, "pan_fraction": 0.0, "pans_without_null": 0,
            "pans_half_tau": 0, "max_abs_d": 0.0}
    empty = pd.DataFrame(columns=["layer", "channel", "sides", "polarity", "score", "is_pan"])
    if n_cand == 0:
        return empty, none
    try:
        pans, scores = find_pans(model, images, tau=tau, consistency=consistency,
                                 batch_size=batch_size, progress=progress, return_scores=True)
    except ScanError:
        return empty, none
    raw = decide_pans(scores, tau=tau, consistency=consistency, null_mode=None)
    half = decide_pans(scores, tau=tau / 2, consistency=consistency)
    top = top_border_channels(scores, consistency=consistency)
    counts = {"pans": len(pans), "candidates": n_cand, "pan_fraction": len(pans) / n_cand,
              "pans_without_null": len(raw), "pans_half_tau": len(half),
              "max_abs_d": float(top["score"].max()) if len(top) else 0.0}
    table = pans.assign(is_pan=True) if len(pans) else top.assign(is_pan=False)
    return table, counts


def run_one(data: TaskData, policy: str, seed: int, *, width: int = 16, depth: int = 1,
            epochs: int = 4, batch_size: int = 128, lr: float = 3e-3, n_scan: int = 256,
            tau: float = 3.0, consistency: float = 0.95, device: str = "cpu",
            max_steps: int | None = None, progress: bool = True
            ) -> tuple[dict, nn.Module, pd.DataFrame]:
    """Train one (task, policy, seed), test it, scan it: (row, model, pans)."""
    model = build_model(policy, len(data.classes), width=width, depth=depth,
                        image_size=data.image_size, seed=seed)
    fit = train_model(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      device=device, max_steps=max_steps, progress=progress,
                      desc=f"{data.name}/{policy}/s{seed}")
    acc = evaluate(model, data, device=device)
    scan_x = data.x_test[:n_scan].to(device)
    pans, counts = scan_trained(model, scan_x, tau=tau, consistency=consistency)
    row = {"task": data.name, "policy": policy, "seed": seed, "test_accuracy": acc,
           "chance": data.chance, **counts, "train_seconds": fit["train_seconds"],
           "epochs": epochs, "steps": fit["steps"], "n_train": data.n_train,
           "n_test": data.n_test, "n_scan": int(scan_x.shape[0]),
           "image_size": data.image_size, "width": width, "depth": depth,
           "parameters": n_parameters(model), "final_loss": fit["final_loss"]}
    return row, model, pans


def run_comparison(tasks: Sequence[TaskData], policies: Sequence[str] = POLICIES,
                   seeds: Sequence[int] = (0, 1, 2), *, keep: tuple[str, int] = ("zeros", 0),
                   progress: bool = True, **kw) -> tuple[pd.DataFrame, dict, dict]:
    """Every task × policy × seed. Returns (table, kept models, their PANs), keeping the
    models of policy/seed ``keep`` per task (for the activation-map figure)."""
    rows, models, pans_kept = [], {}, {}
    jobs = [(t, p, s) for t in tasks for p in policies for s in seeds]
    for data, policy, seed in progress_bar(jobs, desc="trainings", enabled=progress):
        row, model, pans = run_one(data, policy, seed, progress=False, **kw)
        rows.append(row)
        if (policy, seed) == tuple(keep):
            models[data.name], pans_kept[data.name] = model, pans
    return pd.DataFrame(rows), models, pans_kept


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per task × policy (std 0 with one seed)."""
    g = table.groupby(["task", "policy"], sort=False)
    out = g.agg(seeds=("seed", "nunique"), accuracy_mean=("test_accuracy", "mean"),
                accuracy_std=("test_accuracy", "std"), chance=("chance", "first"),
                pans_mean=("pans", "mean"), candidates=("candidates", "first"),
                pan_fraction_mean=("pan_fraction", "mean"),
                pan_fraction_std=("pan_fraction", "std"),
                pans_without_null_mean=("pans_without_null", "mean"),
                pans_half_tau_mean=("pans_half_tau", "mean"),
                max_abs_d_mean=("max_abs_d", "mean"),
                train_seconds_mean=("train_seconds", "mean")).reset_index()
    return out.fillna({"accuracy_std": 0.0, "pan_fraction_std": 0.0})


def pan_mean_maps(model: nn.Module, images: torch.Tensor, pans: pd.DataFrame, *,
                  n: int = 6, batch_size: int = 128) -> pd.DataFrame:
    """Mean activation map over ``images`` of the ``n`` highest-scoring PANs (conv
    output, BatchNorm sign folded in as in the scan), one row per (pan, y, x)."""
    from .identification import maps_table, record_maps

    cols = ["pan", "layer", "channel", "sides", "score", "is_pan", "y", "x", "activation"]
    if pans is None or len(pans) == 0:
        return pd.DataFrame(columns=cols)
    top = pans.sort_values("score", ascending=False).head(n).reset_index(drop=True)
    top = top.assign(pan=top.index, channel=top["channel"].astype(int),
                     is_pan=top["is_pan"].astype(bool) if "is_pan" in top else True)
    sites = {s.name: s for s in discover(model, int(images.shape[-1]))}
    layers = {layer: g["channel"].tolist() for layer, g in top.groupby("layer", sort=False)}
    signs = {layer: [float(sites[layer].bn_sign[c]) if sites[layer].bn_sign is not None
                     else 1.0 for c in chans] for layer, chans in layers.items()}
    maps = record_maps(model, layers, images, batch_size=batch_size, signs=signs)
    frames = [maps_table(maps[layer][[chans.index(c) for c in g["channel"]]].cpu(),
                         g[["pan", "layer", "channel", "sides", "score", "is_pan"]])
              for layer, g in top.groupby("layer", sort=False)
              for chans in [layers[layer]]]
    out = pd.concat(frames, ignore_index=True).rename(
        columns={"row": "y", "col": "x", "value": "activation"})
    return out.sort_values(["pan", "y", "x"], ignore_index=True)[cols]

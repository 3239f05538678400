"""The small CNN of the padding-policy comparison (docs/METHOD.md §8): a CIFAR-style
ResNet whose only difference between runs is what its convolutions do at the border."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POLICIES = ("zeros", "reflect", "replicate", "circular", "valid")


class TrainingError(ValueError):
    """A training setting the study cannot use (unknown policy or task, too small input)."""


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

"""Border geometry: the one spelling of the sides, and which output positions read padding.

Everything here is arithmetic on a convolution's kernel, stride, dilation and padding
(docs/METHOD.md §2); nothing runs a model.
"""

from __future__ import annotations

from timm.layers.padding import get_same_padding

# The one spelling of the sides: letters in tables and PAN types ("T", "LR", "TBLR"), and
# words in column names (band_top, d_left, ...).
SIDES = ("T", "B", "L", "R")
CORNERS = ("TL", "TR", "BL", "BR")
REGIONS = SIDES + CORNERS
SIDE_NAMES = {"T": "top", "B": "bottom", "L": "left", "R": "right"}
VERTICAL = ("T", "B")  # sides read by kernel rows; L and R are read by kernel columns


def side_column(prefix: str, side: str) -> str:
    """The column of ``side`` in a table: ``side_column("band", "T") == "band_top"``."""
    return f"{prefix}_{SIDE_NAMES[side]}"


def pair(v) -> tuple[int, int]:
    """``(v, v)`` for an int, else the first two entries as ints (torch's size arguments)."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF-SAME padding (before, after) of one dimension; the odd pixel goes after.

    The total is timm's ``get_same_padding``, the arithmetic its ``Conv2dSame`` uses.
    """
    total = int(get_same_padding(size, kernel, stride, dilation))
    return total // 2, total - total // 2


def band_counts(size: int, out: int, before: int, k: int, s: int, d: int) -> tuple[int, int]:
    """Leading and trailing outputs of one dimension that read padding (docs/METHOD.md §2.4).

    Output position i reads input positions ``i*s - before + j*d`` for j in 0..k-1; it is
    in the first band when its window starts before 0, in the last when it ends after
    size-1.

    Args:
        size: input length, before padding.
        out: output length.
        before: padding before position 0.
        k, s, d: kernel size, stride and dilation.

    Returns:
        (first, last) band widths.

    Example:
        >>> band_counts(size=10, out=10, before=2, k=5, s=1, d=1)
        (2, 2)
    """
    first = min(out, -(-before // s))  # i*s < before  <=>  i < ceil(before/s)
    last_inside = before + size - 1 - (k - 1) * d  # i*s <= this keeps the window inside
    n_inside_end = 0 if last_inside < 0 else min(out, last_inside // s + 1)
    return first, out - n_inside_end

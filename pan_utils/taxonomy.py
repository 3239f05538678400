"""PAN types from the sides they detect (DESIGN 4.5)."""

from __future__ import annotations

TYPE_ORDER = ("single side", "opposite pair", "adjacent pair", "three sides", "full frame",
              "corner only")


def pan_type(sides: str, corners: str = "") -> str:
    """Type of a PAN from its significant sides ('T', 'LR', 'TBLR', ...) and corners."""
    n = len(sides)
    if n == 0:
        return "corner only" if corners else "none"
    if n == 1:
        return "single side"
    if n == 2:
        return "opposite pair" if set(sides) in ({"T", "B"}, {"L", "R"}) else "adjacent pair"
    return "three sides" if n == 3 else "full frame"

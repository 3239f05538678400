"""PAN types: what the set of significant sides and corners of a channel makes it
(docs/METHOD.md §6)."""

from __future__ import annotations

TYPE_ORDER = ("single side", "opposite pair", "adjacent pair", "three sides", "full frame",
              "corner only")
POLARITIES = ("+", "-", "mixed")
OPPOSITE_PAIRS = ({"T", "B"}, {"L", "R"})


def pan_type(sides: str, corners: str = "") -> str:
    """The type of a PAN from its significant sides and corners.

    Args:
        sides: significant sides in ``geometry.SIDES`` letters, e.g. ``"T"``, ``"LR"``, ``"TBLR"``.
        corners: significant corners, comma-separated (``"TL,BR"``); counts only when no
            side is significant.

    Returns:
        One of ``TYPE_ORDER``, or ``"none"`` for a channel with no significant region.

    Example:
        >>> pan_type("TB"), pan_type("TL"), pan_type("", "BR")
        ('opposite pair', 'adjacent pair', 'corner only')
    """
    n = len(sides)
    if n == 0:
        return "corner only" if corners else "none"
    if n == 1:
        return "single side"
    if n == 2:
        return "opposite pair" if set(sides) in OPPOSITE_PAIRS else "adjacent pair"
    return "three sides" if n == 3 else "full frame"

"""Argument types shared by the ``pasta`` subcommands.

Every numeric option goes through one of these converters: a value outside the allowed range is
an argparse error that states the range (status 2), never a silent fallback to a default.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from PASTALib.limits import SEED, Bound


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _describe(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def _ranged(kind: type, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> Callable[[str], float | int]:
    what = "an integer" if kind is int else "a number"
    allowed = _describe(lo, hi, lo_open, hi_open)

    def convert(text: str) -> float | int:
        value = _number(text, kind)
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {what} {allowed} (got {text!r})")
        return value

    convert.__name__ = f"{kind.__name__} {allowed}"  # argparse names the type in some messages
    return convert


def range_int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """Integer in [lo, hi] (a bound None: unbounded on that side)."""
    return _ranged(int, lo, hi, False, False)  # type: ignore[return-value]


def range_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[str], float]:
    """Finite number in [lo, hi]; ``lo_open`` / ``hi_open`` exclude a bound."""
    return _ranged(float, lo, hi, lo_open, hi_open)  # type: ignore[return-value]


def bounded(bound: Bound) -> Callable[[str], float | int]:
    """The argparse type of an option whose range is declared in :mod:`PASTALib.limits`."""
    if bound.integer:
        return range_int(int(bound.low), int(bound.high))
    return range_float(bound.low, bound.high)


#: Counts, sizes and iterations (>= 1).
positive_int = range_int(1)
#: Seeds and other counters that may be 0.
non_negative_int = range_int(0)
#: Spacings, sizes in mm, learning rates (> 0).
positive_float = range_float(0.0, lo_open=True)
#: Margins, weight decays, waits (>= 0).
non_negative_float = range_float(0.0)
#: Shares of a whole, 0..1 inclusive.
fraction = range_float(0.0, 1.0)
#: Seeds: what numpy's generators accept.
seed = bounded(SEED)


def size_triple(text: str) -> tuple[int, int, int]:
    """``N`` or ``D,H,W`` (also ``DxHxW``) → a 3-tuple of voxel counts (each >= 1)."""
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",") if v.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or D,H,W with integers >= 1 (got {text!r})")
    return tuple(parts)  # type: ignore[return-value]

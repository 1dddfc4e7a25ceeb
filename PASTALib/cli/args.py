"""Argument types shared by the ``pasta`` subcommands."""

from __future__ import annotations

import argparse


def size_triple(text: str) -> tuple[int, int, int]:
    """``N`` or ``D,H,W`` (also ``DxHxW``) → a 3-tuple of voxel counts."""
    parts = [int(v) for v in text.lower().replace("x", ",").split(",") if v.strip()]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected N or D,H,W (got {text!r})")
    return tuple(parts)  # type: ignore[return-value]

"""Allowed ranges of user-facing numbers, declared once: the CLI builds its argparse types from them
and the library checks the same values when called directly. Imports nothing (``pasta --help`` stays
light), so any module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """Closed range [low, high] of one option; ``integer``: whole numbers only."""

    low: float
    high: float
    integer: bool = False


#: Seeds are numpy SeedSequence entropy: non-negative; 32 bits are plenty and print compactly.
SEED = Bound(0, 2**32 - 1, integer=True)

# `pasta review` (reader studies)
REVIEW_SPACING_MM = Bound(0.1, 10.0)  # common isotropic spacing of the anonymised cases
#: Edge of the lesion-centred cube; 0 on the command line keeps the whole CT. The library also needs
#: at least 4 voxels across (4 x spacing), or the cube shows nothing around the lesion.
REVIEW_FOV_MM = Bound(0.0, 2000.0)
REVIEW_PACE_S = Bound(0.0, 3600.0)  # wait between scripted answers
REVIEW_THRESHOLD = Bound(2, 5, integer=True)  # rating >= threshold calls a case real
REVIEW_MARGIN = Bound(0.01, 4.0)  # TOST equivalence margin, rating points
REVIEW_N_BOOT = Bound(20, 100_000, integer=True)  # bootstrap replicates

__all__ = [
    "REVIEW_FOV_MM", "REVIEW_MARGIN", "REVIEW_N_BOOT", "REVIEW_PACE_S", "REVIEW_SPACING_MM", "REVIEW_THRESHOLD",
    "SEED", "Bound",
]

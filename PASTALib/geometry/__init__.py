"""Canonical geometry (LPS, 1 mm isotropic) and resampling between grids."""

from PASTALib.geometry.canonical import (
    CT_OUTSIDE_HU,
    CanonicalMapping,
    Grid,
    canonical_mapping,
    from_canonical,
    local_grid,
    resample_to_grid,
    to_canonical,
)

__all__ = [
    "CT_OUTSIDE_HU",
    "CanonicalMapping",
    "Grid",
    "canonical_mapping",
    "from_canonical",
    "local_grid",
    "resample_to_grid",
    "to_canonical",
]

"""Canonical geometry (LPS, 1 mm isotropic), resampling between grids, and voxel-array orientation."""

from PASTALib.geometry.arrays import (
    array_to_image,
    distance_to_mask,
    image_to_array,
    resample_array,
    xyz_to_zyx,
    xyz_view,
    zyx_to_xyz,
)
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
    "array_to_image",
    "canonical_mapping",
    "distance_to_mask",
    "from_canonical",
    "image_to_array",
    "local_grid",
    "resample_array",
    "resample_to_grid",
    "to_canonical",
    "xyz_to_zyx",
    "xyz_view",
    "zyx_to_xyz",
]

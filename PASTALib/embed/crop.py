"""Lesion-centred crops on a canonical LPS grid at 1 mm, resampled locally (never the whole CT).

Coordinates: ``coordX, coordY, coordZ`` are **LPS world millimetres** (ITK / DICOM patient
coordinates, what ``sitk.Image.TransformIndexToPhysicalPoint`` returns and what Slicer shows
after flipping the sign of R and A). This is the TumorImagingBench / FMCIB convention: their
extractors call ``SeedBasedPatchCropd(coord_orientation="LPS", global_coordinates=True)``, which
negates X and Y to reach MONAI's RAS affine. A point from Slicer's RAS markups must have X and
Y negated first (:func:`ras_to_lps`).

Grid: ``size`` voxels per axis (even sizes allowed: the point is then the centre of the crop, half
a voxel from the middle voxels), identity direction, linear interpolation, −1024 HU outside the
scan. The array is returned in SimpleITK order ``(z, y, x)`` = (I→S, A→P, R→L), the order
nnU-Net / the PASTA code (and PASTALib.train) feed to the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from PASTALib.geometry import CT_OUTSIDE_HU, Grid
from PASTALib.geometry.canonical import IDENTITY_DIRECTION, resample_to_grid


def ras_to_lps(point: Sequence[float]) -> tuple[float, float, float]:
    """RAS millimetres (Slicer markups) → LPS millimetres (ITK, the CSV convention)."""
    x, y, z = (float(v) for v in point)
    return (-x, -y, z)


def crop_grid(center_lps: Sequence[float], size: int | Sequence[int] = 96, spacing: float = 1.0) -> Grid:
    """An LPS grid of ``size`` voxels per axis whose centre is exactly ``center_lps``."""
    sizes = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    if any(s < 1 for s in sizes):
        raise ValueError(f"crop size must be positive, got {sizes}")
    center = np.asarray(center_lps, float)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise ValueError(f"centre must be 3 finite LPS coordinates, got {center_lps!r}")
    origin = center - (np.asarray(sizes) - 1) / 2.0 * spacing
    return Grid(sizes, (float(spacing),) * 3, tuple(float(v) for v in origin), IDENTITY_DIRECTION)


def crop_at_point(image: sitk.Image, center_lps: Sequence[float], size: int | Sequence[int] = 96,
                  spacing: float = 1.0) -> np.ndarray:
    """HU crop (float32, (z, y, x)) of ``image`` around an LPS point, 1 mm canonical grid."""
    grid = crop_grid(center_lps, size, spacing)
    out = resample_to_grid(image, grid, is_label=False, default_value=CT_OUTSIDE_HU)
    return sitk.GetArrayFromImage(out)


def point_inside(image: sitk.Image, point_lps: Sequence[float]) -> bool:
    """True when the LPS point lies inside the image's voxel extent."""
    idx = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps]))
    return bool(np.all(idx >= -0.5) and np.all(idx <= np.asarray(image.GetSize()) - 0.5))

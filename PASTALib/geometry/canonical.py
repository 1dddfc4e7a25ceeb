"""Canonical geometry: LPS identity direction (axis 0 right->left, 1 anterior->posterior,
2 inferior->superior) at 1 mm isotropic spacing, and the exact way back to the input grid.

The canonical grid starts at the input's lowest voxel centre in each LPS axis, so when the
input spacing is a whole number of millimetres every input voxel centre is a canonical grid
point: nearest-neighbour label round trips are then voxel-exact. Finer inputs lose detail
below 1 mm by design (the model works at 1 mm), which the round trip measures rather than hides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Value outside the field of view: air for CT, background for labels.
CT_OUTSIDE_HU = -1024.0
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Voxel centres closer than this (in voxels) to a grid point count as on it: absorbs float noise.
_GRID_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Grid:
    """A 3D image grid: voxel counts, spacing (mm), origin (LPS mm) and direction cosines."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    def reference(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An empty image on this grid (for sitk.Resample's reference)."""
        image = sitk.Image(list(self.size), pixel_type)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_lps(self, index: Sequence[float]) -> np.ndarray:
        """Continuous voxel index (x, y, z) -> LPS millimetres."""
        direction = np.asarray(self.direction).reshape(3, 3)
        return np.asarray(self.origin) + direction @ (np.asarray(index, float) * np.asarray(self.spacing))

    def lps_to_index(self, point: Sequence[float]) -> np.ndarray:
        """LPS millimetres -> continuous voxel index (x, y, z)."""
        direction = np.asarray(self.direction).reshape(3, 3)
        return direction.T @ (np.asarray(point, float) - np.asarray(self.origin)) / np.asarray(self.spacing)

    def corners_lps(self) -> np.ndarray:
        """The 8 corner voxel centres in LPS mm, shape (8, 3)."""
        last = np.asarray(self.size) - 1
        corners = np.array([[i, j, k] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])], float)
        return np.array([self.index_to_lps(c) for c in corners])


@dataclass(frozen=True)
class CanonicalMapping:
    """The input grid and the canonical grid that covers it; maps images both ways."""

    source: Grid
    canonical: Grid

    @property
    def is_exact_for_labels(self) -> bool:
        """True when every source voxel centre is a canonical grid point (round trip is lossless)."""
        corners = self.source.corners_lps()
        axis_aligned = np.allclose(np.abs(np.asarray(self.source.direction).reshape(3, 3)).sum(axis=0), 1.0)
        steps = np.asarray(self.source.spacing) / np.asarray(self.canonical.spacing)
        on_grid = np.allclose(self.canonical.lps_to_index(corners[0]), np.round(self.canonical.lps_to_index(corners[0])), atol=_GRID_TOLERANCE)
        return bool(axis_aligned and on_grid and np.allclose(steps, np.round(steps), atol=_GRID_TOLERANCE))


def canonical_mapping(image: sitk.Image, spacing: float = 1.0) -> CanonicalMapping:
    """The LPS, ``spacing`` mm isotropic grid covering every voxel centre of ``image``."""
    source = Grid.of(image)
    corners = source.corners_lps()
    low, high = corners.min(axis=0), corners.max(axis=0)
    size = tuple(int(np.floor((hi - lo) / spacing + _GRID_TOLERANCE)) + 1 for lo, hi in zip(low, high))
    canonical = Grid(size, (spacing,) * 3, tuple(float(v) for v in low), IDENTITY_DIRECTION)
    return CanonicalMapping(source, canonical)


def resample_to_grid(
    image: sitk.Image,
    reference: sitk.Image | Grid,
    *,
    is_label: bool,
    default_value: float | None = None,
    output_pixel_type: int | None = None,
) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid in world space.

    Labels use nearest neighbour and keep their pixel type; images use linear interpolation
    into float32 (so no rounding happens until the caller decides). Outside the input:
    0 for labels, -1024 HU (air) for images, unless ``default_value`` is given.
    """
    if isinstance(reference, Grid):
        reference = reference.reference()
    if default_value is None:
        default_value = 0.0 if is_label else CT_OUTSIDE_HU
    if output_pixel_type is None:
        output_pixel_type = image.GetPixelID() if is_label else sitk.sitkFloat32
    return sitk.Resample(
        image,
        reference,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear,
        float(default_value),
        output_pixel_type,
    )


def to_canonical(
    image: sitk.Image, mapping: CanonicalMapping | None = None, *, is_label: bool, spacing: float = 1.0
) -> tuple[sitk.Image, CanonicalMapping]:
    """Reorient to LPS and resample to ``spacing`` mm (linear for CT, nearest for labels).

    Pass the ``mapping`` of the CT when resampling its label map so both share one grid.
    """
    if mapping is None:
        mapping = canonical_mapping(image, spacing)
    elif Grid.of(image).size != mapping.source.size:
        raise ValueError(
            f"image size {image.GetSize()} differs from the mapping's source grid {mapping.source.size}; "
            "a label map must be on the same grid as its CT"
        )
    return resample_to_grid(image, mapping.canonical, is_label=is_label), mapping


def from_canonical(
    image: sitk.Image,
    mapping: CanonicalMapping,
    *,
    is_label: bool,
    pixel_type: int | None = None,
    default_value: float | None = None,
) -> sitk.Image:
    """Map a canonical image back onto the input grid (nearest for labels, linear for images).

    Images are rounded to ``pixel_type`` when it is an integer type (e.g. the CT's int16).
    """
    back = resample_to_grid(image, mapping.source, is_label=is_label, default_value=default_value)
    if pixel_type is not None and not is_label and pixel_type not in (sitk.sitkFloat32, sitk.sitkFloat64):
        back = sitk.Cast(sitk.Round(back), pixel_type)
    elif pixel_type is not None:
        back = sitk.Cast(back, pixel_type)
    return back


def local_grid(center_lps: Sequence[float], size_mm: Sequence[float], spacing: float = 1.0) -> Grid:
    """A canonical (LPS, isotropic) grid of at least ``size_mm`` centred on a point.

    Used to build a lesion in a local crop instead of resampling the whole CT.
    """
    size = tuple(max(1, int(np.ceil(float(s) / spacing))) | 1 for s in size_mm)  # odd: centre is a voxel
    center = np.asarray(center_lps, float)
    origin = center - (np.asarray(size) - 1) / 2.0 * spacing
    return Grid(size, (float(spacing),) * 3, tuple(float(v) for v in origin), IDENTITY_DIRECTION)

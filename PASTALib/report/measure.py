"""Measuring a lesion's report values (extent, volume, centroid, HU) from an image and its label map."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from PASTALib.errors import SpecificationError
from PASTALib.labels import LesionType, Phase
from PASTALib.report.attributes import Density, Heterogeneity, Invasion, Shape, Surface
from PASTALib.report.wording import StructuredReport, location_text

if TYPE_CHECKING:  # SimpleITK is imported where it is used: PASTALib.report stays numpy-only at import
    import SimpleITK as sitk


def measure_lesion(
    ct: sitk.Image, labels: sitk.Image, lesion_value: int, organ_value: int, shell_mm: float = 10.0,
    box: tuple[tuple[int, int], ...] | None = None,
) -> dict[str, Any]:
    """Measure a lesion on the output grid: extents (canonical x, y, z mm), volume, centroid, HU.

    Extents are taken along LPS axes from voxel centres plus one voxel (projected spacing), so
    a voxelised ellipsoid of diameter d measures ~d on any grid.
    """
    from PASTALib.geometry.arrays import xyz_view

    lab = xyz_view(labels)
    hu = xyz_view(ct)
    # ``box`` (where the lesion can be) avoids a whole-volume scan; indices stay global.
    offset = np.zeros(3, int) if box is None else np.array([b[0] for b in box])
    search = lab if box is None else lab[tuple(slice(a, b) for a, b in box)]
    idx = np.argwhere(search == lesion_value) + offset
    if idx.size == 0:
        raise SpecificationError("The lesion is empty on the output grid (smaller than a voxel); request a larger size.")
    spacing = np.asarray(labels.GetSpacing())
    direction = np.asarray(labels.GetDirection()).reshape(3, 3)
    points = np.asarray(labels.GetOrigin()) + (idx * spacing) @ direction.T
    voxel_extent = np.abs(direction) @ spacing  # one voxel's extent along each LPS axis
    extents = points.max(axis=0) - points.min(axis=0) + voxel_extent
    values = hu[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    # Surrounding organ: organ voxels within shell_mm of the lesion bounding box, not lesion.
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    pad = np.ceil(shell_mm / spacing).astype(int)
    sl = tuple(slice(max(0, a - p), b + p + 1) for a, b, p in zip(lo, hi, pad))
    organ = lab[sl] == organ_value
    organ_values = hu[sl][organ].astype(np.float64)
    return {
        "extents_xyz_mm": extents,
        "volume_mm3": float(idx.shape[0] * np.prod(spacing)),
        "centre_mm": tuple(float(v) for v in points.mean(axis=0)),
        "mean_hu": float(values.mean()),
        "std_hu": float(values.std()),
        "organ_mean_hu": float(np.median(organ_values)) if organ_values.size else float("nan"),
    }


def build_report(
    *, ct: sitk.Image, labels: sitk.Image, lesion_type: LesionType, phase: Phase, side: str | None,
    shape: Shape, density: Density, heterogeneity: Heterogeneity, surface: Surface, invades: bool,
    organ_reference_hu: float, seed: int | None, box: tuple[tuple[int, int], ...] | None = None,
) -> StructuredReport:
    """Report of a synthesized lesion, size/volume/HU measured from the output image and label."""
    m = measure_lesion(ct, labels, int(lesion_type), int(lesion_type.organ), box=box)
    x, y, z = (int(round(v)) for v in m["extents_xyz_mm"])
    return StructuredReport(
        enhancement=phase.value,
        location=location_text(lesion_type.organ, side),
        size_zxy_mm=(z, x, y),
        shape=shape.value,
        density=density.value,
        heterogeneity=heterogeneity.value,
        surface=surface.value,
        invasion=Invasion.of(invades).value,
        lesion_type=lesion_type.slug,
        label_value=int(lesion_type),
        centre_mm=tuple(round(v, 2) for v in m["centre_mm"]),
        volume_mm3=round(m["volume_mm3"], 1),
        mean_hu=round(m["mean_hu"], 1),
        organ_mean_hu=round(float(organ_reference_hu), 1),
        seed=seed,
    )

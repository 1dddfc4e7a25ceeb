"""Slicer segmentation files (.seg.nrrd) written with slicerio, Slicer's own file library."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PASTALib.geometry.arrays import image_to_array, zyx_to_xyz
from PASTALib.io.image import PathLike
from PASTALib.io.outputs import atomic_output
from PASTALib.labels import label_name

#: Display colours (RGB 0-1) for PASTA labels: organs muted, lesions saturated.
_ORGAN_COLOR = (0.80, 0.62, 0.45)
_LESION_COLOR = (0.95, 0.20, 0.15)


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) to LPS millimetres."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_segmentation(
    labels: sitk.Image,
    path: PathLike,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[float, float, float]] | None = None,
) -> Path:
    """Write a label map as a Slicer .seg.nrrd: one segment per label value present.

    ``names`` defaults to the PASTA label names (1-25). Written atomically.
    """
    # slicerio is not bundled with Slicer: imported here so that PASTALib.io (and the module
    # panels reaching it) load before "Install dependencies" has run.
    import slicerio

    path = Path(path)
    if not path.name.endswith(".seg.nrrd"):
        raise ValueError(f"{path}: a Slicer segmentation file must end with .seg.nrrd")
    voxels = image_to_array(labels).astype(np.uint8 if int(sitk.GetArrayViewFromImage(labels).max()) < 256 else np.uint16)
    segmentation = slicerio.create_segmentation(voxels.shape, ijk_to_lps(labels), dtype=voxels.dtype)
    segmentation["voxels"] = voxels
    for value in sorted(int(v) for v in np.unique(voxels) if v != 0):
        if names and value in names:
            name = names[value]
        else:
            name = label_name(value) if value <= 25 else f"Label {value}"
        color = colors.get(value) if colors else None
        if color is None:
            color = _LESION_COLOR if value > 10 else _ORGAN_COLOR
        segmentation["segments"].append(
            {"id": f"Segment_{value}", "labelValue": value, "layer": 0, "name": name, "color": list(color)}
        )
    def same_voxels(tmp: Path) -> None:  # a full disk must not rename a truncated file into place
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp)))  # a copy: a view dies with its image
        if back.shape[::-1] != voxels.shape or not np.array_equal(zyx_to_xyz(back), voxels):
            raise ValueError("the voxels read back differ from those written")

    with atomic_output(path, same_voxels, suffix=".seg.nrrd") as partial:
        slicerio.write_segmentation(str(partial), segmentation)
    return path

"""Anonymise one case: resample it onto the common lesion-centred grid and write image + mask."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from PASTALib.review.cases import SourceCase
from PASTALib.review.errors import ReviewError
from PASTALib.review.layout import IMAGE_NAME, MASK_NAME

if TYPE_CHECKING:
    from PASTALib.review.study import StudySettings

#: Intensity encoding of every study image (HU); outside the source's field of view is air.
HU_RANGE = (-1024, 3071)


def lesion_centre_and_mask(case: SourceCase):
    """The largest connected lesion component (binary sitk image) and its centroid in LPS mm."""
    import SimpleITK as sitk
    from scipy import ndimage

    from PASTALib.io import read_label

    labels = read_label(case.mask)
    values = sitk.GetArrayViewFromImage(labels)
    lesion = np.isin(values, case.lesion_values) if case.lesion_values else values > 0
    components, count = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        wanted = "values " + ", ".join(map(str, case.lesion_values)) if case.lesion_values else "non-zero voxels"
        raise ReviewError(f"{case.mask} has no lesion ({wanted}); check the mask or its lesion_values.")
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    centre_zyx = np.argwhere(largest).mean(axis=0)
    centre = labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre_zyx[::-1]])
    binary = sitk.GetImageFromArray(largest.astype(np.uint8))
    binary.CopyInformation(labels)
    return binary, np.asarray(centre, float)


def anonymise_case(case: SourceCase, settings: StudySettings, out_dir: Path, mtime: float) -> dict[str, Any]:
    """Resample one case onto the common lesion-centred grid and write image + mask."""
    import SimpleITK as sitk

    from PASTALib.geometry import canonical_mapping, image_to_array, local_grid, resample_to_grid
    from PASTALib.io import read_ct

    ct = read_ct(case.image)
    voxels = hashlib.sha256(np.ascontiguousarray(sitk.GetArrayViewFromImage(ct)).data)
    # Spacing rounded: NIfTI stores it as float32, so the same scan converted from NRRD reads 0.800000011.
    voxels.update(repr((ct.GetSize(), tuple(round(v, 4) for v in ct.GetSpacing()))).encode())
    mask, centre = lesion_centre_and_mask(case)
    if settings.fov_mm:
        grid = local_grid(centre, (settings.fov_mm,) * 3, settings.spacing_mm)
    else:
        grid = canonical_mapping(ct, settings.spacing_mm).canonical
    image = image_to_array(resample_to_grid(ct, grid, is_label=False), contiguous=False)
    image = np.clip(np.rint(image), *HU_RANGE).astype(np.int16)
    lesion = image_to_array(resample_to_grid(mask, grid, is_label=True), contiguous=False)
    lesion = (lesion > 0).astype(np.uint8)
    if not lesion.any():
        raise ReviewError(f"The lesion in {case.mask} vanishes at {settings.spacing_mm} mm spacing; "
                          "use a finer study spacing or drop the case.")
    # The lesion centre becomes LPS (0, 0, 0): patient coordinates would identify the source scan.
    origin = np.asarray(grid.origin) - centre
    from PASTALib.review.nifti import write_nifti

    write_nifti(out_dir / IMAGE_NAME, image, settings.spacing_mm, origin, mtime)
    write_nifti(out_dir / MASK_NAME, lesion, settings.spacing_mm, origin, mtime)
    return {"centre_source_lps_mm": [round(float(v), 3) for v in centre], "size_voxels": list(image.shape),
            "voxels_sha256": voxels.hexdigest()}

"""``pasta refine apply``: refine the lesion neighbourhoods of an already-synthesized case."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PASTALib.errors import InputImageError
from PASTALib.geometry import array_to_image, image_to_array, local_grid, resample_array, resample_to_grid
from PASTALib.labels import LesionType
from PASTALib.refine.refiner import Refiner


def lesion_components(labels_xyz: np.ndarray, values: Sequence[int] | None = None) -> list[tuple[int, np.ndarray]]:
    """(lesion value, boolean mask) for each connected lesion (values 11-25 unless ``values``)."""
    values = [int(v) for v in (values if values is not None else [int(t) for t in LesionType])]
    out = []
    for value in values:
        mask = labels_xyz == value
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        for i in range(1, n + 1):
            out.append((value, comp == i))
    return out


def refine_case(ct: sitk.Image, labels: sitk.Image, refiner: Refiner, *, seed: int = 0, margin_mm: float | None = None,
                lesion_values: Sequence[int] | None = None) -> tuple[sitk.Image, list[dict[str, Any]]]:
    """Refine every lesion (PASTA values 11-25) of a synthesized case on its own grid.

    Each lesion is refined in a canonical 1 mm crop (condition: its organ incl. the lesion); the HU
    change is resampled back and applied with the smooth weight, only to input voxels within
    ``margin_mm`` of the lesion (physical distance on the input grid); every other voxel, and the
    label map, stay bit-identical. Integer CTs are rounded to their type.
    """
    if ct.GetSize() != labels.GetSize() or not np.allclose(ct.GetOrigin(), labels.GetOrigin(), atol=1e-3) \
            or not np.allclose(ct.GetSpacing(), labels.GetSpacing(), atol=1e-4) \
            or not np.allclose(ct.GetDirection(), labels.GetDirection(), atol=1e-4):
        raise InputImageError("The label map is not on the CT's grid; resample it (nearest neighbour) onto the CT first.")
    margin = float(margin_mm if margin_mm is not None else refiner.config.margin_mm)
    lab = image_to_array(labels, contiguous=False)
    comps = lesion_components(lab, lesion_values)
    if not comps:
        raise InputImageError(
            "No lesion in the label map (PASTA lesion values 11-25); refine applies to synthesized cases "
            "(pasta synth lesion output label.nii.gz)."
        )
    spacing = np.asarray(ct.GetSpacing(), float)
    context = margin + refiner.config.context_vox
    out = ct
    infos = []
    for n, (value, mask) in enumerate(comps):
        t0 = time.perf_counter()
        idx = np.argwhere(mask)
        # Input-grid box: lesion bbox + margin + context (in voxels of each axis).
        pad = np.ceil(context / spacing).astype(int) + 1
        lo = np.maximum(idx.min(axis=0) - pad, 0)
        hi = np.minimum(idx.max(axis=0) + pad + 1, np.asarray(ct.GetSize()))
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        reference = out[box[0], box[1], box[2]]
        corners = np.array([reference.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                            for corner in np.array(np.meshgrid(*[[0, s - 1] for s in reference.GetSize()])).reshape(3, -1).T])
        grid = local_grid(corners.mean(axis=0), corners.max(axis=0) - corners.min(axis=0) + 1.0)
        ct_c = image_to_array(resample_to_grid(out, grid, is_label=False), contiguous=False)
        lab_c = image_to_array(resample_to_grid(labels, grid, is_label=True), contiguous=False)
        mask_img = array_to_image(mask.astype(np.uint8), labels)
        lesion_c = image_to_array(resample_to_grid(mask_img, grid, is_label=True), contiguous=False).astype(bool)
        if not lesion_c.any():  # lesion thinner than 1 mm sampling: take the nearest voxel of its centre
            centre = np.clip(np.round(grid.lps_to_index(ct.TransformContinuousIndexToPhysicalPoint(idx.mean(axis=0).tolist()))).astype(int), 0, np.asarray(grid.size) - 1)
            lesion_c[tuple(centre)] = True
        organ_value = int(LesionType(value).organ)
        organ_c = (lab_c == organ_value) | lesion_c
        seed_i = int(np.random.default_rng([int(seed), n]).integers(2**63 - 1))
        res = refiner.refine_crop(ct_c, organ_c, lesion_c, seed_i, margin_mm=margin)
        delta_c = (res.ct - ct_c).astype(np.float32)

        delta_in = resample_array(delta_c, grid, reference)
        weight_in = resample_array(res.weight, grid, reference)
        dist_in = ndimage.distance_transform_edt(~mask[box], sampling=spacing)
        touched = (weight_in > 0) & (dist_in < margin)
        region = image_to_array(reference, contiguous=False)
        new = region.astype(np.float64) + delta_in
        if np.issubdtype(region.dtype, np.integer):
            info = np.iinfo(region.dtype)
            new = np.clip(np.round(new), info.min, info.max)
        region = region.copy()
        region[touched] = new[touched].astype(region.dtype)
        patch = array_to_image(region, reference)
        out = sitk.Paste(out, patch, patch.GetSize(), [0, 0, 0], [int(v) for v in lo])
        infos.append({
            "lesion_value": value, "lesion_type": LesionType(value).slug, "voxels": int(mask.sum()), "seed": seed_i,
            "touched_voxels": int(touched.sum()), "seconds": time.perf_counter() - t0, **res.info,
        })
    return out, infos

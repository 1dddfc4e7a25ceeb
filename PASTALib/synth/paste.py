"""Paste a lesion built on a local 1 mm crop back onto the input CT and label grids."""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.geometry import array_to_image, image_to_array, resample_array
from PASTALib.synth import intensity, placement

_GAS_LABEL_HU = -200.0  # hollow organs: output voxels below this stay lumen in the label


def input_box(ct: sitk.Image, grid: Any) -> tuple[tuple[int, int], ...]:
    """Input-grid index range (x, y, z; end exclusive) covering a local canonical grid."""
    corners = np.array([grid.index_to_lps(c) for c in np.array(np.meshgrid(*[[0, n - 1] for n in grid.size])).reshape(3, -1).T])
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    cidx = (corners - np.asarray(ct.GetOrigin())) @ direction / np.asarray(ct.GetSpacing())
    size = np.asarray(ct.GetSize())
    lo = np.clip(np.floor(cidx.min(axis=0)).astype(int), 0, size)
    hi = np.clip(np.ceil(cidx.max(axis=0)).astype(int) + 1, 0, size)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi))


def paste_lesion(
    ct: sitk.Image, labels: sitk.Image, grid: Any, box: tuple[tuple[int, int], ...], alpha: np.ndarray,
    delta: np.ndarray, lesion_value: int, organ_mask: placement.OrganRegion | None, hollow: bool = False,
    values: tuple[np.ndarray, float, np.random.Generator] | None = None,
) -> tuple[sitk.Image, sitk.Image]:
    """Resample alpha and the HU change onto the input grid inside ``box`` and apply them there.

    ``values`` = (lesion HU on the crop, noise std, rng): blend ``(1 - a) ct + a (values + noise)`` on the
    input grid instead of adding ``delta``, so nothing of the replaced voxels' texture survives and the
    noise has the input voxels' grain.
    """
    lo = np.array([b[0] for b in box])
    hi = np.array([b[1] for b in box])
    reference = ct[box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]]
    alpha_in = resample_array(alpha, grid, reference)
    region = image_to_array(reference, contiguous=False)
    if values is None:
        delta_in = resample_array(delta, grid, reference)
    else:
        crop_values, noise_hu, rng = values
        values_in = resample_array(crop_values, grid, reference)
        hit = np.argwhere(alpha_in > 0)
        if hit.size:  # noise only where the lesion is blended in
            sub = tuple(slice(a, b + 1) for a, b in zip(hit.min(axis=0), hit.max(axis=0)))
            values_in[sub] += intensity.native_noise(region[sub], noise_hu, rng)
        delta_in = alpha_in * (values_in - region.astype(np.float32))

    touched = alpha_in > 0  # everything else stays bit-identical
    new = region.astype(np.float64) + delta_in
    if np.issubdtype(region.dtype, np.integer):
        info = np.iinfo(region.dtype)
        new = np.clip(np.round(new), info.min, info.max)
    region[touched] = new[touched].astype(region.dtype)
    patch = array_to_image(region, reference)
    out_ct = sitk.Paste(ct, patch, patch.GetSize(), [0, 0, 0], [int(v) for v in lo])

    lab_ref = labels[box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]]
    lab_arr = image_to_array(lab_ref, contiguous=False)
    lesion = alpha_in > 0.5
    if organ_mask is not None:
        # Without invasion the label never leaves the organ, even where interpolation blurs the edge.
        full = np.zeros(lesion.shape, bool)
        olo, ohi = organ_mask.lo, organ_mask.lo + np.asarray(organ_mask.mask.shape)
        a = np.maximum(lo, olo)
        b = np.minimum(hi, ohi)
        if np.all(b > a):
            full[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], a[2] - lo[2]:b[2] - lo[2]] = organ_mask.mask[
                a[0] - olo[0]:b[0] - olo[0], a[1] - olo[1]:b[1] - olo[1], a[2] - olo[2]:b[2] - olo[2]]
        lesion &= full
    if hollow:
        # Voxels still dominated by gas after blending are lumen (partial volume), not tumour.
        lesion &= region > _GAS_LABEL_HU
    lab_arr[lesion] = lesion_value
    lab_patch = array_to_image(lab_arr, lab_ref)
    out_labels = sitk.Paste(labels, lab_patch, lab_patch.GetSize(), [0, 0, 0], [int(v) for v in lo])
    return out_ct, out_labels

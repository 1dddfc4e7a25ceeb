"""The authors' inference settings (``--compat authors``) for models fine-tuned their way.

The authors segment with nnU-Net v2's predictor (LWHYC/PASTA ``segmentation/inference/inference.py``:
``tile_step_size=0.5, use_gaussian=True, use_mirroring=True``), which averages the windows'
*logits* weighted by nnU-Net's Gaussian and mirrors over all three axes; their loaders resample to
1 mm with ``scipy.ndimage.zoom`` (cubic spline, corners aligned: the first and last voxel centres are
kept, so the effective spacing is ``(n - 1) * s / (m - 1)``, e.g. 0.994 mm, not exactly 1 mm). This
library's default blends softmax probabilities with MONAI's Gaussian, without mirroring, on a
SimpleITK linear resampling to exactly ``spacing_mm``. Here are the authors' pieces:
:func:`zoom_to_canonical` and :func:`nnunet_gaussian`; ``InferenceConfig(compat="authors")`` selects
them (PASTALib.infer.sliding / pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from PASTALib.geometry.canonical import IDENTITY_DIRECTION, CanonicalMapping, Grid

COMPAT_CHOICES = ("pasta", "authors")


def nnunet_gaussian(tile_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """nnU-Net v2's window weight as its predictor builds it (``compute_gaussian(..., value_scaling_factor=10)``
    in float16): a unit impulse at the window centre blurred with sigma = ``sigma_scale`` x the window (scipy,
    zero outside), scaled to a maximum of 10, zeros raised to the smallest non-zero weight; returned as float32.
    Re-implemented: nnunetv2 is only a benchmark dependency."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(tuple(int(s) for s in tile_size), np.float64)
    impulse[tuple(s // 2 for s in impulse.shape)] = 1.0
    weight = gaussian_filter(impulse, [s * sigma_scale for s in impulse.shape], 0, mode="constant", cval=0)
    weight = (weight / (weight.max() / 10.0)).astype(np.float16)
    weight[weight == 0] = weight[weight != 0].min()
    return weight.astype(np.float32)


def zoom_to_canonical(image: sitk.Image, spacing: float = 1.0) -> tuple[sitk.Image, CanonicalMapping] | None:
    """LPS reorientation (axis permutation / flips only) + ``ndimage.zoom`` (order 3, aligned corners) to about
    ``spacing`` mm, as the authors' loaders. None for an oblique image (no axis-aligned reorientation exists)."""
    from scipy import ndimage

    lps = sitk.DICOMOrient(image, "LPS")
    if not np.allclose(lps.GetDirection(), IDENTITY_DIRECTION, atol=1e-4):
        return None
    hu = sitk.GetArrayFromImage(lps).astype(np.float32)  # (z, y, x)
    source_spacing = np.asarray(lps.GetSpacing()[::-1], float)
    # their call as is (mode "constant", cval 0): where float rounding puts the last sample just past the edge
    # the plane reads 0 HU (on the 3 mm example CT zoomed x1.5: the whole last y plane), as in their data
    zoomed = ndimage.zoom(hu, source_spacing / spacing, order=3).astype(np.float32)
    old, new = np.asarray(hu.shape), np.asarray(zoomed.shape)
    effective = np.where(new > 1, (old - 1) * source_spacing / np.maximum(new - 1, 1), spacing)
    out = sitk.GetImageFromArray(zoomed)
    out.SetSpacing(tuple(float(v) for v in effective[::-1]))
    out.SetOrigin(lps.GetOrigin())  # corners aligned: the first voxel centre stays where it was
    out.SetDirection(IDENTITY_DIRECTION)
    return out, CanonicalMapping(Grid.of(image), Grid.of(out))

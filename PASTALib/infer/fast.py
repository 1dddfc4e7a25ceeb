"""Fast CPU inference (``InferenceConfig.speed = "fast"``): windows only where lesions can be.

The fine (canonical spacing) sliding window runs only the windows that hold a voxel of a *region*: the
organs PASTA reports on (``cfg.fast_organs``), dilated by ``cfg.fast_margin_mm``. The region comes from a
TotalSegmentator map when the user gives one, else from a cheap coarse pass of the model's own
output channels (the CT at ``cfg.fast_coarse_factor`` x the spacing, windows of the same field of
view, no overlap). The windows are the reference's (``cfg.fast_grid == "body"``: the body box's grid, so every
region voxel is blended from the same windows as in the reference) or a grid over the region's box
(``"organs"``: fewer windows, placed elsewhere); skipped windows give background. The fine pass uses
``cfg.fast_overlap`` and bf16 where the CPU runs bf16 natively.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from PASTALib.geometry.arrays import distance_to_mask
from PASTALib.infer.config import InferenceConfig, amp_dtype

#: /proc/cpuinfo flags of CPUs with native bf16 arithmetic (AVX512-BF16: Cooper Lake, Zen 4+; AMX: Sapphire
#: Rapids+). Without them oneDNN emulates bf16 and autocast is slower than float32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_supports_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises native bf16 (``BF16_CPU_FLAGS``); False when unknown (not Linux)."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return any(f in flags for f in BF16_CPU_FLAGS)


def window_dtype(device: torch.device, cfg: InferenceConfig) -> torch.dtype | None:
    """Autocast dtype of the windows: CUDA as ``amp_dtype``; on CPU bf16 only in fast mode on a CPU
    with native bf16 (otherwise None: full precision)."""
    if device.type == "cpu":
        return torch.bfloat16 if cfg.amp and cfg.speed == "fast" and cpu_supports_bf16() else None
    return amp_dtype(device, cfg.amp)


def window_slices(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """The windows MONAI's sliding_window_inference visits on an array of ``shape`` (≥ ``roi``), in its order."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    shape, roi = tuple(int(v) for v in shape), tuple(int(v) for v in roi)
    return [tuple(s) for s in dense_patch_slices(shape, roi, _get_scan_interval(shape, roi, len(roi), (float(overlap),) * len(roi)))]


def windows_with_region(region: np.ndarray, roi: Sequence[int], overlap: float) -> list[bool]:
    """Per window (MONAI's order): does it hold a region voxel? ``region`` is padded with False to ``roi``."""
    padded = np.zeros([max(n, r) for n, r in zip(region.shape, roi)], bool)
    padded[tuple(slice(0, n) for n in region.shape)] = region
    return [bool(padded[s].any()) for s in window_slices(padded.shape, roi, overlap)]


def region_box(region: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of a boolean array; None when it is empty."""
    boxes = ndimage.find_objects(region.astype(np.uint8))
    return boxes[0] if boxes else None  # type: ignore[return-value]


def dilate(mask: np.ndarray, margin_vox: int) -> np.ndarray:
    """``mask`` grown by ``margin_vox`` voxels (Euclidean distance, so the margin is a ball; ITK's Maurer
    transform: on a whole abdomen's organs 0.9 s instead of scipy's 8 s, the same voxels)."""
    if margin_vox <= 0 or not mask.any():
        return mask.astype(bool)
    box = region_box(mask)
    assert box is not None
    grown = tuple(slice(max(0, s.start - margin_vox), min(n, s.stop + margin_vox)) for s, n in zip(box, mask.shape))
    out = np.zeros(mask.shape, bool)
    out[grown] = distance_to_mask(mask[grown].astype(bool), (1.0, 1.0, 1.0)) <= margin_vox
    return out


def region_from_labels(labels_zyx: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """Fine-grid region of a canonical label map: ``cfg.fast_organs`` (and their lesions 11-25) dilated."""
    from PASTALib.labels import LesionType

    values = set(cfg.fast_organs) | {int(t) for t in LesionType if int(t.organ) in cfg.fast_organs}
    margin = int(math.ceil(cfg.fast_margin_mm / cfg.spacing_mm))
    return dilate(np.isin(labels_zyx, sorted(values)), margin)


def coarse_patch(cfg: InferenceConfig, divisor: int) -> tuple[int, ...]:
    """Window of the coarse pass: the fine window's field of view at the coarse spacing, a multiple of ``divisor``
    and at least two of them (instance norm needs more than one voxel at the bottleneck)."""
    return tuple(max(2 * divisor, int(round(p / cfg.fast_coarse_factor / divisor)) * divisor) for p in cfg.patch_size)


def coarse_region(model: torch.nn.Module, hu_zyx: np.ndarray, cfg: InferenceConfig, device: torch.device,
                  normalize: Callable[[np.ndarray], np.ndarray] | None, divisor: int) -> np.ndarray:
    """Region on the fine grid from the model's own labels at ``fast_coarse_factor`` x the spacing (overlap 0)."""
    from PASTALib.infer.sliding import sliding_window_probabilities

    factor = cfg.fast_coarse_factor
    coarse_shape = [max(1, int(round(n / factor))) for n in hu_zyx.shape]
    hu_coarse = ndimage.zoom(np.asarray(hu_zyx, np.float32), [c / n for c, n in zip(coarse_shape, hu_zyx.shape)], order=1)
    coarse_cfg = replace(cfg, patch_size=coarse_patch(cfg, divisor), overlap=0.0, spacing_mm=cfg.spacing_mm * factor)
    prob = sliding_window_probabilities(model, hu_coarse, coarse_cfg, device, normalize=normalize)
    labels = prob.argmax(0).to(torch.uint8).cpu().numpy()
    region = region_from_labels(labels, coarse_cfg)  # dilated at the coarse grid: cheap
    # nearest-neighbour back to the fine grid: fine voxel i lies in coarse voxel floor(i * coarse / fine)
    idx = np.ix_(*[np.minimum((np.arange(n) * c) // n, c - 1) for n, c in zip(hu_zyx.shape, region.shape)])
    return region[idx]


def probe_seconds_per_window(model: torch.nn.Module, cfg: InferenceConfig, device: torch.device, divisor: int,
                             dtype: torch.dtype | None) -> float:
    """Seconds one ``cfg.patch_size`` window takes here, from timing one forward of a window of that size.

    A full window, not a smaller one scaled by the voxel ratio: on a 2-core CPU a half-edge window scaled
    by 8 gave 21 s for windows that took 33-47 s (cache effects do not scale with the voxel count). It costs
    one window more: 1 % of the reference path's 100 windows on a whole abdomen, ~3 % of the fast path's.
    """
    from PASTALib.infer.sliding import autocast

    channels = int(getattr(getattr(model, "config", None), "in_channels", 1))
    x = torch.zeros((1, channels, *cfg.patch_size), device=device)
    with torch.no_grad(), autocast(device, dtype):
        t = time.perf_counter()
        model.segment(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

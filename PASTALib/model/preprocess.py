"""Input normalisation and crop orientation of the PASTA network.

Two intensity maps, as in the authors' code (LWHYC/PASTA):

* **SLF** (attributes, embeddings, this library's stage 1/2): piecewise-linear HU → [0, 1] through
  (−1000, −200, 200, 1000) → (0, 0.2, 0.9, 1), clipped outside (docs/model.md). Every loader of the
  public classification code (``classification/dataloaders/get_loader.py``) and the example
  ``feature_extraction.py`` pass 0.9 at 200 HU; only the unused default argument of their
  ``MultiThreshNormalized`` class says 0.8 (``SLF_VALUES_LOADER_DEFAULT``, kept for comparisons).
* **nnU-Net CT** (the authors' segmentation stage 1 and segmentation fine-tuning, which run in
  nnU-Net v2): clip to the 0.5 / 99.5 percentiles of the training cases' foreground intensities,
  then z-score with their mean / std (:class:`CTNormalization`, statistics from
  :func:`foreground_intensity_statistics`, sampled exactly as nnU-Net's fingerprint extractor).

Which map a network expects is part of its checkpoint (:mod:`PASTALib.capabilities`), not a guess.

Orientation: the authors' classification loaders read NIfTI with nibabel, reorient to LAS and
transpose to (z, y, x), so the attribute head of ``PASTA_final.pth`` saw crops whose y axis runs
posterior → anterior. This library's canonical crops are LPS (y anterior → posterior):
:func:`to_head_orientation` flips them before they reach the encoder for attributes/embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np
import torch

SLF_THRESHOLDS_HU: tuple[float, ...] = (-1000.0, -200.0, 200.0, 1000.0)
SLF_VALUES: tuple[float, ...] = (0.0, 0.2, 0.9, 1.0)
SLF_VALUES_LOADER_DEFAULT: tuple[float, ...] = (0.0, 0.2, 0.8, 1.0)

#: nnU-Net v2's fingerprint: 10e7 foreground samples over the whole dataset (split evenly over the
#: cases), each case drawn with its own RandomState(1234), with replacement
NNUNET_FOREGROUND_SAMPLES = int(10e7)
NNUNET_FOREGROUND_SEED = 1234


def slf_normalize(hu, thresholds=SLF_THRESHOLDS_HU, values=SLF_VALUES):
    """HU array (numpy or torch) → SLF map in [values[0], values[-1]] (float32)."""
    if isinstance(hu, torch.Tensor):
        x = hu.float()
        out = torch.full_like(x, values[0])
        for (t0, t1), (v0, v1) in zip(zip(thresholds[:-1], thresholds[1:]), zip(values[:-1], values[1:])):
            seg = (x >= t0) & (x <= t1)
            out = torch.where(seg, v0 + (x - t0) * (v1 - v0) / (t1 - t0), out)
        return torch.where(x > thresholds[-1], torch.full_like(x, values[-1]), out)
    return np.interp(np.asarray(hu, dtype=np.float32), thresholds, values).astype(np.float32)


@dataclass(frozen=True)
class SLFNormalization:
    """The SLF map as a (picklable) callable: HU → [0, 1]."""

    values: tuple[float, ...] = SLF_VALUES
    thresholds: tuple[float, ...] = SLF_THRESHOLDS_HU

    def __call__(self, hu):
        return slf_normalize(hu, self.thresholds, self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": "slf", "values": list(self.values), "thresholds": list(self.thresholds)}


@dataclass(frozen=True)
class CTNormalization:
    """nnU-Net's ``CTNormalization``: clip to [percentile_00_5, percentile_99_5], subtract ``mean``,
    divide by ``max(std, 1e-8)`` (float32)."""

    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float

    def __call__(self, hu):
        scale = max(float(self.std), 1e-8)
        if isinstance(hu, torch.Tensor):
            x = hu.float().clamp(float(self.percentile_00_5), float(self.percentile_99_5))
            return (x - float(self.mean)) / scale
        x = np.clip(np.asarray(hu, dtype=np.float32), self.percentile_00_5, self.percentile_99_5)
        # in place in float32 as nnU-Net does (the same rounding)
        x -= self.mean
        x /= scale
        return x.astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": "nnunet_ct", **{k: float(v) for k, v in asdict(self).items()}}


Normalization = Union[SLFNormalization, CTNormalization]


def normalization_from_dict(spec: Mapping[str, Any] | None) -> Normalization:
    """Rebuild a normalisation from its checkpoint metadata (None: the default SLF map)."""
    if not spec:
        return SLFNormalization()
    scheme = spec.get("scheme")
    if scheme == "slf":
        return SLFNormalization(tuple(float(v) for v in spec.get("values", SLF_VALUES)),
                                tuple(float(v) for v in spec.get("thresholds", SLF_THRESHOLDS_HU)))
    if scheme == "nnunet_ct":
        return CTNormalization(float(spec["mean"]), float(spec["std"]), float(spec["percentile_00_5"]),
                               float(spec["percentile_99_5"]))
    raise ValueError(f"unknown intensity normalisation scheme {scheme!r} (expected 'slf' or 'nnunet_ct')")


def _nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
    """nnU-Net's ``crop_to_nonzero`` box: bounding box of the voxels != 0 (holes filled; the fingerprint
    samples the foreground inside that box only)."""
    from scipy.ndimage import binary_fill_holes

    idx = np.argwhere(binary_fill_holes(image != 0))
    if idx.size == 0:
        return tuple(slice(0, 0) for _ in image.shape)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))


def sample_foreground_intensities(image: np.ndarray, label: np.ndarray, num_samples: int,
                                  seed: int = NNUNET_FOREGROUND_SEED) -> np.ndarray:
    """``num_samples`` foreground (label > 0) intensities of one case drawn with replacement from a
    ``RandomState(seed)``, in nnU-Net's order (C order of the (z, y, x) array inside the nonzero box).
    Re-implemented (not imported) because nnunetv2 is only an optional benchmark dependency."""
    image = np.asarray(image, dtype=np.float32)
    box = _nonzero_box(image)
    foreground = image[box][np.asarray(label)[box] > 0]
    if foreground.size == 0:
        return np.empty(0, np.float32)
    return np.random.RandomState(seed).choice(foreground, num_samples, replace=True)


def foreground_intensity_statistics(cases: Sequence[tuple[np.ndarray, np.ndarray]], *,
                                    total_samples: int | None = None) -> CTNormalization:
    """nnU-Net's fingerprint intensity statistics of (image HU, label) pairs on their own grids:
    ``total_samples // len(cases)`` samples per case (None: nnU-Net's 10e7), pooled; mean, std, 0.5 / 99.5
    percentiles."""
    total_samples = NNUNET_FOREGROUND_SAMPLES if total_samples is None else int(total_samples)
    if not cases:
        raise ValueError("no cases to compute foreground intensity statistics from")
    per_case = int(total_samples // len(cases))
    pooled = np.concatenate([sample_foreground_intensities(img, lab, per_case) for img, lab in cases])
    if pooled.size == 0:
        raise ValueError("the cases have no foreground voxels (label > 0) to compute intensity statistics from")
    lo, hi = np.percentile(pooled, (0.5, 99.5))
    return CTNormalization(float(np.mean(pooled)), float(np.std(pooled)), float(lo), float(hi))


def to_head_orientation(crops_zyx):
    """Canonical LPS crops (..., z, y, x) → the authors' LAS-transposed orientation (y flipped), the one
    the attribute head / encoder features of ``PASTA_final.pth`` were trained on. Works on numpy and torch."""
    if isinstance(crops_zyx, torch.Tensor):
        return torch.flip(crops_zyx, dims=(-2,))
    return np.ascontiguousarray(np.flip(crops_zyx, axis=-2))

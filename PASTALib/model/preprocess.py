"""Input normalisation of the PASTA network.

SLF map (docs/model.md): piecewise-linear HU → [0, 1] through (−1000, −200, 200, 1000) →
(0, 0.2, 0.9, 1), clipped outside. The public example ``feature_extraction.py`` of LWHYC/PASTA
uses (0, 0.2, 0.8, 1) for the same thresholds (``SLF_VALUES_PUBLIC_EXAMPLE``); the values are a
parameter so a checkpoint can be used with the map it was trained with.
"""

from __future__ import annotations

import numpy as np
import torch

SLF_THRESHOLDS_HU: tuple[float, ...] = (-1000.0, -200.0, 200.0, 1000.0)
SLF_VALUES: tuple[float, ...] = (0.0, 0.2, 0.9, 1.0)
SLF_VALUES_PUBLIC_EXAMPLE: tuple[float, ...] = (0.0, 0.2, 0.8, 1.0)


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

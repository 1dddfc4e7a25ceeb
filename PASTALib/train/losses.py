"""Stage 1's loss (MONAI DiceCELoss with nnU-Net v1 deep supervision) and its training Dice."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from PASTALib.train.data import LESION_LABELS


def class_weights(num_classes: int, lesion_weight: float) -> list[float] | None:
    """Per-class loss weights: 1 everywhere, ``lesion_weight`` for the lesion labels 11-25 (None when 1)."""
    if lesion_weight == 1.0:
        return None
    return [lesion_weight if c in LESION_LABELS else 1.0 for c in range(num_classes)]


def deep_supervision_weights(n: int, drop_lowest: bool = True) -> list[float]:
    """1/2^i for i = 0..n-1, lowest resolution set to 0 (nnU-Net v1) when n > 2, normalised."""
    w = np.array([1 / 2**i for i in range(n)])
    if drop_lowest and n > 2:
        w[-1] = 0
    return (w / w.sum()).tolist()


class DeepSupervisionLoss(torch.nn.Module):
    """Weighted sum of MONAI DiceCELoss over the deep-supervision outputs (full resolution first);
    targets are downsampled by nearest-neighbour striding."""

    def __init__(self, n_outputs: int, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.weights = deep_supervision_weights(n_outputs)
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.loss = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                               smooth_nr=1e-5, smooth_dr=1e-5, weight=weight)

    def forward(self, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for i, (w, out) in enumerate(zip(self.weights, outputs)):
            if w == 0:
                continue
            s = 2**i
            t = target[:, :, ::s, ::s, ::s] if s > 1 else target
            total = total + w * self.loss(out.float(), t)
        return total


def _dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    denom = int(pred.sum()) + int(ref.sum())
    return float("nan") if denom == 0 else 2.0 * int((pred & ref).sum()) / denom


def batch_dice(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Hard Dice of 'any lesion' (11-25) and 'any organ' (1-10) on a batch."""
    with torch.no_grad():
        pred = logits.argmax(1)
        ref = target[:, 0].long()
        lesion = (pred >= LESION_LABELS[0]) & (pred <= LESION_LABELS[-1])
        lesion_ref = (ref >= LESION_LABELS[0]) & (ref <= LESION_LABELS[-1])
        organ = (pred >= 1) & (pred < LESION_LABELS[0])
        organ_ref = (ref >= 1) & (ref < LESION_LABELS[0])
        return _dice(lesion, lesion_ref), _dice(organ, organ_ref)

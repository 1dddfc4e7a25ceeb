"""Sliding-window segmentation of a canonical (LPS, 1 mm) CT array with MONAI.

Arrays are in SimpleITK order (z, y, x) of the canonical image, the order the training
patches use (PASTALib.train.data). The input map is the checkpoint's segmentation map (SLF, or nnU-Net's CT
normalisation for models fine-tuned from PASTA_final.pth; PASTALib.model.preprocess), as in training.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from PASTALib.infer.config import InferenceConfig, amp_dtype
from PASTALib.model.preprocess import SLF_VALUES, SLFNormalization

ProgressFn = Callable[[float, str], None]


def body_box(hu_zyx: np.ndarray, threshold_hu: float, margin_vox: int) -> tuple[slice, slice, slice]:
    """Bounding box (with margin) of voxels above ``threshold_hu``; the whole array if none."""
    mask = hu_zyx > threshold_hu
    if not mask.any():
        return tuple(slice(0, n) for n in hu_zyx.shape)  # type: ignore[return-value]
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(0, int(hits[0]) - margin_vox), min(hu_zyx.shape[axis], int(hits[-1]) + margin_vox + 1)))
    return tuple(out)  # type: ignore[return-value]


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of windows MONAI's sliding_window_inference visits (after padding to ``roi``)."""
    n = 1
    for size, r in zip(shape, roi):
        size = max(size, r)
        interval = max(int(r * (1 - overlap)), 1)
        n *= 1 if size <= r else math.ceil((size - r) / interval) + 1
    return n


def _mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    axes = sorted(set(axes))
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


class WindowPredictor:
    """Window → softmax probabilities; optional mirroring TTA; AMP on CUDA; counts windows."""

    def __init__(self, model: torch.nn.Module, device: torch.device, cfg: InferenceConfig,
                 progress: ProgressFn | None = None, total_windows: int = 1, fraction_range: tuple[float, float] = (0.0, 1.0)) -> None:
        self.model, self.device, self.cfg = model, device, cfg
        self.dtype = amp_dtype(device, cfg.amp)
        self.authors = cfg.compat == "authors"  # nnU-Net's predictor: logits averaged, softmax after blending
        # Mirroring is not forced by compat: averaging over flips only helps a model trained with mirror
        # augmentation (the test model is not flip-invariant: liver DSC 0.86 -> 0.46 with mirroring)
        self.flips = _mirror_sets(cfg.mirror_axes) if cfg.mirroring else [()]
        self.progress, self.total, self.range = progress, max(1, total_windows), fraction_range
        self.done = 0

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device_type="cuda", dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with ctx:
            return self.model.segment(x).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        prob = None
        for flip in self.flips:
            dims = [a + 2 for a in flip]
            xi = torch.flip(x, dims) if dims else x
            p = self._logits(xi) if self.authors else torch.softmax(self._logits(xi), dim=1)
            if dims:
                p = torch.flip(p, dims)
            prob = p if prob is None else prob + p
        assert prob is not None
        if len(self.flips) > 1:
            prob = prob / len(self.flips)
        self.done += x.shape[0]
        if self.progress is not None:
            lo, hi = self.range
            f = min(1.0, self.done / self.total)
            self.progress(lo + (hi - lo) * f, f"segmenting: window {min(self.done, self.total)}/{self.total}")
        return prob


def _aggregate_device(device: torch.device, cfg: InferenceConfig, shape: Sequence[int], n_classes: int) -> torch.device:
    if device.type != "cuda":
        return device
    if cfg.aggregate_on_cpu is not None:
        return torch.device("cpu") if cfg.aggregate_on_cpu else device
    need = 2 * 4 * n_classes * int(np.prod(shape))  # output + count map, float32
    free, _total = torch.cuda.mem_get_info(device)
    return device if need < 0.5 * free else torch.device("cpu")


@torch.no_grad()
def sliding_window_probabilities(
    model: torch.nn.Module, hu_zyx: np.ndarray, cfg: InferenceConfig, device: torch.device,
    *, slf_values: Sequence[float] = SLF_VALUES, progress: ProgressFn | None = None,
    fraction_range: tuple[float, float] = (0.0, 1.0), normalize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> torch.Tensor:
    """(C, z, y, x) float32 softmax probabilities of a canonical HU array (on the aggregation device).

    ``normalize``: the network's segmentation input map (a checkpoint's, PASTALib.model.preprocess);
    None: the SLF map with ``slf_values``."""
    from monai.inferers import sliding_window_inference

    normalize = normalize or SLFNormalization(tuple(slf_values))
    x = torch.from_numpy(np.asarray(normalize(np.asarray(hu_zyx, np.float32)), np.float32))[None, None]
    air = float(np.asarray(normalize(np.full(1, -1024.0, np.float32)))[0])  # SLF 0; nnU-Net CT: its lower clip, scaled
    shape = tuple(int(v) for v in hu_zyx.shape)
    # MONAI shrinks the window to the image along an axis shorter than the window, which the UNet cannot
    # take (sizes must be multiples of its divisor): pad with air up to the window and crop back.
    padded = tuple(max(n, r) for n, r in zip(shape, cfg.patch_size))
    if padded != shape:
        x = torch.nn.functional.pad(x, [p for n, q in zip(reversed(shape), reversed(padded)) for p in (0, q - n)],
                                    value=air)
    n_classes = int(getattr(getattr(model, "config", None), "num_seg_classes", 26))
    out_device = _aggregate_device(device, cfg, hu_zyx.shape, n_classes)
    predictor = WindowPredictor(model, device, cfg, progress, count_windows(padded, cfg.patch_size, cfg.overlap),
                                fraction_range)
    weight_map = None
    if cfg.compat == "authors":
        from PASTALib.infer.compat import nnunet_gaussian

        weight_map = torch.from_numpy(nnunet_gaussian(cfg.patch_size, cfg.sigma_scale)).to(device)
    prob = sliding_window_inference(
        x.to(out_device), roi_size=cfg.patch_size, sw_batch_size=cfg.batch_size, predictor=predictor,
        overlap=cfg.overlap, mode="gaussian", sigma_scale=cfg.sigma_scale, padding_mode="constant", cval=air,
        sw_device=device, device=out_device, roi_weight_map=weight_map,
    )
    if cfg.compat == "authors":  # blended logits → probabilities (nnU-Net's order)
        prob = torch.softmax(prob, dim=1)
    return prob[0, :, : shape[0], : shape[1], : shape[2]]


def segment_canonical(
    model: torch.nn.Module, hu_zyx: np.ndarray, cfg: InferenceConfig, device: torch.device,
    *, slf_values: Sequence[float] = SLF_VALUES, progress: ProgressFn | None = None,
    fraction_range: tuple[float, float] = (0.0, 1.0), normalize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Argmax label array (uint8, z, y, x) of a canonical HU array, and the box that was segmented.

    With ``crop_to_body`` only the body's bounding box is run through the network; voxels
    outside it are background (air around the patient, the table).
    """
    if cfg.crop_to_body:
        margin = int(math.ceil(cfg.body_margin_mm / cfg.spacing_mm))
        box = body_box(hu_zyx, cfg.body_threshold_hu, margin)
    else:
        box = tuple(slice(0, n) for n in hu_zyx.shape)  # type: ignore[assignment]
    labels = np.zeros(hu_zyx.shape, np.uint8)
    prob = sliding_window_probabilities(model, hu_zyx[box], cfg, device, slf_values=slf_values, progress=progress,
                                        fraction_range=fraction_range, normalize=normalize)
    labels[box] = prob.argmax(0).to(torch.uint8).cpu().numpy()
    return labels, box  # type: ignore[return-value]

"""Refinement of a synthesized lesion's neighbourhood with the trained DDPM (the synth ``refiner`` hook)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from PASTALib.runtime import amp_dtype, resolve_device
from monai.inferers import sliding_window_inference
from scipy import ndimage

from PASTALib.errors import SpecificationError
from PASTALib.refine.checkpoint import (
    CHECKPOINT_ENV,
    TRAIN_HINT,
    config_from_checkpoint,
    load_model_state,
    read_checkpoint,
)
from PASTALib.refine.config import RefinerConfig
from PASTALib.refine.model import build_model, build_scheduler, set_refine_timesteps

logger = logging.getLogger(__name__)


def region_weight(lesion: np.ndarray, margin_mm: float, spacing: tuple[float, ...] | float = 1.0) -> np.ndarray:
    """Blend weight refined -> original: 1 on the lesion and up to margin/2 from it, a cosine taper
    to 0 at ``margin_mm``, and exactly 0 at and beyond ``margin_mm`` (those voxels stay bit-identical)."""
    lesion = np.asarray(lesion, bool)
    if not lesion.any():
        raise SpecificationError("The refinement region is empty: no lesion voxel in the crop.")
    dist = ndimage.distance_transform_edt(~lesion, sampling=spacing).astype(np.float32)
    half = 0.5 * float(margin_mm)
    ramp = np.clip((dist - half) / half, 0.0, 1.0)
    weight = (0.5 * (1.0 + np.cos(np.pi * ramp))).astype(np.float32)
    weight[dist >= margin_mm] = 0.0
    return weight


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + pad, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


@dataclass
class CropRefinement:
    """Result of :meth:`Refiner.refine_crop`: refined HU, blend weight and what was done."""

    ct: np.ndarray
    weight: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


class Refiner:
    """Trained refinement DDPM; an instance is a ``synthesize_lesion(..., refiner=...)`` hook.

    ``refiner(ct_crop, organ_crop, alpha_crop, rng) -> ct_crop`` (canonical 1 mm crop, HU): noises
    the lesion neighbourhood (lesion = alpha >= 0.5, plus ``margin_mm``) to timestep t-1, denoises
    it in t DDPM steps with sliding windows and Gaussian blending, and blends the change back with
    :func:`region_weight`. The synthesizer keeps the result only where alpha > 0.
    Same ``rng`` state (i.e. same lesion seed) -> identical output.
    """

    def __init__(self, model: torch.nn.Module, config: RefinerConfig, device: str | torch.device = "cpu",
                 *, amp: bool = False, source: str | None = None) -> None:
        self.config = config
        self.device = resolve_device(device)  # 'auto' -> CUDA when available; a missing GPU is a DeviceError
        self.model = model.to(self.device).eval()
        self.scheduler = build_scheduler(config)
        self.amp_dtype = amp_dtype(self.device, amp)
        self.source = source
        self.last_info: dict[str, Any] = {}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu", *, amp: bool = False,
                        **overrides: Any) -> Refiner:
        """Load ``refiner.pt`` / ``checkpoint.pt`` from ``pasta refine train``.

        ``overrides`` change refinement-time settings (refine_steps, margin_mm, window_overlap, crop_size,
        sw_batch_size); settings that fix the network layout cannot be overridden.
        Raises MissingWeightsError (no file) or RefinerCheckpointError (corrupt / wrong layout).
        """
        obj = read_checkpoint(path)
        config = config_from_checkpoint(obj, path)
        if overrides:
            fixed = set(overrides) & {"channels", "num_res_blocks", "norm_num_groups", "num_train_timesteps", "schedule",
                                       "hu_min", "hu_max"}
            if fixed:
                raise SpecificationError(f"{sorted(fixed)} are fixed by the trained network; they cannot be overridden.")
            config = config.with_(**overrides)
        model = build_model(config)
        load_model_state(model, obj["model"], path)
        return cls(model, config, device, amp=amp, source=str(path))

    # ---------------------------------------------------------------- diffusion
    def _window(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        m = self.config.size_multiple
        return tuple(min(self.config.crop_size, int(np.ceil(s / m)) * m) for s in shape)

    @torch.inference_mode()
    def denoise(self, x0: np.ndarray, condition: np.ndarray, seed: int, steps: int | None = None) -> np.ndarray:
        """Partial noising of normalised ``x0`` to timestep steps-1, then ``steps`` DDPM steps.

        Each step predicts the noise with sliding windows (Gaussian blending, replicate padding) on
        ``self.device``; the scheduler step and all random numbers run on the CPU, so a seed gives the
        same noise on every device.
        """
        steps = int(steps or self.config.refine_steps)
        gen = torch.Generator("cpu").manual_seed(int(seed))
        x0_t = torch.from_numpy(np.ascontiguousarray(x0, np.float32))[None, None]
        cond = torch.from_numpy(np.ascontiguousarray(condition, np.float32))[None, None]
        timesteps = set_refine_timesteps(self.scheduler, steps)
        noise = torch.randn(x0_t.shape, generator=gen)
        x = self.scheduler.add_noise(x0_t, noise, timesteps[:1])
        roi = self._window(x0.shape)
        for t in timesteps.tolist():
            def predictor(window: torch.Tensor, t: int = t) -> torch.Tensor:
                tt = torch.full((window.shape[0],), t, device=window.device, dtype=torch.long)
                if self.amp_dtype is not None:
                    with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                        return self.model(window, timesteps=tt).float()
                return self.model(window, timesteps=tt)

            eps = sliding_window_inference(
                torch.cat([x, cond], dim=1), roi, self.config.sw_batch_size, predictor,
                overlap=self.config.window_overlap, mode="gaussian", padding_mode="replicate",
                sw_device=self.device, device="cpu",
            )
            x, _ = self.scheduler.step(eps.float(), t, x, generator=gen)
        return x[0, 0].numpy()

    # ---------------------------------------------------------------- crops
    def refine_crop(self, ct: np.ndarray, organ: np.ndarray, lesion: np.ndarray, seed: int,
                    *, margin_mm: float | None = None, spacing: float | tuple[float, ...] = 1.0) -> CropRefinement:
        """Refine the neighbourhood (``margin_mm``) of ``lesion`` in a canonical crop (HU, (x, y, z)).

        Returns the refined HU (float32; bit-identical where the weight is 0) and the weight.
        """
        t0 = time.perf_counter()
        margin = float(margin_mm if margin_mm is not None else self.config.margin_mm)
        ct = np.asarray(ct, np.float32)
        weight = region_weight(lesion, margin, spacing)
        box = _bbox(weight > 0, self.config.context_vox)
        sub = ct[box]
        x0 = self.config.normalize(sub)
        x = self.denoise(x0, np.asarray(organ, np.float32)[box], seed)
        change = self.config.denormalize(x) - self.config.denormalize(x0)
        w = weight[box]
        out = ct.copy()
        out[box] = np.where(w > 0, sub + w * change, sub)
        info = {
            "refined": True, "steps": self.config.refine_steps, "margin_mm": margin, "box_shape": tuple(sub.shape),
            "window": self._window(sub.shape), "seconds": time.perf_counter() - t0, "device": str(self.device),
            "mean_abs_change_hu": float(np.abs(change[w > 0]).mean()) if np.any(w > 0) else 0.0,
        }
        self.last_info = info
        return CropRefinement(out, weight, info)

    def __call__(self, ct_crop: np.ndarray, organ_crop: np.ndarray, alpha_crop: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        """The ``synthesize_lesion`` hook: refined HU crop (same shape)."""
        alpha = np.asarray(alpha_crop, np.float32)
        lesion = alpha >= 0.5
        if not lesion.any():
            lesion = alpha >= alpha.max()
        seed = int(rng.integers(2**63 - 1))
        return self.refine_crop(ct_crop, organ_crop, lesion, seed).ct

    def __repr__(self) -> str:
        return f"Refiner(source={self.source!r}, device={self.device}, channels={self.config.channels}, t={self.config.refine_steps})"


def load_refiner(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", **kwargs: Any) -> Refiner | None:
    """The refiner for ``path`` (or ``$PASTA_REFINER_CHECKPOINT``); None, with a warning, when neither is set.

    ``synthesize_lesion(..., refiner=load_refiner(path))`` then runs unrefined and its
    ``SynthesisResult.details['refined']`` is False. A given path that does not exist raises
    MissingWeightsError; a corrupt/wrong file raises RefinerCheckpointError.
    """
    if path is None:
        path = os.environ.get(CHECKPOINT_ENV) or None
    if path is None:
        logger.warning("No refinement checkpoint: lesions are synthesized without DDPM refinement. %s.", TRAIN_HINT)
        return None
    return Refiner.from_checkpoint(Path(path), device, **kwargs)

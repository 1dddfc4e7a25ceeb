"""Settings of the refinement DDPM and its CT intensity normalisation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from PASTALib.errors import SpecificationError


@dataclass(frozen=True)
class RefinerConfig:
    """Architecture, diffusion schedule, optimiser and refinement settings (paper defaults).

    Intensity normalisation: CT HU are clipped to ``[hu_min, hu_max]`` (default -1000..1000) and
    mapped linearly to [-1, 1] (``normalize``); the network sees that. Refinement never writes the
    clipped values back: it adds the refined *change* (in HU) to the original voxels, so bone above
    ``hu_max`` or air below ``hu_min`` keeps its value unless the model changes it.

    Network: ``monai.networks.nets.DiffusionModelUNet`` (3D, 2 input channels = noisy CT + organ
    mask condition concatenated, 1 output = predicted noise), ``channels`` per level (base 16 as in
    the paper), ``num_res_blocks`` residual blocks per level, no attention in the levels (MONAI's
    mid block always has one self-attention layer, at the coarsest level only).
    Diffusion: ``monai.networks.schedulers.DDPMScheduler`` with ``num_train_timesteps`` (T = 1000)
    and MONAI's linear beta schedule (1e-4..2e-2), epsilon prediction, L1 loss on the noise.
    Refinement: noise the synthesized crop to timestep ``refine_steps - 1`` and run ``refine_steps``
    DDPM steps back to 0, sliding windows of ``crop_size`` over the lesion neighbourhood only.
    """

    crop_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 64)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    refine_steps: int = 5
    lr: float = 1e-4
    weight_decay: float = 1e-5
    hu_min: float = -1000.0
    hu_max: float = 1000.0
    #: Training draws timesteps uniformly from [0, train_t_max) (None: all T, as in the paper).
    train_t_max: int | None = None
    #: Refinement region: everything farther than this (mm) from the lesion stays bit-identical.
    margin_mm: float = 10.0
    #: Sliding-window overlap (fraction of the window) and windows per forward pass.
    window_overlap: float = 0.25
    sw_batch_size: int = 1
    #: Voxels of context added around the refinement region before windowing.
    context_vox: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        self.validate()

    @property
    def levels(self) -> int:
        return len(self.channels)

    @property
    def size_multiple(self) -> int:
        """Window sides must be a multiple of this (one factor 2 per downsampling)."""
        return 2 ** (self.levels - 1)

    def validate(self) -> None:
        problems = []
        if self.levels < 2:
            problems.append("channels needs at least 2 levels, e.g. (16, 32, 64, 64)")
        if any(c <= 0 or c % self.norm_num_groups for c in self.channels):
            problems.append(f"every channel count must be a positive multiple of norm_num_groups={self.norm_num_groups}")
        if self.crop_size < self.size_multiple or self.crop_size % self.size_multiple:
            problems.append(f"crop_size {self.crop_size} must be a multiple of {self.size_multiple} (2^(levels-1))")
        if not 1 <= self.refine_steps <= self.num_train_timesteps:
            problems.append(f"refine_steps must be in 1..{self.num_train_timesteps}")
        if self.train_t_max is not None and not 1 <= self.train_t_max <= self.num_train_timesteps:
            problems.append(f"train_t_max must be in 1..{self.num_train_timesteps}")
        if not self.hu_max > self.hu_min:
            problems.append("hu_max must be above hu_min")
        if self.margin_mm <= 0:
            problems.append("margin_mm must be positive")
        if not 0 <= self.window_overlap < 1:
            problems.append("window_overlap must be in [0, 1)")
        if problems:
            raise SpecificationError("Invalid refiner settings: " + "; ".join(problems) + ".")

    # ------------------------------------------------------------------ intensities
    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """HU -> [-1, 1] after clipping to [hu_min, hu_max] (float32)."""
        hu = np.clip(np.asarray(hu, np.float32), self.hu_min, self.hu_max)
        return ((hu - self.hu_min) * (2.0 / (self.hu_max - self.hu_min)) - 1.0).astype(np.float32)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """[-1, 1] -> HU (float32)."""
        return ((np.asarray(x, np.float32) + 1.0) * (0.5 * (self.hu_max - self.hu_min)) + self.hu_min).astype(np.float32)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefinerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecificationError(f"Unknown refiner settings {unknown}; known: {sorted(known)}.")
        return cls(**data)

    def with_(self, **changes: Any) -> RefinerConfig:
        return replace(self, **changes)

    def architecture(self) -> dict[str, Any]:
        """The settings that fix the state-dict layout."""
        return {"channels": list(self.channels), "num_res_blocks": self.num_res_blocks, "norm_num_groups": self.norm_num_groups}

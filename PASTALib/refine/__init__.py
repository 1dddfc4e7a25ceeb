"""Refinement DDPM (paper: 3D conditional DDPM that makes synthesized lesions look real).

Built on MONAI: ``DiffusionModelUNet`` (organ mask concatenated as a condition channel),
``DDPMScheduler`` (T = 1000), ``DiffusionInferer`` (training), ``sliding_window_inference``
with Gaussian blending (refinement). Torch is imported here, so ``PASTALib.synth`` stays
torch-free: pass ``Refiner.from_checkpoint(path)`` as ``synthesize_lesion(..., refiner=...)``.
"""

from PASTALib.refine.apply import lesion_components, refine_case
from PASTALib.refine.checkpoint import (
    CHECKPOINT_ENV,
    RefinerCheckpointError,
    read_checkpoint,
)
from PASTALib.refine.config import RefinerConfig
from PASTALib.refine.data import Case, CropSampler, find_cases, load_case, load_cases
from PASTALib.refine.model import build_model, build_scheduler, set_refine_timesteps
from PASTALib.refine.refiner import CropRefinement, Refiner, load_refiner, region_weight
from PASTALib.refine.train import (
    RefinerTrainingError,
    TrainOptions,
    TrainResult,
    train_refiner,
)

__all__ = [
    "CHECKPOINT_ENV",
    "Case",
    "CropRefinement",
    "CropSampler",
    "Refiner",
    "RefinerCheckpointError",
    "RefinerConfig",
    "RefinerTrainingError",
    "TrainOptions",
    "TrainResult",
    "build_model",
    "build_scheduler",
    "find_cases",
    "lesion_components",
    "load_case",
    "load_cases",
    "load_refiner",
    "read_checkpoint",
    "refine_case",
    "region_weight",
    "set_refine_timesteps",
    "train_refiner",
]

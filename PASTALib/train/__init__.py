"""PASTA pre-training: stage 1 (segmentation) and stage 2 (attribute head on the frozen UNet).

    from PASTALib.train import Stage1Config, train_stage1, Stage2Config, train_stage2
    r1 = train_stage1(Stage1Config(data="gen/", out="runs/s1", device="cuda"))
    r2 = train_stage2(Stage2Config(data="gen/", out="runs/s2", init=str(r1.final_model)))

CLI: ``pasta train stage1|stage2 --data DIR --out DIR [--device cuda] [--progress-lines]``; several GPUs:
``torchrun --nproc_per_node N -m PASTALib train stage1 ...`` (DistributedDataParallel, rank 0 writes).
Both stages (and the refiner and classifier trainings) run on the one hook-based loop of
PASTALib.train.loop and report through PASTALib.progress. Stage 1 also takes ``--num-workers``, ``--compile``, ``--channels-last``; both stages write metrics.csv,
curves.png and (with the tensorboard package) OUT/tensorboard.
"""

from PASTALib.train.common import (
    DistContext,
    MetricsCSV,
    StopFlag,
    TrainingError,
    TrainingLog,
    TrainingOutOfMemoryError,
    amp_dtype,
    atomic_torch_save,
    init_distributed,
    poly_lr,
    resolve_device,
)
from PASTALib.train.data import (
    CaseRecord,
    LesionSample,
    PatchSampler,
    discover_cases,
    lesion_samples,
    load_case,
)
from PASTALib.train.loop import TrainingLoop, load_training_state
from PASTALib.train.stage1 import (
    DeepSupervisionLoss,
    Stage1Config,
    TrainResult,
    batch_dice,
    deep_supervision_weights,
    train_stage1,
)
from PASTALib.train.stage2 import (
    Stage2Config,
    evaluate_attributes,
    group_accuracy,
    train_stage2,
)

__all__ = [
    "CaseRecord",
    "DeepSupervisionLoss",
    "DistContext",
    "LesionSample",
    "MetricsCSV",
    "PatchSampler",
    "Stage1Config",
    "Stage2Config",
    "StopFlag",
    "TrainResult",
    "TrainingError",
    "TrainingLog",
    "TrainingLoop",
    "TrainingOutOfMemoryError",
    "amp_dtype",
    "atomic_torch_save",
    "batch_dice",
    "deep_supervision_weights",
    "discover_cases",
    "evaluate_attributes",
    "group_accuracy",
    "init_distributed",
    "lesion_samples",
    "load_case",
    "load_training_state",
    "poly_lr",
    "resolve_device",
    "train_stage1",
    "train_stage2",
]

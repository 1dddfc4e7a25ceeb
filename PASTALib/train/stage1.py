"""Stage 1: segmentation pre-training of the PASTA UNet on synthetic lesions (25 classes + background).

Recipe (paper / nnU-Net v1): MONAI DiceCELoss (soft Dice over the foreground classes, batch Dice,
plus cross-entropy) with deep supervision over the five decoder outputs, weights 1/2^i
normalised to sum 1 with the lowest-resolution output dropped as nnU-Net v1 does; random patches
(128³ by default) with one third of each batch forced onto foreground (lesions preferred); SGD
momentum 0.99 Nesterov, weight decay 3e-5, poly learning rate from 1e-2, gradient clipping at 12.

Input normalisation: the SLF map (PASTALib.model.preprocess), not nnU-Net's dataset-statistics CT
normalisation, so stage 1, stage 2, fine-tuning and inference share one fixed, dataset-independent
input map and no fingerprint has to travel with the weights.

Exact resume: ``<out>/checkpoint_last.pt`` (written atomically every ``checkpoint_every``
iterations, on SIGTERM/SIGINT and at the end) holds the model, optimizer, AMP scaler, iteration,
patch-sampler state and the python/numpy/torch RNG states. On CPU a resumed run reproduces the
uninterrupted loss curve bit for bit; on CUDA up to cuDNN's non-deterministic kernels.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from PASTALib.model.checkpoint import load_pasta_checkpoint
from PASTALib.model.preprocess import SLF_VALUES, slf_normalize
from PASTALib.model.unet import PastaUNet, UNetConfig
from PASTALib.train.common import (
    IterationCallback,
    MetricsCSV,
    Progress,
    StopFlag,
    TrainingError,
    amp_dtype,
    atomic_torch_save,
    autocast,
    make_grad_scaler,
    poly_lr,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from PASTALib.train.data import LESION_LABELS, PatchSampler, discover_cases, load_case

CHECKPOINT_NAME = "checkpoint_last.pt"
FINAL_NAME = "model_final.pth"
METRICS_NAME = "metrics.csv"
STAGE1_FIELDS = ["iteration", "lr", "loss", "dice_lesion", "dice_organ", "seconds"]


@dataclass
class Stage1Config:
    data: str
    out: str
    iterations: int = 1000
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (128, 128, 128)
    lr: float = 1e-2
    optimizer: str = "sgd"  # "sgd" (nnU-Net: momentum 0.99, Nesterov) or "adam" (small-model / CPU checks)
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    fg_fraction: float = 0.33
    lesion_priority: float = 0.5  # share of forced-foreground patches centred on a lesion class
    flip: bool = True
    lesion_weight: float = 1.0  # class weight of the lesion classes 11-25 in Dice and CE (1 = unweighted, the recipe)
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_classes: int = 26
    base_channels: int = 64
    max_channels: int = 1024
    num_stages: int = 6
    init: str | None = None  # PASTA weights to start from (heads re-initialised if classes differ)
    resume: bool = True
    progress_lines: bool = False
    progress_bar: bool = True
    num_threads: int | None = None
    slf_values: tuple[float, ...] = SLF_VALUES

    def model_config(self) -> UNetConfig:
        return UNetConfig(num_seg_classes=self.num_classes, base_channels=self.base_channels,
                          max_channels=self.max_channels, num_stages=self.num_stages)

    def validate(self) -> None:
        cfg = self.model_config()
        if len(self.patch_size) != 3 or any(s % cfg.divisor or s <= 0 for s in self.patch_size):
            raise TrainingError(f"patch size {self.patch_size} must be 3 positive multiples of {cfg.divisor}")
        if min(self.patch_size) // cfg.divisor < 2:
            raise TrainingError(f"patch size {self.patch_size} leaves a 1-voxel bottleneck (instance norm needs ≥ 2); "
                                f"use ≥ {2 * cfg.divisor} or fewer stages")
        if self.optimizer not in ("sgd", "adam"):
            raise TrainingError(f"unknown optimizer {self.optimizer!r}; use sgd or adam")
        if self.iterations < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise TrainingError("iterations, batch size and checkpoint interval must be ≥ 1")


@dataclass
class TrainResult:
    iteration: int
    out: Path
    final_model: Path | None
    checkpoint: Path
    metrics: Path
    stopped_early: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


def make_optimizer(model: torch.nn.Module, cfg: Stage1Config) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov; the nnU-Net/PASTA recipe) or Adam; both under the poly schedule."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                           weight_decay=cfg.weight_decay)


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


def _config_json(cfg: Any) -> dict:
    data = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}


def check_resume_compatible(saved: dict, current: dict, keys: Sequence[str], path: Path) -> None:
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
    if diff:
        raise TrainingError(
            f"{path} was written with different settings ({'; '.join(diff)}); use the same settings, "
            "another --out folder, or --no-resume to start over"
        )


def train_stage1(cfg: Stage1Config, *, callback: IterationCallback | None = None,
                 stop: StopFlag | None = None) -> TrainResult:
    """Run (or resume) stage-1 training; returns where the model and metrics are."""
    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    stop = stop or StopFlag()

    seed_everything(cfg.seed)
    records = discover_cases(cfg.data)
    cases = [load_case(r, seed=cfg.seed + i) for i, r in enumerate(records)]
    sampler = PatchSampler(cases, cfg.patch_size, fg_fraction=cfg.fg_fraction,
                           lesion_priority=cfg.lesion_priority, flip=cfg.flip, seed=cfg.seed)

    mcfg = cfg.model_config()
    model = PastaUNet(mcfg)
    if cfg.init and not (cfg.resume and ckpt_path.is_file()):
        load_pasta_checkpoint(model, cfg.init, for_finetuning=True)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    dtype = amp_dtype(device, cfg.amp)
    scaler = make_grad_scaler(device, dtype)
    criterion = DeepSupervisionLoss(mcfg.num_stages - 1, class_weights(cfg.num_classes, cfg.lesion_weight))

    iteration = 0
    cfg_json = _config_json(cfg)
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        check_resume_compatible(state["config"], cfg_json, ["num_classes", "base_channels", "max_channels",
                                                            "num_stages", "patch_size", "batch_size", "lr", "optimizer", "lesion_weight", "seed"], ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        iteration = int(state["iteration"])
    (out / "config.json").write_text(json.dumps(cfg_json, indent=2))
    (out / "model_config.json").write_text(json.dumps(mcfg.to_dict(), indent=2))
    metrics = MetricsCSV(out / METRICS_NAME, STAGE1_FIELDS, resume_iteration=iteration)

    def save() -> None:
        atomic_torch_save({
            "kind": "pasta-train-stage1", "format": 1, "iteration": iteration,
            "model": model.state_dict(), "model_config": mcfg.to_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "sampler": sampler.state_dict(),
            "rng": rng_state(), "config": cfg_json,
        }, ckpt_path)

    progress = Progress(cfg.iterations, iteration, "stage1", cfg.progress_lines, cfg.progress_bar,
                        every=max(1, cfg.iterations // 200))
    progress.message(iteration / cfg.iterations, f"stage1 start at iteration {iteration}/{cfg.iterations} on {device}")
    model.train()
    stopped = False
    try:
        while iteration < cfg.iterations:
            if stop.stop:
                stopped = True
                break
            t0 = time.perf_counter()
            lr = poly_lr(cfg.lr, iteration, cfg.iterations)
            for group in optimizer.param_groups:
                group["lr"] = lr
            img, lab = sampler.sample(cfg.batch_size)
            x = torch.from_numpy(slf_normalize(img, values=cfg.slf_values)).to(device, non_blocking=True)
            y = torch.from_numpy(lab.astype(np.int64)).to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                outputs = model(x).segmentation
            loss = criterion(outputs, y)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {float(loss)} at iteration {iteration + 1}; lower --lr or disable --amp")
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
            iteration += 1
            d_lesion, d_organ = batch_dice(outputs[0].detach(), y)
            row = {"iteration": iteration, "lr": lr, "loss": float(loss.detach()), "dice_lesion": d_lesion,
                   "dice_organ": d_organ, "seconds": time.perf_counter() - t0}
            metrics.write(row)
            if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                save()
            progress.update(iteration, f"stage1 iteration {iteration}/{cfg.iterations} loss {row['loss']:.4f}",
                            loss=row["loss"])
            if callback is not None:
                callback(iteration, row)
    finally:
        progress.close()
        if iteration > 0 and (stopped or stop.stop) and iteration % cfg.checkpoint_every != 0:
            save()
    final = None
    if iteration >= cfg.iterations:
        final = atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / FINAL_NAME)
        progress.message(1.0, f"stage1 done: {final}")
    return TrainResult(iteration, out, final, ckpt_path, out / METRICS_NAME, stopped_early=stopped)

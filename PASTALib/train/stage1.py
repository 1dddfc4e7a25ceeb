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

Multi-GPU: the same command under ``torchrun --nproc_per_node N -m PASTALib train stage1 ...``
joins a process group (NCCL on CUDA with one GPU per process, gloo on CPU) and wraps the model in
DistributedDataParallel; ``batch_size`` is per process (global batch = N x batch_size). Every
rank draws its own patches (sampler seed derived from ``seed`` and the rank; rank 0 keeps ``seed``
so a 1-process run is unchanged); rank 0 alone writes config/metrics/TensorBoard/curves/progress
and the checkpoint, which holds every rank's sampler and RNG state (gathered at the save, then a
barrier). Resuming with the same world size is exact; with a different one the weights, optimizer
and iteration are restored, the per-rank patch streams are re-seeded from (seed, rank, iteration)
and a notice says the continuation is not bit-identical to any uninterrupted run.

On CUDA the autocast dtype follows the GPU's compute capability (bf16 from sm_80, else fp16 with a
GradScaler; ``amp_dtype`` forces one) and cuDNN benchmarks its algorithms for the fixed patch shape.

Throughput options: ``num_workers`` (DataLoader worker processes making the batches, see
data.IterationPatchBatches; default 0 on CPU, a few on CUDA), ``compile`` (torch.compile) and
``channels_last`` (channels_last_3d memory format for the model and inputs; off by default because
InstanceNorm3d returns the standard layout, so each convolution converts back - see BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from PASTALib.io.files import write_text_atomic
from PASTALib.model.checkpoint import load_pasta_checkpoint
from PASTALib.model.preprocess import SLF_VALUES, SLFNormalization, normalization_from_dict
from PASTALib.model.unet import PastaUNet, UNetConfig
from PASTALib.train.common import (
    AMP_CHOICES,
    DistContext,
    IterationCallback,
    MetricsCSV,
    Progress,
    StopFlag,
    TrainingError,
    TrainingLog,
    amp_dtype,
    atomic_torch_save,
    autocast,
    configure_fixed_shape_training,
    init_distributed,
    output_lock,
    make_grad_scaler,
    maybe_compile,
    poly_lr,
    rank_seed,
    rng_state,
    seed_everything,
    set_rng_state,
    translate_out_of_memory,
)
from PASTALib.train.data import (
    LESION_LABELS,
    IterationPatchBatches,
    PatchSampler,
    discover_cases,
    load_case,
)

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
    #: autocast dtype on CUDA: "auto" (bf16 from compute capability 8.0, else fp16 + GradScaler),
    #: "bf16" or "fp16" (forces that dtype; fp16 always trains through a GradScaler)
    amp_dtype: str = "auto"
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
    #: input map of the network (None: the SLF map of ``slf_values``); ``{"scheme": "nnunet_ct", ...}`` for
    #: nnU-Net's CT normalisation (fine-tuning from PASTA_final.pth, PASTALib.model.preprocess). Stored in
    #: model_final.pth's metadata block so inference applies the same map.
    normalization: dict[str, Any] | None = None
    #: extra fields of model_final.pth's metadata block (PASTALib.capabilities.make_metadata: kind, classes)
    metadata: dict[str, Any] | None = None
    #: DataLoader worker processes producing the batches (None: 0 on CPU, min(6, cores per process - 1)
    #: on CUDA). 0 draws patches in the training process from one restorable sampler (the historical
    #: stream); > 0 seeds each iteration's batch from (seed, rank, iteration) - also exactly
    #: resumable, but a different patch stream, so keep the setting's on/off state across a resume.
    num_workers: int | None = None
    prefetch_factor: int = 2
    compile: bool = False  # torch.compile the model (falls back to eager with a notice where unsupported)
    compile_backend: str = "inductor"
    channels_last: bool = False  # torch.channels_last_3d memory format (model and inputs)
    tensorboard: bool = True  # OUT/tensorboard event files when the tensorboard package is installed
    curves: bool = True  # OUT/curves.png (loss / Dice) at every checkpoint and at the end

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
        if self.amp_dtype not in AMP_CHOICES:
            raise TrainingError(f"unknown --amp-dtype {self.amp_dtype!r}; use {', '.join(AMP_CHOICES)}")
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


def resolve_num_workers(requested: int | None, device: torch.device, world_size: int = 1) -> int:
    """Explicit setting, else 0 on CPU (the training process is the CPU bottleneck anyway) and on CUDA
    enough workers to overlap patch making with the GPU step (cores per process - 1, at most 6)."""
    if requested is not None:
        if requested < 0:
            raise TrainingError("--num-workers must be ≥ 0")
        return int(requested)
    if device.type != "cuda":
        return 0
    return max(1, min(6, (os.cpu_count() or 2) // max(world_size, 1) - 1))


def _unused_parameters(model: PastaUNet, ds_weights: Sequence[float]) -> list[str]:
    """Parameters stage 1 never gives a gradient: the attribute head and the segmentation output whose
    deep-supervision weight is 0. Freezing them is a no-op for SGD/Adam (they skip grad-less
    parameters) and lets DistributedDataParallel run without find_unused_parameters."""
    n_out = len(ds_weights)
    names = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    for i, w in enumerate(ds_weights):
        if w == 0:  # outputs are full resolution first: output i is seg_outputs[n_out - 1 - i]
            names += [n for n, _ in model.named_parameters() if n.startswith(f"seg_outputs.{n_out - 1 - i}.")]
    return names


def build_model_and_loss(cfg: Stage1Config, device: torch.device, *, init: str | None = None
                         ) -> tuple[PastaUNet, DeepSupervisionLoss]:
    """The stage-1 network (``init`` weights loaded, never-trained outputs frozen) and its loss, both
    on ``device``: the loss holds the cross-entropy / Dice class-weight buffers when
    ``lesion_weight`` is not 1, and they must sit where the logits are."""
    mcfg = cfg.model_config()
    model = PastaUNet(mcfg)
    if init:
        load_pasta_checkpoint(model, init, for_finetuning=True)
    ds_weights = deep_supervision_weights(mcfg.num_stages - 1)
    unused = set(_unused_parameters(model, ds_weights))
    for name, p in model.named_parameters():
        if name in unused:
            p.requires_grad_(False)
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    criterion = DeepSupervisionLoss(mcfg.num_stages - 1, class_weights(cfg.num_classes, cfg.lesion_weight)).to(device)
    return model, criterion


def train_stage1(cfg: Stage1Config, *, callback: IterationCallback | None = None,
                 stop: StopFlag | None = None) -> TrainResult:
    """Run (or resume) stage-1 training; returns where the model and metrics are. Under torchrun
    (WORLD_SIZE > 1) runs data-parallel; see the module docstring."""
    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dist_ctx, device = init_distributed(cfg.device)
    try:
        with output_lock(cfg.out, dist_ctx):
            return _train_stage1(cfg, dist_ctx, device, callback, stop or StopFlag())
    finally:
        dist_ctx.close()


def _log(dist_ctx: DistContext, text: str) -> None:
    if dist_ctx.is_main:
        print(text, file=sys.stderr, flush=True)


def _train_stage1(cfg: Stage1Config, dist_ctx: DistContext, device: torch.device,
                  callback: IterationCallback | None, stop: StopFlag) -> TrainResult:
    out = Path(cfg.out)
    main = dist_ctx.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    log = lambda text: _log(dist_ctx, text)
    rank, world = dist_ctx.rank, dist_ctx.world_size

    seed_everything(cfg.seed)  # same on every rank: identical initial weights (DDP also broadcasts rank 0's)
    records = discover_cases(cfg.data)
    cases = [load_case(r, seed=cfg.seed + i) for i, r in enumerate(records)]
    sampler_kw = {"fg_fraction": cfg.fg_fraction, "lesion_priority": cfg.lesion_priority, "flip": cfg.flip}
    sampler = PatchSampler(cases, cfg.patch_size, seed=cfg.seed if rank == 0 else rank_seed(cfg.seed, rank),
                           **sampler_kw)
    num_workers = resolve_num_workers(cfg.num_workers, device, world)
    loader_mode = "per-iteration" if num_workers > 0 else "stream"

    mcfg = cfg.model_config()
    init = cfg.init if cfg.init and not (cfg.resume and ckpt_path.is_file()) else None
    model, criterion = build_model_and_loss(cfg, device, init=init)
    configure_fixed_shape_training(device)
    optimizer = make_optimizer(model, cfg)
    dtype = amp_dtype(device, cfg.amp, cfg.amp_dtype)
    scaler = make_grad_scaler(device, dtype)

    iteration = 0
    resumed_from: int | None = None
    cfg_json = _config_json(cfg)
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        check_resume_compatible(state["config"], cfg_json, ["num_classes", "base_channels", "max_channels",
                                                            "num_stages", "patch_size", "batch_size", "lr", "optimizer", "lesion_weight", "seed"], ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        iteration = int(state["iteration"])
        resumed_from = iteration
        saved_world = int(state.get("world_size", 1))
        saved_mode = state.get("loader", "stream")
        samplers, rngs = state.get("samplers") or [state["sampler"]], state.get("rngs") or [state["rng"]]
        if saved_world == world:
            sampler.load_state_dict(samplers[rank])
            set_rng_state(rngs[rank])
        else:
            log(f"resuming a {saved_world}-process checkpoint with {world} process(es): weights, optimizer and "
                f"iteration {iteration} are restored, the per-rank patch streams are re-seeded from (seed, rank, "
                "iteration); the continuation is valid training but not bit-identical to an uninterrupted run")
            sampler = PatchSampler(cases, cfg.patch_size, seed=rank_seed(cfg.seed, rank, iteration), **sampler_kw)
            set_rng_state(rngs[0])
        del state  # model and optimizer hold copies now; do not keep a 1.9 GB CPU copy for the whole run
        if saved_mode != loader_mode:
            log(f"resuming a checkpoint written with the {saved_mode!r} patch stream using the {loader_mode!r} one "
                f"(--num-workers {'> 0' if num_workers else '0'}): valid training, not bit-identical to an "
                "uninterrupted run")
    if dist_ctx.enabled:  # every rank must continue from the same iteration (several nodes: one shared --out)
        dist_ctx.agree_on_resume(resumed_from, ckpt_path)
    if main:
        write_text_atomic(out / "config.json", json.dumps(cfg_json, indent=2))
        write_text_atomic(out / "model_config.json", json.dumps(mcfg.to_dict(), indent=2))
        metrics = MetricsCSV(out / METRICS_NAME, STAGE1_FIELDS, resume_iteration=iteration)
    curves = TrainingLog(out, out / METRICS_NAME, [("loss", ["loss"]), ("training Dice", ["dice_lesion", "dice_organ"])],
                         tensorboard=cfg.tensorboard, enabled=main and cfg.curves, purge_step=iteration, log=log)

    # DDP over the raw model (its state dict keeps the plain PASTA keys), then torch.compile
    train_model: torch.nn.Module = model
    if dist_ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    eager_model = train_model
    train_model, compiled = maybe_compile(train_model, cfg.compile, cfg.compile_backend, log=log)

    def save() -> None:
        # collective: every rank contributes its sampler / RNG state, rank 0 writes, all wait
        samplers_now = dist_ctx.all_gather_object(sampler.state_dict())
        rngs_now = dist_ctx.all_gather_object(rng_state())
        if main:
            atomic_torch_save({
                "kind": "pasta-train-stage1", "format": 1, "iteration": iteration,
                "model": model.state_dict(), "model_config": mcfg.to_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "sampler": samplers_now[0],
                "rng": rngs_now[0], "config": cfg_json, "world_size": world, "loader": loader_mode,
                **({"samplers": samplers_now, "rngs": rngs_now} if world > 1 else {}),
            }, ckpt_path)
            curves.checkpoint()
        dist_ctx.barrier()

    normalize = normalization_from_dict(cfg.normalization) if cfg.normalization else SLFNormalization(tuple(cfg.slf_values))
    batches = None
    if num_workers > 0 and iteration < cfg.iterations:
        dataset = IterationPatchBatches(cases, cfg.patch_size, cfg.batch_size, seed=cfg.seed, rank=rank,
                                        start=iteration, stop=cfg.iterations, slf_values=cfg.slf_values,
                                        normalize=normalize, **sampler_kw)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                             pin_memory=device.type == "cuda", persistent_workers=True,
                                             prefetch_factor=max(1, cfg.prefetch_factor))
        batches = iter(loader)

    def next_batch(it: int) -> tuple[torch.Tensor, torch.Tensor]:
        if batches is None:
            img, lab = sampler.sample(cfg.batch_size)
            return torch.from_numpy(normalize(img)), torch.from_numpy(lab.astype(np.int64))
        got, x, y = next(batches)
        if got != it:  # cannot happen with the round-robin DataLoader; guards exact resume
            raise TrainingError(f"data loader returned the batch of iteration {got} for iteration {it}")
        return x, y

    oom_context = {"device": device, "batch_size": cfg.batch_size, "size": cfg.patch_size,
                   "size_flag": "--patch-size", "amp": dtype is not None}
    progress = Progress(cfg.iterations, iteration, "stage1", cfg.progress_lines and main, cfg.progress_bar and main,
                        every=max(1, cfg.iterations // 200))
    progress.message(iteration / cfg.iterations, f"stage1 start at iteration {iteration}/{cfg.iterations} on {device}"
                     + (f" x {world} processes" if world > 1 else ""))
    model.train()
    stopped = failed = False
    stop_requested = False  # agreed by all ranks (all-reduced with the step's statistics)
    first_step = True

    def forward_backward(x: torch.Tensor, y: torch.Tensor, net: torch.nn.Module):
        with autocast(device, dtype):
            outputs = net(x).segmentation
        loss = criterion(outputs, y)
        d_lesion, d_organ = batch_dice(outputs[0].detach(), y)
        local_stop = float(stop.stop)
        if dist_ctx.enabled:  # mean loss / Dice over ranks (NaN Dice = no voxels: left out) and the stop flag
            vals = torch.tensor([float(loss.detach()), 0.0 if math.isnan(d_lesion) else d_lesion,
                                 float(not math.isnan(d_lesion)), 0.0 if math.isnan(d_organ) else d_organ,
                                 float(not math.isnan(d_organ)), local_stop], dtype=torch.float64, device=device)
            vals = dist_ctx.all_reduce_sum(vals).tolist()
            loss_value = vals[0] / world
            d_lesion = vals[1] / vals[2] if vals[2] else math.nan
            d_organ = vals[3] / vals[4] if vals[4] else math.nan
            local_stop = vals[5]
        else:
            loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingError(f"loss became {loss_value} at iteration {iteration + 1}; lower --lr or disable --amp")
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        return loss_value, d_lesion, d_organ, local_stop > 0

    try:
        while iteration < cfg.iterations:
            if stop_requested or (not dist_ctx.enabled and stop.stop):
                stopped = True
                break
            t0 = time.perf_counter()
            lr = poly_lr(cfg.lr, iteration, cfg.iterations)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = next_batch(iteration)
            x = x.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            y = y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with translate_out_of_memory(iteration=iteration, **oom_context):
                try:
                    loss_value, d_lesion, d_organ, stop_requested = forward_backward(x, y, train_model)
                except Exception as exc:
                    if not (compiled and first_step) or isinstance(exc, TrainingError) or _is_oom(exc):
                        raise
                    log(f"--compile: torch.compile failed at the first step ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}); training runs eagerly")
                    train_model, compiled = eager_model, False
                    optimizer.zero_grad(set_to_none=True)
                    loss_value, d_lesion, d_organ, stop_requested = forward_backward(x, y, train_model)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
            first_step = False
            iteration += 1
            row = {"iteration": iteration, "lr": lr, "loss": loss_value, "dice_lesion": d_lesion,
                   "dice_organ": d_organ, "seconds": time.perf_counter() - t0}
            if main:
                metrics.write(row)
                curves.scalars(iteration, row)
            if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                save()
            progress.update(iteration, f"stage1 iteration {iteration}/{cfg.iterations} loss {row['loss']:.4f}",
                            loss=row["loss"])
            if callback is not None:
                callback(iteration, row)
    except BaseException:
        failed = True
        raise
    finally:
        progress.close()
        batches = None  # shuts the DataLoader workers down
        # single process: also after an error once a stop was requested (the old behaviour); with
        # several processes only on an agreed stop (a collective after one rank failed would hang)
        want = stopped or (not dist_ctx.enabled and stop.stop)
        if iteration > 0 and want and iteration % cfg.checkpoint_every != 0 and not (failed and dist_ctx.enabled):
            save()
        if main:
            curves.checkpoint() if not failed else None
            curves.close()
    final = None
    if iteration >= cfg.iterations:
        if main:
            from PASTALib.capabilities import make_metadata, wrap_with_metadata

            # the metadata block says what the file can do and which input map it expects (PASTALib.capabilities)
            meta = make_metadata(kind="stage1", segment=True, attributes=False,
                                 segmentation_normalization=normalize.to_dict(), init=cfg.init)
            meta.update(cfg.metadata or {})
            final = atomic_torch_save(wrap_with_metadata(
                {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, meta), out / FINAL_NAME)
        else:
            final = out / FINAL_NAME
        dist_ctx.barrier()
        progress.message(1.0, f"stage1 done: {final}")
    return TrainResult(iteration, out, final, ckpt_path, out / METRICS_NAME, stopped_early=stopped)


def _is_oom(exc: BaseException) -> bool:
    from PASTALib.train.common import is_out_of_memory

    return is_out_of_memory(exc)

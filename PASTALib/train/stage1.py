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

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from PASTALib.model.checkpoint import load_pasta_checkpoint
from PASTALib.model.preprocess import SLF_VALUES, SLFNormalization, normalization_from_dict
from PASTALib.model.unet import PastaUNet, UNetConfig
from PASTALib.train.common import (
    AMP_CHOICES,
    DistContext,
    IterationCallback,
    StopFlag,
    TrainingError,
    amp_dtype,
    atomic_torch_save,
    autocast,
    configure_fixed_shape_training,
    is_out_of_memory,
    make_grad_scaler,
    maybe_compile,
    poly_lr,
    rank_seed,
    translate_out_of_memory,
)
from PASTALib.train.data import IterationPatchBatches, PatchSampler, discover_cases, load_case
from PASTALib.train.loop import gather_rank_state, load_training_state, restore_optimisation, restore_rank_state
from PASTALib.train.losses import (  # noqa: F401  (part of stage 1's API)
    DeepSupervisionLoss,
    batch_dice,
    class_weights,
    deep_supervision_weights,
)
from PASTALib.train.stage_loop import (  # noqa: F401  (part of stage 1's API)
    CHECKPOINT_NAME,
    FINAL_NAME,
    METRICS_NAME,
    StageLoop,
    TrainResult,
    check_resume_compatible,
)

STAGE1_FIELDS = ["iteration", "lr", "loss", "dice_lesion", "dice_organ", "seconds"]
#: settings a checkpoint must share with the run that resumes it
RESUME_KEYS = ["num_classes", "base_channels", "max_channels", "num_stages", "patch_size", "batch_size", "lr",
               "optimizer", "lesion_weight", "seed"]


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


def make_optimizer(model: torch.nn.Module, cfg: Stage1Config) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov; the nnU-Net/PASTA recipe) or Adam; both under the poly schedule."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                           weight_decay=cfg.weight_decay)


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
    return Stage1Loop.train(cfg, callback=callback, stop=stop)


class Stage1Loop(StageLoop):
    """Stage-1 segmentation training on the shared loop (hooks of :class:`TrainingLoop`)."""

    name = "stage1"
    fields = STAGE1_FIELDS
    curves = [("loss", ["loss"]), ("training Dice", ["dice_lesion", "dice_organ"])]

    def __init__(self, cfg: Stage1Config, dist_ctx: DistContext, device: torch.device, *,
                 callback: IterationCallback | None = None, stop: StopFlag | None = None) -> None:
        super().__init__(cfg, dist_ctx, device, callback=callback, stop=stop)
        rank = dist_ctx.rank
        self.cases = [load_case(r, seed=cfg.seed + i) for i, r in enumerate(discover_cases(cfg.data))]
        self.sampler_kw = {"fg_fraction": cfg.fg_fraction, "lesion_priority": cfg.lesion_priority, "flip": cfg.flip}
        self.sampler = PatchSampler(self.cases, cfg.patch_size, seed=cfg.seed if rank == 0 else rank_seed(cfg.seed, rank),
                                    **self.sampler_kw)
        self.num_workers = resolve_num_workers(cfg.num_workers, device, dist_ctx.world_size)
        self.loader_mode = "per-iteration" if self.num_workers > 0 else "stream"
        self.mcfg = cfg.model_config()
        init = cfg.init if cfg.init and not (cfg.resume and self.checkpoint_path.is_file()) else None
        self.model, self.criterion = build_model_and_loss(cfg, device, init=init)
        configure_fixed_shape_training(device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.dtype = amp_dtype(device, cfg.amp, cfg.amp_dtype)
        self.scaler = make_grad_scaler(device, self.dtype)
        self.normalize = (normalization_from_dict(cfg.normalization) if cfg.normalization
                          else SLFNormalization(tuple(cfg.slf_values)))
        self.oom_context = {"device": device, "batch_size": cfg.batch_size, "size": cfg.patch_size,
                            "size_flag": "--patch-size", "amp": self.dtype is not None}
        self.batches: Iterator | None = None
        self.train_model: torch.nn.Module = self.model
        self.eager_model, self.compiled, self.first_step = self.model, False, True

    # --- resume / checkpoint -------------------------------------------------------------------

    def load_checkpoint(self) -> int | None:
        cfg = self.cfg
        if not (cfg.resume and self.checkpoint_path.is_file()):
            return None
        state = load_training_state(self.checkpoint_path, ("config", "model", "optimizer", "iteration"))
        check_resume_compatible(state["config"], self.cfg_json, RESUME_KEYS, self.checkpoint_path)
        iteration = restore_optimisation(state, self.model, self.optimizer, self.scaler,
                                         source=self.checkpoint_path)

        def reseed() -> None:
            self.sampler = PatchSampler(self.cases, cfg.patch_size, seed=rank_seed(cfg.seed, self.dist.rank, iteration),
                                        **self.sampler_kw)

        if not restore_rank_state(state, self.dist, self.sampler, reseed=reseed):
            self.warn(f"resuming a {state.get('world_size', 1)}-process checkpoint with {self.dist.world_size} "
                     f"process(es): weights, optimizer and iteration {iteration} are restored, the per-rank patch "
                     "streams are re-seeded from (seed, rank, iteration); the continuation is valid training but "
                     "not bit-identical to an uninterrupted run")
        saved_mode = state.get("loader", "stream")
        del state  # model and optimizer hold copies now; do not keep a 1.9 GB CPU copy for the whole run
        if saved_mode != self.loader_mode:
            self.warn(f"resuming a checkpoint written with the {saved_mode!r} patch stream using the "
                     f"{self.loader_mode!r} one (--num-workers {'> 0' if self.num_workers else '0'}): valid "
                     "training, not bit-identical to an uninterrupted run")
        return iteration

    def save_checkpoint(self) -> None:
        # collective: every rank contributes its sampler / RNG state, rank 0 writes, all wait
        ranks = gather_rank_state(self.dist, self.sampler.state_dict())
        if self.main:
            atomic_torch_save({
                "kind": "pasta-train-stage1", "format": 1, "iteration": self.iteration,
                "model": self.model.state_dict(), "model_config": self.mcfg.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                **ranks, "config": self.cfg_json, "loader": self.loader_mode,
            }, self.checkpoint_path)
            self.log_writer.checkpoint()
        self.dist.barrier()

    # --- start / end ---------------------------------------------------------------------------

    def on_train_start(self) -> None:
        cfg = self.cfg
        self.start_outputs({"model_config.json": self.mcfg.to_dict()})
        # DDP over the raw model (its state dict keeps the plain PASTA keys), then torch.compile
        self.eager_model = self.data_parallel(self.model)
        self.train_model, self.compiled = maybe_compile(self.eager_model, cfg.compile, cfg.compile_backend, log=self.warn)
        self._start_loader()
        world = self.dist.world_size
        self.start_progress(f" x {world} processes" if world > 1 else "")
        self.model.train()

    def _start_loader(self) -> None:
        cfg = self.cfg
        if self.num_workers == 0 or self.iteration >= cfg.iterations:
            return
        dataset = IterationPatchBatches(self.cases, cfg.patch_size, cfg.batch_size, seed=cfg.seed, rank=self.dist.rank,
                                        start=self.iteration, stop=cfg.iterations, slf_values=cfg.slf_values,
                                        normalize=self.normalize, **self.sampler_kw)
        # forkserver, not fork: forking a process whose other libraries run thread pools (OpenVINO's TBB after a
        # fast segmentation in the same Python session) crashed the workers' shutdown with a SIGSEGV
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda", persistent_workers=True,
                                             prefetch_factor=max(1, cfg.prefetch_factor),
                                             multiprocessing_context="forkserver")
        self.batches = iter(loader)

    def on_train_end(self, *, failed: bool) -> None:
        self.batches = None  # shuts the DataLoader workers down
        super().on_train_end(failed=failed)

    def result(self) -> TrainResult:
        final = None
        if self.iteration >= self.cfg.iterations:
            final = self._write_final() if self.main else self.out / FINAL_NAME
        return self.finish(final)

    def _write_final(self) -> Path:
        from PASTALib.capabilities import make_metadata, wrap_with_metadata

        # the metadata block says what the file can do and which input map it expects (PASTALib.capabilities)
        meta = make_metadata(kind="stage1", segment=True, attributes=False,
                             segmentation_normalization=self.normalize.to_dict(), init=self.cfg.init)
        meta.update(self.cfg.metadata or {})
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return atomic_torch_save(wrap_with_metadata(weights, meta), self.out / FINAL_NAME)

    # --- one iteration -------------------------------------------------------------------------

    def train_step(self, iteration: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        lr = poly_lr(cfg.lr, iteration, cfg.iterations)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self._next_batch(iteration)
        x = x.to(self.device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        y = y.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with translate_out_of_memory(iteration=iteration, **self.oom_context):
            stats = self._forward_backward_or_eager(x, y)
            self._optimizer_step()
        self.first_step = False
        return {"iteration": iteration + 1, "lr": lr, **stats, "seconds": time.perf_counter() - t0}

    def _next_batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batches is None:
            img, lab = self.sampler.sample(self.cfg.batch_size)
            return torch.from_numpy(self.normalize(img)), torch.from_numpy(lab.astype(np.int64))
        got, x, y = next(self.batches)
        if got != iteration:  # cannot happen with the round-robin DataLoader; guards exact resume
            raise TrainingError(f"data loader returned the batch of iteration {got} for iteration {iteration}")
        return x, y

    def _forward_backward_or_eager(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """The step through the compiled model; if compilation fails at the first step, eagerly."""
        try:
            return self._forward_backward(x, y)
        except Exception as exc:
            if not (self.compiled and self.first_step) or isinstance(exc, TrainingError) or is_out_of_memory(exc):
                raise
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            self.warn(f"--compile: torch.compile failed at the first step ({type(exc).__name__}: {first}); "
                     "training runs eagerly")
            self.train_model, self.compiled = self.eager_model, False
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward_backward(x, y)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with autocast(self.device, self.dtype):
            outputs = self.train_model(x).segmentation
        loss = self.criterion(outputs, y)
        d_lesion, d_organ = batch_dice(outputs[0].detach(), y)
        # mean loss / Dice over ranks (NaN Dice = no voxels: left out) and the agreed stop flag
        stats = self.reduce_metrics({"loss": float(loss.detach()), "dice_lesion": d_lesion, "dice_organ": d_organ},
                                    nan_aware=("dice_lesion", "dice_organ"))
        if not math.isfinite(stats["loss"]):
            raise TrainingError(f"loss became {stats['loss']} at iteration {self.iteration + 1}; lower --lr or disable --amp")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        return stats

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()

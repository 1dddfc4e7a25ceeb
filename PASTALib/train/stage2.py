"""Stage 2: attribute head on a frozen PASTA UNet.

The UNet comes from ``init`` (stage-1 ``model_final.pth`` or ``PASTA_final.pth``; layout read from
the file) and stays frozen; only ``head`` is trained with Adam (lr 1e-3) on lesion-centred crops
(96³ by default, ±``jitter`` voxels) in the SLF map, with the grouped cross-entropy over the five
attributes (Shape 5, Density 3, Heterogeneity 2, Surface 2, Invasion 2) read from each case's
report.json. Cases (not lesions) are split into train / validation; per-attribute validation
accuracy is written to ``eval.json`` and the metrics CSV. Checkpoint/resume as stage 1.

Under torchrun the head is wrapped in DistributedDataParallel (the frozen UNet runs as is on every
rank), each rank draws its own lesion crops (seed from ``seed`` and the rank), rank 0 evaluates and
writes; checkpoints hold every rank's sampler/RNG state (same-world-size resume is exact).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from PASTALib.io.files import write_text_atomic
from PASTALib.model.attributes import (
    ATTRIBUTE_GROUPS,
    IGNORE_INDEX,
    grouped_cross_entropy,
    split_logits,
)
from PASTALib.model.checkpoint import build_model_from_checkpoint
from PASTALib.weights import weights_path
from PASTALib.model.preprocess import SLF_VALUES
from PASTALib.model.unet import PastaUNet
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
    rank_seed,
    rng_state,
    seed_everything,
    set_rng_state,
    translate_out_of_memory,
)
from PASTALib.train.data import (
    LesionSample,
    LoadedCase,
    discover_cases,
    lesion_crop,
    lesion_label_values,
    lesion_samples,
    load_case,
)
from PASTALib.train.stage1 import (
    CHECKPOINT_NAME,
    FINAL_NAME,
    METRICS_NAME,
    TrainResult,
    _config_json,
    check_resume_compatible,
)

STAGE2_FIELDS = ["iteration", "lr", "loss", "train_acc", "val_acc", "seconds"]


@dataclass
class Stage2Config:
    data: str
    out: str
    init: str | None = None  # stage-1 model_final.pth or PASTA_final.pth (default: default_weights_path())
    iterations: int = 2000
    batch_size: int = 8
    crop_size: tuple[int, int, int] = (96, 96, 96)
    jitter: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    eval_every: int = 200
    checkpoint_every: int = 200
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "auto"  # autocast dtype of the frozen encoder on CUDA: auto (by compute capability), bf16, fp16
    resume: bool = True
    progress_lines: bool = False
    progress_bar: bool = True
    num_threads: int | None = None
    slf_values: tuple[float, ...] = SLF_VALUES
    #: fold the per-channel mean/std of the training lesions' encoder features into head.0 before
    #: training (state-dict compatible feature standardisation). The pooled features of an
    #: InstanceNorm encoder have tiny spread around a large common offset (each channel's spatial
    #: mean before the LeakyReLU is its InstanceNorm bias), which leaves a freshly initialised head
    #: badly conditioned. Use it when the head is untrained (a stage-1 model); it replaces the
    #: function of an already trained head (PASTA_final.pth), so it is off by default.
    standardize_features: bool = False
    tensorboard: bool = True  # OUT/tensorboard event files when the tensorboard package is installed
    curves: bool = True  # OUT/curves.png (loss / accuracy) at every checkpoint and at the end


class LesionBatcher:
    """Draws lesion-centred crops (uniform over lesions, random jitter) with a restorable state."""

    def __init__(self, cases: dict[str, LoadedCase], samples: Sequence[LesionSample], crop: Sequence[int],
                 jitter: int, slf_values: Sequence[float], seed: int | np.random.SeedSequence) -> None:
        self.cases, self.samples = cases, list(samples)
        self.crop, self.jitter, self.slf_values = tuple(crop), int(jitter), tuple(slf_values)
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def crops(self, samples: Sequence[LesionSample], jitter: bool) -> np.ndarray:
        out = []
        for s in samples:
            j = self.rng.integers(-self.jitter, self.jitter + 1, size=3) if jitter and self.jitter else (0, 0, 0)
            out.append(lesion_crop(self.cases[s.case], s, self.crop, j, self.slf_values))
        return np.stack(out)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.integers(len(self.samples), size=batch_size)
        chosen = [self.samples[i] for i in idx]
        return self.crops(chosen, jitter=True), np.array([s.targets for s in chosen], dtype=np.int64)


@torch.no_grad()
def fold_feature_standardization(model: PastaUNet, batcher: LesionBatcher, samples: Sequence[LesionSample],
                                 device: torch.device, batch_size: int = 8, eps: float = 1e-6) -> dict[str, float]:
    """Re-initialise head.0 as W/sd, b - W·mu/sd with mu/sd the per-channel statistics of the encoder
    features of ``samples`` (centred crops), so the head sees standardised features."""
    model.eval()
    feats = []
    for i in range(0, len(samples), batch_size):
        x = torch.from_numpy(batcher.crops(samples[i:i + batch_size], jitter=False)).to(device)
        feats.append(model.encode(x).float())
    f = torch.cat(feats)
    mu, sd = f.mean(0), f.std(0, unbiased=False).clamp_min(eps)
    lin = model.head[0]
    w = lin.weight / sd[None, :]
    lin.bias.copy_(lin.bias - w @ mu)
    lin.weight.copy_(w)
    return {"feature_mean_abs": float(mu.abs().mean()), "feature_std": float(sd.mean())}


def split_cases(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic case-level split (no lesion of a validation case is seen in training)."""
    names = sorted(names)
    if val_fraction <= 0 or len(names) < 2:
        return names, []
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(len(names) - 1, max(1, int(round(val_fraction * len(names)))))
    val = sorted(names[i] for i in order[:n_val])
    return [n for n in names if n not in val], val


def group_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy per attribute over the known targets (NaN when none) and their mean ('mean')."""
    out = {}
    for group, g, t in zip(ATTRIBUTE_GROUPS, split_logits(logits), targets.T):
        known = t != IGNORE_INDEX
        out[group.name] = float((g.argmax(1)[known] == t[known]).float().mean()) if known.any() else float("nan")
    vals = [v for v in out.values() if v == v]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


@torch.no_grad()
def evaluate_attributes(model: PastaUNet, batcher: LesionBatcher, samples: Sequence[LesionSample], device: torch.device,
                        batch_size: int = 8) -> dict[str, Any]:
    """Per-attribute accuracy on centred crops of ``samples`` (no jitter)."""
    if not samples:
        return {}
    model.eval()
    logits, targets = [], []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        x = torch.from_numpy(batcher.crops(chunk, jitter=False)).to(device)
        logits.append(model.classify(x).float().cpu())
        targets.append(torch.tensor([s.targets for s in chunk], dtype=torch.long))
    acc = group_accuracy(torch.cat(logits), torch.cat(targets))
    acc["n_lesions"] = len(samples)
    return acc


def check_lesion_labels(case: LoadedCase) -> None:
    """A case with a report must have lesion voxels (11-25) in its label map."""
    if case.record.report_path is not None and not lesion_label_values(case):
        present = sorted(case.class_voxels)
        raise TrainingError(
            f"case {case.record.name}: {case.record.label_path.name} has no lesion label (values 11-25; found "
            f"{present or 'only background'}) but {case.record.report_path.name} describes lesions. Stage 2 needs "
            "the lesion masks: use the label map written with the lesions (`pasta synth` output), or remove "
            f"{case.record.report_path.name} from that case to leave it out of stage 2."
        )


def train_stage2(cfg: Stage2Config, *, callback: IterationCallback | None = None, stop: StopFlag | None = None) -> TrainResult:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.iterations < 1 or cfg.batch_size < 1 or cfg.checkpoint_every < 1 or cfg.eval_every < 1:
        raise TrainingError("iterations, batch size, eval and checkpoint intervals must be ≥ 1")
    dist_ctx, device = init_distributed(cfg.device)
    try:
        with output_lock(cfg.out, dist_ctx):
            return _train_stage2(cfg, dist_ctx, device, callback, stop or StopFlag())
    finally:
        dist_ctx.close()


def _train_stage2(cfg: Stage2Config, dist_ctx: DistContext, device: torch.device, callback: IterationCallback | None,
                  stop: StopFlag) -> TrainResult:
    main, rank, world = dist_ctx.is_main, dist_ctx.rank, dist_ctx.world_size

    def log(text: str) -> None:
        if main:
            print(text, file=sys.stderr, flush=True)

    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    seed_everything(cfg.seed)

    init = weights_path(cfg.init)
    model, _ = build_model_from_checkpoint(init)  # MissingWeightsError / CheckpointError explain themselves
    if any(s % model.config.feature_stride for s in cfg.crop_size):
        raise TrainingError(f"crop size {cfg.crop_size} must be multiples of {model.config.feature_stride}")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    model.to(device)

    records = [r for r in discover_cases(cfg.data) if r.report_path is not None]
    if not records:
        raise TrainingError(f"no case under {cfg.data} has a report.json with lesion attributes")
    cases = {r.name: load_case(r) for r in records}
    for case in cases.values():
        check_lesion_labels(case)
    train_names, val_names = split_cases(list(cases), cfg.val_fraction, cfg.seed)
    train_samples = [s for n in train_names for s in lesion_samples(cases[n])]
    val_samples = [s for n in val_names for s in lesion_samples(cases[n])]
    if not train_samples:
        raise TrainingError("no lesion reports in the training cases")
    batcher = LesionBatcher(cases, train_samples, cfg.crop_size, cfg.jitter, cfg.slf_values,
                            cfg.seed if rank == 0 else rank_seed(cfg.seed, rank))
    optimizer = torch.optim.Adam(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.amp_dtype not in AMP_CHOICES:
        raise TrainingError(f"unknown --amp-dtype {cfg.amp_dtype!r}; use {', '.join(AMP_CHOICES)}")
    dtype = amp_dtype(device, cfg.amp, cfg.amp_dtype)
    configure_fixed_shape_training(device)

    iteration = 0
    resumed_from: int | None = None
    cfg_json = _config_json(cfg)
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        check_resume_compatible(state["config"], cfg_json, ["crop_size", "batch_size", "lr", "seed", "val_fraction"], ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        iteration = resumed_from = int(state["iteration"])
        samplers, rngs = state.get("samplers") or [state["sampler"]], state.get("rngs") or [state["rng"]]
        if int(state.get("world_size", 1)) == world:
            batcher.load_state_dict(samplers[rank])
            set_rng_state(rngs[rank])
        else:
            log(f"resuming a {state.get('world_size', 1)}-process checkpoint with {world} process(es): head, optimizer "
                f"and iteration {iteration} restored, crop streams re-seeded (not bit-identical to an uninterrupted run)")
            batcher.rng = np.random.default_rng(rank_seed(cfg.seed, rank, iteration))
            set_rng_state(rngs[0])
    elif cfg.standardize_features:
        fold_feature_standardization(model, batcher, train_samples, device, cfg.batch_size)  # same data on every rank
    if dist_ctx.enabled:  # every rank must continue from the same iteration (several nodes: one shared --out)
        dist_ctx.agree_on_resume(resumed_from, ckpt_path)
    if main:
        write_text_atomic(out / "config.json", json.dumps(cfg_json, indent=2))
        write_text_atomic(out / "model_config.json", json.dumps(model.config.to_dict(), indent=2))
        write_text_atomic(out / "split.json", json.dumps({"train": train_names, "validation": val_names}, indent=2))
        metrics = MetricsCSV(out / METRICS_NAME, STAGE2_FIELDS, resume_iteration=iteration)
    curves = TrainingLog(out, out / METRICS_NAME, [("loss", ["loss"]), ("attribute accuracy", ["train_acc", "val_acc"])],
                         tensorboard=cfg.tensorboard, enabled=main and cfg.curves, purge_step=iteration, log=log)
    head: torch.nn.Module = model.head
    if dist_ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        head = DistributedDataParallel(model.head, device_ids=[device.index] if device.type == "cuda" else None)

    def save() -> None:
        samplers_now = dist_ctx.all_gather_object(batcher.state_dict())
        rngs_now = dist_ctx.all_gather_object(rng_state())
        if main:
            atomic_torch_save({
                "kind": "pasta-train-stage2", "format": 1, "iteration": iteration, "model": model.state_dict(),
                "model_config": model.config.to_dict(), "optimizer": optimizer.state_dict(),
                "sampler": samplers_now[0], "rng": rngs_now[0], "config": cfg_json, "world_size": world,
                **({"samplers": samplers_now, "rngs": rngs_now} if world > 1 else {}),
            }, ckpt_path)
            curves.checkpoint()
        dist_ctx.barrier()

    oom_context = {"device": device, "batch_size": cfg.batch_size, "size": cfg.crop_size,
                   "size_flag": "--crop-size", "amp": dtype is not None}
    progress = Progress(cfg.iterations, iteration, "stage2", cfg.progress_lines and main, cfg.progress_bar and main,
                        every=max(1, cfg.iterations // 200))
    progress.message(iteration / cfg.iterations, f"stage2 start at iteration {iteration}/{cfg.iterations} on {device}, "
                     f"{len(train_samples)} train / {len(val_samples)} validation lesions"
                     + (f", {world} processes" if world > 1 else ""))
    stopped = failed = stop_requested = False
    val: dict[str, Any] = {}
    try:
        while iteration < cfg.iterations:
            if stop_requested or (not dist_ctx.enabled and stop.stop):
                stopped = True
                break
            t0 = time.perf_counter()
            x_np, t_np = batcher.sample(cfg.batch_size)
            x = torch.from_numpy(x_np).to(device)
            targets = torch.from_numpy(t_np).to(device)
            model.eval()  # frozen UNet (InstanceNorm keeps no running stats; no dropout)
            with translate_out_of_memory(iteration=iteration, **oom_context):
                with torch.no_grad(), autocast(device, dtype):
                    feature = model.encode(x)
                logits = head(feature.float())
                loss = grouped_cross_entropy(logits, targets)
                train_acc = group_accuracy(logits.detach().cpu(), targets.cpu())["mean"]
                loss_value = float(loss.detach())
                if dist_ctx.enabled:  # mean loss / accuracy over ranks, agreed stop flag
                    vals = dist_ctx.all_reduce_sum(torch.tensor(
                        [loss_value, 0.0 if math.isnan(train_acc) else train_acc, float(not math.isnan(train_acc)),
                         float(stop.stop)], dtype=torch.float64, device=device)).tolist()
                    loss_value = vals[0] / world
                    train_acc = vals[1] / vals[2] if vals[2] else math.nan
                    stop_requested = vals[3] > 0
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            iteration += 1
            row: dict[str, Any] = {"iteration": iteration, "lr": cfg.lr, "loss": loss_value,
                                   "train_acc": train_acc, "seconds": time.perf_counter() - t0}
            if main and val_samples and (iteration % cfg.eval_every == 0 or iteration == cfg.iterations):
                val = evaluate_attributes(model, batcher, val_samples, device, cfg.batch_size)
                row["val_acc"] = val["mean"]
            if main:
                metrics.write(row)
                curves.scalars(iteration, row)
            if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                save()
            progress.update(iteration, f"stage2 iteration {iteration}/{cfg.iterations} loss {row['loss']:.4f}",
                            loss=row["loss"])
            if callback is not None:
                callback(iteration, row)
    except BaseException:
        failed = True
        raise
    finally:
        progress.close()
        if iteration > 0 and stopped and iteration % cfg.checkpoint_every != 0 and not (failed and dist_ctx.enabled):
            save()
        if main:
            if not failed:
                curves.checkpoint()
            curves.close()
    final = None
    if iteration >= cfg.iterations:
        final = out / FINAL_NAME
        if main:
            atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, final)
            if val_samples and not val:
                val = evaluate_attributes(model, batcher, val_samples, device, cfg.batch_size)
            write_text_atomic(out / "eval.json", json.dumps(val, indent=2))
        dist_ctx.barrier()
        progress.message(1.0, f"stage2 done: {final}")
    return TrainResult(iteration, out, final, ckpt_path, out / METRICS_NAME, stopped_early=stopped, summary=val)

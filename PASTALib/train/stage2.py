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
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from PASTALib.model.attributes import (
    ATTRIBUTE_GROUPS,
    IGNORE_INDEX,
    grouped_cross_entropy,
    split_logits,
)
from PASTALib.io.files import write_text_atomic
from PASTALib.model.checkpoint import build_model_from_checkpoint
from PASTALib.weights import weights_path
from PASTALib.model.preprocess import SLF_VALUES
from PASTALib.model.unet import PastaUNet
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
    rank_seed,
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
from PASTALib.train.loop import gather_rank_state, load_training_state, restore_optimisation, restore_rank_state
from PASTALib.train.stage_loop import FINAL_NAME, StageLoop, TrainResult, check_resume_compatible

STAGE2_FIELDS = ["iteration", "lr", "loss", "train_acc", "val_acc", "seconds"]
#: settings a checkpoint must share with the run that resumes it
RESUME_KEYS = ["crop_size", "batch_size", "lr", "seed", "val_fraction"]


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
    if cfg.iterations < 1 or cfg.batch_size < 1 or cfg.checkpoint_every < 1 or cfg.eval_every < 1:
        raise TrainingError("iterations, batch size, eval and checkpoint intervals must be ≥ 1")
    return Stage2Loop.train(cfg, callback=callback, stop=stop)


class Stage2Loop(StageLoop):
    """Stage-2 attribute-head training on the shared loop (hooks of :class:`TrainingLoop`)."""

    name = "stage2"
    fields = STAGE2_FIELDS
    curves = [("loss", ["loss"]), ("attribute accuracy", ["train_acc", "val_acc"])]

    def __init__(self, cfg: Stage2Config, dist_ctx: DistContext, device: torch.device, *,
                 callback: IterationCallback | None = None, stop: StopFlag | None = None) -> None:
        super().__init__(cfg, dist_ctx, device, callback=callback, stop=stop)
        self.model = self._frozen_model()
        self._load_data()
        rank = dist_ctx.rank
        self.batcher = LesionBatcher(self.cases, self.train_samples, cfg.crop_size, cfg.jitter, cfg.slf_values,
                                     cfg.seed if rank == 0 else rank_seed(cfg.seed, rank))
        self.optimizer = torch.optim.Adam(self.model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.amp_dtype not in AMP_CHOICES:
            raise TrainingError(f"unknown --amp-dtype {cfg.amp_dtype!r}; use {', '.join(AMP_CHOICES)}")
        self.dtype = amp_dtype(device, cfg.amp, cfg.amp_dtype)
        configure_fixed_shape_training(device)
        self.oom_context = {"device": device, "batch_size": cfg.batch_size, "size": cfg.crop_size,
                            "size_flag": "--crop-size", "amp": self.dtype is not None}
        self.head: torch.nn.Module = self.model.head
        self.val: dict[str, Any] = {}

    def _frozen_model(self) -> PastaUNet:
        cfg = self.cfg
        model, _ = build_model_from_checkpoint(weights_path(cfg.init))  # MissingWeightsError / CheckpointError explain themselves
        if any(s % model.config.feature_stride for s in cfg.crop_size):
            raise TrainingError(f"crop size {cfg.crop_size} must be multiples of {model.config.feature_stride}")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head."))
        return model.to(self.device)

    def _load_data(self) -> None:
        cfg = self.cfg
        records = [r for r in discover_cases(cfg.data) if r.report_path is not None]
        if not records:
            raise TrainingError(f"no case under {cfg.data} has a report.json with lesion attributes")
        self.cases = {r.name: load_case(r) for r in records}
        for case in self.cases.values():
            check_lesion_labels(case)
        self.train_names, self.val_names = split_cases(list(self.cases), cfg.val_fraction, cfg.seed)
        self.train_samples = [s for n in self.train_names for s in lesion_samples(self.cases[n])]
        self.val_samples = [s for n in self.val_names for s in lesion_samples(self.cases[n])]
        if not self.train_samples:
            raise TrainingError("no lesion reports in the training cases")

    # --- resume / checkpoint -------------------------------------------------------------------

    def load_checkpoint(self) -> int | None:
        cfg = self.cfg
        if not (cfg.resume and self.checkpoint_path.is_file()):
            return None
        state = load_training_state(self.checkpoint_path, ("config", "model", "optimizer", "iteration"))
        check_resume_compatible(state["config"], self.cfg_json, RESUME_KEYS, self.checkpoint_path)
        iteration = restore_optimisation(state, self.model, self.optimizer, source=self.checkpoint_path)

        def reseed() -> None:
            self.batcher.rng = np.random.default_rng(rank_seed(cfg.seed, self.dist.rank, iteration))

        if not restore_rank_state(state, self.dist, self.batcher, reseed=reseed):
            self.warn(f"resuming a {state.get('world_size', 1)}-process checkpoint with {self.dist.world_size} "
                     f"process(es): head, optimizer and iteration {iteration} restored, crop streams re-seeded "
                     "(not bit-identical to an uninterrupted run)")
        return iteration

    def save_checkpoint(self) -> None:
        ranks = gather_rank_state(self.dist, self.batcher.state_dict())
        if self.main:
            atomic_torch_save({
                "kind": "pasta-train-stage2", "format": 1, "iteration": self.iteration, "model": self.model.state_dict(),
                "model_config": self.model.config.to_dict(), "optimizer": self.optimizer.state_dict(),
                **ranks, "config": self.cfg_json,
            }, self.checkpoint_path)
            self.log_writer.checkpoint()
        self.dist.barrier()

    # --- start / end ---------------------------------------------------------------------------

    def on_train_start(self) -> None:
        cfg = self.cfg
        if self.resumed_from is None and cfg.standardize_features:  # same data on every rank
            fold_feature_standardization(self.model, self.batcher, self.train_samples, self.device, cfg.batch_size)
        self.start_outputs({"model_config.json": self.model.config.to_dict(),
                            "split.json": {"train": self.train_names, "validation": self.val_names}})
        self.head = self.data_parallel(self.model.head)
        world = self.dist.world_size
        self.start_progress(f", {len(self.train_samples)} train / {len(self.val_samples)} validation lesions"
                            + (f", {world} processes" if world > 1 else ""))

    def result(self) -> TrainResult:
        final = None
        if self.iteration >= self.cfg.iterations:
            final = self.out / FINAL_NAME
            if self.main:
                atomic_torch_save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, final)
                if self.val_samples and not self.val:
                    self.val = self._evaluate()
                write_text_atomic(self.out / "eval.json", json.dumps(self.val, indent=2))
        return self.finish(final, self.val)

    # --- one iteration -------------------------------------------------------------------------

    def train_step(self, iteration: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        x_np, t_np = self.batcher.sample(self.cfg.batch_size)
        x = torch.from_numpy(x_np).to(self.device)
        targets = torch.from_numpy(t_np).to(self.device)
        self.model.eval()  # frozen UNet (InstanceNorm keeps no running stats; no dropout)
        with translate_out_of_memory(iteration=iteration, **self.oom_context):
            with torch.no_grad(), autocast(self.device, self.dtype):
                feature = self.model.encode(x)
            logits = self.head(feature.float())
            loss = grouped_cross_entropy(logits, targets)
            train_acc = group_accuracy(logits.detach().cpu(), targets.cpu())["mean"]
            # mean loss / accuracy over ranks, agreed stop flag
            stats = self.reduce_metrics({"loss": float(loss.detach()), "train_acc": train_acc}, nan_aware=("train_acc",))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return {"iteration": iteration + 1, "lr": self.cfg.lr, "loss": stats["loss"], "train_acc": stats["train_acc"],
                "seconds": time.perf_counter() - t0}

    def _evaluate(self) -> dict[str, Any]:
        return evaluate_attributes(self.model, self.batcher, self.val_samples, self.device, self.cfg.batch_size)

    def validation_step(self, iteration: int, row: dict[str, Any]) -> None:
        due = iteration % self.cfg.eval_every == 0 or iteration == self.cfg.iterations
        if self.main and self.val_samples and due:
            self.val = self._evaluate()
            row["val_acc"] = self.val["mean"]

"""The cross-validated run of ``pasta classify train``: one :class:`FoldLoop` (the shared training
loop, PASTALib.train.loop) per fold, out-of-fold predictions, pooled metrics; and ``predict_table``."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from PASTALib.finetune.classify.config import BUNDLE_FORMAT, ClassifyConfig, ClassifyError
from PASTALib.finetune.classify.metrics import (
    prediction_frame,
    summarize_predictions,
    write_frame_csv,
    write_metrics_tables,
)
from PASTALib.finetune.classify.network import (
    PastaClassifier,
    build_classifier,
    class_weight_vector,
    crop_batch,
    encode_features,
    load_classifier,
    make_loss,
    predict_logits,
    read_init,
    seed_int,
)
from PASTALib.finetune.classify.table import CaseTable, compute_crops, make_cv_splits, read_case_table
from PASTALib.io.files import write_json_atomic
from PASTALib.model.unet import UNetConfig
from PASTALib.runtime import atomic_torch_save, configure_fixed_shape_training
from PASTALib.train.common import (
    StopFlag,
    amp_dtype,
    autocast,
    make_grad_scaler,
    optimizer_step,
    resolve_device,
    translate_out_of_memory,
)
from PASTALib.train.loop import TrainingLoop, load_training_state, restore_optimisation
from PASTALib.progress import Progress

IterationObserver = Callable[[int, int, float], None]


@dataclass
class FoldResult:
    fold: int
    done: bool
    iteration: int
    model: Path | None = None
    predictions: Path | None = None


@dataclass
class ClassifyResult:
    out: Path
    splits: Path
    folds_done: list[int]
    folds_trained: list[int]
    stopped_early: bool = False
    predictions: Path | None = None  # OUT/predictions.csv once every fold is done
    metrics: Path | None = None
    summary: pd.DataFrame | None = None  # pooled metrics rows


# --- one fold -----------------------------------------------------------------------------------

class FoldLoop(TrainingLoop):
    """One fold's training on the shared loop, resuming from ``fold_dir/checkpoint_last.pt``.

    Every source of randomness derives from (seed, fold[, iteration]): the initialisation from
    (seed, fold, 0), each batch and its mirroring from (seed, fold, iteration), so a resumed fold
    continues exactly. The checkpoint is written every ``checkpoint_every`` iterations before the
    last (the finished fold writes model.pth instead) and on a stop."""

    name = "classify"

    def __init__(self, cfg: ClassifyConfig, fold: int, train_idx: np.ndarray, crops: np.ndarray, targets: np.ndarray,
                 num_classes: int | None, unet_config: UNetConfig, init_state: dict | None, device: torch.device,
                 fold_dir: Path, progress: Progress, stop: StopFlag, on_iteration: IterationObserver | None) -> None:
        super().__init__(iterations=cfg.iterations, checkpoint_every=cfg.checkpoint_every, stop=stop, device=device,
                         progress=progress)
        self.cfg, self.fold, self.train_idx, self.crops, self.targets = cfg, fold, train_idx, crops, targets
        self.num_classes, self.on_iteration = num_classes, on_iteration
        self.checkpoint_path = fold_dir / "checkpoint_last.pt"
        self.weights = class_weight_vector(cfg, num_classes, targets[train_idx]) if num_classes else None
        self.model, _ = build_classifier(unet_config, num_classes, init_state=init_state, seed=seed_int(cfg.seed, fold, 0),
                                         freeze_encoder=cfg.freeze_encoder)
        self.model.to(device)
        params = (self.model.head_parameters() if cfg.freeze_encoder
                  else [p for p in self.model.parameters() if p.requires_grad])
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.dtype = amp_dtype(device, cfg.amp)
        self.scaler = make_grad_scaler(device, self.dtype)
        configure_fixed_shape_training(device)  # every crop is input_size³
        self.loss_fn = make_loss(cfg.task, self.weights, device)
        self.features: torch.Tensor | None = None

    def load_checkpoint(self) -> int | None:
        if not (self.cfg.resume and self.checkpoint_path.is_file()):
            return None
        state = load_training_state(self.checkpoint_path)
        if state.get("fingerprint") != self.cfg.fingerprint():
            raise ClassifyError(f"{self.checkpoint_path} was written with other settings; use another --out or --no-resume")
        start = restore_optimisation(state, self.model, self.optimizer, self.scaler,
                                     source=self.checkpoint_path)
        self.progress.advance(start, f"fold {self.fold}: resumed at iteration {start}", force=True)
        return start

    def save_checkpoint(self) -> None:
        atomic_torch_save({"iteration": self.iteration, "model": self.model.state_dict(),
                           "optimizer": self.optimizer.state_dict(),
                           "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                           "fingerprint": self.cfg.fingerprint()}, self.checkpoint_path)

    def should_checkpoint(self, iteration: int) -> bool:
        every = self.cfg.checkpoint_every
        return bool(every) and iteration % every == 0 and iteration < self.cfg.iterations

    def on_train_start(self) -> None:
        # A frozen encoder without augmentation gives every case one fixed feature: encode the training
        # crops once and train the head on the features (a linear probe costs one pass, not one per step).
        cfg, fresh = self.cfg, self.iteration == 0
        probe = cfg.freeze_encoder and not cfg.augment
        if probe or (self.num_classes and cfg.scale_features and fresh):
            features = torch.from_numpy(encode_features(self.model, self.crops[self.train_idx], device=self.device,
                                                        batch_size=cfg.batch_size, amp=cfg.amp, slf_values=cfg.slf_values))
            if self.num_classes and cfg.scale_features and fresh:
                self.model.fit_feature_scaler(features)
            self.features = features.to(self.device) if probe else None
        self.model.train()

    def train_step(self, iteration: int) -> dict[str, Any]:
        cfg, device = self.cfg, self.device
        # The batch and its augmentation depend on (seed, fold, iteration) only: exact resume.
        rng = np.random.default_rng([cfg.seed, self.fold, iteration, 1])
        batch = np.sort(rng.choice(self.train_idx, size=min(cfg.batch_size, len(self.train_idx)), replace=False))
        flips = rng.random((len(batch), 3)) < 0.5
        with translate_out_of_memory(iteration=iteration, device=device, batch_size=cfg.batch_size, size=(cfg.size,) * 3,
                                     size_flag="--input-size", amp=self.dtype is not None):
            y = torch.as_tensor(np.asarray(self.targets[batch]), dtype=torch.long, device=device)
            loss = self.loss_fn(self._logits(batch, flips), y)
            optimizer_step(loss, self.optimizer, self.scaler)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ClassifyError(f"fold {self.fold}: the loss became {value} at iteration {iteration + 1}; lower --lr "
                                f"(now {cfg.lr}) or use --no-amp")
        return {"loss": value}

    def _logits(self, batch: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        if self.features is not None:
            rows = torch.as_tensor(np.searchsorted(self.train_idx, batch), device=self.device)
            with autocast(self.device, self.dtype):
                return self.model.head_logits(self.features[rows])
        x = crop_batch(self.crops[batch], self.device, self.cfg.slf_values)
        if self.cfg.augment:
            x = torch.stack([torch.flip(x[i], [d + 1 for d in range(3) if flips[i, d]]) if flips[i].any() else x[i]
                             for i in range(len(batch))])
        with autocast(self.device, self.dtype):
            return self.model(x)

    def progress_message(self, iteration: int, row: dict[str, Any]) -> str:
        return f"fold {self.fold} iteration {iteration}/{self.cfg.iterations} loss {row['loss']:.4f}"

    def on_iteration_end(self, iteration: int, row: dict[str, Any]) -> None:
        if self.on_iteration is not None:
            self.on_iteration(self.fold, iteration, row["loss"])


def _bundle(model: PastaClassifier, cfg: ClassifyConfig, table: CaseTable, fold: int, weights: list | None,
            init_desc: str) -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT, "task": cfg.task, "fold": fold, "unet_config": model.config.to_dict(),
        "num_classes": model.classifier.out_features if model.classifier is not None else None,
        "class_values": [v if isinstance(v, (int, float)) else str(v) for v in table.class_values],
        "attribute_columns": dict(table.attribute_columns), "input_size": cfg.size, "margin_mm": float(cfg.margin_mm),
        "labels_kind": cfg.labels_kind, "slf_values": [float(v) for v in cfg.slf_values], "class_weights": weights,
        "init": init_desc, "iterations": cfg.iterations, "freeze_encoder": cfg.freeze_encoder,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


# --- the run --------------------------------------------------------------------------------------

@dataclass
class _Plan:
    """What a run works on: the table, the init weights, the folds and which are left."""

    table: CaseTable
    unet_config: UNetConfig
    init_state: dict | None
    init_desc: str
    splits: dict[str, Any]
    out: Path
    val_sets: list[np.ndarray]
    todo: list[int]
    done: set[int] = field(default_factory=set)

    @property
    def splits_path(self) -> Path:
        return self.out / "splits.json"


def _check_same(path: Path, now: Any, what: str) -> None:
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != now:
            diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)) \
                if isinstance(before, dict) and isinstance(now, dict) else []
            raise ClassifyError(f"{path} differs from this run's {what}" + (f" ({', '.join(diff)})" if diff else "")
                                + "; the table or settings changed since the earlier run: use another --out, "
                                "or --no-resume to start over")


def _plan_run(cfg: ClassifyConfig) -> _Plan:
    """Read the table and init, make (or check) the splits and the settings file in OUT."""
    table = read_case_table(cfg.table, cfg.task, label_column=cfg.label_column, id_column=cfg.id_column,
                            group_column=cfg.group_column, labels_kind=cfg.labels_kind)
    unet_config, init_state, init_desc = read_init(cfg.init)
    if init_state is None and cfg.scratch_config:
        unet_config = UNetConfig.from_dict(cfg.scratch_config)
    if cfg.size % unet_config.feature_stride:
        raise ClassifyError(f"--input-size {cfg.size} must be a multiple of {unet_config.feature_stride} for this network")
    cases = table.cases
    ids = [c.id for c in cases]
    groups = [c.group for c in cases] if table.group_column else None
    strata = [c.target for c in cases] if cfg.task != "attributes" else None
    splits = make_cv_splits(ids, folds=cfg.folds, seed=cfg.seed, strata=strata, groups=groups)
    splits["grouped_by"] = table.group_column
    splits["ids"] = ids

    out = Path(cfg.out)
    if not cfg.resume and out.is_dir():
        for p in out.glob("fold_*"):
            shutil.rmtree(p, ignore_errors=True)
        for name in ("splits.json", "classify_config.json", "predictions.csv", "metrics.csv", "metrics.md", "metrics.html"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    config_doc = {"format": "pasta-classify-config/1", **cfg.fingerprint(),
                  "table": str(Path(cfg.table).resolve()), "init": init_desc,
                  "unet_config": unet_config.to_dict(), "class_values": table.class_values}
    _check_same(out / "splits.json", splits, "cross-validation splits")
    _check_same(out / "classify_config.json", config_doc, "settings")
    write_json_atomic(out / "splits.json", splits)
    write_json_atomic(out / "classify_config.json", config_doc)

    by_id = {c.id: n for n, c in enumerate(cases)}
    val_sets = [np.array([by_id[i] for i in fold_ids]) for fold_ids in splits["validation"]]
    wanted = list(range(cfg.folds)) if cfg.fold is None else [cfg.fold]
    done = {f for f in range(cfg.folds) if (out / f"fold_{f}" / "done.json").is_file()}
    return _Plan(table, unet_config, init_state, init_desc, splits, out, val_sets,
                 [f for f in wanted if f not in done], done)


def _run_fold(cfg: ClassifyConfig, plan: _Plan, fold: int, crops: np.ndarray, device: torch.device,
              progress: Progress, stop: StopFlag, on_iteration: IterationObserver | None) -> FoldResult:
    """Train one fold (or resume it); when it finishes, write its model, predictions and done.json."""
    cases = plan.table.cases
    fold_dir = plan.out / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    val_idx = plan.val_sets[fold]
    train_idx = np.setdiff1d(np.arange(len(cases)), val_idx)
    progress.advance(0, f"fold {fold}: training on {len(train_idx)}, validating on {len(val_idx)} case(s)", force=True)
    num_classes = None if cfg.task == "attributes" else plan.table.num_classes
    targets = np.array([c.target for c in cases], dtype=np.int64)
    loop = FoldLoop(cfg, fold, train_idx, crops, targets, num_classes, plan.unet_config, plan.init_state, device,
                    fold_dir, progress, stop, on_iteration)
    iteration = loop.run()
    if loop.stopped:
        return FoldResult(fold, False, iteration)
    model, weights = loop.model, loop.weights
    model_path = atomic_torch_save(_bundle(model, cfg, plan.table, fold, weights, plan.init_desc), fold_dir / "model.pth")
    logits = predict_logits(model, crops[val_idx], device=device, batch_size=cfg.batch_size, amp=cfg.amp,
                            slf_values=cfg.slf_values)
    frame = prediction_frame(cfg.task, [cases[i] for i in val_idx], logits, plan.table.class_values, fold)
    pred_path = write_frame_csv(frame, fold_dir / "predictions.csv")
    write_json_atomic(fold_dir / "done.json", {"fold": fold, "iterations": iteration, "train": len(train_idx),
                                               "validation": len(val_idx), "class_weights": weights})
    loop.checkpoint_path.unlink(missing_ok=True)
    del loop, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return FoldResult(fold, True, iteration, model_path, pred_path)


def _merge_folds(cfg: ClassifyConfig, plan: _Plan, result: ClassifyResult) -> None:
    """OUT/predictions.csv (every fold's validation rows, in table order) and the metrics tables."""
    out, ids = plan.out, plan.splits["ids"]
    frames = [pd.read_csv(out / f"fold_{f}" / "predictions.csv", dtype={"id": str}, keep_default_na=False)
              for f in range(cfg.folds)]
    merged = pd.concat(frames, ignore_index=True)
    order = {i: n for n, i in enumerate(ids)}
    merged = merged.sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)
    result.predictions = write_frame_csv(merged, out / "predictions.csv")
    metrics = summarize_predictions(merged, cfg.task, seed=cfg.seed, n_boot=cfg.n_boot)
    title = {"detection": "Detection", "roi": "ROI classification", "attributes": "Report attributes"}[cfg.task]
    paths = write_metrics_tables(metrics, out / "metrics",
                                 f"{title}: {cfg.folds}-fold CV, 95% bootstrap CI ({cfg.n_boot} replicates)")
    result.metrics = paths["csv"]
    result.summary = metrics[metrics["scope"] == "all"].reset_index(drop=True)


def train_classifier(cfg: ClassifyConfig, *, stop: StopFlag | None = None,
                     on_iteration: IterationObserver | None = None,
                     on_fold: Callable[[FoldResult], None] | None = None) -> ClassifyResult:
    """Cross-validated fine-tuning (see the package docstring). Finished folds are skipped on a rerun;
    an interrupted fold resumes from its checkpoint. ``stop`` (StopFlag) ends the run cleanly after
    saving; ``on_iteration(fold, iteration, loss)`` and ``on_fold(FoldResult)`` observe it. The output
    folder is locked for the run (a second run on it is an error)."""
    from PASTALib.io.outputs import folder_lock

    cfg.validate()
    with folder_lock(cfg.out, what="classification folder"):
        return _train_classifier(cfg, stop or StopFlag(), on_iteration, on_fold)


def _train_classifier(cfg: ClassifyConfig, stop: StopFlag, on_iteration: IterationObserver | None,
                      on_fold: Callable[[FoldResult], None] | None) -> ClassifyResult:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    plan = _plan_run(cfg)
    cases = plan.table.cases
    result = ClassifyResult(plan.out, plan.splits_path, sorted(plan.done), [])
    total = (len(cases) if plan.todo else 0) + len(plan.todo) * cfg.iterations
    progress = Progress(total, desc="classify", lines=cfg.progress_lines, bar=cfg.progress_bar,
                        every=max(1, total // 200))
    try:
        crops = None
        if plan.todo:
            progress.advance(0, f"cropping {len(cases)} case(s)", force=True)
            cache = Path(cfg.crops_dir) if cfg.crops_dir else plan.out / "crops"
            crops = compute_crops(cases, cfg.task, size=cfg.size, margin_mm=cfg.margin_mm, cache_dir=cache, stop=stop,
                                  on_case=lambda n, cid: progress.advance(1, f"crop {n}/{len(cases)} {cid}"))
            if crops is None:
                result.stopped_early = True
                return result
        for fold in plan.todo:
            if stop.stop:
                result.stopped_early = True
                break
            fold_result = _run_fold(cfg, plan, fold, crops, device, progress, stop, on_iteration)
            if fold_result.done:
                plan.done.add(fold)
                result.folds_trained.append(fold)
            if on_fold is not None:
                on_fold(fold_result)
            if not fold_result.done:
                result.stopped_early = True
                break
    finally:
        progress.close()
    result.folds_done = sorted(plan.done)
    if len(plan.done) == cfg.folds and not result.stopped_early:
        _merge_folds(cfg, plan, result)
        progress.line(1.0, f"done: {result.predictions}")
    return result


# --- applying a fold model ------------------------------------------------------------------------

def predict_table(model_path: str | os.PathLike, table: str | os.PathLike, *, out: str | os.PathLike | None = None,
                  device: str = "auto", batch_size: int = 4, id_column: str = "id", label_column: str = "label",
                  labels_kind: str | None = None, crops_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Apply a trained fold model to the rows of ``table`` (same columns as for training; labels
    optional and kept when present). Returns (and writes to ``out``, atomically) id, [label,]
    prob_0..prob_{C-1}, pred - or, for the attributes task, ``<attribute>_pred`` / ``_confidence``."""
    dev = resolve_device(device)
    model, meta = load_classifier(model_path, dev)
    task = meta["task"]
    tab = read_case_table(table, task, label_column=label_column, id_column=id_column,
                          labels_kind=labels_kind or meta["labels_kind"], require_labels=False,
                          class_values=meta["class_values"] if task != "attributes" else None)
    has_labels = any(c.target is not None for c in tab.cases) if task != "attributes" else bool(tab.attribute_columns)
    bar = Progress(len(tab.cases), desc="crops", lines=False, bar=progress)
    crops = compute_crops(tab.cases, task, size=int(meta["input_size"]), margin_mm=float(meta["margin_mm"]),
                          cache_dir=Path(crops_dir) if crops_dir else None, on_case=lambda n, cid: bar.update(n, cid))
    bar.close()
    logits = predict_logits(model, crops, device=dev, batch_size=batch_size, amp=True,
                            slf_values=meta["slf_values"])
    frame = prediction_frame(task, tab.cases, logits, meta["class_values"], None, with_labels=has_labels)
    if out is not None:
        write_frame_csv(frame, Path(out))
    return frame

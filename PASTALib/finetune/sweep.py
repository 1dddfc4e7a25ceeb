"""The few-shot protocol of the paper (Fig. 3c): fine-tune for every K ∈ {1, 2, 4, 8, 16} and every
held-out fold, and gather the held-out DSC into one table.

    from PASTALib.finetune import FinetuneConfig, run_sweep
    result = run_sweep(FinetuneConfig(data="fewshot/", out="runs/pasta"), ks=(1, 2, 4, 8, 16), folds=None)
    result.csv      # runs/pasta/fewshot.csv: method, K, fold, case, class, name, value (DSC)

Each (K, fold) is one :func:`PASTALib.finetune.finetune` run in ``OUT/k{K}/fold{f}/`` (its own
model_final.pth, classes.json, splits.json, validation.csv), resumable exactly as a single run. A
run whose model_final.pth and validation.csv exist is not trained again on a rerun; its settings must
match (else a clear error: use another --out). A K larger than a fold's training pool is skipped with
a printed note. ``scratch=True`` gives the "from scratch" baseline (method "scratch"): two sweeps'
``fewshot.csv`` concatenated are read by ``pasta evaluate fewshot`` as two curves.

fewshot.csv is rewritten (atomically) after every run, so a stopped sweep leaves the table of the runs
finished so far; it holds the runs of the K and folds asked for (finished now or earlier).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PASTALib.finetune.core import (
    CLASSES_NAME,
    SPLITS_NAME,
    VALIDATION_NAME,
    FinetuneConfig,
    class_mapping,
    finetune,
    make_splits,
    read_classes,
    read_fewshot_folder,
    read_validation,
    resolve_init,
    write_csv_atomic,
)
from PASTALib.train.common import StopFlag, TrainingError
from PASTALib.progress import Progress

FEWSHOT_NAME = "fewshot.csv"
#: the columns ``pasta evaluate fewshot`` reads by default (method, K, value) plus where each value comes from
FEWSHOT_FIELDS = ["method", "K", "fold", "case", "class", "name", "value"]
FINAL_NAME = "model_final.pth"
RUN_CONFIG_NAME = "finetune_config.json"
#: settings that change what a run trains or how it is scored: a finished run is reused only if they match
RUN_KEYS = ("init", "scratch", "k", "fold", "folds", "iterations", "lr", "optimizer", "batch_size", "patch_size",
            "fg_fraction", "seed", "amp", "spacing_mm", "overlap")

#: called with (K, fold, iteration, metrics row) after every training iteration of the sweep
logger = logging.getLogger(__name__)

SweepCallback = Callable[[int, int, int, dict[str, float]], None]


@dataclass
class SweepRun:
    k: int
    fold: int
    out: Path
    status: str  # "trained" | "finished earlier" | "stopped"
    mean_dice: float | None = None


@dataclass
class SweepResult:
    out: Path
    method: str
    csv: Path | None
    runs: list[SweepRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # K skipped for a fold (larger than its training pool)
    stopped_early: bool = False


def run_dir(out: str | Path, k: int, fold: int) -> Path:
    return Path(out) / f"k{k}" / f"fold{fold}"


def plan_sweep(cfg: FinetuneConfig, ks: Sequence[int], folds: Sequence[int] | None) -> tuple[list[tuple[int, int]], list[str]]:
    """(K, fold) pairs to run, K-major, and a note for each K larger than that fold's training pool."""
    if not ks or any(int(k) < 1 for k in ks):
        raise TrainingError(f"--k needs values ≥ 1 (got {list(ks)})")
    fold_list = list(range(cfg.folds)) if folds is None else [int(f) for f in folds]
    for f in fold_list:
        if not 0 <= f < cfg.folds:
            raise TrainingError(f"--fold {f} is not in 0..{cfg.folds - 1}")
    _labels, cases = read_fewshot_folder(cfg.data)
    ids = [c.id for c in cases]
    pools = {f: len(make_splits(ids, folds=cfg.folds, fold=f, k=None, seed=cfg.seed)["train_pool"]) for f in fold_list}
    plan, notes = [], []
    for k in sorted({int(k) for k in ks}):
        for f in sorted(set(fold_list)):
            if k > pools[f]:
                notes.append(f"K={k} skipped for fold {f}: its training folds hold only {pools[f]} of the "
                             f"{len(ids)} annotated case(s)")
            else:
                plan.append((k, f))
    if not plan:
        raise TrainingError(f"no (K, fold) to run: every K in {sorted(set(ks))} exceeds the training pool "
                            f"({min(pools.values())}-{max(pools.values())} cases); annotate more cases or lower --k")
    return plan, notes


def _comparable(cfg: FinetuneConfig, init: Path | None) -> dict[str, Any]:
    doc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    doc["init"] = str(init) if init is not None else None
    return {k: doc.get(k) for k in RUN_KEYS}


def finished_run(cfg: FinetuneConfig, init: Path | None) -> bool:
    """True when ``cfg.out`` holds a finished run of exactly these settings (model, validation table);
    TrainingError when it holds a finished run of other settings, data or split."""
    out = Path(cfg.out)
    if not ((out / FINAL_NAME).is_file() and (out / VALIDATION_NAME).is_file()):
        return False
    problems = []
    try:
        stored = json.loads((out / RUN_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    now = _comparable(cfg, init)
    problems += [f"{k} {stored.get(k)!r} → {v!r}" for k, v in now.items() if stored.get(k) != v]
    labels, cases = read_fewshot_folder(cfg.data)
    splits = make_splits([c.id for c in cases], folds=cfg.folds, fold=cfg.fold, k=cfg.k, seed=cfg.seed)
    try:
        if json.loads((out / SPLITS_NAME).read_text(encoding="utf-8")) != splits:
            problems.append("the split (the few-shot folder's cases changed)")
        if read_classes(out / CLASSES_NAME) != class_mapping(labels):
            problems.append("the classes (the few-shot folder's labels changed)")
    except (OSError, ValueError) as exc:
        problems.append(f"unreadable run files ({exc})")
    if problems:
        raise TrainingError(f"{out} holds a finished run with other settings ({'; '.join(problems)}); use another "
                            "--out for the new sweep, or delete that folder to train it again")
    return True


def fewshot_rows(method: str, k: int, fold: int, validation: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """validation.csv rows of one run → fewshot.csv rows (value = DSC; NaN where the class is absent)."""
    return [{"method": method, "K": k, "fold": fold, "case": r["case"], "class": r["class"], "name": r["name"],
             "value": r["dice"]} for r in validation]


def run_sweep(cfg: FinetuneConfig, ks: Sequence[int], folds: Sequence[int] | None = None, *, method: str | None = None,
              callback: SweepCallback | None = None, stop: StopFlag | None = None) -> SweepResult:
    """Fine-tune every (K, fold) into ``cfg.out/k{K}/fold{f}`` and write ``cfg.out/fewshot.csv``.

    ``cfg`` holds the settings shared by every run (its ``k`` and ``fold`` are ignored); ``folds``
    None: all ``cfg.folds`` folds. ``callback(K, fold, iteration, row)`` runs after every training
    iteration; ``stop`` (StopFlag) ends the sweep after a checkpoint (rerun to resume). The notes (runs
    skipped) are logged as warnings and kept in ``notes``. ``method`` names the curve (default "PASTA",
    or "scratch" when ``cfg.scratch``). ``cfg.progress_lines`` / ``progress_bar`` apply to the sweep as a whole.
    """
    if not cfg.evaluate:
        raise TrainingError("the few-shot sweep scores every run on its held-out fold; drop --no-validation")
    cfg.validate()
    method = method or ("scratch" if cfg.scratch else "PASTA")
    init = resolve_init(cfg)
    plan, notes = plan_sweep(cfg, ks, folds)
    for note in notes:
        logger.warning("note: %s", note)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult(out, method, None, notes=notes)
    stop = stop or StopFlag()
    iters, n = cfg.iterations, len(plan)
    progress = Progress(n * iters, desc="few-shot sweep", lines=cfg.progress_lines, bar=cfg.progress_bar,
                        every=max(1, n * iters // 200))
    rows: list[dict[str, Any]] = []
    try:
        for i, (k, fold) in enumerate(plan):
            tag = f"K={k} fold {fold} (run {i + 1}/{n})"
            run_cfg = replace(cfg, k=k, fold=fold, out=str(run_dir(out, k, fold)), progress_lines=False,
                              progress_bar=False)
            if cfg.resume and finished_run(run_cfg, init):  # --no-resume: every run starts over
                validation = read_validation(Path(run_cfg.out) / VALIDATION_NAME)
                status = "finished earlier"
                progress.update((i + 1) * iters, f"{tag}: finished earlier, skipped", force=True)
            else:
                progress.update(i * iters, f"{tag}: fine-tuning", force=True)

                def on_iteration(iteration: int, row: dict[str, float], _i: int = i, _k: int = k, _f: int = fold,
                                 _tag: str = tag) -> None:
                    progress.update(_i * iters + iteration, f"{_tag}: iteration {iteration}/{iters} loss {row['loss']:.4f}")
                    if callback is not None:
                        callback(_k, _f, iteration, row)

                res = finetune(run_cfg, callback=on_iteration, stop=stop)
                if res.stopped_early or res.final_model is None:
                    result.runs.append(SweepRun(k, fold, Path(run_cfg.out), "stopped"))
                    result.stopped_early = True
                    progress.update(i * iters + res.iteration, f"{tag}: stopped at iteration {res.iteration}", force=True)
                    break
                validation, status = res.validation, "trained"
            scores = [r["dice"] for r in validation if not math.isnan(r["dice"])]
            mean = float(sum(scores) / len(scores)) if scores else None
            result.runs.append(SweepRun(k, fold, Path(run_cfg.out), status, mean))
            rows += fewshot_rows(method, k, fold, validation)
            # rewritten after every run: a stopped sweep keeps the table of what is finished
            result.csv = write_csv_atomic(out / FEWSHOT_NAME, rows, FEWSHOT_FIELDS, float_fields=("value",))
            progress.update((i + 1) * iters, f"{tag}: done, held-out DSC "
                     + (f"{mean:.3f}" if mean is not None else "n/a"), force=True)
    finally:
        progress.close()
    return result

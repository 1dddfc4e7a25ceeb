"""What stage 1 and stage 2 share on top of the training loop: the OUT folder (rank 0 writes),
config.json, metrics.csv, curves, the resume check, the DDP wrapper, progress and the callback."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from PASTALib.train.common import (
    DistContext,
    IterationCallback,
    MetricsCSV,
    StopFlag,
    TrainingError,
    TrainingLog,
    init_distributed,
    output_lock,
    seed_everything,
)
from PASTALib.io.files import write_text_atomic
from PASTALib.train.loop import TrainingLoop
from PASTALib.progress import Progress

CHECKPOINT_NAME = "checkpoint_last.pt"
FINAL_NAME = "model_final.pth"
METRICS_NAME = "metrics.csv"

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    iteration: int
    out: Path
    final_model: Path | None
    checkpoint: Path
    metrics: Path
    stopped_early: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


def config_json(cfg: Any) -> dict:
    """A stage config dataclass as JSON-ready dict (tuples become lists, as they read back)."""
    data = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}


def check_resume_compatible(saved: dict, current: dict, keys: Sequence[str], path: Path) -> None:
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
    if diff:
        raise TrainingError(
            f"{path} was written with different settings ({'; '.join(diff)}); use the same settings, "
            "another --out folder, or --no-resume to start over"
        )


class StageLoop(TrainingLoop):
    """Base of the stage-1 / stage-2 loops. Subclasses set ``name``, ``fields`` (metrics.csv
    columns) and ``curves`` (curves.png panels) and fill in the model-specific hooks."""

    fields: list[str] = []
    curves: list[tuple[str, list[str]]] = []

    @classmethod
    def train(cls, cfg: Any, *, callback: IterationCallback | None = None, stop: StopFlag | None = None) -> TrainResult:
        """Run (or resume) the stage; under torchrun (WORLD_SIZE > 1) data-parallel."""
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        dist_ctx, device = init_distributed(cfg.device)
        try:
            with output_lock(cfg.out, dist_ctx):
                loop = cls(cfg, dist_ctx, device, callback=callback, stop=stop)
                loop.run()
                return loop.result()
        finally:
            dist_ctx.close()

    def __init__(self, cfg: Any, dist_ctx: DistContext, device: torch.device, *,
                 callback: IterationCallback | None = None, stop: StopFlag | None = None) -> None:
        super().__init__(iterations=cfg.iterations, checkpoint_every=cfg.checkpoint_every, stop=stop,
                         dist=dist_ctx, device=device)
        self.cfg, self.callback, self.main = cfg, callback, dist_ctx.is_main
        self.out = Path(cfg.out)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        self.cfg_json = config_json(cfg)
        seed_everything(cfg.seed)  # same on every rank: identical initial weights (DDP also broadcasts rank 0's)
        self.metrics: MetricsCSV | None = None
        self.log_writer: TrainingLog | None = None

    def warn(self, text: str) -> None:
        """A warning from rank 0 only (every rank meets the same condition: one line, not one a rank)."""
        if self.main:
            logger.warning(text)

    def start_outputs(self, files: dict[str, Any]) -> None:
        """Write config.json and ``files`` (name -> JSON data), open metrics.csv (rows past the
        checkpoint dropped) and the curves; only rank 0 writes."""
        cfg, out, it = self.cfg, self.out, self.iteration
        if self.main:
            for name, data in {"config.json": self.cfg_json, **files}.items():
                write_text_atomic(out / name, json.dumps(data, indent=2))
            self.metrics = MetricsCSV(out / METRICS_NAME, self.fields, resume_iteration=it)
        self.log_writer = TrainingLog(out, out / METRICS_NAME, self.curves, tensorboard=cfg.tensorboard,
                                      enabled=self.main and cfg.curves, purge_step=it, log=self.warn)

    def start_progress(self, detail: str) -> None:
        cfg, it = self.cfg, self.iteration
        self.progress = Progress(cfg.iterations, desc=self.name, lines=cfg.progress_lines and self.main,
                                 bar=cfg.progress_bar and self.main, initial=it, every=max(1, cfg.iterations // 200))
        self.progress.line(it / cfg.iterations, f"{self.name} start at iteration {it}/{cfg.iterations} on {self.device}"
                           + detail)

    def data_parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel(module) under torchrun, else the module itself."""
        if not self.dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def log_iteration(self, iteration: int, row: dict[str, Any]) -> None:
        if self.main:
            self.metrics.write(row)
            self.log_writer.scalars(iteration, row)

    def on_iteration_end(self, iteration: int, row: dict[str, Any]) -> None:
        if self.callback is not None:
            self.callback(iteration, row)

    def on_train_end(self, *, failed: bool) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.main and self.log_writer is not None:
            if not failed:
                self.log_writer.checkpoint()
            self.log_writer.close()

    def result(self) -> TrainResult:
        raise NotImplementedError

    def finish(self, final: Path | None, summary: dict[str, Any] | None = None) -> TrainResult:
        """After the last iteration (``final``: the model file, written by rank 0) all ranks meet and
        the done line is printed; a stopped run returns without a final model."""
        if final is not None:
            self.dist.barrier()
            self.progress.line(1.0, f"{self.name} done: {final}")
        return TrainResult(self.iteration, self.out, final, self.checkpoint_path, self.out / METRICS_NAME,
                           stopped_early=self.stopped, summary=summary or {})

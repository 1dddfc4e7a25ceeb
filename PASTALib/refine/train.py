"""Training of the refinement DDPM (``pasta refine train``).

Each iteration: ``batch`` canonical 1 mm crops around organs (data.CropSampler), HU normalised to
[-1, 1], a uniform timestep and Gaussian noise per crop, MONAI ``DiffusionInferer`` with the organ
mask concatenated (mode="concat"), L1 loss on the predicted noise, AdamW. All randomness comes from
two generators saved in the checkpoint (numpy for crops, torch for timesteps/noise), so a run resumed
from a checkpoint produces the same losses as an uninterrupted one. Validation: fixed held-out crops,
fixed timesteps and a fixed noise seed, so its curve measures the model alone.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer

from PASTALib.errors import PastaError
from PASTALib.io.files import write_text_atomic
from PASTALib.refine.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    RefinerCheckpointError,
    config_from_checkpoint,
    load_model_state,
    read_checkpoint,
)
from PASTALib.refine.config import RefinerConfig
from PASTALib.runtime import (amp_dtype, atomic_torch_save, configure_fixed_shape_training, make_grad_scaler,
                              optimizer_step, restoring)
from PASTALib.runtime import resolve_device
from PASTALib.refine.data import Case, CropSampler
from PASTALib.refine.model import build_model, build_scheduler
from PASTALib.train.loop import StopSource, TrainingLoop
from PASTALib.progress import Progress

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "refiner.pt"
CSV_NAME = "loss.csv"
PNG_NAME = "loss.png"


class RefinerTrainingError(PastaError):
    """A training setting does not work (device, resume mismatch); the message says what to do."""


@dataclass
class TrainOptions:
    iterations: int = 20000
    batch: int = 2
    device: str = "cpu"
    amp: bool = False
    resume: bool = False
    seed: int = 0
    val_every: int = 250
    val_crops: int = 8
    val_timesteps: int = 4  # per validation crop, stratified over [0, t_max)
    checkpoint_every: int = 500
    progress_lines: bool = False
    progress_bar: bool = True
    #: Stop (after writing a checkpoint) once this iteration is done, as if killed there (tests).
    stop_after: int | None = None


@dataclass
class TrainResult:
    out: Path
    iteration: int
    train_losses: list[tuple[int, float]]
    val_losses: list[tuple[int, float]]
    seconds: float
    stopped: bool = False
    files: dict[str, Path] = field(default_factory=dict)




def _val_set(cases: list[Case], config: RefinerConfig, options: TrainOptions) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Fixed held-out crops, timesteps and noise (independent of the training stream)."""
    sampler = CropSampler(cases, config.crop_size, np.random.default_rng([options.seed, 1]), validation=True)
    x, c = sampler.batch(options.val_crops)
    k = options.val_timesteps
    t_max = config.train_t_max or config.num_train_timesteps
    n = options.val_crops * k
    t = torch.tensor([int((j + 0.5) / n * t_max) for j in range(n)], dtype=torch.long)
    t = t[torch.randperm(n, generator=torch.Generator().manual_seed(options.seed + 11))]
    noise = torch.randn((n, 1, *x.shape[2:]), generator=torch.Generator().manual_seed(options.seed + 7))
    return np.repeat(config.normalize(x), k, axis=0), np.repeat(c, k, axis=0), t, noise


@torch.no_grad()
def _validate(model, inferer, val, batch: int, device, autocast_dtype) -> float:
    model.eval()
    x, c, t, noise = val
    total = 0.0
    for s in range(0, len(t), batch):
        xb = torch.from_numpy(x[s:s + batch]).to(device)
        cb = torch.from_numpy(c[s:s + batch]).to(device)
        nb = noise[s:s + batch].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else _null():
            pred = inferer(inputs=xb, diffusion_model=model, noise=nb, timesteps=t[s:s + batch].to(device), condition=cb, mode="concat")
        total += float(F.l1_loss(pred.float(), nb, reduction="sum"))
    model.train()
    return total / noise.numel()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def write_curves(out: Path, train: list[tuple[int, float]], val: list[tuple[int, float]]) -> tuple[Path, Path]:
    """loss.csv (iteration, train_loss, val_loss) and loss.png (matplotlib Agg)."""
    val_d = dict(val)
    train_d = dict(train)
    its = sorted(set(train_d) | set(val_d))
    csv_path = out / CSV_NAME
    buffer = io.StringIO()
    w = csv.writer(buffer)
    w.writerow(["iteration", "train_loss", "val_loss"])
    for i in its:
        w.writerow([i, f"{train_d[i]:.6g}" if i in train_d else "", f"{val_d[i]:.6g}" if i in val_d else ""])
    write_text_atomic(csv_path, buffer.getvalue())

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ti, tl = np.array(train).T
        ax.plot(ti, tl, lw=0.5, alpha=0.4, color="C0", label="train L1 (per iteration)")
        if len(tl) >= 10:
            k = max(5, len(tl) // 50)
            smooth = np.convolve(tl, np.ones(k) / k, mode="valid")
            ax.plot(ti[k - 1:], smooth, color="C0", label=f"train L1 ({k}-it mean)")
    if val:
        vi, vl = np.array(val).T
        ax.plot(vi, vl, "o-", color="C1", label="validation L1 (fixed noise)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("L1 loss on predicted noise")
    ax.set_title("PASTA refinement DDPM")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = out / PNG_NAME
    fig.savefig(png)
    plt.close(fig)
    return csv_path, png


def _weights_payload(model: torch.nn.Module, config: RefinerConfig, iteration: int) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "iteration": iteration}


def train_refiner(config: RefinerConfig, cases: list[Case], out: str | os.PathLike, options: TrainOptions | None = None,
                  *, stop: StopSource | None = None, data_source: str | None = None) -> TrainResult:
    """Train (or resume with ``options.resume``) and write checkpoint.pt, refiner.pt, loss.csv, loss.png.
    ``stop`` (a StopFlag or a callable) ends the run after the current iteration, with a checkpoint."""
    from PASTALib.io.outputs import folder_lock

    with folder_lock(out, what="refiner training folder"):  # a second run on the folder is an error
        loop = RefinerLoop(config, cases, Path(out), options or TrainOptions(), stop=stop, data_source=data_source)
        loop.run()
        return loop.result()


class RefinerLoop(TrainingLoop):
    """The refinement DDPM's training on the shared loop (hooks of PASTALib.train.loop.TrainingLoop)."""

    name = "refine"

    def __init__(self, config: RefinerConfig, cases: list[Case], out: Path, options: TrainOptions, *,
                 stop: StopSource | None = None, data_source: str | None = None) -> None:
        device = resolve_device(options.device)
        super().__init__(iterations=options.iterations, checkpoint_every=options.checkpoint_every,
                         stop=self._stop_source(stop, options), device=device)
        self.config, self.cases, self.out, self.options, self.data_source = config, cases, out, options, data_source
        out.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = out / CHECKPOINT_NAME
        self.autocast_dtype = amp_dtype(device, options.amp)
        configure_fixed_shape_training(device)  # one crop shape for the whole run
        self.t_start = time.perf_counter()
        torch.manual_seed(options.seed)  # weight init
        self.model = build_model(config).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = make_grad_scaler(device, self.autocast_dtype)
        self.inferer = DiffusionInferer(build_scheduler(config))
        self.sampler_rng = np.random.default_rng([options.seed, 0])
        self.gen = torch.Generator().manual_seed(options.seed)
        self.train_hist: list[tuple[int, float]] = []
        self.val_hist: list[tuple[int, float]] = []
        self.t_max = config.train_t_max or config.num_train_timesteps

    def _stop_source(self, stop: StopSource | None, options: TrainOptions) -> Callable[[], bool]:
        """The caller's stop, or ``options.stop_after`` iterations done (tests: as if killed there)."""
        asked = (lambda: False) if stop is None else stop if callable(stop) else (lambda: stop.stop)
        return lambda: asked() or (options.stop_after is not None and self.iteration >= options.stop_after)

    # --- resume / checkpoint -------------------------------------------------------------------

    def load_checkpoint(self) -> int | None:
        path = self.checkpoint_path
        if not self.options.resume:
            return None
        if not path.is_file():
            logger.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
            return None
        obj = read_checkpoint(path)
        saved, now = config_from_checkpoint(obj, path).to_dict(), self.config.to_dict()
        if saved != now:
            diff = {k: (v, now[k]) for k, v in saved.items() if now[k] != v}
            raise RefinerTrainingError(
                f"--resume: {path} was trained with other settings {diff} (checkpoint, requested). "
                "Resume with the same settings or use a new --out folder."
            )
        if "optimizer" not in obj or "rng" not in obj:
            raise RefinerCheckpointError(f"{path} holds weights only (no optimizer/RNG state); it cannot be resumed.")
        load_model_state(self.model, obj["model"], path)
        with restoring(path, f"Delete {path} or rerun without --resume to start over."):
            self.optimizer.load_state_dict(obj["optimizer"])
            if self.scaler is not None and obj.get("scaler"):
                self.scaler.load_state_dict(obj["scaler"])
            self.sampler_rng.bit_generator.state = obj["rng"]["sampler"]
            self.gen.set_state(obj["rng"]["torch"])
            self.train_hist = [(int(i), float(v)) for i, v in obj["history"]["train"]]
            self.val_hist = [(int(i), float(v)) for i, v in obj["history"]["val"]]
        logger.info("resumed from %s at iteration %d", path, int(obj["iteration"]))
        return int(obj["iteration"])

    def save_checkpoint(self) -> None:
        payload = _weights_payload(self.model, self.config, self.iteration)
        payload.update({
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"sampler": self.sampler_rng.bit_generator.state, "torch": self.gen.get_state()},
            "history": {"train": self.train_hist, "val": self.val_hist},
            "options": {k: str(v) for k, v in vars(self.options).items()},
        })
        atomic_torch_save(payload, self.checkpoint_path)
        write_curves(self.out, self.train_hist, self.val_hist)

    # --- start / end ---------------------------------------------------------------------------

    def on_train_start(self) -> None:
        options = self.options
        write_text_atomic(self.out / "config.json", json.dumps({
            "config": self.config.to_dict(), "data": self.data_source, "cases": [c.name for c in self.cases],
            "options": {k: v for k, v in vars(options).items()}}, indent=2, default=str))
        self.sampler = CropSampler(self.cases, self.config.crop_size, self.sampler_rng)
        self.val = _val_set(self.cases, self.config, options)
        self.progress = Progress(options.iterations, desc="refine train", lines=options.progress_lines,
                                 bar=options.progress_bar, initial=self.iteration)
        if self.iteration == 0 and not self.val_hist:
            self.val_hist.append((0, self._validate()))
            self.progress.line(0.0, f"validation L1 {self.val_hist[-1][1]:.4f}")
        self.model.train()

    def on_train_end(self, *, failed: bool) -> None:
        if self.progress is not None:
            self.progress.close()

    def result(self) -> TrainResult:
        it, options = self.iteration, self.options
        files = {"checkpoint": self.checkpoint_path, "csv": self.out / CSV_NAME, "png": self.out / PNG_NAME}
        if it >= options.iterations and not self.stopped:
            if not self.checkpoint_path.is_file() or self.resumed_from == options.iterations:
                self.checkpoint()
            files["weights"] = atomic_torch_save(_weights_payload(self.model, self.config, it), self.out / WEIGHTS_NAME)
            self.progress.line(1.0, f"done: {files['weights']}")
        return TrainResult(self.out, it, self.train_hist, self.val_hist, time.perf_counter() - self.t_start,
                           self.stopped, files)

    # --- one iteration -------------------------------------------------------------------------

    def train_step(self, iteration: int) -> dict[str, Any]:
        x, c = self.sampler.batch(self.options.batch)
        t = torch.randint(0, self.t_max, (self.options.batch,), generator=self.gen)
        noise = torch.randn(x.shape, generator=self.gen)
        device = self.device
        xb = torch.from_numpy(self.config.normalize(x)).to(device)
        cb = torch.from_numpy(c).to(device)
        noise_d = noise.to(device)
        with torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype else _null():
            pred = self.inferer(inputs=xb, diffusion_model=self.model, noise=noise_d, timesteps=t.to(device),
                                condition=cb, mode="concat")
        loss = F.l1_loss(pred.float(), noise_d)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            self.checkpoint()  # the state before this step
            raise RefinerTrainingError(f"Loss became {float(loss)} at iteration {iteration + 1}; lower the learning "
                                       "rate or disable --amp.")
        optimizer_step(loss, self.optimizer, self.scaler)
        self.train_hist.append((iteration + 1, loss_value))
        return {"loss": loss_value}

    def _validate(self) -> float:
        return _validate(self.model, self.inferer, self.val, self.options.batch, self.device, self.autocast_dtype)

    def validation_step(self, iteration: int, row: dict[str, Any]) -> None:
        if iteration % self.options.val_every == 0 or iteration == self.options.iterations:
            self.val_hist.append((iteration, self._validate()))
            row["val_loss"] = self.val_hist[-1][1]

    def progress_message(self, iteration: int, row: dict[str, Any]) -> str:
        msg = f"iteration {iteration}/{self.options.iterations} L1 {row['loss']:.4f}"
        return msg + (f" validation L1 {row['val_loss']:.4f}" if "val_loss" in row else "")

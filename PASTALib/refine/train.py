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
import sys
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
from PASTALib.runtime import amp_dtype, atomic_torch_save, configure_fixed_shape_training, make_grad_scaler, optimizer_step
from PASTALib.runtime import resolve_device as _resolve_device
from PASTALib.refine.data import Case, CropSampler
from PASTALib.refine.model import build_model, build_scheduler

log = logging.getLogger(__name__)

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


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; an unavailable device is a RefinerTrainingError."""
    return _resolve_device(name, error=RefinerTrainingError)


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
                  *, stop: Callable[[], bool] | None = None, data_source: str | None = None) -> TrainResult:
    """Train (or resume with ``options.resume``) and write checkpoint.pt, refiner.pt, loss.csv, loss.png.
    The output folder is locked for the run (a second run on it is an error)."""
    from PASTALib.io.outputs import folder_lock

    with folder_lock(out, what="refiner training folder"):
        return _train_refiner(config, cases, Path(out), options or TrainOptions(), stop=stop, data_source=data_source)


def _train_refiner(config: RefinerConfig, cases: list[Case], out: Path, options: TrainOptions, *,
                   stop: Callable[[], bool] | None, data_source: str | None) -> TrainResult:
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(options.device)
    autocast_dtype = amp_dtype(device, options.amp)
    configure_fixed_shape_training(device)  # one crop shape for the whole run
    t_start = time.perf_counter()

    torch.manual_seed(options.seed)  # weight init
    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = make_grad_scaler(device, autocast_dtype)
    inferer = DiffusionInferer(build_scheduler(config))
    sampler_rng = np.random.default_rng([options.seed, 0])
    gen = torch.Generator().manual_seed(options.seed)
    train_hist: list[tuple[int, float]] = []
    val_hist: list[tuple[int, float]] = []
    start = 0

    ckpt_path = out / CHECKPOINT_NAME
    if options.resume and ckpt_path.is_file():
        obj = read_checkpoint(ckpt_path)
        saved = config_from_checkpoint(obj, ckpt_path)
        if saved.to_dict() != config.to_dict():
            diff = {k: (v, config.to_dict()[k]) for k, v in saved.to_dict().items() if config.to_dict()[k] != v}
            raise RefinerTrainingError(
                f"--resume: {ckpt_path} was trained with other settings {diff} (checkpoint, requested). "
                "Resume with the same settings or use a new --out folder."
            )
        if "optimizer" not in obj or "rng" not in obj:
            raise RefinerCheckpointError(f"{ckpt_path} holds weights only (no optimizer/RNG state); it cannot be resumed.")
        load_model_state(model, obj["model"], ckpt_path)
        optimizer.load_state_dict(obj["optimizer"])
        if scaler is not None and obj.get("scaler"):
            scaler.load_state_dict(obj["scaler"])
        sampler_rng.bit_generator.state = obj["rng"]["sampler"]
        gen.set_state(obj["rng"]["torch"])
        start = int(obj["iteration"])
        train_hist = [(int(i), float(v)) for i, v in obj["history"]["train"]]
        val_hist = [(int(i), float(v)) for i, v in obj["history"]["val"]]
        log.info("resumed from %s at iteration %d", ckpt_path, start)
    elif options.resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out)

    write_text_atomic(out / "config.json", json.dumps({"config": config.to_dict(), "data": data_source,
                                                 "cases": [c.name for c in cases],
                                                 "options": {k: v for k, v in vars(options).items()}}, indent=2, default=str))
    sampler = CropSampler(cases, config.crop_size, sampler_rng)
    val = _val_set(cases, config, options)
    t_max = config.train_t_max or config.num_train_timesteps

    def save(iteration: int) -> None:
        payload = _weights_payload(model, config, iteration)
        payload.update({
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"sampler": sampler_rng.bit_generator.state, "torch": gen.get_state()},
            "history": {"train": train_hist, "val": val_hist}, "options": {k: str(v) for k, v in vars(options).items()},
        })
        atomic_torch_save(payload, ckpt_path)
        write_curves(out, train_hist, val_hist)

    bar = None
    if options.progress_bar:
        from tqdm import tqdm

        bar = tqdm(total=options.iterations, initial=start, desc="refine train", file=sys.stderr, dynamic_ncols=True, disable=None)

    def progress(it: int, msg: str) -> None:
        if options.progress_lines:
            print(f"PROGRESS {it / max(options.iterations, 1):.4f} {msg}", flush=True)

    if start == 0 and not val_hist:
        val_hist.append((0, _validate(model, inferer, val, options.batch, device, autocast_dtype)))
        progress(0, f"validation L1 {val_hist[-1][1]:.4f}")

    model.train()
    stopped = False
    it = start
    for it in range(start + 1, options.iterations + 1):
        x, c = sampler.batch(options.batch)
        t = torch.randint(0, t_max, (options.batch,), generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        xb = torch.from_numpy(config.normalize(x)).to(device)
        cb = torch.from_numpy(c).to(device)
        noise_d = noise.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else _null():
            pred = inferer(inputs=xb, diffusion_model=model, noise=noise_d, timesteps=t.to(device), condition=cb, mode="concat")
        loss = F.l1_loss(pred.float(), noise_d)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            save(it - 1)
            raise RefinerTrainingError(f"Loss became {float(loss)} at iteration {it}; lower the learning rate or disable --amp.")
        optimizer_step(loss, optimizer, scaler)
        train_hist.append((it, loss_value))
        msg = f"iteration {it}/{options.iterations} L1 {loss_value:.4f}"
        if it % options.val_every == 0 or it == options.iterations:
            val_hist.append((it, _validate(model, inferer, val, options.batch, device, autocast_dtype)))
            msg += f" validation L1 {val_hist[-1][1]:.4f}"
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", val=f"{val_hist[-1][1]:.4f}", refresh=False)
        progress(it, msg)
        want_stop = (stop is not None and stop()) or (options.stop_after is not None and it >= options.stop_after)
        if it % options.checkpoint_every == 0 or it == options.iterations or want_stop:
            save(it)
        if want_stop:
            stopped = it < options.iterations
            break
    if bar is not None:
        bar.close()
    files = {"checkpoint": ckpt_path, "csv": out / CSV_NAME, "png": out / PNG_NAME}
    if it >= options.iterations and not stopped:
        if not ckpt_path.is_file() or start == options.iterations:
            save(it)
        files["weights"] = atomic_torch_save(_weights_payload(model, config, it), out / WEIGHTS_NAME)
        progress(options.iterations, f"done: {files['weights']}")
    return TrainResult(out, it, train_hist, val_hist, time.perf_counter() - t_start, stopped, files)

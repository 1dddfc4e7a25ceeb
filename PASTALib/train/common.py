"""Shared training infrastructure: device/AMP, RNG state, atomic checkpoints, metrics, progress."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from PASTALib.errors import PastaError


class TrainingError(PastaError):
    """A training setting or input is wrong; the message says what to do."""


# --- device / AMP ---------------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → cuda if available else cpu; 'cuda'/'cuda:N' without CUDA → TrainingError."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = torch.__version__ + ("" if torch.version.cuda else ", a CPU-only build")
            raise TrainingError(
                f"--device {name} was requested but CUDA is not available (torch {build}; "
                "torch.cuda.is_available() is False). Install a CUDA build of torch matching your driver, "
                "check nvidia-smi / CUDA_VISIBLE_DEVICES, or use --device cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainingError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise TrainingError("--device mps was requested but MPS is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise TrainingError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 on CUDA when supported, else fp16 on CUDA; None (full precision) elsewhere."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A GradScaler for fp16 only (bf16 needs none)."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


# --- RNG ------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states of python, numpy and torch (CPU + CUDA), as tensors/ints (weights_only safe)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- checkpoints ------------------------------------------------------------------------------

def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """Write to a temporary file in the same folder, fsync, then os.replace (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def poly_lr(base_lr: float, iteration: int, max_iterations: int, exponent: float = 0.9) -> float:
    """nnU-Net poly schedule: base_lr * (1 - it / max_it) ** 0.9."""
    return base_lr * (1.0 - min(iteration, max_iterations) / max(max_iterations, 1)) ** exponent


# --- metrics / progress -----------------------------------------------------------------------

class MetricsCSV:
    """Append-only CSV of per-iteration metrics; on resume rows past the checkpoint are dropped so a
    resumed run's file equals an uninterrupted run's."""

    def __init__(self, path: str | os.PathLike, fields: list[str], resume_iteration: int | None = None) -> None:
        self.path = Path(path)
        self.fields = fields
        rows: list[dict[str, str]] = []
        if resume_iteration is not None and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= resume_iteration]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict[str, float]]:
        with open(path, newline="") as fh:
            return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()} for r in csv.DictReader(fh)]


class Progress:
    """tqdm bar on stderr plus ``PROGRESS <fraction> <message>`` lines on stdout (Slicer parses them)."""

    def __init__(self, total: int, initial: int, desc: str, lines: bool, bar: bool = True, every: int = 1) -> None:
        self.total, self.lines, self.every = total, lines, max(1, every)
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True,
                             disable=None)

    def update(self, iteration: int, message: str, **postfix: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        if self.lines and (iteration % self.every == 0 or iteration == self.total):
            print(f"PROGRESS {iteration / max(self.total, 1):.4f} {message}", flush=True)

    def message(self, fraction: float, text: str) -> None:
        if self.lines:
            print(f"PROGRESS {fraction:.4f} {text}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class StopFlag:
    """Set by SIGTERM/SIGINT handlers (installed by the CLI): the loop saves a checkpoint and stops."""

    def __init__(self) -> None:
        self.stop = False

    @contextlib.contextmanager
    def install_signal_handlers(self) -> Iterator["StopFlag"]:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, frame):  # noqa: ARG001
            self.stop = True

        for s in old:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


IterationCallback = Callable[[int, dict[str, float]], None]

"""Torch runtime helpers shared by train, refine, infer and embed: device choice, AMP, atomic saves.

Imports torch; only the subpackages that run networks import this module.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from PASTALib.errors import PastaError


class DeviceError(PastaError):
    """The requested compute device does not exist on this machine."""


def resolve_device(name: str | torch.device = "auto", *, error: type[PastaError] = DeviceError) -> torch.device:
    """'auto' → CUDA when available, else CPU; a device that is not there raises ``error``.

    ``error`` lets each subpackage raise its own PastaError subclass with the same message.
    """
    if isinstance(name, torch.device):
        return name
    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise error(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = torch.__version__ + ("" if torch.version.cuda else ", a CPU-only build")
            raise error(
                f"--device {name} was requested but CUDA is not available (torch {build}; "
                "torch.cuda.is_available() is False). Install a CUDA build of torch matching your driver, "
                "check nvidia-smi / CUDA_VISIBLE_DEVICES, or use --device cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise error("--device mps was requested but MPS is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise error(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 on CUDA when supported, else fp16 on CUDA; None (full precision) elsewhere."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A GradScaler for fp16 only (bf16 needs none)."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """zero_grad → backward → step, through the fp16 GradScaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path

"""Torch runtime helpers shared by train, refine, infer and embed: device choice, AMP, atomic saves.

Imports torch; only the subpackages that run networks import this module.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from PASTALib.errors import UNREADABLE_TORCH_FILE, CheckpointError, PastaError


class DeviceError(PastaError):
    """The requested compute device does not exist on this machine."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; a device that is not there raises DeviceError.

    The one device resolver of train, finetune, refine, infer and embed (their packages re-export it).
    """
    if isinstance(name, torch.device):
        return name
    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = torch.__version__ + ("" if torch.version.cuda else ", a CPU-only build")
            raise DeviceError(
                f"--device {name} was requested but CUDA is not available (torch {build}; "
                "torch.cuda.is_available() is False). Install a CUDA build of torch matching your driver, "
                "check nvidia-smi / CUDA_VISIBLE_DEVICES, or use --device cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError("--device mps was requested but MPS is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


#: Compute capability from which bf16 runs on tensor cores (Ampere, sm_80). Below it (V100 sm_70,
#: T4 sm_75) ``torch.cuda.is_bf16_supported()`` may still say True because bf16 is emulated, and 3D
#: convolutions then take a slow fallback path; fp16 (with a GradScaler when training) is native there.
BF16_MIN_CAPABILITY = (8, 0)

AMP_CHOICES = ("auto", "bf16", "fp16")


def choose_amp_dtype(capability: tuple[int, int], prefer: str = "auto") -> torch.dtype:
    """The autocast dtype for a CUDA device of compute ``capability``: bf16 from sm_80 (Ampere) on,
    fp16 below; ``prefer`` = 'bf16' / 'fp16' forces one (e.g. to exercise the fp16 + GradScaler path)."""
    if prefer not in AMP_CHOICES:
        raise DeviceError(f"unknown AMP dtype {prefer!r}; use {', '.join(AMP_CHOICES)}")
    if prefer == "bf16":
        return torch.bfloat16
    if prefer == "fp16":
        return torch.float16
    return torch.bfloat16 if tuple(capability) >= BF16_MIN_CAPABILITY else torch.float16


def amp_dtype(device: torch.device, enabled: bool = True, prefer: str = "auto") -> torch.dtype | None:
    """Autocast dtype on CUDA chosen from the compute capability of ``device`` itself (see
    :func:`choose_amp_dtype`); None (full precision) when disabled or off CUDA."""
    if not enabled or device.type != "cuda":
        return None
    return choose_amp_dtype(torch.cuda.get_device_capability(device), prefer)


def configure_fixed_shape_training(device: torch.device) -> None:
    """Let cuDNN benchmark its convolution algorithms once per input shape. Training runs see one
    fixed patch / crop shape for thousands of steps, so the one-off search pays for itself; the
    chosen algorithms may differ run to run (a resume is then exact only up to cuDNN, as documented)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


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
    """torch.save to a temporary file in the same folder, fsync, CRC check of the zip archive, then
    rename: never a half file, and a full disk raises OutputError with the old checkpoint intact."""
    from PASTALib.io.outputs import OutputError, atomic_output, verify_zip

    path = Path(path)
    with atomic_output(path, verify_zip) as tmp:
        try:
            with open(tmp, "wb") as stream:
                torch.save(obj, stream)
        except RuntimeError as exc:  # torch's zip writer reports ENOSPC as "file write failed"
            raise OutputError(f"Cannot write {path}: {str(exc).strip().splitlines()[-1]}. The disk is probably "
                              "full: free disk space or choose another output folder; the previous file is unchanged.") from None
    return path


def read_resume_state(path: Path, required: Sequence[str], fix: str) -> dict[str, Any]:
    """The training state a run resumes from (weights-only unpickling, on CPU).

    A truncated, garbage or foreign file is a CheckpointError naming ``path`` and ``fix`` (how to
    start over: delete it, or the command's no-resume option), never a traceback."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_TORCH_FILE as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path} is not a readable training checkpoint (corrupt or truncated: {first}). {fix}") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this training (missing {', '.join(missing)}). {fix}")
    return state


@contextlib.contextmanager
def restoring(path: Path, fix: str) -> Iterator[None]:
    """Turn a state that does not fit the model/optimizer (wrong keys or shapes) into a CheckpointError."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path} does not fit this model or settings ({type(exc).__name__}: {first}). {fix}") from None

"""Shared training infrastructure: device/AMP, RNG state, atomic checkpoints, metrics, stop flag, DDP.

The loop itself is PASTALib.train.loop, the progress reporter PASTALib.progress."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from PASTALib.errors import PastaError
from PASTALib.runtime import (  # noqa: F401  (part of train's API)
    AMP_CHOICES,
    amp_dtype,
    atomic_torch_save,
    choose_amp_dtype,
    configure_fixed_shape_training,
    make_grad_scaler,
    optimizer_step,
    read_resume_state,
    resolve_device,
    restoring,
)

logger = logging.getLogger(__name__)


class TrainingError(PastaError):
    """A training setting or input is wrong; the message says what to do."""


# --- device / AMP ---------------------------------------------------------------------------

def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
        restore_cuda_rng_states(state["cuda"])


def restore_cuda_rng_states(saved: Sequence[torch.Tensor]) -> int:
    """Restore per-GPU RNG states for the GPUs both the checkpoint and this process have.

    A checkpoint written on a node with more visible GPUs than this one (another machine, a smaller
    CUDA_VISIBLE_DEVICES) holds states for devices that do not exist here; those are skipped, not an
    IndexError (``set_rng_state_all`` indexes every saved state). Returns how many were restored."""
    n = min(len(saved), torch.cuda.device_count())
    for index in range(n):
        torch.cuda.set_rng_state(saved[index], index)
    return n


# --- checkpoints ------------------------------------------------------------------------------

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


class StopFlag:
    """Set by SIGTERM/SIGINT handlers (installed by the CLI): the loop saves a checkpoint and stops."""

    def __init__(self) -> None:
        self.stop = False

    @contextlib.contextmanager
    def install_signal_handlers(self) -> Iterator[StopFlag]:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, frame):
            self.stop = True

        for s in old:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


IterationCallback = Callable[[int, dict[str, float]], None]


# --- out of memory ----------------------------------------------------------------------------

class TrainingOutOfMemoryError(TrainingError):
    """The training step ran out of (GPU) memory; the message says which settings to lower."""


#: Markers of an allocation failure in a RuntimeError's message. cuDNN and cuBLAS report a failed
#: workspace allocation with their own status codes, not with "out of memory"; a cuSOLVER/cuFFT
#: handle that cannot be created for lack of memory likewise.
OUT_OF_MEMORY_MARKERS = ("out of memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed",
                         "cusolver_status_alloc_failed", "cufft_alloc_failed", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA/MPS caching allocator), or a RuntimeError whose message names an
    allocation failure: 'out of memory' (CUDA, MPS), the CPU allocator's 'not enough memory', cuDNN's
    CUDNN_STATUS_ALLOC_FAILED, cuBLAS's CUBLAS_STATUS_ALLOC_FAILED."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                      if t is not None)
    if oom_types and isinstance(exc, oom_types):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in OUT_OF_MEMORY_MARKERS)


def out_of_memory_error(exc: BaseException, *, iteration: int, device: torch.device, batch_size: int,
                        size: Sequence[int], size_flag: str, amp: bool) -> TrainingOutOfMemoryError:
    hints = [f"a smaller {size_flag} (now {'x'.join(str(s) for s in size)}; multiples of 16)",
             f"a smaller --batch-size (now {batch_size})"]
    if not amp and device.type == "cuda":
        hints.append("mixed precision (drop --no-amp)")
    # not --channels-last: it does not shrink activations, and with InstanceNorm3d it adds layout copies
    hints.append("fewer --base-channels / --max-channels for a smaller model")
    where = "GPU" if device.type == "cuda" else device.type.upper()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainingOutOfMemoryError(
        f"out of {where} memory at training iteration {iteration + 1} on {device} ({first[:200]}). "
        f"Try {', '.join(hints[:-1])} or {hints[-1]}; the last checkpoint is kept, so the same command "
        "with smaller settings starts over only if the changed settings differ from the checkpoint's "
        "(then use another --out or --no-resume)."
    )


@contextlib.contextmanager
def translate_out_of_memory(**context: Any) -> Iterator[None]:
    """Turn an out-of-memory error raised inside the block into a TrainingOutOfMemoryError with hints."""
    try:
        yield
    except TrainingError:
        raise
    except BaseException as exc:
        if not is_out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        raise out_of_memory_error(exc, **context) from exc


# --- distributed (torchrun) -------------------------------------------------------------------

@dataclasses.dataclass
class DistContext:
    """Where this process sits in a torchrun job. ``world_size == 1`` (plain ``python -m PASTALib``)
    means no process group and no collectives: the single-process path is exactly the old one."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return values
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def agree_on_resume(self, iteration: int | None, path: os.PathLike | str) -> int | None:
        """Every rank's view of the checkpoint (its iteration, or None when this rank found none),
        shared with all ranks: identical views return that iteration; different views (a node that
        does not see OUT, or sees a stale copy) raise the same TrainingError on every rank, instead
        of ranks training from different iterations and hanging at the first mismatched collective."""
        views = self.all_gather_object(iteration)
        if len(set(views)) <= 1:
            return views[0]
        seen = ", ".join(f"rank {r}: {'none' if v is None else f'iteration {v}'}" for r, v in enumerate(views))
        raise TrainingError(f"the ranks disagree about {path} ({seen}); on several nodes --out must be one "
                            "shared folder that every node reads and rank 0 writes (or use --no-resume)")

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.initialised_here = False


def init_distributed(device_name: str = "auto") -> tuple[DistContext, torch.device]:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) and, with more
    than one process, join the process group: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
    gloo on CPU. Without torchrun (no WORLD_SIZE or WORLD_SIZE=1) returns a 1-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    device = resolve_device(device_name)
    if world <= 1:
        return DistContext(), device
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        if device.index is not None and device.index != 0:
            raise TrainingError(f"--device {device_name} with torchrun: each process uses cuda:LOCAL_RANK; "
                                "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"torchrun started {local_rank + 1}+ processes on this node but only "
                                f"{torch.cuda.device_count()} CUDA device(s) are visible; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise TrainingError(f"multi-process training supports cuda (NCCL) and cpu (gloo), not {device.type}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        here = True
    return DistContext(rank, local_rank, world, here), device


def output_lock(out: str | os.PathLike, dist_ctx: DistContext) -> contextlib.AbstractContextManager:
    """The training folder's lock (a second run on it is refused; killed runs' temporary files are
    removed); only the writing rank (0) takes it."""
    from PASTALib.io.outputs import folder_lock

    return folder_lock(out, what="training folder") if dist_ctx.is_main else contextlib.nullcontext()


def rank_seed(seed: int, rank: int, *extra: int) -> np.random.SeedSequence:
    """Independent, reproducible stream per (global seed, rank[, iteration...]). Rank 0 of a plain
    run keeps ``seed`` itself (see PatchSampler) so single-process results are unchanged."""
    return np.random.SeedSequence([int(seed), int(rank), *[int(e) for e in extra]])


# --- torch.compile / channels-last ------------------------------------------------------------

def maybe_compile(module: torch.nn.Module, enabled: bool, backend: str = "inductor",
                  log: Callable[[str], None] = logger.warning) -> tuple[torch.nn.Module, bool]:
    """torch.compile(module) when asked and possible; else the module itself with a one-line notice.
    Returns (module to call, compiled?). Compilation happens lazily at the first call: callers catch
    failures there with :func:`compile_failure`."""
    if not enabled:
        return module, False
    reason = None
    if not hasattr(torch, "compile"):
        reason = f"torch {torch.__version__} has no torch.compile"
    elif sys.platform == "win32" and backend == "inductor":
        reason = "the inductor backend is not supported on Windows"
    elif sys.version_info >= (3, 14) and not _dynamo_supported():
        reason = f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor} in this torch"
    elif backend == "inductor" and not torch.cuda.is_available() and not _have_c_compiler():
        reason = "inductor on CPU needs a C++ compiler (gcc/clang) and none was found"
    if reason is None:
        try:
            return torch.compile(module, backend=backend), True
        except Exception as exc:  # noqa: BLE001 - invalid backend, unsupported platform...
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    log(f"--compile: not compiling ({reason}); training runs eagerly")
    return module, False


def _dynamo_supported() -> bool:
    try:
        import torch._dynamo  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


def _have_c_compiler() -> bool:
    import shutil

    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


# --- curves: TensorBoard + PNG ---------------------------------------------------------------

class TrainingLog:
    """Everything rank 0 writes per iteration besides the CSV: TensorBoard scalars (when the
    ``tensorboard`` package is installed; otherwise one notice) and a PNG of the loss / Dice curves
    redrawn from the CSV at every checkpoint and at the end (matplotlib Agg, no pyplot state)."""

    def __init__(self, out: Path, csv_path: Path, curves: Sequence[tuple[str, Sequence[str]]], *,
                 tensorboard: bool = True, enabled: bool = True, purge_step: int | None = None,
                 log: Callable[[str], None] = logger.warning) -> None:
        self.out, self.csv_path, self.curves, self.enabled = Path(out), Path(csv_path), list(curves), enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # noqa: BLE001 - ImportError, or a broken protobuf
                log("TensorBoard logging off: `pip install tensorboard` to get OUT/tensorboard event files "
                    "(metrics.csv and curves.png are written anyway)")
            else:
                self.writer = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=purge_step or None)

    def scalars(self, iteration: int, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"train/{key}", value, iteration)

    def checkpoint(self) -> Path | None:
        if self.writer is not None:
            self.writer.flush()
        return self.plot() if self.enabled else None

    def plot(self) -> Path | None:
        if not self.csv_path.is_file():
            return None
        rows = MetricsCSV.read(self.csv_path)
        if not rows:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5 * len(self.curves), 3.6), dpi=100)
        FigureCanvasAgg(fig)
        it = np.array([r["iteration"] for r in rows])
        for i, (title, keys) in enumerate(self.curves):
            ax = fig.add_subplot(1, len(self.curves), i + 1)
            for key in keys:
                y = np.array([r.get(key, math.nan) for r in rows], dtype=float)
                ok = np.isfinite(y)
                if not ok.any():
                    continue
                ax.plot(it[ok], y[ok], lw=0.6, alpha=0.35 if ok.sum() > 20 else 1.0, label=key)
                if ok.sum() > 20:  # moving average over ~5 % of the run
                    k = max(2, ok.sum() // 20)
                    smooth = np.convolve(y[ok], np.ones(k) / k, mode="valid")
                    ax.plot(it[ok][k - 1:], smooth, lw=1.5, label=f"{key} (mean of {k})")
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = self.out / "curves.png"
        tmp = path.with_name(".curves.png.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

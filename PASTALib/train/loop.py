"""The one training loop of PASTALib, with hooks (the shape of nnU-Net's ``nnUNetTrainer``).

Stage 1, stage 2 (PASTALib.train), the refiner (PASTALib.refine) and the classifier folds
(PASTALib.finetune.classify) subclass :class:`TrainingLoop` and fill in the hooks; the loop owns the
order of things, resume, checkpoint cadence, stop handling and progress::

    load_checkpoint()                      -> iteration to continue from (None: fresh start)
    on_train_start()
    while iteration < iterations and no stop:
        row = train_step(iteration)        (0-based index of the step being taken)
        iteration += 1
        validation_step(iteration, row)    (adds validation columns to row when due)
        log_iteration(iteration, row)      (metrics file, curves)
        save_checkpoint() if should_checkpoint(iteration)
        progress.advance(1, progress_message(iteration, row))
        on_iteration_end(iteration, row)   (callbacks: they see the iteration's checkpoint written)
    save_checkpoint() after a stop, unless this iteration's checkpoint is already written
    on_train_end(failed)

Stop: a :class:`~PASTALib.train.common.StopFlag` (set by the CLI's SIGTERM/SIGINT handlers, which the
Slicer panels' Stop button sends, or by a callback) or any callable (``lambda: stop_file.exists()``),
checked before every step. Under torchrun the flag travels with the step's
statistics in :meth:`TrainingLoop.reduce_metrics` (one all-reduce), so every rank stops at the same
iteration; without a process group nothing is communicated and the single-process path is plain.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, Collection

import torch

from PASTALib.runtime import read_resume_state, restoring
from PASTALib.train.common import DistContext, StopFlag, rng_state, set_rng_state
from PASTALib.progress import Progress

StopSource = StopFlag | Callable[[], bool]


def resume_fix(path: str | os.PathLike) -> str:
    """What to do about a resume checkpoint that cannot be used."""
    return f"Delete {path} (or rerun with --no-resume) to start over."


def load_training_state(path: str | os.PathLike, required: Sequence[str] = ("model", "optimizer", "iteration"),
                        ) -> dict[str, Any]:
    """The resume state of a training checkpoint (checkpoint_last.pt): weights-only unpickling on CPU.

    The one place train/ and finetune/ read their resume checkpoints; a truncated, garbage or foreign
    file is a CheckpointError naming the file and the fix, never a traceback."""
    return read_resume_state(Path(path), required, resume_fix(path))


def restore_optimisation(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         scaler: Any = None, *, source: str | os.PathLike = "the checkpoint") -> int:
    """Load a checkpoint's model, optimizer and (when both have one) AMP scaler; return its iteration.
    A state that does not fit (wrong keys or shapes) is a CheckpointError naming ``source``."""
    with restoring(Path(source), resume_fix(source)):
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        return int(state["iteration"])


def gather_rank_state(dist: DistContext, sampler_state: Any) -> dict[str, Any]:
    """Checkpoint entries of the data streams: rank 0's sampler and global RNG state ("sampler",
    "rng"), the world size and, under torchrun, every rank's ("samplers", "rngs"). A collective."""
    samplers = dist.all_gather_object(sampler_state)
    rngs = dist.all_gather_object(rng_state())
    extra = {"samplers": samplers, "rngs": rngs} if dist.world_size > 1 else {}
    return {"sampler": samplers[0], "rng": rngs[0], "world_size": dist.world_size, **extra}


def restore_rank_state(state: dict[str, Any], dist: DistContext, sampler: Any, *,
                       reseed: Callable[[], None]) -> bool:
    """Restore this rank's sampler and RNG state written by :func:`gather_rank_state`; True when the
    continuation is exact. With another world size the streams cannot continue: ``reseed()`` gives
    this rank a fresh stream, the global RNGs take rank 0's state, and the answer is False."""
    samplers = state.get("samplers") or [state["sampler"]]
    rngs = state.get("rngs") or [state["rng"]]
    if int(state.get("world_size", 1)) == dist.world_size:
        sampler.load_state_dict(samplers[dist.rank])
        set_rng_state(rngs[dist.rank])
        return True
    reseed()
    set_rng_state(rngs[0])
    return False


class TrainingLoop:
    """Iteration loop with hooks; see the module docstring for the order they are called in.

    Subclasses set ``checkpoint_path`` (for the ranks' resume agreement) and implement
    :meth:`train_step` and :meth:`save_checkpoint`; every other hook has a do-nothing default.
    """

    name = "train"
    checkpoint_path: Path | None = None

    def __init__(self, *, iterations: int, checkpoint_every: int | None, stop: StopSource | None = None,
                 dist: DistContext | None = None, device: torch.device | str = "cpu",
                 progress: Progress | None = None) -> None:
        self.iterations = int(iterations)
        self.checkpoint_every = checkpoint_every or 0
        self.stop = stop if stop is not None else StopFlag()
        self.dist = dist or DistContext()
        self.device = torch.device(device)
        self.progress = progress
        self.iteration = 0
        self.resumed_from: int | None = None
        self.stopped = False
        self._stop_agreed = False
        self._saved_at: int | None = None

    # --- hooks ---------------------------------------------------------------------------------

    def load_checkpoint(self) -> int | None:
        """Restore the training state; return its iteration, or None for a fresh start."""
        return None

    def on_train_start(self) -> None:
        """After resume, before the first step (config files, metrics, the progress start line)."""

    def train_step(self, iteration: int) -> dict[str, Any]:
        """One optimisation step; returns the iteration's metrics row."""
        raise NotImplementedError

    def validation_step(self, iteration: int, row: dict[str, Any]) -> None:
        """Validate when due and add the results to ``row``."""

    def log_iteration(self, iteration: int, row: dict[str, Any]) -> None:
        """Per-iteration bookkeeping before the checkpoint: metrics file, curves."""

    def on_iteration_end(self, iteration: int, row: dict[str, Any]) -> None:
        """After the iteration's checkpoint and progress: callbacks."""

    def should_checkpoint(self, iteration: int) -> bool:
        every = self.checkpoint_every
        return (every > 0 and iteration % every == 0) or iteration == self.iterations

    def save_checkpoint(self) -> None:
        """Write the resumable state of ``self.iteration`` (a collective under torchrun)."""
        raise NotImplementedError

    def progress_message(self, iteration: int, row: dict[str, Any]) -> str:
        loss = row.get("loss")
        tail = f" loss {loss:.4f}" if isinstance(loss, float) else ""
        return f"{self.name} iteration {iteration}/{self.iterations}{tail}"

    def on_train_end(self, *, failed: bool) -> None:
        """After the last step, a stop or an error (then ``failed``): close files and bars."""

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        """Train from the checkpoint (or from scratch) to ``iterations`` or a stop; returns the
        iteration reached. ``self.stopped`` says whether a stop ended it early."""
        self.resumed_from = self.load_checkpoint()
        if self.dist.enabled:  # every rank must continue from the same iteration (several nodes: one shared OUT)
            self.dist.agree_on_resume(self.resumed_from, self.checkpoint_path or "the checkpoint")
        self.iteration = self._saved_at = self.resumed_from or 0
        failed = False
        try:
            self.on_train_start()
            while self.iteration < self.iterations:
                if self.stop_requested():
                    self.stopped = True
                    break
                self._one_iteration()
        except BaseException:
            failed = True
            raise
        finally:
            self._finish(failed)
        return self.iteration

    def _one_iteration(self) -> None:
        row = self.train_step(self.iteration)
        self.iteration += 1
        self.validation_step(self.iteration, row)
        self.log_iteration(self.iteration, row)
        if self.should_checkpoint(self.iteration):
            self.checkpoint()
        if self.progress is not None:
            loss = row.get("loss")
            postfix = {"loss": loss} if isinstance(loss, float) else {}
            self.progress.advance(1, self.progress_message(self.iteration, row), **postfix)
        self.on_iteration_end(self.iteration, row)

    def _finish(self, failed: bool) -> None:
        try:
            # one process: also after an error once a stop was asked for; several processes only on an
            # agreed stop (a collective after one rank failed would hang)
            wanted = self.stopped or (not self.dist.enabled and self.stop_flag())
            if wanted and self.iteration != self._saved_at and not (failed and self.dist.enabled):
                self.checkpoint()
        finally:
            self.on_train_end(failed=failed)

    def checkpoint(self) -> None:
        """save_checkpoint() now, remembering which iteration the checkpoint holds."""
        self.save_checkpoint()
        self._saved_at = self.iteration

    # --- stop and reductions -------------------------------------------------------------------

    def stop_flag(self) -> bool:
        """This process's stop request (signal handler, callback, the caller's callable)."""
        return bool(self.stop() if callable(self.stop) else self.stop.stop)

    def stop_requested(self) -> bool:
        """Stop before the next step? Under torchrun: the flag agreed in the last reduce_metrics."""
        return self._stop_agreed if self.dist.enabled else self.stop_flag()

    def reduce_metrics(self, values: dict[str, float], *, nan_aware: Collection[str] = ()) -> dict[str, float]:
        """Mean of each value over the ranks, plus the agreed stop flag, in one all-reduce.

        Keys in ``nan_aware`` average over the ranks where the value is not NaN (a Dice of a batch
        without that structure), NaN when it is NaN everywhere; other keys are plain means (a NaN
        loss on one rank stays NaN). In a single process the values are returned unchanged."""
        if not self.dist.enabled:
            return dict(values)
        flat: list[float] = []
        for key, value in values.items():
            value = float(value)
            missing = key in nan_aware and math.isnan(value)
            flat += [0.0 if missing else value, 0.0 if missing else 1.0]
        flat.append(float(self.stop_flag()))
        total = self.dist.all_reduce_sum(torch.tensor(flat, dtype=torch.float64, device=self.device)).tolist()
        self._stop_agreed = total[-1] > 0
        return {key: (total[2 * i] / total[2 * i + 1] if total[2 * i + 1] else math.nan)
                for i, key in enumerate(values)}

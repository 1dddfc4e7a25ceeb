"""Running cases in worker processes, and stopping cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PASTALib.errors import PastaError
from PASTALib.io.outputs import OutputError
from PASTALib.synth.generate.config import GenerateConfig
from PASTALib.synth.generate.layout import CaseJob
from PASTALib.synth.generate.templates import Template, build_index
from PASTALib.synth.generate.worker import WorkerContext, exit_with_parent, init_worker, run_in_worker

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


class StopFlag:
    """SIGINT/SIGTERM set ``event`` (stop after the cases in progress); a second signal aborts them."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.count = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.event.set()
        if self.count > 1:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def one_thread_per_process() -> Iterator[None]:
    """N processes on N cores: children inherit these variables; the parent's are restored after."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Drain:
    """Submits cases (at most two per worker in flight) and collects rows until done or stopped."""

    def __init__(self, executor: Any, workers: int, stop_event: threading.Event, finished: Callable[[dict], None]) -> None:
        self.executor, self.workers, self.stop_event, self.finished = executor, workers, stop_event, finished
        self.running: dict[Any, CaseJob] = {}
        self.stopped = False
        self.broken = ""  # a worker died (OOM killer, kill -9): no row, the case stays to do
        self.fatal: OutputError | None = None  # disk full / unwritable: stop and say so

    def run(self, pending: list[CaseJob]) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        queue = list(reversed(pending))
        while queue or self.running:
            while queue and len(self.running) < 2 * self.workers and not self.stop_event.is_set():
                job = queue.pop()
                self.running[self.executor.submit(run_in_worker, job)] = job
            if self.stop_event.is_set() and queue:
                self.stopped, queue = True, []
            if not self.running:
                break
            done_set, _ = wait(list(self.running), timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done_set:
                self._collect(future)

    def _collect(self, future: Any) -> None:
        self.running.pop(future)
        try:
            row = future.result()
        except OutputError as exc:
            self.fatal = self.fatal or exc
            self.stop_event.set()
            return
        except Exception as exc:
            self.broken = self.broken or f"{type(exc).__name__}: {exc}"
            self.stop_event.set()
            return
        self.finished(row)


def run_pool(
    config: GenerateConfig, tlist: list[Template], pending: list[CaseJob], stop_event: threading.Event,
    finished: Callable[[dict], None],
) -> bool:
    """Index the templates and make ``pending`` in ``config.workers`` processes; True when stopped."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    workers = config.workers
    ctx = mp.get_context("spawn")
    with one_thread_per_process():
        # Index first (same pool: templates are read in parallel), then cases; workers cache templates.
        with ProcessPoolExecutor(max_workers=min(workers, max(1, len(tlist))), mp_context=ctx,
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            index = build_index(tlist, Path(config.out), map_fn=pool.map)
        context = WorkerContext(config, {t.name: t for t in tlist}, index, parent=os.getpid())
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(context,))
        drain = _Drain(executor, workers, stop_event, finished)
        try:
            drain.run(pending)
            executor.shutdown(wait=True)
        except KeyboardInterrupt:  # second Ctrl-C / SIGTERM: abort the cases in progress
            drain.stopped = True
            for process in list(getattr(executor, "_processes", {}).values()):
                process.terminate()
            executor.shutdown(wait=False, cancel_futures=True)
    if drain.fatal is not None:
        raise drain.fatal
    if drain.broken:
        raise PastaError(f"A worker process died ({drain.broken}); finished cases are kept, rerun the same command to resume.")
    return drain.stopped

"""The worker side of a generate run: one case from template choice to the files renamed into place.

Everything a worker needs is one :class:`WorkerContext` (settings, templates, index, template cache).
The serial run builds one and passes it to :func:`run_case`; a pool worker gets its own from
:func:`init_worker`, the one per-process slot (:func:`run_in_worker` reads it), because a
``ProcessPoolExecutor`` task can only reach per-process state that way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.errors import PastaError
from PASTALib.io.files import write_text_atomic
from PASTALib.io.image import write_image
from PASTALib.io.outputs import OutputError
from PASTALib.labels import Phase
from PASTALib.layout import (
    CASE_IMAGE_NAME, CASE_LABEL_NAME, CASE_META_NAME, CASE_REPORT_NAME, CASE_TOTAL_NAME, CASE_TYPE_NAME,
)
from PASTALib.synth.generate.config import GenerateConfig
from PASTALib.synth.generate.layout import PARTIAL_DIR, CaseJob, ok_row
from PASTALib.synth.generate.schedule import case_seeds, eligible_templates
from PASTALib.synth.generate.templates import LoadedTemplate, Template, load_template

CACHE_SIZE = 4  # loaded templates kept per worker (a 512x512x300 CT + labels is ~0.5 GB)


@dataclass
class WorkerContext:
    """What one process needs to make cases: settings, templates by name, their index, a small cache."""

    config: GenerateConfig
    templates: dict[str, Template]
    index: dict[str, dict]
    parent: int | None = None  # the generator's pid in a pool worker: a case of a dead parent is dropped
    cache: OrderedDict[str, LoadedTemplate] = field(default_factory=OrderedDict)

    def template(self, name: str) -> LoadedTemplate:
        """The loaded template (least recently used ones dropped beyond CACHE_SIZE)."""
        if name in self.cache:
            self.cache.move_to_end(name)
            return self.cache[name]
        loaded = load_template(self.templates[name])
        self.cache[name] = loaded
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return loaded


_process_context: WorkerContext | None = None  # a pool worker's context, set once by init_worker


def exit_with_parent(parent: int) -> None:
    """Make this worker end when the generator process dies, kill -9 included (an orphaned worker would
    run forever): PR_SET_PDEATHSIG on Linux, plus a thread that watches the parent pid elsewhere."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def init_worker(context: WorkerContext) -> None:
    """Process-pool initializer: the context, death with the parent, and Ctrl-C left to the main process."""
    global _process_context
    exit_with_parent(int(context.parent or 0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _process_context = context


def run_in_worker(job: CaseJob) -> dict[str, Any]:
    """Pool task: :func:`run_case` with this process's context."""
    if _process_context is None:
        raise RuntimeError("run_in_worker needs init_worker as the pool's initializer")
    return run_case(_process_context, job)


def _crop(image: sitk.Image, grid: Any, *, is_label: bool) -> sitk.Image:
    from PASTALib.geometry import resample_to_grid

    out = resample_to_grid(image, grid, is_label=is_label)
    if not is_label:
        arr = np.clip(np.round(sitk.GetArrayViewFromImage(out)), -32768, 32767).astype(np.int16)
        cropped = sitk.GetImageFromArray(arr)
        cropped.CopyInformation(out)
        out = cropped
    return out


def type_json(report: Any) -> dict[str, Any]:
    """PASTA-Gen style type.json: the 8 attributes with their report wording."""
    return {
        "lesion_type": report.lesion_type,
        "label_value": report.label_value,
        "Enhancement status": report.enhancement,
        "Location": report.location,
        "Size": report.size_text,
        "Shape": report.shape_text,
        "Density": report.density,
        "Heterogeneity": report.heterogeneity,
        "Surface": report.surface,
        "Invasion": report.invasion,
        "report": report.to_text(),
    }


def _lesion_in_crop(label: sitk.Image, value: int) -> tuple[int, bool]:
    """(lesion voxels in the crop, whether the lesion touches the crop's border)."""
    lesion = sitk.GetArrayViewFromImage(label) == value
    border = np.zeros_like(lesion)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    return int(lesion.sum()), bool((lesion & border).any())


def synthesize_case(
    context: WorkerContext, job: CaseJob, template_name: str, side: str | None, synth_seed: int,
) -> tuple[dict, dict[str, sitk.Image]]:
    """One synthesis in memory: (metadata, {file name: image}) - no file written."""
    from PASTALib.geometry import local_grid
    from PASTALib.synth.pipeline import synthesize_lesion
    from PASTALib.synth.spec import LesionSpec

    t0 = time.perf_counter()
    tpl = context.template(template_name)
    info = context.index[template_name]
    phase = Phase(info["phase"]) if info["phase"] else None
    spec = LesionSpec(job.lesion_type, side=side if job.lesion_type.organ.is_paired else None, seed=synth_seed)
    t1 = time.perf_counter()
    result = synthesize_lesion(tpl.ct, tpl.organs, spec, phase=phase)
    t2 = time.perf_counter()
    crop = int(context.config.crop_mm)
    grid = local_grid(result.report.centre_mm, (crop, crop, crop))
    images = {
        CASE_IMAGE_NAME: _crop(result.ct, grid, is_label=False),
        CASE_LABEL_NAME: _crop(result.labels, grid, is_label=True),
        CASE_TOTAL_NAME: _crop(tpl.total, grid, is_label=True),
    }
    voxels, truncated = _lesion_in_crop(images[CASE_LABEL_NAME], int(job.lesion_type))
    meta = {
        "case_id": job.case_id, "lesion_type": job.lesion_type.slug, "index": job.index, "template": template_name,
        "seed": synth_seed, "phase": result.report.enhancement, "spec": result.spec.to_dict(),
        "report": result.report.to_dict(), "type": type_json(result.report),
        "crop": {"size": list(grid.size), "spacing": list(grid.spacing), "origin": list(grid.origin)},
        "lesion_voxels_in_crop": voxels, "lesion_truncated": truncated,
        "timings": {"load": t1 - t0, "synthesis": t2 - t1, "crop": time.perf_counter() - t2,
                    **{f"synth_{k}": v for k, v in result.timings.items()}},
    }
    return meta, images


def _write_files(folder: Path, meta: dict[str, Any], images: dict[str, sitk.Image]) -> None:
    for name, image in images.items():  # verified writes: a full disk fails the case, not silently
        write_image(image, folder / name)
    write_text_atomic(folder / CASE_TYPE_NAME, json.dumps(meta["type"], indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(folder / CASE_REPORT_NAME, json.dumps(meta["report"], indent=2, ensure_ascii=False) + "\n")
    case_meta = {k: v for k, v in meta.items() if k not in ("type", "report")}
    write_text_atomic(folder / CASE_META_NAME, json.dumps(case_meta, indent=2) + "\n")


def write_case(context: WorkerContext, job: CaseJob, meta: dict[str, Any], images: dict[str, sitk.Image]) -> bool:
    """Write into .partial/ then rename into place; False when the case already exists (another run won)."""
    out = Path(context.config.out)
    final = out / job.rel_dir
    partial = out / PARTIAL_DIR / f"{job.case_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    try:
        _write_files(partial, meta, images)
        if context.parent is not None and os.getppid() != context.parent:
            return False  # the generator died: leave nothing behind (the restart redoes this case)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(partial, final)  # atomic: the case appears complete or not at all
        except OSError:
            if final.is_dir():
                return False  # finished by a concurrent/orphaned run: identical content
            raise
        return True
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


def _no_template_error(job: CaseJob, any_phase: bool) -> str:
    phases = " or ".join(sorted(p.value for p in job.lesion_type.template_phases))
    return (f"no template with a healthy {job.lesion_type.organ.display_name.lower()}"
            + ("" if any_phase else f" on {phases} (use --any-phase to allow any phase)"))


def run_case(context: WorkerContext, job: CaseJob) -> dict[str, Any]:
    """Generate one case with bounded retries; returns its manifest row (status ok or failed)."""
    config = context.config
    t0 = time.perf_counter()
    candidates = eligible_templates(job.lesion_type, context.index, config.any_phase)
    row: dict[str, Any] = {"case_id": job.case_id, "lesion_type": job.lesion_type.slug, "index": job.index}
    if not candidates:
        row.update(status="failed", attempt=0, error=_no_template_error(job, config.any_phase),
                   seconds=round(time.perf_counter() - t0, 3))
        return row
    errors: list[str] = []
    for attempt in range(int(config.max_attempts)):
        synth_seed, rng = case_seeds(config.seed, job.lesion_type, job.index, attempt)
        name, sides = candidates[int(rng.integers(len(candidates)))]
        side = sides[int(rng.integers(len(sides)))]
        row.update(template=name, seed=synth_seed, attempt=attempt)
        try:
            meta, images = synthesize_case(context, job, name, side, synth_seed)
        except OutputError:
            raise  # a full disk or unwritable folder: every further case would fail the same way
        except PastaError as exc:
            errors.append(f"attempt {attempt} ({name}, seed {synth_seed}): {exc}")
            continue
        except Exception as exc:  # a bug, not bad luck: do not retry, record it and keep the batch going
            errors.append(f"attempt {attempt} ({name}, seed {synth_seed}): internal error {type(exc).__name__}: {exc}")
            row["traceback"] = traceback.format_exc(limit=5)
            break
        meta["attempt"] = attempt
        meta["earlier_errors"] = errors
        write_case(context, job, meta, images)
        row.update(ok_row(job, meta), seconds=round(time.perf_counter() - t0, 3))
        return row
    row.update(status="failed", error=errors[-1] if errors else "failed", errors=errors,
               seconds=round(time.perf_counter() - t0, 3))
    return row

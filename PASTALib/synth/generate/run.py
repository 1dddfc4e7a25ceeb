"""The generate driver: lock the folder, find what a killed run finished, make the rest, record rows."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PASTALib.errors import CorruptFileError, PastaError
from PASTALib.io.outputs import LOCK_NAME, folder_lock
from PASTALib.layout import CASE_META_NAME, CASE_REPORT_NAME
from PASTALib.synth.generate.config import GenerateConfig
from PASTALib.io.manifest import Manifest, read_manifest
from PASTALib.synth.generate.layout import PARTIAL_DIR, CaseJob, case_complete, ok_row
from PASTALib.synth.generate.pool import StopFlag, run_pool
from PASTALib.synth.generate.schedule import case_list
from PASTALib.synth.generate.templates import Template, build_index, discover_templates
from PASTALib.synth.generate.worker import WorkerContext, run_case

Progress = Callable[[int, int, dict[str, Any]], None]


class GenerationError(PastaError):
    """No case of a ``generate`` run could be made (every one failed)."""


@dataclass
class GenerateSummary:
    total: int
    skipped: int
    ok: int = 0
    failed: int = 0
    stopped: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped_failed: int = 0  # of ``skipped``: cases a previous run recorded as failed
    seconds: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if row["status"] == "ok":
            self.ok += 1
        else:
            self.failed += 1


def _clean_partials(out: Path, case_ids: set[str]) -> int:
    """Remove .partial leftovers of our cases (a killed run); other shards' temp folders are kept."""
    root = out / PARTIAL_DIR
    removed = 0
    if root.is_dir():
        for item in root.iterdir():
            if item.name.split(".", 1)[0] in case_ids:
                shutil.rmtree(item, ignore_errors=True)
                removed += 1
        try:
            root.rmdir()  # only when empty
        except OSError:
            pass
    return removed


def _restored_row(out: Path, job: CaseJob) -> dict[str, Any]:
    """The manifest row of a case renamed into place just before a kill (it has no row yet), from case.json."""
    case_json = out / job.rel_dir / CASE_META_NAME
    try:
        meta = json.loads(case_json.read_text(encoding="utf-8"))
        report = json.loads((out / job.rel_dir / CASE_REPORT_NAME).read_text(encoding="utf-8"))
        row = ok_row(job, {**meta, "report": report})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(f"{case_json.parent} holds a broken case ({type(exc).__name__}: {str(exc)[:120]}). "
                               "Delete that folder and rerun the same command to generate the case again.") from None
    return {"case_id": job.case_id, "lesion_type": job.lesion_type.slug, "index": job.index, **row, "seconds": ""}


def _finished_cases(out: Path, jobs: list[CaseJob], rows: dict[str, dict], manifest: Manifest) -> set[str]:
    """Ids of the cases a previous run finished (failed ones are not retried); restores missing rows."""
    done = {cid for cid, r in rows.items() if r.get("status") != "ok"}  # failed cases fail again
    for job in jobs:
        if job.case_id in done:
            continue
        final = out / job.rel_dir
        if not case_complete(final):
            if final.exists():  # files deleted or damaged since: generate the case again
                shutil.rmtree(final, ignore_errors=True)
            continue
        if job.case_id not in rows:  # complete, so its case.json parses
            manifest.append(_restored_row(out, job))
        done.add(job.case_id)
    return done


def _run_serial(config: GenerateConfig, tlist: list[Template], pending: list[CaseJob], stop_event: threading.Event,
                finished: Callable[[dict], None]) -> bool:
    """Make ``pending`` in this process; True when stopped."""
    context = WorkerContext(config, {t.name: t for t in tlist}, build_index(tlist, Path(config.out)))
    for job in pending:
        if stop_event.is_set():
            return True
        finished(run_case(context, job))
    return False


def generate(
    templates: str | os.PathLike | list[Template], config: GenerateConfig, *,
    progress: Progress | None = None, stop: threading.Event | None = None,
) -> GenerateSummary:
    """Generate this shard's cases into ``config.out`` (resumable; see the package doc).

    ``progress(done, total, row)`` is called in the main process after each finished case.
    ``stop`` (optional) ends the run after the cases in progress, like SIGINT/SIGTERM.
    """
    t_start = time.perf_counter()
    config.validate()
    config.out.mkdir(parents=True, exist_ok=True)
    shard, shards = config.shard
    # One run per shard and folder: a second one would interleave manifest rows and delete the
    # first one's .partial cases. Shards of one job array still run side by side.
    lock = LOCK_NAME if shards == 1 else f".pasta.shard-{shard}-of-{shards}.lock"
    with folder_lock(config.out, name=lock, what="dataset folder (same --shard)"):
        summary = _generate(templates, config, progress, stop if stop is not None else threading.Event())
    summary.seconds = time.perf_counter() - t_start
    return summary


def _generate(templates: str | os.PathLike | list[Template], config: GenerateConfig, progress: Progress | None,
              stop_event: threading.Event) -> GenerateSummary:
    out = config.out
    tlist = sorted(templates, key=lambda t: t.name) if isinstance(templates, list) else discover_templates(templates)
    jobs = case_list(config.types, config.per_type, config.shard)
    ids = {j.case_id for j in jobs}
    _clean_partials(out, ids)
    # read (and checked: garbage is a CorruptFileError) before Manifest repairs it; the last row counts
    rows = {r["case_id"]: r for r in read_manifest(out) if r.get("case_id") in ids}
    manifest = Manifest(config.manifest_path)
    try:
        done = _finished_cases(out, jobs, rows, manifest)
        pending = [j for j in jobs if j.case_id not in done]
        summary = GenerateSummary(total=len(jobs), skipped=len(jobs) - len(pending),
                                  skipped_failed=sum(1 for c in done if rows.get(c, {}).get("status") not in (None, "ok")))

        def finished(row: dict[str, Any]) -> None:
            manifest.append(row)
            summary.add(row)
            if progress is not None:
                progress(summary.skipped + summary.ok + summary.failed, summary.total, row)

        with StopFlag(stop_event):
            if pending:
                run = _run_serial if config.workers == 1 else run_pool
                summary.stopped = run(config, tlist, pending, stop_event, finished)
    finally:
        manifest.close()
        _clean_partials(out, ids)
    return summary

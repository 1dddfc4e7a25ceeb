"""Batch inference over a folder or a CSV of CTs, resumable.

Each case is written into ``OUT/.<id>.partial-<pid>/`` and renamed to ``OUT/<id>/`` when every
file is written, so ``OUT/<id>/`` exists only complete: a rerun skips it. A killed run leaves at
most a ``.partial`` folder, removed by the next run (when its process is gone; the folder is locked
against a second concurrent run). ``OUT/manifest.csv``
logs one row per finished, failed or skipped case.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PASTALib.infer.config import InferenceConfig, InferenceError
from PASTALib.infer.pipeline import PastaModel, segment_case
from PASTALib.layout import RUN_NAME
from PASTALib.io.outputs import folder_lock

ProgressFn = Callable[[float, str], None]
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ["id", "ct", "status", "lesions", "seconds", "finished_at", "error"]


@dataclass(frozen=True)
class BatchCase:
    case_id: str
    ct: Path


def _safe_id(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._")
    if not cleaned:
        raise InferenceError(f"case id {text!r} has no usable characters; give an id column of letters/digits")
    return cleaned


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for s in IMAGE_SUFFIXES:
        if lower.endswith(s) and not lower.endswith(".seg.nrrd"):
            return name[: -len(s)]
    return name


def _cases_from_csv(src: Path) -> list[BatchCase]:
    """Cases listed in a batch CSV (column ``ct``, optional ``id``; relative paths relative to the CSV)."""
    cases: list[BatchCase] = []
    with open(src, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "ct" not in fields:
            raise InferenceError(f"{src}: the CSV needs a 'ct' column (path of a CT file or DICOM folder), "
                                 f"found columns {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            if None in row:  # csv puts the fields beyond the header under None (a list)
                raise InferenceError(f"{src}, line {n}: {len(reader.fieldnames) + len(row[None])} fields but the header "
                                     f"has {len(reader.fieldnames)}; quote paths that contain commas")
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items()}
            if not row.get("ct"):
                raise InferenceError(f"{src}, line {n}: empty 'ct'")
            ct = Path(row["ct"]).expanduser()
            ct = ct if ct.is_absolute() else src.parent / ct
            cid = row.get("id") or _strip_suffix(ct.name)
            cases.append(BatchCase(_safe_id(cid), ct))
    return cases


def _cases_from_folder(src: Path) -> list[BatchCase]:
    """One case per image file and per non-empty sub-folder (DICOM series) of ``src``."""
    cases: list[BatchCase] = []
    for entry in sorted(src.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and any(p.is_file() for p in entry.iterdir()):
            cases.append(BatchCase(_safe_id(entry.name), entry))
        elif entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.name.lower().endswith(".seg.nrrd"):
            cases.append(BatchCase(_safe_id(_strip_suffix(entry.name)), entry))
    return cases


def discover_batch(source: str | os.PathLike) -> list[BatchCase]:
    """Cases of a batch: a CSV with column ``ct`` (and optional ``id``; relative paths are relative to
    the CSV), or a folder whose image files (.nii.gz/.nii/.nrrd/.mha) and sub-folders (DICOM series)
    are one case each."""
    src = Path(source)
    if src.is_file():
        cases = _cases_from_csv(src)
    elif src.is_dir():
        cases = _cases_from_folder(src)
    else:
        raise InferenceError(f"batch input {src} not found: pass a folder of CTs or a CSV with a 'ct' column")
    if not cases:
        raise InferenceError(f"no CTs found in {src} (image files .nii.gz/.nii/.nrrd/.mha or DICOM series sub-folders)")
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case_id in seen:
            raise InferenceError(f"case id {c.case_id!r} is used twice ({seen[c.case_id]} and {c.ct}); give unique ids")
        seen[c.case_id] = c.ct
    return cases


def is_finished(case_dir: Path) -> bool:
    return (case_dir / RUN_NAME).is_file()


def _append_manifest(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def run_batch(source: str | os.PathLike, out_dir: str | os.PathLike, model: PastaModel, cfg: InferenceConfig | None = None,
              *, progress: ProgressFn | None = None, fail_fast: bool = False) -> dict[str, Any]:
    """Segment every case of ``source`` into ``out_dir/<id>/``; finished cases are skipped.

    Returns ``{"done": [...], "skipped": [...], "failed": {id: error}}``.
    """
    cfg = cfg or InferenceConfig()
    cases = discover_batch(source)
    out = Path(out_dir)
    with folder_lock(out, what="batch output folder"):  # also removes killed runs' .partial folders
        return _run_batch(cases, out, model, cfg, progress, fail_fast)


def _run_batch(cases: list[BatchCase], out: Path, model: PastaModel, cfg: InferenceConfig,
               progress: ProgressFn | None, fail_fast: bool) -> dict[str, Any]:
    manifest = out / MANIFEST_NAME
    summary: dict[str, Any] = {"done": [], "skipped": [], "failed": {}}
    n = len(cases)
    say = progress or (lambda f, m: None)
    for i, case in enumerate(cases):
        final = out / case.case_id
        if is_finished(final):
            summary["skipped"].append(case.case_id)
            say((i + 1) / n, f"case {i + 1}/{n} {case.case_id}: already done, skipped")
            continue
        partial = out / f".{case.case_id}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        t0 = time.perf_counter()

        def inner(fraction: float, message: str, _i: int = i, _id: str = case.case_id) -> None:
            say((_i + min(fraction, 0.99)) / n, f"case {_i + 1}/{n} {_id}: {message}")

        try:
            result, _files = segment_case(case.ct, partial, model, cfg, progress=inner)
            if final.exists():  # an incomplete folder not written by us: replace it
                shutil.rmtree(final)
            os.rename(partial, final)
        except KeyboardInterrupt:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        except Exception as exc:  # one bad case must not stop the batch
            shutil.rmtree(partial, ignore_errors=True)
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            summary["failed"][case.case_id] = message
            _append_manifest(manifest, {"id": case.case_id, "ct": str(case.ct), "status": "error",
                                        "seconds": f"{time.perf_counter() - t0:.2f}",
                                        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "error": message})
            say((i + 1) / n, f"case {i + 1}/{n} {case.case_id}: FAILED {message}")
            if fail_fast:
                raise
            if os.environ.get("PASTA_DEBUG"):
                traceback.print_exc()
            continue
        summary["done"].append(case.case_id)
        _append_manifest(manifest, {"id": case.case_id, "ct": str(case.ct), "status": "ok", "lesions": len(result.lesions),
                                    "seconds": f"{time.perf_counter() - t0:.2f}",
                                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "error": ""})
        say((i + 1) / n, f"case {i + 1}/{n} {case.case_id}: done, {len(result.lesions)} lesion(s)")
    return summary

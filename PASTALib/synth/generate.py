"""Batch generation of a PASTA-Gen-30K style synthetic lesion dataset (``pasta synth generate``).

Templates
---------
Either a folder with one sub-folder per template CT::

    templates/<name>/ct.nii.gz            CT (any of .nii.gz .nii .nrrd .mha .mhd)
    templates/<name>/organs.nii.gz        TotalSegmentator ``total`` label map on (or overlapping) the CT
      or templates/<name>/organs_pasta.nii.gz   PASTA organ labels 1-10 instead
    templates/<name>/impression.txt       optional report impression (organs it calls diseased are skipped)

or a CSV with columns ``ct, organs`` and optional ``name, labels_kind (totalsegmentator | pasta),
impression``; relative paths are relative to the CSV's folder. Templates are identified by name
(folder name / ``name`` column / CT file stem), sorted by name.

Output (PASTA-Gen-30K layout, one folder per case)::

    <out>/<Organ>/<Kind>/<index>/img.nii.gz    1 mm LPS CT crop (crop_mm³) centred on the lesion, int16
                                 label.nii.gz  organs 1-10 + the lesion 11-25 (docs/labels-and-reports.md), same grid
                                 total.nii.gz  the template's organ segmentation (TotalSegmentator ids or PASTA 1-10)
                                 type.json     the 8 report attributes (PASTA-Gen style)
                                 report.json   our StructuredReport JSON (schema: report.schema.json)
                                 case.json     seed, template, attempt, resolved spec, crop grid, timings
    <out>/manifest.csv                          one row per finished case (ok or failed); per shard:
                                                manifest.shard-<i>-of-<n>.csv
    <out>/templates.index.json                  cached template phase + healthy organs

Determinism: case ``(type, index)`` uses ``np.random.SeedSequence([seed, label_value, index, attempt])``
for both the template choice and the synthesis seed, so any shard, worker count or resume produces
the same case bit-identically (same templates, same code). A case that fails (lesion does not fit,
organ too small, ...) is retried with attempt + 1 up to ``max_attempts`` times, then recorded as
failed with the last error.

Crash safety: each case is written into ``<out>/.partial/<case_id>.<pid>.<token>`` and renamed
into place in one step, so a case folder either is complete or does not exist. On restart finished
cases (folder present or manifest row) are skipped, leftovers of the same cases in ``.partial`` are
removed and manifest rows missing for finished folders are restored from their case.json.
"""

from __future__ import annotations

import contextlib
import csv
import io
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.errors import AnatomyError, CorruptFileError, PastaError, SpecificationError
from PASTALib.io.files import write_text_atomic
from PASTALib.io.image import write_image
from PASTALib.io.outputs import LOCK_NAME, OutputError, folder_lock
from PASTALib.labels import LesionType, Organ, Phase

class GenerationError(PastaError):
    """No case of a ``generate`` run could be made (every one failed)."""


TEMPLATE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LABELS_KINDS = ("totalsegmentator", "pasta", "auto")
DEFAULT_CROP_MM = 128  # PASTA-Gen-30K ships 280 mm crops; smaller is much faster to write
DEFAULT_MAX_ATTEMPTS = 5
INDEX_FILE = "templates.index.json"
PARTIAL_DIR = ".partial"
CASE_FILES = ("img.nii.gz", "label.nii.gz", "total.nii.gz", "type.json", "report.json", "case.json")

#: PASTA-Gen-30K folder names (<Organ>/<Kind>); the public dataset uses e.g. Gall/Stone, Kidney/Cyst, Lung/Tumor.
DATASET_FOLDERS: dict[LesionType, tuple[str, str]] = {
    LesionType.LUNG_TUMOR: ("Lung", "Tumor"),
    LesionType.LIVER_TUMOR: ("Liver", "Tumor"),
    LesionType.GALLBLADDER_CANCER: ("Gall", "Tumor"),
    LesionType.PANCREAS_TUMOR: ("Pancreas", "Tumor"),
    LesionType.ESOPHAGEAL_CANCER: ("Esophagus", "Tumor"),
    LesionType.GASTRIC_CANCER: ("Stomach", "Tumor"),
    LesionType.COLORECTAL_CANCER: ("Colon", "Tumor"),
    LesionType.KIDNEY_TUMOR: ("Kidney", "Tumor"),
    LesionType.BLADDER_CANCER: ("Bladder", "Tumor"),
    LesionType.BONE_METASTASIS: ("Bone", "Tumor"),
    LesionType.LIVER_CYST: ("Liver", "Cyst"),
    LesionType.GALLSTONE: ("Gall", "Stone"),
    LesionType.PANCREAS_CYST: ("Pancreas", "Cyst"),
    LesionType.KIDNEY_CYST: ("Kidney", "Cyst"),
    LesionType.KIDNEY_STONE: ("Kidney", "Stone"),
}

MANIFEST_COLUMNS = (
    "case_id", "lesion_type", "index", "status", "template", "seed", "attempt", "phase", "case_dir",
    "img", "label", "total", "report_json", "report_text", "error", "seconds",
)


# ----------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class Template:
    name: str
    ct: str
    organs: str
    labels_kind: str = "totalsegmentator"
    impression: str = ""


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in TEMPLATE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.exists():
            return path
    return None


def discover_templates(source: str | os.PathLike) -> list[Template]:
    """Templates from a folder of ``<name>/ct.* + organs.*`` (see module doc) or a CSV; sorted by name."""
    source = Path(source)
    templates: list[Template] = []
    if source.is_file() and source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"ct", "organs"} - set(reader.fieldnames or ())
            if missing:
                raise SpecificationError(
                    f"{source} lacks column(s) {sorted(missing)}; a template CSV needs ct, organs "
                    "and optionally name, labels_kind (totalsegmentator | pasta), impression."
                )
            for row in reader:
                ct = (source.parent / row["ct"].strip()).resolve() if not os.path.isabs(row["ct"].strip()) else Path(row["ct"].strip())
                organs_text = row["organs"].strip()
                organs = Path(organs_text) if os.path.isabs(organs_text) else (source.parent / organs_text).resolve()
                kind = (row.get("labels_kind") or "totalsegmentator").strip().lower() or "totalsegmentator"
                name = (row.get("name") or "").strip() or ct.name.split(".")[0]
                templates.append(Template(name, str(ct), str(organs), kind, (row.get("impression") or "").strip()))
    elif source.is_dir():
        for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            ct = _find_file(folder, "ct")
            organs, kind = _find_file(folder, "organs"), "totalsegmentator"
            if organs is None:
                organs, kind = _find_file(folder, "organs_pasta"), "pasta"
            if ct is None or organs is None:
                continue
            impression = folder / "impression.txt"
            text = impression.read_text(encoding="utf-8").strip() if impression.exists() else ""
            templates.append(Template(folder.name, str(ct), str(organs), kind, text))
    else:
        raise SpecificationError(f"Templates {source} is neither a folder nor a .csv file.")
    for t in templates:
        if t.labels_kind not in LABELS_KINDS:
            raise SpecificationError(f"Template {t.name}: labels_kind {t.labels_kind!r}; allowed: {', '.join(LABELS_KINDS)}.")
        for path in (t.ct, t.organs):
            if not Path(path).exists():
                raise SpecificationError(f"Template {t.name}: {path} does not exist.")
    names = [t.name for t in templates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecificationError(f"Template names must be unique; repeated: {', '.join(duplicates)}.")
    if not templates:
        raise SpecificationError(
            f"No templates in {source}: expected <name>/ct.nii.gz + <name>/organs.nii.gz folders or a CSV with ct, organs."
        )
    return sorted(templates, key=lambda t: t.name)


@dataclass
class LoadedTemplate:
    ct: sitk.Image
    organs: sitk.Image  # PASTA 1-10 on the CT grid
    total: sitk.Image  # the template's own label map on the CT grid (written as total.nii.gz)
    masks: Any  # PASTALib.anatomy.OrganMasks


def load_template(t: Template) -> LoadedTemplate:
    from PASTALib.anatomy.labelmaps import organ_masks_for_ct
    from PASTALib.io import read_ct, read_label

    ct = read_ct(t.ct)
    masks = organ_masks_for_ct(read_label(t.organs), ct, t.labels_kind, source=str(t.organs))
    total = masks.label_map
    if int(np.asarray(masks.array).max(initial=0)) < 256:
        total = sitk.Cast(total, sitk.sitkUInt8)
    return LoadedTemplate(ct, masks.pasta_label_map(include_lesions=False), total, masks)


def _fingerprint(t: Template) -> dict[str, Any]:
    out: dict[str, Any] = asdict(t)
    for key in ("ct", "organs"):
        st = os.stat(t.__dict__[key])
        out[key + "_stat"] = [st.st_size, int(st.st_mtime_ns)]
    return out


def index_template(t: Template) -> dict[str, Any]:
    """Phase and healthy organs (sides) of one template: what the case scheduler needs."""
    from PASTALib.anatomy import assess_organ, detect_phase
    from PASTALib.synth.pipeline import estimate_phase

    loaded = load_template(t)
    try:
        phase: str | None = detect_phase(loaded.ct, loaded.masks).phase.value
    except AnatomyError:
        ct_xyz = sitk.GetArrayViewFromImage(loaded.ct).transpose(2, 1, 0)
        lab_xyz = sitk.GetArrayViewFromImage(loaded.organs).transpose(2, 1, 0)
        has = {int(v) for v in np.unique(lab_xyz[::2, ::2, ::2])}
        phase = estimate_phase(ct_xyz, lab_xyz, LesionType.LIVER_TUMOR).value if has & {int(Organ.KIDNEY), int(Organ.LIVER)} else None
    healthy: dict[str, list[str | None]] = {}
    reasons: dict[str, str] = {}
    for organ in Organ:
        sides: Sequence[str | None] = ("right", "left") if organ.is_paired else (None,)
        for side in sides:
            result = assess_organ(loaded.masks, organ, side, t.impression or None)
            key = organ.name.lower() + (f"_{side}" if side else "")
            if result.healthy:
                healthy.setdefault(organ.name.lower(), []).append(side)
            else:
                reasons[key] = result.reason
    return {"template": _fingerprint(t), "phase": phase, "healthy": healthy, "unhealthy": reasons}


def _read_index(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}




# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class CaseJob:
    lesion_type: LesionType
    index: int

    @property
    def case_id(self) -> str:
        return f"{self.lesion_type.slug}-{self.index:05d}"

    @property
    def rel_dir(self) -> str:
        organ, kind = DATASET_FOLDERS[self.lesion_type]
        return f"{organ}/{kind}/{self.index:05d}"


def case_list(types: Iterable[LesionType], per_type: int, shard: tuple[int, int] = (0, 1)) -> list[CaseJob]:
    """All cases (index-major, so every type progresses together), then this shard's share (every n-th)."""
    types = sorted({LesionType.parse(t) for t in types})
    jobs = [CaseJob(t, i) for i in range(per_type) for t in types]
    i, n = shard
    return jobs[i::n]


def case_seeds(seed: int, lesion_type: LesionType, index: int, attempt: int) -> tuple[int, np.random.Generator]:
    """(synthesis seed, generator for the template/side choice) of one attempt of one case."""
    state = np.random.SeedSequence([int(seed), int(lesion_type), int(index), int(attempt)]).generate_state(4, np.uint32)
    synth_seed = ((int(state[0]) << 32) | int(state[1])) >> 1  # non-negative 63-bit
    return synth_seed, np.random.default_rng([int(state[2]), int(state[3])])


def eligible_templates(lesion_type: LesionType, index: dict[str, dict], any_phase: bool) -> list[tuple[str, list[str | None]]]:
    """Sorted (template name, healthy sides) where the organ is healthy and the phase fits the type."""
    organ = lesion_type.organ.name.lower()
    phases = {p.value for p in lesion_type.template_phases}
    out = []
    for name in sorted(index):
        info = index[name]
        sides = info["healthy"].get(organ)
        if not sides:
            continue
        if not any_phase and info["phase"] not in phases:
            continue
        out.append((name, sides))
    return out


@dataclass
class GenerateConfig:
    out: Path
    per_type: int
    types: tuple[LesionType, ...] = tuple(LesionType)
    seed: int = 0
    crop_mm: int = DEFAULT_CROP_MM
    any_phase: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    workers: int = 1
    shard: tuple[int, int] = (0, 1)

    @property
    def manifest_path(self) -> Path:
        i, n = self.shard
        return self.out / ("manifest.csv" if n == 1 else f"manifest.shard-{i}-of-{n}.csv")


# ----------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}
_CACHE: OrderedDict[str, LoadedTemplate] = OrderedDict()
_CACHE_SIZE = 4  # loaded templates kept per worker (a 512x512x300 CT + labels is ~0.5 GB)


def _exit_with_parent(parent: int) -> None:
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


def _init_worker(templates: dict[str, Template], index: dict[str, dict], config: dict[str, Any], parent: int | None) -> None:
    """Process-pool initializer: settings, and Ctrl-C left to the main process (it stops cleanly)."""
    if parent is not None:
        _exit_with_parent(parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _WORKER.update(templates=templates, index=index, config=config, parent=parent)


def _template(name: str) -> LoadedTemplate:
    if name in _CACHE:
        _CACHE.move_to_end(name)
        return _CACHE[name]
    loaded = load_template(_WORKER["templates"][name])
    _CACHE[name] = loaded
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return loaded


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


def synthesize_case(job: CaseJob, template_name: str, side: str | None, synth_seed: int, config: dict[str, Any]) -> tuple[dict, dict[str, sitk.Image]]:
    """One synthesis in memory: (metadata, {file name: image}) — no file written."""
    from PASTALib.geometry import local_grid
    from PASTALib.synth.pipeline import synthesize_lesion
    from PASTALib.synth.spec import LesionSpec

    t0 = time.perf_counter()
    tpl = _template(template_name)
    info = _WORKER["index"][template_name]
    phase = Phase(info["phase"]) if info["phase"] else None
    spec = LesionSpec(job.lesion_type, side=side if job.lesion_type.organ.is_paired else None, seed=synth_seed)
    t1 = time.perf_counter()
    result = synthesize_lesion(tpl.ct, tpl.organs, spec, phase=phase)
    t2 = time.perf_counter()
    crop = int(config["crop_mm"])
    grid = local_grid(result.report.centre_mm, (crop, crop, crop))
    images = {
        "img.nii.gz": _crop(result.ct, grid, is_label=False),
        "label.nii.gz": _crop(result.labels, grid, is_label=True),
        "total.nii.gz": _crop(tpl.total, grid, is_label=True),
    }
    lab = sitk.GetArrayViewFromImage(images["label.nii.gz"])
    lesion = lab == int(job.lesion_type)
    border = np.zeros_like(lesion)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    meta = {
        "case_id": job.case_id, "lesion_type": job.lesion_type.slug, "index": job.index, "template": template_name,
        "seed": synth_seed, "phase": result.report.enhancement, "spec": result.spec.to_dict(),
        "report": result.report.to_dict(), "type": type_json(result.report),
        "crop": {"size": list(grid.size), "spacing": list(grid.spacing), "origin": list(grid.origin)},
        "lesion_voxels_in_crop": int(lesion.sum()), "lesion_truncated": bool((lesion & border).any()),
        "timings": {"load": t1 - t0, "synthesis": t2 - t1, "crop": time.perf_counter() - t2,
                    **{f"synth_{k}": v for k, v in result.timings.items()}},
    }
    return meta, images


def _write_case(out: Path, job: CaseJob, meta: dict[str, Any], images: dict[str, sitk.Image]) -> bool:
    """Write into .partial/ then rename into place; False when the case already exists (another run won)."""
    final = out / job.rel_dir
    partial = out / PARTIAL_DIR / f"{job.case_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    try:
        for name, image in images.items():  # verified writes: a full disk fails the case, not silently
            write_image(image, partial / name)
        report = meta["report"]
        write_text_atomic(partial / "type.json", json.dumps(meta["type"], indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(partial / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        case_meta = {k: v for k, v in meta.items() if k not in ("type", "report")}
        write_text_atomic(partial / "case.json", json.dumps(case_meta, indent=2) + "\n")
        parent = _WORKER.get("parent")
        if parent is not None and os.getppid() != parent:
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


def run_case(job: CaseJob) -> dict[str, Any]:
    """Generate one case with bounded retries; returns its manifest row (status ok or failed)."""
    config, index = _WORKER["config"], _WORKER["index"]
    out = Path(config["out"])
    t0 = time.perf_counter()
    candidates = eligible_templates(job.lesion_type, index, config["any_phase"])
    row: dict[str, Any] = {"case_id": job.case_id, "lesion_type": job.lesion_type.slug, "index": job.index}
    if not candidates:
        phases = " or ".join(sorted(p.value for p in job.lesion_type.template_phases))
        row.update(status="failed", attempt=0, error=(
            f"no template with a healthy {job.lesion_type.organ.display_name.lower()}"
            + ("" if config["any_phase"] else f" on {phases} (use --any-phase to allow any phase)")))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row
    errors: list[str] = []
    for attempt in range(int(config["max_attempts"])):
        synth_seed, rng = case_seeds(config["seed"], job.lesion_type, job.index, attempt)
        name, sides = candidates[int(rng.integers(len(candidates)))]
        side = sides[int(rng.integers(len(sides)))]
        row.update(template=name, seed=synth_seed, attempt=attempt)
        try:
            meta, images = synthesize_case(job, name, side, synth_seed, config)
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
        _write_case(out, job, meta, images)
        row.update(_ok_row(job, meta))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row
    row.update(status="failed", error=errors[-1] if errors else "failed", errors=errors)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def case_complete(case_dir: Path) -> bool:
    """Whether every file of a finished case is there and plausible (non-empty; the JSON files parse;
    a .nii.gz starts with the gzip magic): resume must not count a case whose files were deleted."""
    try:
        for name in CASE_FILES:
            path = case_dir / name
            if not path.is_file() or path.stat().st_size == 0:
                return False
            if name.endswith(".json"):
                json.loads(path.read_text(encoding="utf-8"))
            else:
                with open(path, "rb") as stream:
                    if stream.read(2) != b"\x1f\x8b":
                        return False
    except (OSError, ValueError):
        return False
    return True


def _ok_row(job: CaseJob, meta: dict[str, Any]) -> dict[str, Any]:
    rel = job.rel_dir
    return {
        "status": "ok", "template": meta["template"], "seed": meta["seed"], "attempt": meta.get("attempt", 0),
        "phase": meta["phase"], "case_dir": rel, "img": f"{rel}/img.nii.gz", "label": f"{rel}/label.nii.gz",
        "total": f"{rel}/total.nii.gz", "report_json": f"{rel}/report.json",
        "report_text": meta.get("report_text") or meta.get("report", {}).get("text", ""), "error": "",
    }


# ----------------------------------------------------------------------------- manifest
def read_manifest(out: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of every manifest in ``out`` (unsharded and all shards)."""
    rows: list[dict[str, str]] = []
    for path in sorted(Path(out).glob("manifest*.csv")):
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                found = list(reader)
            header_ok = reader.fieldnames is None or {"case_id", "status"} <= set(reader.fieldnames)
        except (UnicodeDecodeError, csv.Error) as exc:
            header_ok, found = False, []
            reason = str(exc)[:120]
        else:
            reason = f"header {','.join(reader.fieldnames or [])[:120]!r}"
        if not header_ok:
            raise CorruptFileError(
                f"{path} is not a generation manifest ({reason}). Delete it and rerun the same command: "
                "finished cases are found again from their case.json."
            )
        rows += found
    return rows


class Manifest:
    """Append-only CSV; one ``os.write`` per row (O_APPEND), header once; repairs a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            data = path.read_bytes()
            if not data.endswith(b"\n"):  # killed inside a write: drop the partial row
                with open(path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size == 0:
            self._write(list(MANIFEST_COLUMNS))

    def _write(self, values: list[Any]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        os.write(self._fd, buffer.getvalue().encode("utf-8"))

    def append(self, row: dict[str, Any]) -> None:
        self._write([row.get(c, "") for c in MANIFEST_COLUMNS])

    def rows(self) -> list[dict[str, str]]:
        with open(self.path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def close(self) -> None:
        os.close(self._fd)


# ----------------------------------------------------------------------------- driver
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


class _StopFlag:
    """SIGINT/SIGTERM set ``event`` (stop after the cases in progress); a second signal aborts them."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.count = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
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


def _parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    if isinstance(text, tuple):
        i, n = text
    else:
        try:
            i, n = (int(v) for v in str(text).split("/"))
        except ValueError:
            raise SpecificationError(f"--shard must be i/n (e.g. 0/4), got {text!r}.") from None
    if not (n >= 1 and 0 <= i < n):
        raise SpecificationError(f"--shard {i}/{n}: need n >= 1 and 0 <= i < n.")
    return (i, n)


def build_index(templates: list[Template], out: Path, map_fn: Callable = map) -> dict[str, dict]:
    """Phase/health index of the templates, cached in ``<out>/templates.index.json`` (by path, size, mtime)."""
    cache_path = out / INDEX_FILE
    cached = _read_index(cache_path)
    index: dict[str, dict] = {}
    todo = []
    for t in templates:
        entry = cached.get(t.name)
        if entry and entry.get("template") == _fingerprint(t):
            index[t.name] = entry
        else:
            todo.append(t)
    for t, entry in zip(todo, map_fn(index_template, todo)):
        index[t.name] = entry
    if todo:
        merged = {**cached, **index}
        write_text_atomic(cache_path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return index


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


def generate(
    templates: str | os.PathLike | list[Template], config: GenerateConfig, *,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None, stop: threading.Event | None = None,
) -> GenerateSummary:
    """Generate this shard's cases into ``config.out`` (resumable; see module doc).

    ``progress(done, total, row)`` is called in the main process after each finished case.
    ``stop`` (optional) ends the run after the cases in progress, like SIGINT/SIGTERM.
    """
    t_start = time.perf_counter()
    config.shard = _parse_shard(config.shard)
    if config.per_type < 0 or config.max_attempts < 1 or config.crop_mm < 8 or config.workers < 1:
        raise SpecificationError("per-type >= 0, max-attempts >= 1, crop-mm >= 8 and workers >= 1 are required.")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config.out = out
    shard, shards = config.shard
    # One run per shard and folder: a second one would interleave manifest rows and delete the
    # first one's .partial cases. Shards of one job array still run side by side.
    lock = LOCK_NAME if shards == 1 else f".pasta.shard-{shard}-of-{shards}.lock"
    with folder_lock(out, name=lock, what="dataset folder (same --shard)"):
        return _generate(templates, config, out, progress, stop, t_start)


def _generate(
    templates: str | os.PathLike | list[Template], config: GenerateConfig, out: Path,
    progress: Callable[[int, int, dict[str, Any]], None] | None, stop: threading.Event | None, t_start: float,
) -> GenerateSummary:
    tlist = discover_templates(templates) if not isinstance(templates, list) else sorted(templates, key=lambda t: t.name)
    by_name = {t.name: t for t in tlist}
    jobs = case_list(config.types, config.per_type, config.shard)
    ids = {j.case_id for j in jobs}
    _clean_partials(out, ids)

    # read (and checked: garbage is a CorruptFileError) before Manifest repairs it; the last row counts
    rows = {r["case_id"]: r for r in read_manifest(out) if r.get("case_id") in ids}
    done = {cid for cid, r in rows.items() if r.get("status") != "ok"}  # failed cases fail again
    manifest = Manifest(config.manifest_path)
    for job in jobs:
        if job.case_id in done:
            continue
        final = out / job.rel_dir
        if not case_complete(final):
            if final.exists():  # files deleted or damaged since: generate the case again
                shutil.rmtree(final, ignore_errors=True)
            continue
        if job.case_id in rows:
            done.add(job.case_id)
            continue
        # A case renamed into place just before a kill has no manifest row yet: restore it from case.json.
        case_json = final / "case.json"
        if case_json.exists():
            try:
                meta = json.loads(case_json.read_text(encoding="utf-8"))
                report = json.loads((out / job.rel_dir / "report.json").read_text(encoding="utf-8"))
                row = _ok_row(job, {**meta, "report": report})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CorruptFileError(f"{case_json.parent} holds a broken case ({type(exc).__name__}: {str(exc)[:120]}). "
                                       "Delete that folder and rerun the same command to generate the case again.") from None
            manifest.append({"case_id": job.case_id, "lesion_type": job.lesion_type.slug, "index": job.index,
                             **row, "seconds": ""})
            done.add(job.case_id)
    pending = [j for j in jobs if j.case_id not in done]
    summary = GenerateSummary(total=len(jobs), skipped=len(jobs) - len(pending),
                              skipped_failed=sum(1 for c in done if rows.get(c, {}).get("status") not in (None, "ok")))
    worker_config = {"out": str(out), "seed": config.seed, "crop_mm": config.crop_mm, "any_phase": config.any_phase,
                     "max_attempts": config.max_attempts}

    def finished(row: dict[str, Any]) -> None:
        manifest.append(row)
        summary.rows.append(row)
        if row["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed += 1
        if progress is not None:
            progress(summary.skipped + summary.ok + summary.failed, summary.total, row)

    stop_event = stop if stop is not None else threading.Event()
    try:
        with _StopFlag(stop_event):
            if pending and config.workers == 1:
                index = build_index(tlist, out)
                _init_worker(by_name, index, worker_config, parent=None)
                try:
                    for job in pending:
                        if stop_event.is_set():
                            summary.stopped = True
                            break
                        finished(run_case(job))
                finally:
                    _CACHE.clear()
            elif pending:
                summary.stopped = _run_pool(tlist, by_name, out, worker_config, pending, config.workers, stop_event, finished)
    finally:
        manifest.close()
        _clean_partials(out, ids)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _run_pool(
    tlist: list[Template], by_name: dict[str, Template], out: Path, worker_config: dict[str, Any],
    pending: list[CaseJob], workers: int, stop_event: threading.Event, finished: Callable[[dict], None],
) -> bool:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # One thread per worker process: N processes on N cores (children inherit the environment).
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}
    os.environ.update({k: "1" for k in saved})
    ctx = mp.get_context("spawn")
    # Index first (same pool: templates are read in parallel), then cases; workers cache templates.
    with ProcessPoolExecutor(max_workers=min(workers, max(1, len(tlist))), mp_context=ctx,
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        index = build_index(tlist, out, map_fn=pool.map)
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(by_name, index, worker_config, os.getpid()))
    queue = list(reversed(pending))
    running: dict[Any, CaseJob] = {}
    stopped = False
    broken = ""
    fatal: OutputError | None = None
    try:
        while queue or running:
            while queue and len(running) < 2 * workers and not stop_event.is_set():
                job = queue.pop()
                running[executor.submit(run_case, job)] = job
            if stop_event.is_set() and queue:
                stopped, queue = True, []
            if not running:
                break
            done_set, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done_set:
                job = running.pop(future)
                try:
                    row = future.result()
                except OutputError as exc:  # disk full / unwritable: stop and say so
                    fatal = fatal or exc
                    stop_event.set()
                    continue
                except Exception as exc:  # a worker died (OOM killer, kill -9): no row, the case stays to do
                    broken = broken or f"{type(exc).__name__}: {exc}"
                    stop_event.set()
                    continue
                finished(row)
        executor.shutdown(wait=True)
    except KeyboardInterrupt:  # second Ctrl-C / SIGTERM: abort the cases in progress
        stopped = True
        for process in list(getattr(executor, "_processes", {}).values()):
            process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if fatal is not None:
        raise fatal
    if broken:
        raise PastaError(f"A worker process died ({broken}); finished cases are kept, rerun the same command to resume.")
    return stopped


def verify_case(case_dir: str | os.PathLike) -> dict[str, Any]:
    """Check one output case (files, grids, label values, report schema); returns its report dict."""
    from PASTALib.report.schema import validate_report

    case_dir = Path(case_dir)
    missing = [f for f in CASE_FILES if not (case_dir / f).exists()]
    if missing:
        raise AssertionError(f"{case_dir}: missing {missing}")
    report = json.loads((case_dir / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    from PASTALib.io import read_image, read_label

    img = read_image(case_dir / "img.nii.gz")
    lab = read_label(case_dir / "label.nii.gz")
    if img.GetSize() != lab.GetSize() or not np.allclose(img.GetSpacing(), (1, 1, 1)):
        raise AssertionError(f"{case_dir}: img/label grids differ or are not 1 mm")
    values = set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist())
    if not values <= set(range(11)) | {int(report["label_value"])} or int(report["label_value"]) not in values:
        raise AssertionError(f"{case_dir}: label values {sorted(values)} (lesion {report['label_value']})")
    return report


__all__ = [
    "CASE_FILES", "DATASET_FOLDERS", "DEFAULT_CROP_MM", "MANIFEST_COLUMNS", "CaseJob", "GenerateConfig", "GenerationError",
    "GenerateSummary", "Template", "case_list", "case_seeds", "discover_templates", "eligible_templates",
    "case_complete", "generate", "index_template", "load_template", "read_manifest", "verify_case",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: pasta synth generate --help")

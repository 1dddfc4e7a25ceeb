"""Create a blinded realism study: balance real:synthetic 1:1 per lesion type, anonymise, keep a key apart.

Layout written by :func:`create_study`::

    STUDY/                       what readers get
      study.json                 study id, settings, case ids (sorted: no origin order)
      manifest.json              sha256 of every file above and below
      responses.sqlite           answers (created empty)
      cases/<ID>/image.nii.gz    int16 HU, 1 mm isotropic LPS, lesion-centred cube (default 128 mm)
      cases/<ID>/mask.nii.gz     uint8, 1 = the rated lesion
      cases/<ID>/case.json       lesion type and the report attributes to rate (if any)
    KEY/                         the study coordinator only
      key.json                   case id -> origin, source paths, lesion type, original report;
                                 dropped cases; warnings; checksums of every study file

Spacing policy: every case is resampled to the same isotropic spacing (default 1 mm, linear for
CT, nearest for the mask) and cropped to the same lesion-centred cube whose centre is placed at
LPS (0, 0, 0). Keeping native spacing or patient coordinates would leak the source scanner
(real cases and synthesis templates rarely share protocols); a common grid makes every NIfTI
header byte-identical. Intensities are clipped to -1024..3071 HU so scanner padding values
(-2048, -3024) and 12-bit ceilings cannot tell sources apart. What a common grid cannot hide
is image content (noise texture, through-plane blur of thick-slice sources): that is what the
readers are asked to judge, but the coordinator should match sources' slice thickness.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from PASTALib import limits
from PASTALib.errors import PastaError
from PASTALib.report.attributes import ATTRIBUTES, parse_attribute
from PASTALib.report.parsing import report_attributes
from PASTALib.review import db
from PASTALib.review.anonymise import anonymise_case
from PASTALib.review.cases import ORIGINS, SourceCase
from PASTALib.review.errors import ReviewError, StudyTamperedError
from PASTALib.review.layout import (CASE_JSON, DB_NAME, IMAGE_NAME, MASK_NAME, PARTIAL_MARKER, write_json,
                                     remove_stale_partials, sha256, study_files, verify_files)

STUDY_FORMAT_VERSION = 1


@dataclass(frozen=True)
class StudySettings:
    """How a study is built and answered (stored in study.json, the database and the key)."""

    seed: int = 0
    spacing_mm: float = 1.0
    fov_mm: float | None = 128.0  # lesion-centred cube edge; None keeps the whole CT (its size then leaks)
    allow_changes: bool = False  # may a reader change an answer once given?
    ask_attributes: bool = True  # ask 1-5 accuracy of the 5 report attributes for cases with a report
    allow_report_imbalance: bool = False  # see create_study: report presence must not reveal origin

    def __post_init__(self) -> None:
        db.check_number(self.seed, "The study seed (--seed)", limits.SEED)
        spacing = db.check_number(self.spacing_mm, "The study spacing in mm (--spacing)", limits.REVIEW_SPACING_MM)
        if self.fov_mm is not None:  # at least 4 voxels across (see limits.REVIEW_FOV_MM)
            db.check_number(self.fov_mm, "The field of view in mm (--fov; 0 keeps the whole CT)",
                            replace(limits.REVIEW_FOV_MM, low=4 * spacing))


@dataclass
class CreatedStudy:
    study_dir: Path
    key_dir: Path
    case_ids: list[str]
    counts: dict[str, dict[str, int]]  # lesion type slug -> origin -> n kept
    dropped: list[dict[str, str]]
    warnings: list[str] = field(default_factory=list)
    removed_partials: list[Path] = field(default_factory=list)  # leftovers of killed creates, cleaned


# ---------------------------------------------------------------- balancing


def balance(cases: Sequence[SourceCase], seed: int) -> tuple[list[SourceCase], list[dict[str, str]]]:
    """Keep min(n_real, n_synthetic) of each per lesion type; drop the surplus at random (seeded).

    Inputs are sorted by path first, so the result does not depend on the order they were given in.
    """
    rng = np.random.default_rng([seed, 1])
    kept: list[SourceCase] = []
    dropped: list[dict[str, str]] = []
    for lesion_type in sorted({c.lesion_type for c in cases}):
        groups = {o: sorted((c for c in cases if c.lesion_type == lesion_type and c.origin == o),
                            key=lambda c: (str(c.image), str(c.mask))) for o in ORIGINS}
        n = min(len(g) for g in groups.values())
        for origin, group in groups.items():
            chosen = set(rng.permutation(len(group))[:n].tolist())
            for i, case in enumerate(group):
                if i in chosen:
                    kept.append(case)
                else:
                    other = "synthetic" if origin == "real" else "real"
                    reason = (f"no {other} {lesion_type.slug} case to pair with" if n == 0
                              else f"surplus {origin} {lesion_type.slug}: {len(group)} {origin} vs {n} {other}")
                    dropped.append({"origin": origin, "lesion_type": lesion_type.slug,
                                    "image": str(case.image), "mask": str(case.mask), "reason": reason})
    return kept, dropped


def report_problems(report: dict[str, Any] | None) -> list[str]:
    """Why a (non-empty) report would tell readers something besides its content: attributes missing
    (fewer questions than other cases) or wordings outside the report vocabulary."""
    given = report_attributes(report)
    if not given:
        return []
    problems = []
    missing = [a for a in db.ATTRIBUTES if a not in given]
    if missing:
        problems.append(f"{len(given)} of {len(db.ATTRIBUTES)} attributes (missing {', '.join(missing)})")
    for attribute, enum in ATTRIBUTES.items():
        text = given.get(attribute)
        if text is None or text in {m.value for m in enum}:
            continue
        try:
            hint = f"did you mean {parse_attribute(enum, text, attribute).value!r}?"
        except PastaError:
            hint = "allowed: " + ", ".join(repr(m.value) for m in enum)
        problems.append(f"{attribute} {db.shown(repr(text))} is not a report wording ({hint})")
    return problems


def _visible_report(case: SourceCase, settings: StudySettings) -> dict[str, str] | None:
    """The report attributes a reader sees (exact wordings only: no seed, sizes or synthesis details)."""
    if not settings.ask_attributes or not case.report:
        return None
    return report_attributes(case.report) or None


def _refuse_revealing_reports(cases: Sequence[SourceCase], settings: StudySettings) -> None:
    """Every report shown must be complete and in the exact vocabulary: real reports with 2 of 5
    attributes next to synthetic ones with 5, or 'round' next to 'Round-like', tell the origin."""
    if not settings.ask_attributes:
        return
    offending = [(c, p) for c in cases for p in [report_problems(c.report)] if p]
    if not offending:
        return
    listed = "; ".join(f"{c.origin} {c.image}: {', '.join(p)}" for c, p in offending[:10])
    more = f"; and {len(offending) - 10} more" if len(offending) > 10 else ""
    raise ReviewError(
        f"Cannot blind the attribute questions: {len(offending)} of {len(cases)} cases have a report that is "
        f"incomplete or not in the report vocabulary, so the number or wording of the questions reveals the "
        f"origin. {listed}{more}. Complete the reports (all of {', '.join(db.ATTRIBUTES)}) in the exact "
        "wording of the structured report (docs/labels-and-reports.md; `pasta synth` writes it), or create "
        "the study without attribute questions (--no-attributes)."
    )


def _report_warnings(cases: Sequence[SourceCase], settings: StudySettings) -> list[str]:
    """Attribute questions appear only for cases with a report: their presence must not track origin."""
    warnings = []
    for lesion_type in sorted({c.lesion_type for c in cases}):
        share = {}
        for origin in ORIGINS:
            group = [c for c in cases if c.lesion_type == lesion_type and c.origin == origin]
            share[origin] = (sum(_visible_report(c, settings) is not None for c in group), len(group))
        if share["real"][0] * share["synthetic"][1] != share["synthetic"][0] * share["real"][1]:
            warnings.append(
                f"{lesion_type.slug}: {share['synthetic'][0]}/{share['synthetic'][1]} synthetic but "
                f"{share['real'][0]}/{share['real'][1]} real cases have a report, so whether attribute "
                "questions appear reveals the origin. Give real cases reference reports (CSV column "
                "'report') or create the study without attribute questions."
            )
    return warnings


# ---------------------------------------------------------------- duplicates


def _duplicate_message(first: SourceCase, second: SourceCase, how: str) -> str:
    return (f"The same scan is used twice ({how}): {first.origin} {first.image} and {second.origin} {second.image}. "
            "The analysis treats every case as an independent scan, so a scan used twice would be counted twice; "
            "keep one case per scan (remove the duplicate from the CSV or the synthetic folders) and create the study again.")


def _refuse_duplicate_files(cases: Sequence[SourceCase]) -> None:
    """Refuse two cases on the same CT file (by resolved path); identical voxels in different files
    are caught while the cases are read (create_study)."""
    seen: dict[Path, SourceCase] = {}
    for case in cases:
        path = case.image.resolve()
        if path in seen:
            raise ReviewError(_duplicate_message(seen[path], case, "same source file"))
        seen[path] = case


# ---------------------------------------------------------------- create


def default_key_dir(study_dir: Path) -> Path:
    return study_dir.parent / f"{study_dir.name}_key"


def create_study(
    real: Sequence[SourceCase], synthetic: Sequence[SourceCase], study_dir: str | os.PathLike,
    key_dir: str | os.PathLike | None = None, settings: StudySettings = StudySettings(),
    progress=None,
) -> CreatedStudy:
    """Balance, anonymise and write a new study plus its separate key (see module docstring).

    A lock beside the study folder keeps a second ``create`` of the same study out; once it is held,
    the staging folders of killed earlier runs (``.STUDY.partial-PID``, ``.KEY.partial-PID``) are removed."""
    from PASTALib.io.outputs import folder_lock, remove_stale_partials

    study = Path(study_dir).resolve()
    key = Path(key_dir).resolve() if key_dir else default_key_dir(study)
    with folder_lock(study.parent, name=f".{study.name}.pasta.lock", what="study", clean=False):
        remove_stale_partials(study.parent, [study.name])
        remove_stale_partials(key.parent, [key.name])
        return _create_study(real, synthetic, study, key, settings, progress)


def _create_study(
    real: Sequence[SourceCase], synthetic: Sequence[SourceCase], study_dir: str | os.PathLike,
    key_dir: str | os.PathLike | None, settings: StudySettings, progress,
) -> CreatedStudy:
    study_dir = Path(study_dir).resolve()
    key_dir = Path(key_dir).resolve() if key_dir else default_key_dir(study_dir)
    removed_partials = _prepare_folders(study_dir, key_dir)
    kept, dropped, warnings = _select_cases(real, synthetic, settings)
    rng = np.random.default_rng([settings.seed, 2])
    order = rng.permutation(len(kept))  # write order and ids are random: neither follows origin
    ids: list[str] = []
    while len(ids) < len(kept):
        candidate = f"C{int(rng.integers(0, 16**6)):06X}"
        if candidate not in ids:
            ids.append(candidate)
    mtime = float(int(time.time()))
    stage, key_stage = (p.with_name(f".{p.name}.partial-{os.getpid()}") for p in (study_dir, key_dir))
    try:
        for p, final in ((stage, study_dir), (key_stage, key_dir)):
            _start_stage(p, final)
        key_cases = _write_cases(kept, order, ids, settings, stage, mtime, progress)
        study_id = f"S{int(rng.integers(0, 16**8)):08X}"
        checksums = _write_study_files(stage, study_id, ids, settings, mtime)
        write_json(key_stage / "key.json", {
            "format_version": STUDY_FORMAT_VERSION, "study_id": study_id, "study_dir": str(study_dir),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime)),
            "settings": asdict(settings), "cases": key_cases, "dropped": dropped, "warnings": warnings,
            "sha256": checksums, "manifest_sha256": sha256(stage / "manifest.json"),
        }, mtime)
        for final, staged in ((study_dir, stage), (key_dir, key_stage)):
            _move_into_place(staged, final)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(key_stage, ignore_errors=True)
        where = f" ({exc.filename})" if exc.filename else ""
        raise ReviewError(f"cannot create the study {study_dir}{where}: {exc.strerror or exc}. Free disk space, "
                          "or choose a writable location for the study and key; nothing was created.") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(key_stage, ignore_errors=True)
        raise
    counts: dict[str, dict[str, int]] = {}
    for case in kept:
        counts.setdefault(case.lesion_type.slug, {o: 0 for o in ORIGINS})[case.origin] += 1
    return CreatedStudy(study_dir, key_dir, sorted(ids), counts, dropped, warnings, removed_partials)


def _prepare_folders(study_dir: Path, key_dir: Path) -> list[Path]:
    """Refuse a key inside the study or a non-empty target; return the stale staging folders removed."""
    if key_dir == study_dir or study_dir in key_dir.parents:
        raise ReviewError(f"The key folder {key_dir} must be outside the study folder {study_dir}: "
                          "readers get the study folder, and the key reveals every answer.")
    removed_partials = remove_stale_partials((study_dir.parent, key_dir.parent))
    for folder in (study_dir, key_dir):
        if folder.exists() and not folder.is_dir():
            raise ReviewError(f"{folder} is a file; choose a new folder for the study and key.")
        if folder.exists() and any(folder.iterdir()):
            raise ReviewError(f"{folder} exists and is not empty; choose a new folder for the study and key.")
    return removed_partials


def _select_cases(
    real: Sequence[SourceCase], synthetic: Sequence[SourceCase], settings: StudySettings,
) -> tuple[list[SourceCase], list[dict[str, str]], list[str]]:
    """The balanced cases, the dropped ones and the report warnings; refuses what cannot be blinded."""
    cases = [c for c in real if c.origin == "real"] + [c for c in synthetic if c.origin == "synthetic"]
    if len(cases) != len(real) + len(synthetic):
        raise ReviewError("A case is listed under the wrong origin (real vs synthetic).")
    _refuse_duplicate_files(cases)
    kept, dropped = balance(cases, settings.seed)
    if not kept:
        raise ReviewError("No lesion type has both real and synthetic cases, so the study would be empty.")
    _refuse_revealing_reports(kept, settings)
    warnings = _report_warnings(kept, settings)
    if warnings and not settings.allow_report_imbalance:
        raise ReviewError("Cannot blind the attribute questions. " + " ".join(warnings)
                          + " (Or allow it explicitly with allow_report_imbalance / --allow-report-imbalance.)")
    return kept, dropped, warnings


def _start_stage(stage: Path, final: Path) -> None:
    """A fresh staging folder for ``final``, marked so a later create can clean it up if this one dies."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    (stage / PARTIAL_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                    "target": str(final)}), encoding="utf-8")


def _write_cases(
    kept: Sequence[SourceCase], order: np.ndarray, ids: list[str], settings: StudySettings, stage: Path,
    mtime: float, progress,
) -> dict[str, dict[str, Any]]:
    """Anonymise every case into ``stage/cases`` in ``order``; return the key's entry per case id."""
    key_cases: dict[str, dict[str, Any]] = {}
    seen_voxels: dict[str, SourceCase] = {}
    for n, (index, case_id) in enumerate(zip(order, ids), 1):
        case = kept[int(index)]
        case_dir = stage / "cases" / case_id
        info = anonymise_case(case, settings, case_dir, mtime)
        voxels = info.pop("voxels_sha256")
        if voxels in seen_voxels:
            raise ReviewError(_duplicate_message(seen_voxels[voxels], case, "identical voxels"))
        seen_voxels[voxels] = case
        visible = {"case_id": case_id, "lesion_type": case.lesion_type.display_name,
                   "report": _visible_report(case, settings), "image": IMAGE_NAME, "mask": MASK_NAME,
                   "centre_lps_mm": [0.0, 0.0, 0.0], "spacing_mm": settings.spacing_mm}
        write_json(case_dir / CASE_JSON, visible, mtime)
        key_cases[case_id] = {"origin": case.origin, "lesion_type": case.lesion_type.slug,
                              "image": str(case.image), "mask": str(case.mask),
                              "lesion_values": list(case.lesion_values) if case.lesion_values else None,
                              "report": case.report, **info}
        if progress:
            progress(n, len(kept))
    return key_cases


def _write_study_files(stage: Path, study_id: str, ids: list[str], settings: StudySettings,
                       mtime: float) -> dict[str, str]:
    """study.json, manifest.json and the empty answer database; return the checksums of the fixed files."""
    public_settings = {"allow_changes": settings.allow_changes, "ask_attributes": settings.ask_attributes,
                       "spacing_mm": settings.spacing_mm, "fov_mm": settings.fov_mm}
    write_json(stage / "study.json", {
        "format_version": STUDY_FORMAT_VERSION, "study_id": study_id, "settings": public_settings,
        "attributes": list(db.ATTRIBUTES), "case_ids": sorted(ids),
        "image_format": {"image": "NIfTI-1 .nii.gz int16 HU, clipped to -1024..3071",
                         "mask": "NIfTI-1 .nii.gz uint8, 1 = lesion",
                         "grid": "LPS identity direction, isotropic spacing, lesion centre at (0, 0, 0)"},
    }, mtime)
    checksums = {rel: sha256(stage / rel) for rel in study_files(stage)}
    write_json(stage / "manifest.json", {"study_id": study_id, "sha256": checksums}, mtime)
    db.init_db(stage / DB_NAME, {"study_id": study_id, **public_settings})
    return checksums


def _move_into_place(staged: Path, final: Path) -> None:
    """Rename a finished staging folder to ``final`` (an empty ``final`` is replaced, a filled one refused)."""
    try:
        if final.exists():
            final.rmdir()
        (staged / PARTIAL_MARKER).unlink()
        os.replace(staged, final)
    except OSError:
        if final.is_dir() and any(final.iterdir()):
            raise ReviewError(f"{final} was filled by another `pasta review create` while this one ran; "
                              "choose a new folder for the study and key.") from None
        raise


# ---------------------------------------------------------------- open / verify


@dataclass(frozen=True)
class Study:
    """The reader-side view of a study folder (no origin information)."""

    root: Path
    study_id: str
    case_ids: tuple[str, ...]
    cases: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    checksums: dict[str, str]

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @classmethod
    def open(cls, study_dir: str | os.PathLike) -> "Study":
        """Open a study; every JSON file is checked against the manifest before it is parsed."""
        root = Path(study_dir).resolve()
        if not (root / "study.json").is_file() or not (root / "manifest.json").is_file():
            raise ReviewError(f"{root} is not a reader study (no study.json/manifest.json). "
                              "Create one with `pasta review create`.")
        manifest = _read_json(root / "manifest.json", "Restore manifest.json from a backup of the study folder "
                              "(`pasta review verify STUDY --key KEY` checks it against the key).")
        checksums = manifest.get("sha256")
        if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
            raise StudyTamperedError(f"{root / 'manifest.json'} has no checksum table ('sha256'); restore it from a "
                                     "backup of the study folder.")
        _verify_listed(root, checksums, "study.json")
        meta = _read_json(root / "study.json", "Restore the study folder from a backup.")
        if meta.get("format_version", 0) > STUDY_FORMAT_VERSION:
            raise ReviewError(f"{root} was made by a newer PASTALib (format {meta['format_version']}); update PASTALib.")
        case_ids = meta.get("case_ids")
        if not isinstance(case_ids, list) or not all(isinstance(c, str) and c.isalnum() for c in case_ids):
            raise StudyTamperedError(f"{root / 'study.json'} has no valid case list; restore the study folder.")
        cases = {}
        for case_id in case_ids:
            rel = f"cases/{case_id}/{CASE_JSON}"
            _verify_listed(root, checksums, rel)  # before parsing: a damaged file is named, never parsed
            cases[case_id] = _read_json(root / rel, "Restore the study folder from a backup.")
        try:
            return cls(root, meta["study_id"], tuple(case_ids), cases, meta["settings"], checksums)
        except KeyError as exc:
            raise StudyTamperedError(f"{root / 'study.json'} lacks {exc}; restore the study folder.") from None

    def verify_case(self, case_id: str) -> None:
        """Check one case's files against the manifest (cheap: done whenever a case is shown)."""
        prefix = f"cases/{case_id}/"
        verify_files(self.root, {k: v for k, v in self.checksums.items() if k.startswith(prefix)}, complete=False)


def _verify_listed(root: Path, checksums: dict[str, str], rel: str) -> None:
    """Check one study file against the manifest; a file the manifest does not list is tampering too."""
    if rel not in checksums:
        raise StudyTamperedError(f"{rel} is not listed in {root / 'manifest.json'}: the study was modified after "
                                 "it was created. Restore the study folder from a backup.")
    verify_files(root, {rel: checksums[rel]}, complete=False)


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object from ``path``, or ReviewError naming the file and ``fix``."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ReviewError(f"cannot read {path} ({exc.strerror or exc}). Check the folder's permissions.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyTamperedError(f"{path} is damaged (not valid JSON: {exc}). {fix}") from None
    if not isinstance(data, dict):
        raise StudyTamperedError(f"{path} is damaged (not a JSON object). {fix}")
    return data


def load_key(key_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(key_dir) / "key.json"
    if not path.is_file():
        raise ReviewError(f"No study key at {path}. Pass the key folder written by `pasta review create` (--key).")
    key = _read_json(path, "Restore key.json from your backup of the key folder.")
    if not isinstance(key.get("cases"), dict) or "study_id" not in key:
        raise StudyTamperedError(f"{path} is not a study key (no study_id/cases). Pass the key folder written by "
                                 "`pasta review create` (--key), or restore it from your backup.")
    return key


def verify_study(study_dir: str | os.PathLike, key_dir: str | os.PathLike | None = None) -> int:
    """Check every study file; with the key, also that the manifest itself is the one made at creation."""
    study = Study.open(study_dir)
    damaged = db.integrity_problems(study.db_path)
    try:
        if key_dir is not None:
            key = load_key(key_dir)
            if key["study_id"] != study.study_id:
                raise ReviewError(f"The key in {key_dir} belongs to study {key['study_id']}, not {study.study_id}.")
            if sha256(study.root / "manifest.json") != key.get("manifest_sha256"):
                raise StudyTamperedError(f"manifest.json in {study.root} changed after creation (its sha256 "
                                         "differs from the key's); restore it from a backup.")
            n = verify_files(study.root, key.get("sha256") or {})
        else:
            n = verify_files(study.root, study.checksums)
    except ReviewError as exc:
        if damaged:  # report both: a restore from backup should fix everything at once
            raise type(exc)(f"{exc} Also: {' '.join(damaged)}") from None
        raise
    if damaged:
        raise ReviewError(" ".join(damaged))
    return n


def add_reader(study_dir: str | os.PathLike, reader: str, seed: int | None = None) -> int:
    """Register a reader; the shuffle seed defaults to one derived from the study id and name."""
    reader = db.reader_name(reader)
    study = Study.open(study_dir)
    if seed is None:
        digest = hashlib.sha256(f"{study.study_id}:{reader}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big")
    conn = db.connect(study.db_path)
    try:
        db.add_reader(conn, reader, seed)
    finally:
        conn.close()
    return seed

"""Template CTs of a generate run: discovery (folder or CSV), loading, and the cached phase/health index."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.errors import SpecificationError
from PASTALib.geometry import xyz_view
from PASTALib.io.files import write_text_atomic
from PASTALib.labels import LesionType, Organ
from PASTALib.layout import TEMPLATE_INDEX_NAME

TEMPLATE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LABELS_KINDS = ("totalsegmentator", "pasta", "auto")


@dataclass(frozen=True)
class Template:
    name: str
    ct: str
    organs: str
    labels_kind: str = "totalsegmentator"
    impression: str = ""


@dataclass
class LoadedTemplate:
    ct: sitk.Image
    organs: sitk.Image  # PASTA 1-10 on the CT grid
    total: sitk.Image  # the template's own label map on the CT grid (written as total.nii.gz)
    masks: Any  # PASTALib.anatomy.OrganMasks


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in TEMPLATE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.exists():
            return path
    return None


def _csv_path(base: Path, text: str) -> Path:
    text = text.strip()
    return Path(text) if os.path.isabs(text) else (base / text).resolve()


def _from_csv(source: Path) -> list[Template]:
    with open(source, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"ct", "organs"} - set(reader.fieldnames or ())
        if missing:
            raise SpecificationError(
                f"{source} lacks column(s) {sorted(missing)}; a template CSV needs ct, organs "
                "and optionally name, labels_kind (totalsegmentator | pasta), impression."
            )
        rows = list(reader)
    templates = []
    for row in rows:
        ct, organs = _csv_path(source.parent, row["ct"]), _csv_path(source.parent, row["organs"])
        kind = (row.get("labels_kind") or "totalsegmentator").strip().lower() or "totalsegmentator"
        name = (row.get("name") or "").strip() or ct.name.split(".")[0]
        templates.append(Template(name, str(ct), str(organs), kind, (row.get("impression") or "").strip()))
    return templates


def _from_folder(source: Path) -> list[Template]:
    templates = []
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
    return templates


def _check(templates: list[Template], source: Path) -> None:
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


def discover_templates(source: str | os.PathLike) -> list[Template]:
    """Templates from a folder of ``<name>/ct.* + organs.*`` (see package doc) or a CSV; sorted by name."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        templates = _from_csv(source)
    elif source.is_dir():
        templates = _from_folder(source)
    else:
        raise SpecificationError(f"Templates {source} is neither a folder nor a .csv file.")
    _check(templates, source)
    return sorted(templates, key=lambda t: t.name)


def load_template(t: Template) -> LoadedTemplate:
    from PASTALib.anatomy.labelmaps import organ_masks_for_ct
    from PASTALib.io import read_ct, read_label

    ct = read_ct(t.ct)
    masks = organ_masks_for_ct(read_label(t.organs), ct, t.labels_kind, source=str(t.organs))
    total = masks.label_map
    if int(np.asarray(masks.array).max(initial=0)) < 256:
        total = sitk.Cast(total, sitk.sitkUInt8)
    return LoadedTemplate(ct, masks.pasta_label_map(include_lesions=False), total, masks)


def fingerprint(t: Template) -> dict[str, Any]:
    """The template's fields plus size and mtime of its files: an index entry is reused while this matches."""
    out: dict[str, Any] = asdict(t)
    for key in ("ct", "organs"):
        st = os.stat(getattr(t, key))
        out[key + "_stat"] = [st.st_size, int(st.st_mtime_ns)]
    return out


def _template_phase(loaded: LoadedTemplate) -> str | None:
    from PASTALib.anatomy import estimate_phase

    estimate = estimate_phase(loaded.ct, masks=loaded.masks, labels=loaded.organs)
    if estimate is not None:
        return estimate[0].value
    # Kidney or liver too small to measure: assume the default phase; neither segmented: unknown.
    has = {int(v) for v in np.unique(xyz_view(loaded.organs)[::2, ::2, ::2])}
    return LesionType.LIVER_TUMOR.default_phase.value if has & {int(Organ.KIDNEY), int(Organ.LIVER)} else None


def index_template(t: Template) -> dict[str, Any]:
    """Phase and healthy organs (sides) of one template: what the case scheduler needs."""
    from PASTALib.anatomy import assess_organ

    loaded = load_template(t)
    healthy: dict[str, list[str | None]] = {}
    reasons: dict[str, str] = {}
    for organ in Organ:
        sides: Sequence[str | None] = ("right", "left") if organ.is_paired else (None,)
        for side in sides:
            result = assess_organ(loaded.masks, organ, side, t.impression or None)
            if result.healthy:
                healthy.setdefault(organ.name.lower(), []).append(side)
            else:
                reasons[organ.name.lower() + (f"_{side}" if side else "")] = result.reason
    return {"template": fingerprint(t), "phase": _template_phase(loaded), "healthy": healthy, "unhealthy": reasons}


def _read_index(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def build_index(templates: list[Template], out: Path, map_fn: Callable = map) -> dict[str, dict]:
    """Phase/health index of the templates, cached in ``<out>/templates.index.json`` (by path, size, mtime)."""
    cache_path = out / TEMPLATE_INDEX_NAME
    cached = _read_index(cache_path)
    index: dict[str, dict] = {}
    todo = []
    for t in templates:
        entry = cached.get(t.name)
        if entry and entry.get("template") == fingerprint(t):
            index[t.name] = entry
        else:
            todo.append(t)
    for t, entry in zip(todo, map_fn(index_template, todo)):
        index[t.name] = entry
    if todo:
        merged = {**cached, **index}
        write_text_atomic(cache_path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return index

"""A subset of the published PASTA-Gen-30K (huggingface.co/datasets/LWHYC/PASTA-Gen-30K, MIT) laid
out as ``pasta synth generate`` writes, so training and realism commands read either.

The Hub holds ``<Organ>/<Kind>/<n>/{img,label,total}.nii.gz + type.json`` (e.g. ``Lung/Tumor/102``).
A run lists the case folders of each requested type, takes the first N by case number, downloads
only their files (``huggingface_hub.snapshot_download`` with allow-patterns, pinned to one dataset
commit; an interrupted file is resumed by huggingface_hub) into ``<out>/.hf``, then moves each
complete case to ``<out>/<Organ>/<Kind>/<n:05d>`` (one rename: a case appears whole or not at all)
and appends its row to ``<out>/manifest.csv``. Cases already in place are skipped, so re-running
resumes. ``report.json`` (our StructuredReport) is not made up: the dataset's own ``type.json`` is
kept, which the training data reader accepts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PASTALib.errors import DownloadError, PastaError, SpecificationError
from PASTALib.labels import LesionType
from PASTALib.io.manifest import Manifest, read_manifest
from PASTALib.layout import CASE_TYPE_NAME, DATASET_FOLDERS, PUBLISHED_CASE_FILES

REPO_ID = "LWHYC/PASTA-Gen-30K"
REPO_URL = f"https://huggingface.co/datasets/{REPO_ID}"
DOWNLOAD_DIR = ".hf"
SOURCE_FILE = "pasta_gen_30k.json"

#: progress(done, total, message)
Progress = Callable[[int, int, str], None]


def parse_types(types: str | Iterable[str]) -> list[LesionType]:
    names = [t.strip() for t in (types.split(",") if isinstance(types, str) else types) if t.strip()]
    if not names:
        raise SpecificationError("no lesion types given; e.g. --types lung_tumor,liver_tumor")
    return sorted({LesionType.parse(n) for n in names})


def first_cases(folders: Iterable[str], per_type: int) -> list[int]:
    """The first ``per_type`` case numbers among a type's folder names (numeric names only)."""
    return sorted(int(n) for n in folders if n.isdigit())[:per_type]


def case_dir(lesion_type: LesionType, number: int) -> str:
    organ, kind = DATASET_FOLDERS[lesion_type]
    return f"{organ}/{kind}/{number:05d}"


def _manifest_row(lesion_type: LesionType, number: int, revision: str) -> dict[str, Any]:
    rel = case_dir(lesion_type, number)
    return {
        "case_id": f"{lesion_type.slug}-{number:05d}", "lesion_type": lesion_type.slug, "index": number,
        "status": "ok", "template": f"{REPO_ID}@{revision}", "seed": "", "attempt": "", "phase": "",
        "case_dir": rel, "img": f"{rel}/img.nii.gz", "label": f"{rel}/label.nii.gz", "total": f"{rel}/total.nii.gz",
        "report_json": f"{rel}/{CASE_TYPE_NAME}", "report_text": "", "error": "", "seconds": "",
    }


def install_cases(download_dir: str | os.PathLike, out: str | os.PathLike,
                  cases: Sequence[tuple[LesionType, int]], revision: str) -> list[dict[str, Any]]:
    """Move downloaded cases (``<download_dir>/<Organ>/<Kind>/<n>/``) to ``<out>/<Organ>/<Kind>/<n:05d>``
    and append their manifest rows. A case missing a file raises (nothing of it is moved)."""
    download_dir, out = Path(download_dir), Path(out)
    manifest = Manifest(out / "manifest.csv")
    listed = {r["case_dir"] for r in manifest.rows()}
    rows = []
    try:
        for lesion_type, number in cases:
            organ, kind = DATASET_FOLDERS[lesion_type]
            src = download_dir / organ / kind / str(number)
            dest = out / case_dir(lesion_type, number)
            if not dest.is_dir():
                missing = [n for n in PUBLISHED_CASE_FILES if not (src / n).is_file()]
                if missing:
                    raise DownloadError(f"{REPO_ID} case {organ}/{kind}/{number} lacks {', '.join(missing)} after the "
                                        "download; run the command again (it resumes)")
                dest.parent.mkdir(parents=True, exist_ok=True)
                staged = src.parent / f".{number}.staged"
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir()
                for name in PUBLISHED_CASE_FILES:
                    os.replace(src / name, staged / name)
                shutil.move(str(staged), str(dest))  # one rename on the same file system
            if case_dir(lesion_type, number) not in listed:
                row = _manifest_row(lesion_type, number, revision)
                manifest.append(row)
                rows.append(row)
    finally:
        manifest.close()
    return rows


def download_pasta_gen(types: str | Iterable[str], per_type: int, out: str | os.PathLike, *,
                       revision: str | None = None, progress: Progress | None = None,
                       endpoint: str | None = None, max_workers: int = 4) -> dict[str, Any]:
    """Download ``per_type`` cases of each lesion type into ``out`` (see the module docstring).
    Returns {cases, downloaded, revision, out}."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.hf_api import RepoFolder

    lesion_types = parse_types(types)
    if per_type < 1:
        raise SpecificationError(f"--per-type must be at least 1 (got {per_type})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda done, total, message: None)
    hint = (f"Without network access: download the case folders by hand from {REPO_URL}/tree/main (e.g. "
            f"Lung/Tumor/0/) on another machine and copy them to {out}/{DOWNLOAD_DIR}/<Organ>/<Kind>/<n>/, then "
            "run the same command again; or set HF_ENDPOINT to a Hugging Face mirror.")
    api = HfApi(endpoint=endpoint)
    try:
        sha = api.dataset_info(REPO_ID, revision=revision).sha or revision or "main"
        cases: list[tuple[LesionType, int]] = []
        for t in lesion_types:
            organ, kind = DATASET_FOLDERS[t]
            entries = api.list_repo_tree(REPO_ID, path_in_repo=f"{organ}/{kind}", repo_type="dataset", revision=sha)
            numbers = first_cases((Path(e.path).name for e in entries if isinstance(e, RepoFolder)), per_type)
            if len(numbers) < per_type:
                raise SpecificationError(f"{REPO_ID} has {len(numbers)} {t.slug} cases ({organ}/{kind}); asked for {per_type}")
            cases += [(t, n) for n in numbers]
        todo = [(t, n) for t, n in cases if not (out / case_dir(t, n)).is_dir()]
        report(0, len(cases), f"{len(cases) - len(todo)} of {len(cases)} cases present, downloading {len(todo)}")
        if todo:
            patterns = [f"{DATASET_FOLDERS[t][0]}/{DATASET_FOLDERS[t][1]}/{n}/{name}" for t, n in todo for name in PUBLISHED_CASE_FILES]
            snapshot_download(REPO_ID, repo_type="dataset", revision=sha, allow_patterns=patterns,
                              local_dir=out / DOWNLOAD_DIR, endpoint=endpoint, max_workers=max_workers)
    except PastaError:
        raise
    except Exception as exc:  # noqa: BLE001 - HfHubHTTPError, OSError, or the transport's (httpx/httpx2, by version) errors
        first = " ".join(str(exc).split())[:300]
        raise DownloadError(f"cannot download from {REPO_URL} ({type(exc).__name__}: {first}). {hint}") from None
    (out / SOURCE_FILE).write_text(json.dumps({"repo": REPO_ID, "revision": sha, "types": [t.slug for t in lesion_types],
                                               "per_type": per_type}, indent=2) + "\n", encoding="utf-8")
    rows = install_cases(out / DOWNLOAD_DIR, out, cases, sha)
    report(len(cases), len(cases), f"{len(cases)} cases in {out}")
    return {"cases": len(cases), "downloaded": len(todo), "new_manifest_rows": len(rows), "revision": sha,
            "out": str(out), "manifest_rows": len(read_manifest(out))}

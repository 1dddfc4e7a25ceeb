"""Study folder layout: file names, checksums of the fixed files and staging folders of a create."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PASTALib.review.errors import StudyTamperedError

IMAGE_NAME, MASK_NAME, CASE_JSON = "image.nii.gz", "mask.nii.gz", "case.json"
DB_NAME = "responses.sqlite"
#: Files in the study folder that change while readers work (not checksummed).
_MUTABLE = {"manifest.json", DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal"}
#: Marks a staging folder of :func:`create_study` (pid, host): a killed create's leftovers are recognised
#: by it and removed by the next create; it is deleted just before the folder is renamed into place.
PARTIAL_MARKER = ".pasta-review-partial.json"


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def study_files(study_dir: Path) -> list[str]:
    """Relative paths of the study's fixed files (everything except the manifest and database)."""
    return sorted(p.relative_to(study_dir).as_posix() for p in study_dir.rglob("*")
                  if p.is_file() and p.name not in _MUTABLE and p.name != PARTIAL_MARKER)


def verify_files(root: Path, checksums: dict[str, str], *, complete: bool = True) -> int:
    """Raise StudyTamperedError naming every file that changed, vanished or (``complete``) appeared."""
    problems = []
    for rel, expected in sorted(checksums.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256(path) != expected:
            problems.append(f"{rel} changed (sha256 differs from the one recorded at creation)")
    if complete:
        problems += [f"{rel} was added" for rel in study_files(root) if rel not in checksums]
    if problems:
        raise StudyTamperedError(
            f"The study files in {root} were modified after the study was created: " + "; ".join(problems)
            + ". Restore the original files (or re-create the study); answers on altered cases are not valid."
        )
    return len(checksums)


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` may still run (unknown counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or a pid we cannot ask about): leave its folder alone
    return True


def remove_stale_partials(folders: Iterable[Path]) -> list[Path]:
    """Remove staging folders that a killed :func:`create_study` left in ``folders``: only folders
    carrying PARTIAL_MARKER, written on this host by a process that no longer runs."""
    removed = []
    for parent in sorted({Path(f) for f in folders}):
        if not parent.is_dir():
            continue
        for stage in sorted(parent.glob(".*.partial-*")):
            try:
                info = json.loads((stage / PARTIAL_MARKER).read_text(encoding="utf-8"))
                pid, host = int(info["pid"]), str(info["host"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours (or not readable): never delete what we cannot prove we made
            if host == socket.gethostname() and not _process_alive(pid):
                shutil.rmtree(stage, ignore_errors=True)
                removed.append(stage)
    return removed


def write_json(path: Path, data: dict[str, Any], mtime: float) -> None:
    """Sorted, indented UTF-8 JSON with a fixed mtime (study files must not date their origin)."""
    from PASTALib.review.nifti import write_bytes

    write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode(), mtime)

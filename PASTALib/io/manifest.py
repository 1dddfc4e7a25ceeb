"""The manifest of a PASTA-Gen folder: one CSV row per finished case (ok or failed), appended
crash-safely. ``pasta synth generate`` and ``pasta data pasta-gen-30k`` write it (``manifest.csv``, or
``manifest.shard-<i>-of-<n>.csv`` per shard); the evaluation reads it. Torch- and synth-free.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from PASTALib.errors import CorruptFileError

MANIFEST_COLUMNS = (
    "case_id", "lesion_type", "index", "status", "template", "seed", "attempt", "phase", "case_dir",
    "img", "label", "total", "report_json", "report_text", "error", "seconds",
)


def _read_one(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            found = list(reader)
        header_ok = reader.fieldnames is None or {"case_id", "status"} <= set(reader.fieldnames)
        reason = f"header {','.join(reader.fieldnames or [])[:120]!r}"
    except (UnicodeDecodeError, csv.Error) as exc:
        header_ok, found, reason = False, [], str(exc)[:120]
    if not header_ok:
        raise CorruptFileError(
            f"{path} is not a generation manifest ({reason}). Delete it and rerun the same command: "
            "finished cases are found again from their case.json."
        )
    return found


def read_manifest(out: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of every manifest in ``out`` (unsharded and all shards)."""
    rows: list[dict[str, str]] = []
    for path in sorted(Path(out).glob("manifest*.csv")):
        rows += _read_one(path)
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

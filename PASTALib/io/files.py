"""Atomic writes of small text/JSON files (torch-free, so Slicer's process can import it cheaply)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) through a unique temporary file in the same folder + rename: readers
    never see a half-written file, and a crash leaves the previous version in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int = 2) -> Path:
    """:func:`write_text_atomic` of ``data`` as JSON (UTF-8 kept, trailing newline)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")

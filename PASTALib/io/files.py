"""Atomic writes of small text/JSON files (torch-free, so Slicer's process can import it cheaply)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PASTALib.io.outputs import write_bytes_verified


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) through a temporary file in the same folder, read it back, then rename:
    readers never see a half-written file, and a crash or a full disk leaves the previous version
    in place (:class:`~PASTALib.io.outputs.OutputError` says so)."""
    return write_bytes_verified(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int = 2) -> Path:
    """:func:`write_text_atomic` of ``data`` as JSON (UTF-8 kept, trailing newline)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")

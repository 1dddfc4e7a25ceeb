"""Where the PASTA weights live and what to say when they are missing (torch-free, so the Slicer
modules can check for the weights without loading torch into Slicer's process)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PASTALib.errors import CheckpointError, MissingWeightsError

WEIGHTS_FILENAME = "PASTA_final.pth"
WEIGHTS_ENV = "PASTA_WEIGHTS_DIR"
CLASSES_NAME = "classes.json"  # beside a fine-tuned model_final.pth: output channel -> annotated label
#: The Google Drive file the PASTA authors link from their README (https://github.com/LWHYC/PASTA).
WEIGHTS_DRIVE_ID = "1A_PjIAqKg0y_Z986HSfTsYKLhc99EMkD"
WEIGHTS_URL = f"https://drive.google.com/uc?id={WEIGHTS_DRIVE_ID}"
WEIGHTS_PAGE = f"https://drive.google.com/file/d/{WEIGHTS_DRIVE_ID}/view"
WEIGHTS_URL_ENV = "PASTA_WEIGHTS_URL"  # a mirror (e.g. an institution's file server) instead of Drive
CHECKSUM_SUFFIX = ".sha256"
WEIGHTS_SOURCE = (
    "Download PASTA_final.pth with `pasta weights download`, or without internet by hand from "
    f"{WEIGHTS_PAGE} (linked from https://github.com/LWHYC/PASTA) and run `pasta weights import FILE`"
)


def default_weights_dir() -> Path:
    """``$PASTA_WEIGHTS_DIR`` if set, else ``~/.pasta/weights``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".pasta" / "weights"


def default_weights_path() -> Path:
    """Where the public weights are expected: ``<default_weights_dir()>/PASTA_final.pth``."""
    return default_weights_dir() / WEIGHTS_FILENAME


def missing_weights_message(path: Path) -> str:
    return (
        f"PASTA weights not found at {path}. {WEIGHTS_SOURCE}; both install it at {default_weights_path()} "
        f"(or set {WEIGHTS_ENV} to the folder holding {WEIGHTS_FILENAME}, or pass the file's path)."
    )


def weights_url() -> str:
    """``$PASTA_WEIGHTS_URL`` if set, else the authors' Google Drive file."""
    return os.environ.get(WEIGHTS_URL_ENV) or WEIGHTS_URL


def checksum_path(path: str | os.PathLike) -> Path:
    """``<file>.sha256`` beside a weights file, in ``sha256sum`` format (``sha256sum -c`` checks it)."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 recorded beside ``path`` at install, or None when there is no readable record."""
    try:
        digest = checksum_path(path).read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError):
        return None
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def weights_path(checkpoint: str | os.PathLike | None = None) -> Path:
    """``checkpoint`` (``~`` expanded), or the default ``PASTA_final.pth`` location when None/empty."""
    return Path(checkpoint).expanduser() if checkpoint else default_weights_path()


def require_weights(checkpoint: str | os.PathLike | None = None) -> Path:
    """:func:`weights_path`, raising MissingWeightsError (where to download) when the file is absent."""
    path = weights_path(checkpoint)
    if not path.is_file():
        raise MissingWeightsError(missing_weights_message(path))
    return path


def read_classes(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The classes of a ``classes.json`` written by :func:`finetune`: [{class, name, label_value}] with
    classes 1..C in order (output channel c of the network = annotated label value of class c)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        classes = [{"class": int(c["class"]), "name": str(c["name"]), "label_value": int(c["label_value"])}
                   for c in doc["classes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid fine-tuning classes file ({exc!r}); copy the classes.json "
                              "that `pasta finetune` wrote beside the model, or delete it for a PASTA-numbered model") from None
    if [c["class"] for c in classes] != list(range(1, len(classes) + 1)):
        raise CheckpointError(f"{path}: classes must be numbered 1..{len(classes)} in order; copy the classes.json "
                              "that `pasta finetune` wrote beside the model")
    values = [c["label_value"] for c in classes]
    if len(set(values)) != len(values) or not all(1 <= v <= 255 for v in values):
        raise CheckpointError(f"{path}: label values {values} must be distinct and in 1-255")
    return classes

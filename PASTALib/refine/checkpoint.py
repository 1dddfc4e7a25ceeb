"""Refiner checkpoints: atomic writes, and loading with errors that say what is wrong."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


from PASTALib.errors import UNREADABLE_TORCH_FILE, MissingWeightsError, PastaError
from PASTALib.refine.config import RefinerConfig

FORMAT = "pasta-refiner"
FORMAT_VERSION = 1
#: Environment variable naming the default refinement checkpoint.
CHECKPOINT_ENV = "PASTA_REFINER_CHECKPOINT"
TRAIN_HINT = (
    "Train one with `pasta refine train --data DIR --out DIR` (writes DIR/refiner.pt), or point "
    f"--checkpoint / ${CHECKPOINT_ENV} at an existing refiner.pt"
)


class RefinerCheckpointError(PastaError):
    """A refiner checkpoint is corrupt, truncated or does not fit the refinement network."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a refiner checkpoint (weights-only unpickling); validate the top-level layout."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"Refiner checkpoint {path} does not exist. {TRAIN_HINT}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_TORCH_FILE as exc:
        raise RefinerCheckpointError(
            f"{path} is not a readable refiner checkpoint (corrupt, truncated or not a torch file: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}). {TRAIN_HINT}."
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise RefinerCheckpointError(
            f"{path} is not a PASTA refiner checkpoint (expected a dict with format={FORMAT!r}, "
            f"'config' and 'model'; found {keys}). PASTA segmentation weights (PASTA_final.pth) "
            "are a different model. " + TRAIN_HINT + "."
        )
    for key in ("config", "model"):
        if key not in obj:
            raise RefinerCheckpointError(f"{path} lacks the {key!r} entry of a refiner checkpoint. {TRAIN_HINT}.")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise RefinerCheckpointError(
            f"{path} has refiner format version {obj.get('format_version')}; this PASTALib reads up to "
            f"{FORMAT_VERSION}. Update PASTALib."
        )
    return obj


def config_from_checkpoint(obj: dict[str, Any], path: str | os.PathLike = "checkpoint") -> RefinerConfig:
    try:
        return RefinerConfig.from_dict(dict(obj["config"]))
    except (PastaError, TypeError) as exc:
        raise RefinerCheckpointError(f"{path}: its refiner settings are invalid ({exc}).") from None


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Strict load; on mismatch list missing, unexpected and wrong-shape keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" ... (+{len(items) - 10} more)" if len(items) > 10 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {head(shapes)}")
        raise RefinerCheckpointError(
            f"{path} does not fit the refinement network it describes: " + "; ".join(parts)
            + ". The file was edited or written by another model/version; retrain with `pasta refine train`."
        )
    model.load_state_dict(state, strict=True)

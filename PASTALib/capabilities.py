"""What a checkpoint can do - segment (which classes), predict report attributes, embed - and why,
decided from the file itself.

Evidence, in order:

1. A metadata block this library writes into its own checkpoints (``pasta_metadata`` beside the
   ``state_dict``: what was trained and which intensity map the segmentation outputs expect).
2. The layout. The authors' stage-2 network (``Generic_UNet_classify``, which made
   ``PASTA_final.pth``) ties the segmentation outputs and the attribute head to one class count
   (14), its forward never calls ``seg_outputs``, and their fine-tuning and feature extraction drop
   them. So a file whose ``seg_outputs`` have as many channels as the attribute head has logits
   carries untrained segmentation outputs: it is an encoder + attribute head (embeddings, report
   attributes, the start of few-shot fine-tuning), not a segmenter.
3. ``classes.json`` beside the file (``pasta finetune``) names the output channels; 26 channels
   are PASTA's label numbering (stage 1).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PASTALib.errors import UNREADABLE_TORCH_FILE, CheckpointError

METADATA_KEY = "pasta_metadata"
METADATA_FORMAT = "pasta-checkpoint/1"
PASTA_NUM_LABELS = 26  # background + organs 1-10 + lesions 11-25
NUM_ATTRIBUTE_LOGITS = 14  # the attribute head's 5 groups (PASTALib.model.attributes; repeated: this module is torch-free)
#: dict keys that wrap a state dict in saved training files, and key prefixes DDP / torch.compile add
#: (shared with PASTALib.model.checkpoint, which loads with torch; this module must stay torch-free)
WRAPPER_KEYS = ("state_dict", "model", "network_weights", "model_state_dict", "net", "network")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def strip_key_prefixes(key: str) -> str:
    """``key`` without any leading ``module.`` / ``_orig_mod.`` (in any order, repeated)."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key
FINETUNE_HINT = (
    "Fine-tune it on a few annotated cases first: in Slicer, the PASTA module's few-shot section "
    "(mark cases, Fine-tune, then tick 'Use fine-tuned model'); on the command line "
    "`pasta finetune --data FOLDER --init {path} --out OUT`, then `pasta segment --checkpoint OUT/model_final.pth`."
)


@dataclass
class CheckpointCapabilities:
    """What a checkpoint can be used for; ``reasons`` says why (one line per piece of evidence)."""

    path: Path | None
    kind: str  # "pasta_final" (authors' stage 2), "stage1", "finetune", "stage2", "unknown"
    segment: bool
    segment_classes: dict[int, str] = field(default_factory=dict)  # output channel → name (background omitted)
    attributes: bool = False
    embed: bool = True
    segmentation_normalization: dict[str, Any] | None = None  # None: the SLF map (this library's default)
    reasons: list[str] = field(default_factory=list)

    def require_segmentation(self) -> None:
        """CheckpointError with the explanation and the way forward when the checkpoint cannot segment."""
        if self.segment:
            return
        name = self.path if self.path is not None else "this checkpoint"
        raise CheckpointError(
            f"{name} cannot segment: " + "; ".join(self.reasons[1:]) + ". It can "
            + ", ".join(w for w, ok in (("predict report attributes", self.attributes), ("embed lesions", self.embed)) if ok)
            + " and start few-shot fine-tuning. " + FINETUNE_HINT.format(path=self.path or "PASTA_final.pth"))

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "kind": self.kind, "segment": self.segment,
                "segment_classes": {str(k): v for k, v in self.segment_classes.items()},
                "attributes": self.attributes, "embed": self.embed,
                "segmentation_normalization": self.segmentation_normalization, "reasons": list(self.reasons)}

    def lines(self) -> list[str]:
        classes = ", ".join(f"{k}={v}" for k, v in self.segment_classes.items())
        norm = self.segmentation_normalization or {"scheme": "slf"}
        return [
            f"checkpoint: {self.path}" if self.path else "checkpoint: (state dict)",
            f"kind: {self.kind}",
            f"segment: {'yes' if self.segment else 'no'}" + (f" ({classes}; input {norm['scheme']})" if self.segment else ""),
            f"attributes: {'yes' if self.attributes else 'no'}",
            f"embed: {'yes' if self.embed else 'no'}",
            "why:", *(f"  - {r}" for r in self.reasons),
        ]


def make_metadata(*, kind: str, segment: bool, attributes: bool, segmentation_normalization: Mapping[str, Any] | None,
                  classes: list[dict[str, Any]] | None = None, init: str | None = None) -> dict[str, Any]:
    """The metadata block stored beside the state dict of this library's checkpoints."""
    return {"format": METADATA_FORMAT, "kind": kind, "segment": bool(segment), "attributes": bool(attributes),
            "segmentation_normalization": dict(segmentation_normalization) if segmentation_normalization else None,
            "classes": list(classes) if classes else None, "init": init}


def wrap_with_metadata(state_dict: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``{"state_dict": ..., "pasta_metadata": ...}``: still readable with ``weights_only=True``."""
    return {"state_dict": dict(state_dict), METADATA_KEY: dict(metadata)}


def read_metadata(obj: Any) -> dict[str, Any] | None:
    """The metadata block of a loaded checkpoint object (None for plain state dicts and foreign files)."""
    if isinstance(obj, Mapping) and isinstance(obj.get(METADATA_KEY), Mapping):
        meta = dict(obj[METADATA_KEY])
        if meta.get("format") != METADATA_FORMAT:
            raise CheckpointError(f"unknown checkpoint metadata format {meta.get('format')!r} (expected {METADATA_FORMAT})")
        return meta
    return None


def _pasta_names(n: int) -> dict[int, str]:
    from PASTALib.labels import label_name

    return {c: label_name(c) for c in range(1, n)}


def state_dict_capabilities(sd: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
                            classes: list[dict[str, Any]] | None = None, path: Path | None = None) -> CheckpointCapabilities:
    """Capabilities of a PASTA-layout state dict (tensors may live on the meta device: only shapes are read)."""
    if not any(k.startswith("conv_blocks_context.") for k in sd) or "seg_outputs.0.weight" not in sd:
        raise CheckpointError(f"{path or 'the state dict'} is not a PASTA / nnU-Net generic-UNet state dict "
                              f"(first keys: {list(sd)[:3]}); `pasta weights info` reads only PASTA checkpoints")
    n_out = int(sd["seg_outputs.0.weight"].shape[0])
    head = "head.4.weight" in sd
    n_logits = int(sd["head.4.weight"].shape[0]) if head else 0
    reasons: list[str] = ["encoder present (conv_blocks_context.*): lesion embeddings from its stage-4 feature"]
    meta_classes = (metadata or {}).get("classes") or None
    classes = classes or meta_classes

    def names() -> dict[int, str]:
        if classes:
            return {int(c["class"]): str(c["name"]) for c in classes}
        return _pasta_names(n_out) if n_out == PASTA_NUM_LABELS else {c: f"Label {c}" for c in range(1, n_out)}

    if metadata is not None:
        kind = str(metadata.get("kind", "unknown"))
        segment, attributes = bool(metadata.get("segment")), bool(metadata.get("attributes")) and head
        reasons.append(f"metadata block ({METADATA_FORMAT}, kind {kind}): segmentation outputs "
                       f"{'trained' if segment else 'not trained'}, attribute head {'trained' if attributes else 'not trained'}")
        if segment and classes and len(classes) + 1 != n_out:
            raise CheckpointError(f"{path}: its metadata lists {len(classes)} classes but the file has {n_out} output channels")
        return CheckpointCapabilities(path, kind, segment, names() if segment else {}, attributes, True,
                                      metadata.get("segmentation_normalization"), reasons)

    if head and n_out == n_logits:
        reasons.append(
            f"seg_outputs have {n_out} channels, as many as the attribute head's {n_logits} logits: the authors' "
            "stage-2 network (PASTA_final.pth) ties both to one class count and never trains seg_outputs "
            "(its forward does not call them; their fine-tuning and feature extraction drop them)")
        if n_logits == NUM_ATTRIBUTE_LOGITS:
            reasons.append(f"attribute head with {n_logits} logits (the five report attributes, trained in stage 2)")
        return CheckpointCapabilities(path, "pasta_final", False, {}, n_logits == NUM_ATTRIBUTE_LOGITS, True, None, reasons)

    attributes = head and n_logits == NUM_ATTRIBUTE_LOGITS
    if classes:
        if len(classes) + 1 != n_out:
            raise CheckpointError(f"classes.json beside {path} lists {len(classes)} class(es) + background but the file "
                                  f"has {n_out} output channels: they come from different runs")
        kind = "finetune"
        reasons.append(f"{n_out} segmentation channels named by classes.json (fine-tuned)")
    elif n_out == PASTA_NUM_LABELS:
        kind = "stage1"
        reasons.append(f"{n_out} segmentation channels: PASTA's label numbering (organs 1-10, lesions 11-25)")
    else:
        kind = "unknown"
        reasons.append(f"{n_out} segmentation channels without metadata or classes.json: channels named 'Label N'")
    if attributes:
        reasons.append(f"attribute head with {n_logits} logits (no metadata says whether it was trained)")
    return CheckpointCapabilities(path, kind, True, names(), attributes, True, None, reasons)


class _ShapeOnly:
    """A tensor's shape, without its data (what the torch-free reader returns)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(v) for v in shape)


def _rebuild_tensor(storage, offset, size, *args) -> _ShapeOnly:  # noqa: ANN001  (pickle callback)
    return _ShapeOnly(tuple(size))


class _ShapeUnpickler(pickle.Unpickler):
    """Reads the ``data.pkl`` of a ``torch.save`` zip archive into shapes and plain Python values, without
    torch and without reading tensor data. Only the globals a state dict needs are allowed."""

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *a: data
        if module == "torch" and name.endswith("Storage"):
            return name
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):  # noqa: ANN001, ANN201
        return None


def read_checkpoint_shapes(path: str | os.PathLike) -> Any:
    """The loaded checkpoint object with every tensor replaced by its shape (torch-free, for the Slicer
    panel); files in the legacy (pre-zip) format fall back to ``torch.load(weights_only=True)``."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
                with archive.open(name) as fh:
                    return _ShapeUnpickler(fh).load()
        except (StopIteration, TypeError, *UNREADABLE_TORCH_FILE) as exc:
            raise CheckpointError(f"{path} is not a readable PyTorch state dict ({exc!s:.200})") from None
    from PASTALib.model.checkpoint import read_checkpoint

    return read_checkpoint(path)


def _state_dict_of(obj: Any) -> dict[str, Any]:
    for _ in range(4):
        if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not (isinstance(obj, Mapping) and obj and all(hasattr(v, "shape") for v in obj.values())):
        raise CheckpointError("no model state dict found in the file")
    return {strip_key_prefixes(key): value for key, value in obj.items()}


def checkpoint_capabilities(path: str | os.PathLike | None = None) -> CheckpointCapabilities:
    """Capabilities of a weights file (default: PASTA_final.pth at its default place), with the
    ``classes.json`` beside it; torch-free for zip checkpoints (reads shapes, not tensor data).
    Missing / corrupt files raise MissingWeightsError / CheckpointError."""
    from PASTALib.weights import CLASSES_NAME, read_classes, require_weights

    path = require_weights(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (interrupted download?)")
    obj = read_checkpoint_shapes(path)
    try:
        sd = _state_dict_of(obj)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    metadata = read_metadata(obj)
    classes_path = path.parent / CLASSES_NAME
    classes = read_classes(classes_path) if classes_path.is_file() and metadata is None else None
    return state_dict_capabilities(sd, metadata, classes, path)

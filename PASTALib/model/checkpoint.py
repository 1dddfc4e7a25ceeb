"""Loading PASTA weights: the public ``PASTA_final.pth`` or this library's training checkpoints.

What the public code does (LWHYC/PASTA, segmentation/nnunetv2/run/run_finetuning_pasta.py,
``load_PASTA_pretrained_weights``): the file is a plain state dict; for fine-tuning it skips
every key containing ``seg_outputs`` or ``head``, asserts every other key matches in name and
shape, and for a multi-channel input repeats the first conv weight along the input-channel axis
(``w.repeat(1, num_inputs, 1, 1, 1)``, *not* divided by the channel count). The default here is
that behaviour (``first_conv="repeat"``); ``first_conv="mean"`` divides by the channel count so a
stack of identical channels gives the single-channel activations.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from PASTALib.capabilities import WRAPPER_KEYS, strip_key_prefixes
from PASTALib.errors import UNREADABLE_TORCH_FILE, CheckpointError, MissingWeightsError, PastaError  # noqa: F401  (CheckpointError re-exported)
from PASTALib.model.unet import PastaUNet, UNetConfig
from PASTALib.weights import (  # noqa: F401  (re-exported by PASTALib.model)
    WEIGHTS_ENV,
    WEIGHTS_FILENAME,
    WEIGHTS_SOURCE,
    default_weights_dir,
    default_weights_path,
    missing_weights_message,
)

FIRST_CONV_KEY = "conv_blocks_context.0.blocks.0.conv.weight"
FINETUNE_SKIP_PREFIXES = ("seg_outputs.", "head.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded object: plain, or under 'state_dict' / 'model' /
    'network_weights' / ... (nested), with DDP ``module.`` and ``torch.compile`` ``_orig_mod.``
    prefixes removed. Raises CheckpointError when there is none."""
    seen = 0
    while not _is_state_dict(obj) and isinstance(obj, Mapping) and seen < 4:
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if not _is_state_dict(obj):
        what = type(obj).__name__
        keys = list(obj.keys())[:8] if isinstance(obj, Mapping) else []
        raise CheckpointError(
            f"no model state dict found in the file (a {what}{' with keys ' + str(keys) if keys else ''}); "
            f"expected a plain state dict or one under {', '.join(repr(k) for k in WRAPPER_KEYS)}."
        )
    return {strip_key_prefixes(k): v for k, v in obj.items()}


def read_checkpoint(path: str | os.PathLike, *, allow_pickle: bool = False, mmap: bool = False) -> Any:
    """``torch.load`` on CPU with clear errors (missing → MissingWeightsError, corrupt → CheckpointError).

    ``allow_pickle=False`` uses ``weights_only=True`` (safe for untrusted files); ``mmap=True`` maps
    the tensors instead of reading them (checking a 1 GB file's layout reads only its index)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(missing_weights_message(path))
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (interrupted download?). {WEIGHTS_SOURCE} again.")
    is_zip = zipfile.is_zipfile(path)  # torch.save writes zip archives since torch 1.6
    if not is_zip:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
            raise CheckpointError(
                f"{path} is a text/HTML file, not a PyTorch checkpoint (the download saved an error or "
                f"login page?). {WEIGHTS_SOURCE} again."
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        if is_zip and ("weights only" in str(exc).lower() or "weights_only" in str(exc)):
            raise CheckpointError(
                f"{path} contains Python objects besides tensors; load it with allow_pickle=True only if "
                f"you trust its source. ({str(exc).splitlines()[0]})"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated download?). {WEIGHTS_SOURCE} again."
        ) from None
    except UNREADABLE_TORCH_FILE as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated download?): {first}. "
            f"{WEIGHTS_SOURCE} again."
        ) from None


def load_state_dict_file(path: str | os.PathLike, *, allow_pickle: bool = False, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file and return its (unwrapped, prefix-stripped) state dict."""
    try:
        return extract_state_dict(read_checkpoint(path, allow_pickle=allow_pickle, mmap=mmap))
    except CheckpointError as exc:
        if str(exc).startswith("no model state dict"):
            raise CheckpointError(f"{path}: {exc}") from None
        raise


def describe_state_dict(sd: Mapping[str, torch.Tensor]) -> str:
    """A guess of what a state dict is, for error messages."""
    keys = list(sd)
    joined = " ".join(keys[:200])
    if any(k.startswith("conv_blocks_context.") for k in keys):
        try:
            cfg = infer_config(sd)
            return (
                f"a PASTA / nnU-Net v1 generic-UNet state dict with in_channels={cfg.in_channels}, "
                f"stages={cfg.num_stages}, channels {cfg.stage_channels}, "
                f"{cfg.num_seg_classes} segmentation classes"
                + ("" if any(k.startswith("head.") for k in keys) else ", without the attribute head")
            )
        except CheckpointError:
            return "a generic-UNet state dict of an unusual layout"
    if "encoder.stages" in joined or "decoder.seg_layers" in joined:
        return "an nnU-Net v2 PlainConvUNet / ResEnc state dict (not the PASTA layout)"
    if "swinViT" in joined:
        return "a SwinUNETR state dict (e.g. SwinUNETR / SuPreM), not PASTA"
    if "down_tr" in joined:
        return "a Models Genesis UNet3D state dict, not PASTA"
    if "backbone" in joined:
        return "a backbone state dict of another model (e.g. SuPreM), not PASTA"
    return f"not a PASTA state dict (first keys: {keys[:3]})"


def infer_config(sd: Mapping[str, torch.Tensor]) -> UNetConfig:
    """Read the UNetConfig of a PASTA-layout state dict from its tensor shapes."""
    try:
        n_down = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("tu."))
        first = sd[FIRST_CONV_KEY]
        bottleneck = sd[f"conv_blocks_context.{n_down}.0.blocks.0.conv.weight"]
        seg = sd["seg_outputs.0.weight"]
        params: dict[str, Any] = dict(
            in_channels=int(first.shape[1]), base_channels=int(first.shape[0]),
            max_channels=int(bottleneck.shape[0]), num_stages=n_down + 1, num_seg_classes=int(seg.shape[0]),
        )
        if "head.0.weight" in sd:
            params["head_hidden"] = (int(sd["head.0.weight"].shape[0]), int(sd["head.2.weight"].shape[0]))
            params["num_attribute_logits"] = int(sd["head.4.weight"].shape[0])
        return UNetConfig(**params)
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"cannot read the network layout from the state dict ({exc!r})") from None


@dataclass
class LoadResult:
    """What :func:`load_pasta_checkpoint` did."""

    path: Path
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # checkpoint keys deliberately not loaded
    adapted: list[str] = field(default_factory=list)  # e.g. the repeated first conv


def _mismatch_report(model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], skip=()) -> list[str]:
    def skipped(k: str) -> bool:
        return any(k.startswith(p) for p in skip)

    missing = [k for k in model_sd if k not in sd and not skipped(k)]
    unexpected = [k for k in sd if k not in model_sd and not skipped(k)]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in model_sd if k in sd and not skipped(k) and tuple(sd[k].shape) != tuple(model_sd[k].shape)
    ]
    lines = []
    if missing:
        lines.append(f"missing in file ({len(missing)}): " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        lines.append(f"unexpected in file ({len(unexpected)}): " + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
    if shapes:
        lines.append(f"shape mismatch ({len(shapes)}): " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
    return lines


def adapt_first_conv(weight: torch.Tensor, in_channels: int, mode: Literal["repeat", "mean"] = "repeat") -> torch.Tensor:
    """Single-channel first-conv weight (O, 1, k, k, k) → (O, in_channels, k, k, k).

    ``repeat``: as the public PASTA fine-tuning code (plain repeat). ``mean``: repeat / in_channels.
    """
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 1:
        raise CheckpointError(
            f"cannot adapt a first conv with {weight.shape[1]} input channels to {in_channels}; "
            "only single-channel checkpoints can be repeated"
        )
    out = weight.repeat(1, in_channels, 1, 1, 1)
    if mode == "mean":
        out = out / in_channels
    elif mode != "repeat":
        raise ValueError(f"first_conv must be 'repeat' or 'mean', not {mode!r}")
    return out


def load_pasta_checkpoint(
    model: PastaUNet | nn.Module,
    path: str | os.PathLike | None = None,
    *,
    for_finetuning: bool = False,
    in_channels: int | None = None,
    first_conv: Literal["repeat", "mean"] = "repeat",
    allow_pickle: bool = False,
) -> LoadResult:
    """Load PASTA weights into ``model`` (in place) with a strict check.

    * ``path`` defaults to :func:`default_weights_path`; a missing file raises MissingWeightsError
      saying where to get ``PASTA_final.pth`` and where to put it; a corrupt one CheckpointError.
    * Accepts a plain state dict or one wrapped under 'state_dict' / 'model' / 'network_weights'
      (also this library's training checkpoints), with DDP ``module.`` prefixes.
    * ``for_finetuning=False``: every key and shape must match (CheckpointError lists the first
      missing / unexpected / mismatched keys and what the file probably is).
    * ``for_finetuning=True``: the segmentation heads and the attribute head keep their fresh
      initialisation (new classes), and a single-channel first conv is repeated to the model's
      input channels (``first_conv``); everything else must match.
    * ``in_channels``: the input channels the caller expects the model to have (checked against the
      model; None = the model's own).
    """
    path = Path(path).expanduser() if path is not None else default_weights_path()
    model_sd = model.state_dict()
    model_in = int(model_sd[FIRST_CONV_KEY].shape[1]) if FIRST_CONV_KEY in model_sd else None
    if in_channels is not None and model_in is not None and in_channels != model_in:
        raise ValueError(f"in_channels={in_channels} but the model was built with {model_in} input channels")
    sd = load_state_dict_file(path, allow_pickle=allow_pickle)
    result = LoadResult(path=path)
    skip: tuple[str, ...] = ()
    if for_finetuning:
        skip = FINETUNE_SKIP_PREFIXES
        sd = dict(sd)
        if FIRST_CONV_KEY in sd and model_in is not None and sd[FIRST_CONV_KEY].shape[1] != model_in:
            sd[FIRST_CONV_KEY] = adapt_first_conv(sd[FIRST_CONV_KEY], model_in, first_conv)
            result.adapted.append(FIRST_CONV_KEY)
    problems = _mismatch_report(model_sd, sd, skip)
    if problems:
        hint = ""
        if not for_finetuning and any(k.startswith(("seg_outputs", "head", FIRST_CONV_KEY)) for k in " ".join(problems).split()):
            hint = (" If you are fine-tuning (different classes or input channels), use for_finetuning=True; to "
                    "build a model that fits the file use PASTALib.model.build_model_from_checkpoint.")
        raise CheckpointError(
            f"{path} does not fit the model. The file looks like {describe_state_dict(sd)}; the model is "
            f"{describe_state_dict(model_sd) if any(k.startswith('conv_blocks_context.') for k in model_sd) else type(model).__name__}.\n  "
            + "\n  ".join(problems) + hint
        )
    to_load = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in skip)}
    result.skipped = sorted(k for k in sd if k not in to_load)
    result.loaded = sorted(to_load)
    model.load_state_dict(to_load, strict=not skip)
    return result


def build_model_from_state_dict(sd: Mapping[str, torch.Tensor], *, path: str | os.PathLike | None = None,
                                device: str | torch.device = "cpu") -> tuple[PastaUNet, LoadResult]:
    """Build a PastaUNet whose layout is read from the state dict, then load it strictly."""
    where = Path(path) if path is not None else Path("<state dict>")
    if not any(k.startswith("conv_blocks_context.") for k in sd):
        raise CheckpointError(f"{where} is {describe_state_dict(sd)}")
    with torch.device("meta"):
        model = PastaUNet(infer_config(sd))
    model = model.to_empty(device=device)
    result = LoadResult(path=where)
    problems = _mismatch_report(model.state_dict(), sd)
    if problems:
        raise CheckpointError(f"{where} does not fit the layout read from it:\n  " + "\n  ".join(problems))
    model.load_state_dict(sd, strict=True)
    result.loaded = sorted(sd)
    return model, result


def build_model_from_checkpoint(path: str | os.PathLike | None = None, *, allow_pickle: bool = False,
                                device: str | torch.device = "cpu") -> tuple[PastaUNet, LoadResult]:
    """Build a PastaUNet whose layout is read from the file, then load it strictly."""
    path = Path(path).expanduser() if path is not None else default_weights_path()
    return build_model_from_state_dict(load_state_dict_file(path, allow_pickle=allow_pickle), path=path, device=device)

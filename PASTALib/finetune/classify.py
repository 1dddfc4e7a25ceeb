"""Downstream classification fine-tuning of the PASTA encoder with k-fold cross-validation.

docs/model.md, downstream tasks: plain-CT detection (organ box + margin, padded/resized to 128³,
class weights 10:1), staging / survival from ROIs at lesion points, report generation from 96³
crops; AUC / ACC / F1 with 1,000-replicate bootstrap CIs; 5-fold CV. Three tasks:

* ``detection``: rows ``image, organs, organ, label`` (0 normal / 1 tumour in that organ). Input:
  :func:`~PASTALib.finetune.crops.detection_crop` (organ box + ``margin_mm``, −1024-padded cube,
  resized to ``input_size``, default 128). Loss: cross-entropy with class weights, default
  normal:tumour = 1:10 - our reading of the paper's "class weights 10:1": the tumour class (the
  rare one) weighs ten times the normal class.
* ``roi``: rows ``image, coordX, coordY, coordZ`` (LPS mm) and a label column (integer classes,
  strings or a binary endpoint); input: a 1 mm crop of ``input_size`` (default 96) around the point
  (:func:`PASTALib.embed.crop.crop_at_point`). Plain (or ``--class-weights``) cross-entropy.
* ``attributes``: rows ``image, coordX/Y/Z`` plus report-attribute columns ``shape, density,
  heterogeneity, margin`` (or ``surface``), ``invasion`` in the report's exact wording (empty =
  unknown); fine-tunes PASTA's own 14-logit attribute head with the grouped cross-entropy.

Model: the PASTA encoder (stages 0..4 of :class:`~PASTALib.model.PastaUNet`, decoder dropped; the
feature is ``PastaUNet.encode``, GAP of stage 4) initialised from PASTA weights (``init``; the
layout is read from the file) or randomly (``init="scratch"``, a baseline), plus a new linear
head on the feature (detection / roi) or the checkpoint's attribute head (attributes). Input is the
SLF map of the HU crop. Adam (lr 1e-4), random mirroring, AMP on CUDA, ``freeze_encoder`` for a
linear probe. Every source of randomness derives from ``(seed, fold[, iteration])``, so each fold
is reproducible on its own and an interrupted fold resumes exactly from ``checkpoint_last.pt``.

Layout of OUT::

    crops/<hash>.npz          one int16 HU crop per row (reused by every fold and rerun)
    splits.json               fixed (stratified[, grouped]) folds: validation ids per fold
    classify_config.json      settings; a rerun with different training settings is refused
    fold_i/model.pth          classifier bundle (predict_table / `pasta classify predict`)
    fold_i/predictions.csv    the fold's validation rows; fold_i/done.json marks the fold finished
    predictions.csv           out-of-fold predictions: id, fold, label, prob_0..prob_{C-1}, pred
                              (`pasta evaluate cls --csv OUT/predictions.csv` reads it)
    metrics.csv/.md/.html     AUC / ACC / F1 (attributes: ACC / F1 per attribute) with bootstrap
                              95% CIs, pooled over the folds ("all") and per fold
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from PASTALib.errors import AnatomyError
from PASTALib.io.files import write_json_atomic, write_text_atomic
from PASTALib.model.attributes import ATTRIBUTE_GROUPS, IGNORE_INDEX
from PASTALib.model.preprocess import SLF_VALUES
from PASTALib.model.unet import PastaUNet, UNetConfig
from PASTALib.weights import weights_path
from PASTALib.train.common import StopFlag, TrainingError

TASKS = ("detection", "roi", "attributes")
DEFAULT_INPUT_SIZE = {"detection": 128, "roi": 96, "attributes": 96}
DEFAULT_DETECTION_WEIGHTS = (1.0, 10.0)  # normal : tumour
IMAGE_COLUMNS = ("image", "image_path")
COORD_COLUMNS = ("coordX", "coordY", "coordZ")
#: Table column names accepted for each attribute group (first match wins, case-insensitive).
ATTRIBUTE_COLUMNS: dict[str, tuple[str, ...]] = {
    "shape": ("shape",), "density": ("density",), "heterogeneity": ("heterogeneity",),
    "surface": ("margin", "surface"), "invasion": ("invasion",),
}
BUNDLE_FORMAT = "pasta-classifier/1"
SPLITS_FORMAT = "pasta-classify-splits/1"
#: Settings that change the trained models: a resumed run must use the same ones.
_FINGERPRINT_FIELDS = ("task", "folds", "input_size", "margin_mm", "class_weights", "label_column", "id_column",
                       "group_column", "labels_kind", "iterations", "batch_size", "lr", "weight_decay",
                       "freeze_encoder", "augment", "standardize_features", "seed", "amp", "slf_values", "scratch_config")


class ClassifyError(TrainingError):
    """A classification table, setting or run folder is wrong; the message says what to do."""


@dataclass
class ClassifyConfig:
    """Settings of :func:`train_classifier` (CLI: ``pasta classify train``)."""

    task: str
    table: str
    out: str
    folds: int = 5
    fold: int | None = None  # None: every fold; i: only fold i (e.g. one fold per GPU job)
    input_size: int | None = None  # None: 128 (detection) / 96 (roi, attributes); multiple of 16
    margin_mm: float = 10.0  # detection: margin around the organ box
    class_weights: tuple[float, ...] | str | None = None  # None: (1, 10) for detection, uniform else; "balanced"
    label_column: str = "label"
    id_column: str = "id"
    group_column: str | None = None  # None: "patient_id" when the table has it (cases of a patient stay together)
    labels_kind: str = "totalsegmentator"  # organs label maps: totalsegmentator | pasta (a row's labels_kind wins)
    init: str | None = None  # PASTA weights (None: default_weights_path()); "scratch": random init
    scratch_config: dict | None = None  # UNetConfig fields for init="scratch" (default: the published size)
    iterations: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    freeze_encoder: bool = False  # train the head only (linear probe)
    augment: bool = True  # random mirroring along each axis
    standardize_features: bool | None = None  # head on training-fold-standardised features; None: = freeze_encoder
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    n_boot: int = 1000
    resume: bool = True
    progress_lines: bool = False
    progress_bar: bool = True
    num_threads: int | None = None
    slf_values: tuple[float, ...] = SLF_VALUES
    crops_dir: str | None = None  # crop cache (default OUT/crops); share one between runs on the same table

    @property
    def scale_features(self) -> bool:
        """Whether the new linear head reads standardised features (default: for linear probes)."""
        return self.freeze_encoder if self.standardize_features is None else bool(self.standardize_features)

    @property
    def size(self) -> int:
        return int(self.input_size or DEFAULT_INPUT_SIZE.get(self.task, 96))

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ClassifyError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        if self.folds < 2:
            raise ClassifyError("--folds must be ≥ 2")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ClassifyError(f"--fold must be in 0..{self.folds - 1} or 'all' (got {self.fold})")
        if self.size < 16 or self.size % 16:
            raise ClassifyError(f"--input-size {self.size} must be a positive multiple of 16 (the encoder "
                                "downsamples 16x before the pooled stage)")
        for name in ("iterations", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ClassifyError(f"--{name.replace('_', '-')} must be ≥ 1")
        if self.lr <= 0:
            raise ClassifyError("--lr must be positive")
        if self.margin_mm < 0:
            raise ClassifyError("--margin-mm must be ≥ 0")
        if self.labels_kind not in ("totalsegmentator", "pasta"):
            raise ClassifyError(f"--labels-kind must be totalsegmentator or pasta, not {self.labels_kind!r}")
        weights = self.class_weights
        if isinstance(weights, str) and weights != "balanced":
            raise ClassifyError(f"--class-weights {weights!r}: give numbers (e.g. 1,10) or 'balanced'")
        if self.task == "attributes" and weights is not None:
            raise ClassifyError("--class-weights does not apply to the attributes task (grouped cross-entropy)")
        if isinstance(weights, (tuple, list)) and (not weights or any(not w > 0 for w in weights)):
            raise ClassifyError(f"--class-weights must be positive numbers, got {weights}")

    def fingerprint(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in _FINGERPRINT_FIELDS}
        data["input_size"] = self.size
        data["standardize_features"] = self.scale_features
        data["class_weights"] = list(self.class_weights) if isinstance(self.class_weights, (tuple, list)) \
            else self.class_weights
        data["slf_values"] = [float(v) for v in self.slf_values]
        return data


# --- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One table row, resolved."""

    row: int
    id: str
    image: Path
    organs: Path | None = None  # detection
    organ: str | None = None  # detection
    labels_kind: str = "totalsegmentator"
    point: tuple[float, float, float] | None = None  # roi / attributes, LPS mm
    target: int | tuple[int, ...] | None = None  # class index, or 5 attribute option indices
    group: str | None = None


@dataclass
class CaseTable:
    task: str
    cases: list[Case]
    class_values: list[Any] = field(default_factory=list)  # class index -> table value (detection, roi)
    attribute_columns: dict[str, str] = field(default_factory=dict)  # group name -> table column
    group_column: str | None = None
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_values)


def _column(df: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    lower = {str(c).lower(): str(c) for c in df.columns}
    return next((lower[c.lower()] for c in candidates if c.lower() in lower), None)


def _need(df: pd.DataFrame, path: Path, task: str, names: Sequence[str | tuple[str, ...]]) -> dict[str, str]:
    found, missing = {}, []
    for name in names:
        cands = (name,) if isinstance(name, str) else name
        col = _column(df, cands)
        if col is None:
            missing.append(" or ".join(repr(c) for c in cands))
        else:
            found[cands[0]] = col
    if missing:
        raise ClassifyError(f"{path} lacks column(s) {', '.join(missing)} needed by the {task} task; "
                            f"columns present: {list(map(str, df.columns))} (name the label column with --label-col, "
                            "the case id column with --id-col)")
    return found


def _class_values(raw: Sequence[str]) -> list[Any]:
    """Sorted distinct labels: numerically when every value is an integer, else as text."""
    values = sorted(set(raw))
    try:
        as_int = sorted({int(float(v)) for v in values})
        if all(float(v) == int(float(v)) for v in values):
            return as_int
    except (ValueError, OverflowError):  # text classes (or nan/inf): keep the text
        pass
    return values


def read_case_table(table: str | os.PathLike, task: str, *, label_column: str = "label", id_column: str = "id",
                    group_column: str | None = None, labels_kind: str = "totalsegmentator",
                    require_labels: bool = True, class_values: Sequence[Any] | None = None) -> CaseTable:
    """Read and check a task table (paths relative to the table's folder).

    ``require_labels=False`` (prediction) accepts rows without labels; ``class_values`` then maps
    any labels that are present with a trained model's classes."""
    path = Path(table)
    if task not in TASKS:
        raise ClassifyError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if not path.is_file():
        raise ClassifyError(f"table {path} not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ClassifyError(f"{path} is not a readable CSV table ({str(exc).splitlines()[0]})") from None
    if df.empty:
        raise ClassifyError(f"{path} has no rows")
    base = path.resolve().parent
    need: list[str | tuple[str, ...]] = [IMAGE_COLUMNS]
    if task == "detection":
        need += ["organs", "organ"]
    else:
        need += list(COORD_COLUMNS)
    label_col = None
    if task != "attributes":
        if require_labels:
            need.append(label_column)
        label_col = _column(df, [label_column])
    cols = _need(df, path, task, need)
    attr_cols: dict[str, str] = {}
    if task == "attributes":
        for group in ATTRIBUTE_GROUPS:
            col = _column(df, ATTRIBUTE_COLUMNS[group.name])
            if col is not None:
                attr_cols[group.name] = col
        if not attr_cols and require_labels:
            wanted = ", ".join("/".join(c) for c in ATTRIBUTE_COLUMNS.values())
            raise ClassifyError(f"{path} has none of the report-attribute columns ({wanted}) the attributes task "
                                f"learns; columns present: {list(map(str, df.columns))}")
    id_col = _column(df, [id_column])
    if group_column is not None and _column(df, [group_column]) is None:
        raise ClassifyError(f"group column {group_column!r} not in {path}; columns present: {list(map(str, df.columns))}")
    group_col = _column(df, [group_column or "patient_id"])
    kind_col = _column(df, ["labels_kind"])
    from PASTALib.finetune.crops import parse_organ

    ids = [str(df[id_col].iloc[i]).strip() if id_col else str(i) for i in range(len(df))]
    if id_col and any(not v for v in ids):
        raise ClassifyError(f"{path}: column {id_col!r} has empty ids (rows {[i for i, v in enumerate(ids) if not v][:5]})")
    dup = sorted(v for v, n in Counter(ids).items() if n > 1)
    if dup:
        raise ClassifyError(f"{path}: ids are not unique ({dup[:5]}); give each row its own {id_column!r}")

    labels_raw: list[str | None] = [None] * len(df)
    values: list[Any] = list(class_values) if class_values is not None else []
    if label_col is not None:
        labels_raw = [str(v).strip() or None for v in df[label_col]]
        empty = [i for i, v in enumerate(labels_raw) if v is None]
        if empty and require_labels:
            raise ClassifyError(f"{path}: rows {empty[:10]} have no {label_col!r}; every training row needs a label")
        present = [v for v in labels_raw if v is not None]
        if class_values is None:
            values = _class_values(present)
            if task == "detection":
                bad = [v for v in values if v not in (0, 1)]
                if bad:
                    raise ClassifyError(f"{path}: detection labels must be 0 (normal) or 1 (tumour in the organ); "
                                        f"found {bad[:5]}")
                values = [0, 1]
            elif len(values) < 2 and require_labels:
                raise ClassifyError(f"{path}: column {label_col!r} holds one class only ({values}); "
                                    "classification needs at least two")
    elif task == "detection" and class_values is None:
        values = [0, 1]

    def class_index(i: int) -> int | None:
        raw = labels_raw[i]
        if raw is None:
            return None
        keys = [str(v) for v in values]
        key = raw
        with contextlib.suppress(ValueError):
            if all(isinstance(v, int) for v in values) and float(raw) == int(float(raw)):
                key = str(int(float(raw)))
        if key not in keys:
            raise ClassifyError(f"{path} row {i}: label {raw!r} is not one of the model's classes {values}")
        return keys.index(key)

    cases = []
    for i in range(len(df)):
        rec = df.iloc[i]
        image = Path(str(rec[cols["image"]]).strip()).expanduser()
        image = image if image.is_absolute() else base / image
        if not str(rec[cols["image"]]).strip():
            raise ClassifyError(f"{path} row {i}: empty {cols['image']!r}")
        kw: dict[str, Any] = dict(row=i, id=ids[i], image=image,
                                  group=str(rec[group_col]).strip() if group_col else None)
        if task == "detection":
            organs = Path(str(rec[cols["organs"]]).strip()).expanduser()
            kw["organs"] = organs if organs.is_absolute() else base / organs
            kw["organ"] = str(rec[cols["organ"]]).strip()
            kind = (str(rec[kind_col]).strip().lower() if kind_col else "") or labels_kind
            if kind not in ("totalsegmentator", "pasta"):
                raise ClassifyError(f"{path} row {i}: labels_kind {kind!r}; use totalsegmentator or pasta")
            kw["labels_kind"] = kind
            try:
                parse_organ(kw["organ"])
            except AnatomyError as exc:  # an unknown organ name: say which row
                raise ClassifyError(f"{path} row {i}: {exc}") from None
        else:
            try:
                point = tuple(float(rec[cols[c]]) for c in COORD_COLUMNS)
            except ValueError:
                raise ClassifyError(f"{path} row {i}: coordinates {[rec[cols[c]] for c in COORD_COLUMNS]} are not "
                                    "numbers (LPS millimetres)") from None
            if not all(math.isfinite(v) for v in point):
                raise ClassifyError(f"{path} row {i}: coordinates {point} are not finite")
            kw["point"] = point
        if task == "attributes":
            from PASTALib.model.attributes import encode_attributes

            report = {g: str(rec[c]).strip() for g, c in attr_cols.items()}
            try:
                kw["target"] = tuple(encode_attributes(report))
            except ValueError as exc:
                group = next((g for g in ATTRIBUTE_GROUPS if f"unknown {g.title}" in str(exc)), None)
                col = attr_cols.get(group.name, "") if group else ""
                raise ClassifyError(f"{path} row {i}, column {col!r}: {exc}") from None
        else:
            kw["target"] = class_index(i)
        cases.append(Case(**kw))
    if task == "attributes" and require_labels:
        known = np.array([c.target for c in cases]) != IGNORE_INDEX
        if not known.any():
            raise ClassifyError(f"{path}: every attribute cell is empty; nothing to learn")
    return CaseTable(task, cases, values, attr_cols, group_col, path)


# --- splits ------------------------------------------------------------------------------------

def make_cv_splits(ids: Sequence[str], *, folds: int, seed: int, strata: Sequence[Any] | None = None,
                   groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Fixed k-fold split: StratifiedKFold(shuffle, random_state=seed) on ``strata`` (StratifiedGroupKFold
    with ``groups``: a group's cases share a fold); KFold / GroupKFold without strata.

    Returns {"format", "seed", "folds", "stratified", "grouped", "validation": [[ids of fold i], ...]}."""
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
    )

    ids = [str(i) for i in ids]
    n = len(ids)
    if n < folds:
        raise ClassifyError(f"{n} case(s) cannot make {folds} folds; add cases or use --folds {max(2, n)}"
                            if n >= 2 else f"{n} case: cross-validation needs at least 2 cases")
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < folds:
            raise ClassifyError(f"{n_groups} patient group(s) cannot make {folds} folds (the cases of a patient stay "
                                f"in one fold); add patients or use --folds {max(2, n_groups)}")
    if strata is not None:
        values, counts = np.unique(np.asarray([str(s) for s in strata]), return_counts=True)
        few = {str(v): int(c) for v, c in zip(values, counts) if c < folds}
        if few:
            lowest = min(few.values())
            fix = (f"add cases of that class or use --folds {lowest}" if lowest >= 2
                   else "add cases of that class (each class needs at least 2 cases)")
            raise ClassifyError(f"class(es) {few} have fewer cases than the {folds} folds; stratified cross-validation "
                                f"needs at least {folds} cases per class: {fix}")
        if groups is not None:
            per_class = {str(v): len({g for g, s in zip(groups, strata) if str(s) == v}) for v in values}
            few = {v: c for v, c in per_class.items() if c < folds}
            if few:
                lowest = min(few.values())
                raise ClassifyError(f"class(es) {few} occur in fewer patients than the {folds} folds; add patients "
                                    + (f"or use --folds {lowest}" if lowest >= 2 else "with that class"))
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            split = splitter.split(np.zeros(n), [str(s) for s in strata], list(groups))
        else:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            split = splitter.split(np.zeros(n), [str(s) for s in strata])
    elif groups is not None:
        split = GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n), groups=list(groups))
    else:
        split = KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n))
    validation = [[ids[j] for j in sorted(val)] for _, val in split]
    if any(not v for v in validation):
        raise ClassifyError(f"a fold came out empty; use fewer --folds (now {folds})")
    return {"format": SPLITS_FORMAT, "seed": seed, "folds": folds, "stratified": strata is not None,
            "grouped": groups is not None, "validation": validation}


# --- the network -------------------------------------------------------------------------------

def encoder_only(config: UNetConfig, *, keep_head: bool, device: str | torch.device = "cpu") -> PastaUNet:
    """A PastaUNet holding only what ``encode`` uses (stages 0..num_stages-2) and, if asked, the
    attribute head: the published model's decoder is ~3/4 of its parameters and never runs here.
    Built on the meta device, then allocated on ``device`` and given torch's default initialisation
    (``device="meta"`` checks a layout without allocating)."""
    with torch.device("meta"):
        unet = PastaUNet(config)
    n_down = config.num_stages - 1
    unet.conv_blocks_context = nn.ModuleList(list(unet.conv_blocks_context)[:n_down])
    unet.tu, unet.conv_blocks_localization, unet.seg_outputs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
    if not keep_head:
        unet.head = nn.Identity()
    unet = unet.to_empty(device=device)
    for module in unet.modules():
        if module is not unet and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return unet


class PastaClassifier(nn.Module):
    """PASTA encoder → 1024-d feature (GAP of stage 4) → linear head (``num_classes``) or the
    attribute head (``num_classes=None``, 14 grouped logits).

    The new linear head may read the feature standardised with fixed per-channel statistics of the
    training fold (buffers ``feature_mean`` / ``feature_std``, set by :meth:`fit_feature_scaler`;
    identity otherwise): StandardScaler + linear, the usual linear probe (as PASTALib.embed's
    logistic-regression probe). Why: the pooled stage-4 feature follows InstanceNorm + LeakyReLU,
    so it varies by only ~1% between cases (measured 0.9% on a 12-case version of the test cohort)
    and a fresh head on the raw feature barely moves in a short run. It is the default for the
    frozen encoder only: when the encoder trains, its features drift away from statistics fixed at
    the start, and dividing by a ~1% spread amplifies that drift (measured on the same cohort:
    out-of-fold AUC 0.47 with the encoder training vs 1.0 frozen). The attribute head keeps the raw
    feature it was pretrained on."""

    def __init__(self, config: UNetConfig, num_classes: int | None, *, freeze_encoder: bool = False,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.config = config
        self.unet = encoder_only(config, keep_head=num_classes is None, device=device)
        with torch.device(device):
            self.classifier = nn.Linear(config.feature_channels, num_classes) if num_classes else None
            self.register_buffer("feature_mean", torch.zeros(config.feature_channels))
            self.register_buffer("feature_std", torch.ones(config.feature_channels))
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            for p in self.encoder_parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def fit_feature_scaler(self, features: torch.Tensor) -> None:
        """Set the head's input standardisation from (N, C) features of the training cases."""
        features = features.float()
        self.feature_mean.copy_(features.mean(0))
        std = features.std(0) if len(features) > 1 else torch.ones_like(self.feature_std)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if not n.startswith("head.")]

    def head_parameters(self) -> list[nn.Parameter]:
        if self.classifier is not None:
            return list(self.classifier.parameters())
        return list(self.unet.head.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                feature = self.unet.encode(x)
        else:
            feature = self.unet.encode(x)
        return self.head_logits(feature)

    def head_logits(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from encoder features (B, C)."""
        if self.classifier is None:
            return self.unet.head(feature)
        return self.classifier((feature.float() - self.feature_mean) / self.feature_std)


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def read_init(init: str | None) -> tuple[UNetConfig, dict[str, torch.Tensor] | None, str]:
    """(network layout, state dict or None for scratch, description) of ``init``.

    None → :func:`~PASTALib.model.default_weights_path` (MissingWeightsError says where to get the file)."""
    from PASTALib.model.checkpoint import (
        CheckpointError,
        describe_state_dict,
        infer_config,
        load_state_dict_file,
    )

    if init is not None and str(init).strip().lower() == "scratch":
        return UNetConfig(), None, "scratch"
    path = weights_path(init)
    sd = load_state_dict_file(path)
    if not any(k.startswith("conv_blocks_context.") for k in sd):
        raise CheckpointError(f"{path} is {describe_state_dict(sd)}; --init needs PASTA weights (or 'scratch')")
    cfg = infer_config(sd)
    if cfg.in_channels != 1:
        raise CheckpointError(f"{path} has {cfg.in_channels} input channels; classification feeds one CT channel")
    return cfg, sd, str(path.resolve())


def load_init(model: PastaClassifier, sd: dict[str, torch.Tensor]) -> list[str]:
    """Copy the encoder (and, for the attribute head, ``head.*``) from a PASTA state dict.
    Returns the model keys left at their initialisation (the new head; a head missing in the file)."""
    from PASTALib.model.checkpoint import CheckpointError

    own = model.state_dict()
    wanted = {k for k in own if k.startswith("unet.")}
    source = {f"unet.{k}": v for k, v in sd.items() if f"unet.{k}" in wanted}
    missing = sorted(k for k in wanted if k not in source and not k.startswith("unet.head."))
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in source.items()
              if tuple(v.shape) != tuple(own[k].shape)]
    if missing or shapes:
        raise CheckpointError("the init weights do not fit the encoder: " + "; ".join(
            ([f"missing {missing[:5]}"] if missing else []) + shapes[:5]))
    model.load_state_dict(source, strict=False)
    return sorted(k for k in own if k not in source)


def build_classifier(unet_config: UNetConfig, num_classes: int | None, *, init_state: dict[str, torch.Tensor] | None,
                     seed: int, freeze_encoder: bool = False) -> tuple[PastaClassifier, list[str]]:
    """A PastaClassifier with seeded initialisation (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PastaClassifier(unet_config, num_classes, freeze_encoder=freeze_encoder)
    fresh = load_init(model, init_state) if init_state is not None else sorted(model.state_dict())
    return model, fresh


# --- loss -------------------------------------------------------------------------------------

def class_weight_vector(cfg: ClassifyConfig, num_classes: int, train_targets: Sequence[int]) -> list[float] | None:
    """The cross-entropy class weights of a fold (None: unweighted)."""
    weights = cfg.class_weights
    if weights is None and cfg.task == "detection":
        weights = DEFAULT_DETECTION_WEIGHTS
    if weights is None:
        return None
    if weights == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        y = np.asarray(train_targets)
        missing = sorted(set(range(num_classes)) - set(y.tolist()))
        if missing:
            raise ClassifyError(f"class(es) {missing} are absent from a training fold; 'balanced' weights need every class")
        return [float(w) for w in compute_class_weight("balanced", classes=np.arange(num_classes), y=y)]
    weights = [float(w) for w in weights]
    if len(weights) != num_classes:
        raise ClassifyError(f"--class-weights has {len(weights)} value(s) but the task has {num_classes} classes")
    return weights


def make_loss(task: str, weights: Sequence[float] | None, device: torch.device | str = "cpu"
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (weighted when ``weights``) for detection / roi; grouped cross-entropy over the
    five attribute groups for the attributes task. Logits are taken in float32."""
    if task == "attributes":
        from PASTALib.model.attributes import grouped_cross_entropy

        return lambda logits, target: grouped_cross_entropy(logits.float(), target)
    w = torch.tensor(list(weights), dtype=torch.float32, device=device) if weights is not None else None
    ce = nn.CrossEntropyLoss(weight=w)
    return lambda logits, target: ce(logits.float(), target)


# --- crops ------------------------------------------------------------------------------------

def _crop_spec(case: Case, task: str, size: int, margin_mm: float) -> dict[str, Any]:
    from PASTALib.finetune.crops import file_stamp

    spec: dict[str, Any] = {"version": 1, "image": file_stamp(case.image), "size": size}
    if task == "detection":
        spec.update(kind="organ_box", organs=file_stamp(case.organs), organ=case.organ, labels_kind=case.labels_kind,
                    margin_mm=float(margin_mm))
    else:
        spec.update(kind="point", point=[round(float(v), 4) for v in case.point])
    return spec


def compute_crops(cases: Sequence[Case], task: str, *, size: int, margin_mm: float = 10.0,
                  cache_dir: Path | None = None, on_case: Callable[[int, str], None] | None = None,
                  stop: StopFlag | None = None) -> np.ndarray | None:
    """(N, S, S, S) int16 HU crops of the cases; each CT (and label map) is read once, every crop
    is cached under ``cache_dir``. Returns None when ``stop`` was set (cached crops are kept)."""
    from PASTALib.embed.crop import crop_at_point, point_inside
    from PASTALib.errors import PastaError
    from PASTALib.finetune.crops import (
        cached,
        detection_crop,
        load_organ_masks,
        parse_organ,
    )
    from PASTALib.io import read_ct, read_label

    out = np.empty((len(cases), size, size, size), np.int16)
    loaded: dict[str, Any] = {}  # the last CT and label map: rows are usually grouped by image

    def compute(case: Case) -> np.ndarray:
        if loaded.get("image") != case.image:
            loaded.clear()
            loaded.update(image=case.image, ct=read_ct(case.image))
        ct = loaded["ct"]
        if task == "detection":
            key = (case.organs, case.labels_kind)
            if loaded.get("masks_key") != key:
                loaded.update(masks_key=key, masks=load_organ_masks(read_label(case.organs), ct, case.labels_kind,
                                                                    str(case.organs)))
            organ, side = parse_organ(case.organ)
            return detection_crop(ct, loaded["masks"], organ, side, margin_mm=margin_mm, size=size).array
        if not point_inside(ct, case.point):
            raise ClassifyError(f"point {case.point} (LPS mm) lies outside the image {case.image}; check the "
                                "coordinates' convention (LPS world mm: negate X and Y of Slicer's RAS)")
        return crop_at_point(ct, case.point, size)

    for n, case in enumerate(cases):
        if stop is not None and stop.stop:
            return None
        for path, what in ((case.image, "image"), (case.organs, "organ label map")):
            if path is not None and not path.exists():
                raise ClassifyError(f"row {case.row} ({case.id}): {what} {path} not found")
        try:
            out[n] = cached(cache_dir, _crop_spec(case, task, size, margin_mm), lambda case=case: compute(case))
        except PastaError as exc:  # say which row; keep the error's class (AnatomyError, InputImageError...)
            raise type(exc)(f"row {case.row} ({case.id}): {exc}") from None
        if on_case is not None:
            on_case(n + 1, case.id)
    return out


# --- progress ---------------------------------------------------------------------------------

class _Progress:
    """One tqdm bar over crops + training iterations, and ``PROGRESS <fraction> <message>`` lines."""

    def __init__(self, total: int, lines: bool, bar: bool) -> None:
        from tqdm import tqdm

        self.total, self.lines, self.done, self._last = max(total, 1), lines, 0, -1.0
        self.bar = tqdm(total=self.total, desc="classify", file=sys.stderr, dynamic_ncols=True,
                        disable=None if bar else True)

    def advance(self, n: int, message: str, force: bool = False) -> None:
        self.done = min(self.total, self.done + n)
        if n:
            self.bar.update(n)
        fraction = self.done / self.total
        if self.lines and (force or fraction - self._last >= 0.005 or self.done == self.total):
            self._last = fraction
            print(f"PROGRESS {fraction:.4f} {message}", flush=True)

    def close(self) -> None:
        self.bar.close()


# --- training ---------------------------------------------------------------------------------

@dataclass
class FoldResult:
    fold: int
    done: bool
    iteration: int
    model: Path | None = None
    predictions: Path | None = None


@dataclass
class ClassifyResult:
    out: Path
    splits: Path
    folds_done: list[int]
    folds_trained: list[int]
    stopped_early: bool = False
    predictions: Path | None = None  # OUT/predictions.csv once every fold is done
    metrics: Path | None = None
    summary: pd.DataFrame | None = None  # pooled metrics rows


def _atomic_csv(df: pd.DataFrame, path: Path) -> Path:
    return write_text_atomic(path, df.to_csv(index=False, float_format="%.8g", lineterminator="\n"))


def _batches(x: np.ndarray, device: torch.device, slf_values: Sequence[float]) -> torch.Tensor:
    from PASTALib.model.preprocess import SLF_THRESHOLDS_HU, slf_normalize, to_head_orientation

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device, non_blocking=True)
    # LPS crops → the authors' LAS-transposed orientation, the one PASTA_final.pth's encoder/head was trained on
    return to_head_orientation(slf_normalize(t, SLF_THRESHOLDS_HU, tuple(slf_values)))[:, None]


@torch.inference_mode()
def predict_logits(model: PastaClassifier, crops: np.ndarray, *, device: torch.device, batch_size: int,
                   amp: bool, slf_values: Sequence[float]) -> np.ndarray:
    """(N, outputs) float32 logits of HU crops (N, S, S, S)."""
    from PASTALib.train.common import amp_dtype, autocast

    model.eval()
    dtype = amp_dtype(device, amp)
    out = []
    for start in range(0, len(crops), batch_size):
        x = _batches(crops[start:start + batch_size], device, slf_values)
        with autocast(device, dtype):
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


@torch.inference_mode()
def encode_features(model: PastaClassifier, crops: np.ndarray, *, device: torch.device, batch_size: int,
                    amp: bool, slf_values: Sequence[float]) -> np.ndarray:
    """(N, C) float32 encoder features (GAP of the feature stage) of HU crops (N, S, S, S)."""
    from PASTALib.train.common import amp_dtype, autocast

    was_training = model.training
    model.eval()
    dtype = amp_dtype(device, amp)
    out = []
    for start in range(0, len(crops), batch_size):
        with autocast(device, dtype):
            out.append(model.unet.encode(_batches(crops[start:start + batch_size], device, slf_values)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def _train_fold(cfg: ClassifyConfig, fold: int, train_idx: np.ndarray, crops: np.ndarray, targets: np.ndarray,
                num_classes: int | None, unet_config: UNetConfig, init_state: dict | None, device: torch.device,
                fold_dir: Path, progress: _Progress, stop: StopFlag,
                on_iteration: Callable[[int, int, float], None] | None) -> tuple[PastaClassifier | None, int, list | None]:
    """Train one fold (resuming from its checkpoint_last.pt). Returns (model or None if stopped,
    iterations done, class weights)."""
    from PASTALib.runtime import atomic_torch_save, configure_fixed_shape_training
    from PASTALib.train.common import (
        amp_dtype,
        autocast,
        make_grad_scaler,
        optimizer_step,
        translate_out_of_memory,
    )

    weights = class_weight_vector(cfg, num_classes, targets[train_idx]) if num_classes else None
    model, _ = build_classifier(unet_config, num_classes, init_state=init_state, seed=_seed_int(cfg.seed, fold, 0),
                                freeze_encoder=cfg.freeze_encoder)
    model.to(device)
    params = model.head_parameters() if cfg.freeze_encoder else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dtype = amp_dtype(device, cfg.amp)
    scaler = make_grad_scaler(device, dtype)
    configure_fixed_shape_training(device)  # every crop is input_size³
    loss_fn = make_loss(cfg.task, weights, device)
    ckpt = fold_dir / "checkpoint_last.pt"
    start = 0
    if cfg.resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state.get("fingerprint") != cfg.fingerprint():
            raise ClassifyError(f"{ckpt} was written with other settings; use another --out or --no-resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        progress.advance(start, f"fold {fold}: resumed at iteration {start}", force=True)
    # A frozen encoder without augmentation gives every case one fixed feature: encode the training
    # crops once and train the head on the features (a linear probe costs one pass, not one per step).
    features = None
    if cfg.freeze_encoder and not cfg.augment or (num_classes and cfg.scale_features and start == 0):
        features = torch.from_numpy(encode_features(model, crops[train_idx], device=device, batch_size=cfg.batch_size,
                                                    amp=cfg.amp, slf_values=cfg.slf_values))
        if num_classes and cfg.scale_features and start == 0:
            model.fit_feature_scaler(features)
        features = features.to(device) if cfg.freeze_encoder and not cfg.augment else None

    def save(iteration: int) -> None:
        atomic_torch_save({"iteration": iteration, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scaler": scaler.state_dict() if scaler is not None else None,
                           "fingerprint": cfg.fingerprint()}, ckpt)

    target_dtype = torch.long
    model.train()
    for it in range(start, cfg.iterations):
        if stop.stop:
            save(it)
            return None, it, weights
        # The batch and its augmentation depend on (seed, fold, iteration) only: exact resume.
        rng = np.random.default_rng([cfg.seed, fold, it, 1])
        batch = np.sort(rng.choice(train_idx, size=min(cfg.batch_size, len(train_idx)), replace=False))
        flips = rng.random((len(batch), 3)) < 0.5
        with translate_out_of_memory(iteration=it, device=device, batch_size=cfg.batch_size, size=(cfg.size,) * 3,
                                     size_flag="--input-size", amp=dtype is not None):
            y = torch.as_tensor(np.asarray(targets[batch]), dtype=target_dtype, device=device)
            if features is not None:
                with autocast(device, dtype):
                    logits = model.head_logits(features[torch.as_tensor(np.searchsorted(train_idx, batch), device=device)])
            else:
                x = _batches(crops[batch], device, cfg.slf_values)
                if cfg.augment:
                    x = torch.stack([torch.flip(x[i], [d + 1 for d in range(3) if flips[i, d]]) if flips[i].any()
                                     else x[i] for i in range(len(batch))])
                with autocast(device, dtype):
                    logits = model(x)
            loss = loss_fn(logits, y)
            optimizer_step(loss, optimizer, scaler)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ClassifyError(f"fold {fold}: the loss became {value} at iteration {it + 1}; lower --lr "
                                f"(now {cfg.lr}) or use --no-amp")
        progress.advance(1, f"fold {fold} iteration {it + 1}/{cfg.iterations} loss {value:.4f}")
        if on_iteration is not None:
            on_iteration(fold, it + 1, value)
        if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            save(it + 1)
    return model, cfg.iterations, weights


def _bundle(model: PastaClassifier, cfg: ClassifyConfig, table: CaseTable, fold: int, weights: list | None,
            init_desc: str) -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT, "task": cfg.task, "fold": fold, "unet_config": model.config.to_dict(),
        "num_classes": model.classifier.out_features if model.classifier is not None else None,
        "class_values": [v if isinstance(v, (int, float)) else str(v) for v in table.class_values],
        "attribute_columns": dict(table.attribute_columns), "input_size": cfg.size, "margin_mm": float(cfg.margin_mm),
        "labels_kind": cfg.labels_kind, "slf_values": [float(v) for v in cfg.slf_values], "class_weights": weights,
        "init": init_desc, "iterations": cfg.iterations, "freeze_encoder": cfg.freeze_encoder,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def _prediction_frame(task: str, cases: Sequence[Case], logits: np.ndarray, class_values: Sequence[Any],
                      fold: int | None, with_labels: bool = True) -> pd.DataFrame:
    """Predictions table of some cases (see the module docstring for the columns)."""
    rows: dict[str, Any] = {"id": [c.id for c in cases]}
    if fold is not None:
        rows["fold"] = [fold] * len(cases)
    if task == "attributes":
        from PASTALib.model.attributes import decode_attributes

        decoded = decode_attributes(torch.from_numpy(logits)) if len(cases) else []
        for gi, group in enumerate(ATTRIBUTE_GROUPS):
            if with_labels:
                rows[group.name] = [group.options[c.target[gi]] if c.target and c.target[gi] != IGNORE_INDEX else ""
                                    for c in cases]
            rows[f"{group.name}_pred"] = [d.values[group.name] for d in decoded]
            rows[f"{group.name}_confidence"] = [d.confidence(group.name) for d in decoded]
        return pd.DataFrame(rows)
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    if with_labels:
        rows["label"] = [c.target if c.target is not None else "" for c in cases]
        if list(class_values) != list(range(len(class_values))):
            rows["label_value"] = [class_values[c.target] if c.target is not None else "" for c in cases]
    for k in range(probs.shape[1]):
        rows[f"prob_{k}"] = probs[:, k]
    rows["pred"] = probs.argmax(1) if len(cases) else []
    if list(class_values) != list(range(len(class_values))):
        rows["pred_value"] = [class_values[int(k)] for k in rows["pred"]]
    return pd.DataFrame(rows)


# --- metrics ----------------------------------------------------------------------------------

def _metric_rows(y_true: np.ndarray, scores: np.ndarray | None, y_pred: np.ndarray, rng: np.random.Generator,
                 n_boot: int) -> list[dict[str, Any]]:
    """AUC (when scores and ≥ 2 classes), ACC and macro F1 with percentile bootstrap 95% CIs."""
    from PASTALib.eval.metrics import accuracy, accuracy_rows, macro_f1, macro_f1_rows
    from PASTALib.eval.stats import bootstrap_ci
    from PASTALib.eval.tasks import EvaluationError, classification_summary

    if len(y_true) == 0:
        return []
    if scores is not None and len(np.unique(y_true)) >= 2 and len(y_true) >= 2:
        try:
            return classification_summary(y_true, scores, y_pred, rng=rng, n_resamples=n_boot).to_dict("records")
        except (EvaluationError, ValueError):
            pass  # e.g. a multi-class fold missing a class: AUC undefined, ACC/F1 below
    rows = []
    for name, fn, rows_fn in (("ACC", accuracy, accuracy_rows), ("F1_macro", macro_f1, macro_f1_rows)):
        if len(y_true) >= 2:
            ci = bootstrap_ci(fn, y_true, y_pred, rng=rng, n_resamples=n_boot, batch_statistic=rows_fn)
            rows.append(dict(metric=name, n=len(y_true), estimate=ci.estimate, ci_low=ci.low, ci_high=ci.high))
        else:
            rows.append(dict(metric=name, n=len(y_true), estimate=float(fn(y_true, y_pred)), ci_low=math.nan,
                             ci_high=math.nan))
    return rows


def summarize_predictions(predictions: pd.DataFrame, task: str, *, seed: int = 0, n_boot: int = 1000) -> pd.DataFrame:
    """Metrics table (scope, [attribute,] metric, n, estimate, ci_low, ci_high) of out-of-fold
    predictions: scope "all" pools every fold, "fold_i" is one fold. Bootstrap seeded per scope."""
    scopes = [("all", predictions)] + [(f"fold_{int(f)}", sub) for f, sub in predictions.groupby("fold", sort=True)]
    rows = []
    for si, (scope, df) in enumerate(scopes):
        if task == "attributes":
            for gi, group in enumerate(ATTRIBUTE_GROUPS):
                if group.name not in df.columns:
                    continue
                known = df[df[group.name].astype(str) != ""]
                if known.empty:
                    continue
                options = list(group.options)
                y = np.array([options.index(v) for v in known[group.name]])
                p = np.array([options.index(v) for v in known[f"{group.name}_pred"]])
                rng = np.random.default_rng([seed, si, gi])
                rows += [dict(scope=scope, attribute=group.name, **r) for r in _metric_rows(y, None, p, rng, n_boot)]
        else:
            from PASTALib.eval.tasks import score_columns

            cols = score_columns(df)
            probs = df[cols].to_numpy(float)
            y = df["label"].to_numpy(int)
            scores = probs[:, 1] if probs.shape[1] == 2 else probs
            rng = np.random.default_rng([seed, si])
            rows += [dict(scope=scope, **r) for r in _metric_rows(y, scores, probs.argmax(1), rng, n_boot)]
    return pd.DataFrame(rows)


def _write_table_atomic(df: pd.DataFrame, prefix: Path, title: str) -> dict[str, Path]:
    from PASTALib.eval.report import write_table

    staging = Path(tempfile.mkdtemp(prefix=".metrics-", dir=prefix.parent))
    try:
        paths = write_table(df, staging / prefix.name, title=title)
        final = {}
        for key, p in paths.items():
            final[key] = prefix.with_name(p.name)
            os.replace(p, final[key])
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- the run ----------------------------------------------------------------------------------

def _check_same(path: Path, now: Any, what: str) -> None:
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != now:
            diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)) \
                if isinstance(before, dict) and isinstance(now, dict) else []
            raise ClassifyError(f"{path} differs from this run's {what}" + (f" ({', '.join(diff)})" if diff else "")
                                + "; the table or settings changed since the earlier run: use another --out, "
                                "or --no-resume to start over")


def train_classifier(cfg: ClassifyConfig, *, stop: StopFlag | None = None,
                     on_iteration: Callable[[int, int, float], None] | None = None,
                     on_fold: Callable[[FoldResult], None] | None = None) -> ClassifyResult:
    """Cross-validated fine-tuning (see the module docstring). Finished folds are skipped on a rerun;
    an interrupted fold resumes from its checkpoint. ``stop`` (StopFlag) ends the run cleanly after
    saving; ``on_iteration(fold, iteration, loss)`` and ``on_fold(FoldResult)`` observe it. The output
    folder is locked for the run (a second run on it is an error)."""
    from PASTALib.io.outputs import folder_lock

    cfg.validate()
    with folder_lock(cfg.out, what="classification folder"):
        return _train_classifier(cfg, stop=stop, on_iteration=on_iteration, on_fold=on_fold)


def _train_classifier(cfg: ClassifyConfig, *, stop: StopFlag | None,
                      on_iteration: Callable[[int, int, float], None] | None,
                      on_fold: Callable[[FoldResult], None] | None) -> ClassifyResult:
    stop = stop or StopFlag()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    from PASTALib.train.common import resolve_device

    device = resolve_device(cfg.device)
    table = read_case_table(cfg.table, cfg.task, label_column=cfg.label_column, id_column=cfg.id_column,
                            group_column=cfg.group_column, labels_kind=cfg.labels_kind)
    unet_config, init_state, init_desc = read_init(cfg.init)
    if init_state is None and cfg.scratch_config:
        unet_config = UNetConfig.from_dict(cfg.scratch_config)
    if cfg.size % unet_config.feature_stride:
        raise ClassifyError(f"--input-size {cfg.size} must be a multiple of {unet_config.feature_stride} for this network")
    cases = table.cases
    ids = [c.id for c in cases]
    groups = [c.group for c in cases] if table.group_column else None
    strata = [c.target for c in cases] if cfg.task != "attributes" else None
    splits = make_cv_splits(ids, folds=cfg.folds, seed=cfg.seed, strata=strata, groups=groups)
    splits["grouped_by"] = table.group_column
    splits["ids"] = ids

    out = Path(cfg.out)
    if not cfg.resume and out.is_dir():
        for p in out.glob("fold_*"):
            shutil.rmtree(p, ignore_errors=True)
        for name in ("splits.json", "classify_config.json", "predictions.csv", "metrics.csv", "metrics.md", "metrics.html"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    config_doc = {"format": "pasta-classify-config/1", **cfg.fingerprint(),
                  "table": str(Path(cfg.table).resolve()), "init": init_desc,
                  "unet_config": unet_config.to_dict(), "class_values": table.class_values}
    splits_path, config_path = out / "splits.json", out / "classify_config.json"
    _check_same(splits_path, splits, "cross-validation splits")
    _check_same(config_path, config_doc, "settings")
    write_json_atomic(splits_path, splits)
    write_json_atomic(config_path, config_doc)

    by_id = {c.id: n for n, c in enumerate(cases)}
    val_sets = [np.array([by_id[i] for i in fold_ids]) for fold_ids in splits["validation"]]
    wanted = list(range(cfg.folds)) if cfg.fold is None else [cfg.fold]
    done = {f for f in range(cfg.folds) if (out / f"fold_{f}" / "done.json").is_file()}
    todo = [f for f in wanted if f not in done]

    num_classes = None if cfg.task == "attributes" else table.num_classes
    targets = np.array([c.target for c in cases], dtype=np.int64)
    result = ClassifyResult(out, splits_path, sorted(done), [])
    progress = _Progress((len(cases) if todo else 0) + len(todo) * cfg.iterations, cfg.progress_lines, cfg.progress_bar)
    try:
        crops = None
        if todo:
            progress.advance(0, f"cropping {len(cases)} case(s)", force=True)
            cache = Path(cfg.crops_dir) if cfg.crops_dir else out / "crops"
            crops = compute_crops(cases, cfg.task, size=cfg.size, margin_mm=cfg.margin_mm, cache_dir=cache,
                                  on_case=lambda n, cid: progress.advance(1, f"crop {n}/{len(cases)} {cid}"), stop=stop)
            if crops is None:
                result.stopped_early = True
                return result
        for fold in todo:
            if stop.stop:
                result.stopped_early = True
                break
            fold_dir = out / f"fold_{fold}"
            fold_dir.mkdir(parents=True, exist_ok=True)
            val_idx = val_sets[fold]
            train_idx = np.setdiff1d(np.arange(len(cases)), val_idx)
            progress.advance(0, f"fold {fold}: training on {len(train_idx)}, validating on {len(val_idx)} case(s)",
                             force=True)
            model, iteration, weights = _train_fold(cfg, fold, train_idx, crops, targets, num_classes, unet_config,
                                                    init_state, device, fold_dir, progress, stop, on_iteration)
            if model is None:
                result.stopped_early = True
                if on_fold is not None:
                    on_fold(FoldResult(fold, False, iteration))
                break
            from PASTALib.runtime import atomic_torch_save

            model_path = atomic_torch_save(_bundle(model, cfg, table, fold, weights, init_desc), fold_dir / "model.pth")
            logits = predict_logits(model, crops[val_idx], device=device, batch_size=cfg.batch_size, amp=cfg.amp,
                                    slf_values=cfg.slf_values)
            frame = _prediction_frame(cfg.task, [cases[i] for i in val_idx], logits, table.class_values, fold)
            pred_path = _atomic_csv(frame, fold_dir / "predictions.csv")
            write_json_atomic(fold_dir / "done.json", {"fold": fold, "iterations": iteration, "train": len(train_idx),
                                                "validation": len(val_idx), "class_weights": weights})
            (fold_dir / "checkpoint_last.pt").unlink(missing_ok=True)
            done.add(fold)
            result.folds_trained.append(fold)
            if on_fold is not None:
                on_fold(FoldResult(fold, True, iteration, model_path, pred_path))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        progress.close()
    result.folds_done = sorted(done)
    if len(done) == cfg.folds and not result.stopped_early:
        frames = [pd.read_csv(out / f"fold_{f}" / "predictions.csv", dtype={"id": str}, keep_default_na=False)
                  for f in range(cfg.folds)]
        merged = pd.concat(frames, ignore_index=True)
        order = {i: n for n, i in enumerate(ids)}
        merged = merged.sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)
        result.predictions = _atomic_csv(merged, out / "predictions.csv")
        metrics = summarize_predictions(merged, cfg.task, seed=cfg.seed, n_boot=cfg.n_boot)
        title = {"detection": "Detection", "roi": "ROI classification", "attributes": "Report attributes"}[cfg.task]
        paths = _write_table_atomic(metrics, out / "metrics",
                                    f"{title}: {cfg.folds}-fold CV, 95% bootstrap CI ({cfg.n_boot} replicates)")
        result.metrics = paths["csv"]
        result.summary = metrics[metrics["scope"] == "all"].reset_index(drop=True)
        if cfg.progress_lines:
            print(f"PROGRESS 1.0000 done: {result.predictions}", flush=True)
    return result


# --- applying a fold model --------------------------------------------------------------------

def load_classifier(model_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[PastaClassifier, dict]:
    """(model on ``device`` in eval mode, bundle metadata) of a ``fold_i/model.pth``."""
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ClassifyError(f"model {path} not found; train one with `pasta classify train` (OUT/fold_i/model.pth)")
    from PASTALib.model.checkpoint import read_checkpoint

    bundle = read_checkpoint(path)
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ClassifyError(f"{path} is not a classifier model written by `pasta classify train` "
                            "(for PASTA weights use --init of `pasta classify train`)")
    cfg = UNetConfig.from_dict(bundle["unet_config"])
    with torch.random.fork_rng(devices=[]):
        model = PastaClassifier(cfg, bundle["num_classes"])
    model.load_state_dict(bundle["state_dict"])
    from PASTALib.train.common import resolve_device

    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    meta = {k: v for k, v in bundle.items() if k != "state_dict"}
    return model.to(dev).eval(), meta


def predict_table(model_path: str | os.PathLike, table: str | os.PathLike, *, out: str | os.PathLike | None = None,
                  device: str = "auto", batch_size: int = 4, id_column: str = "id", label_column: str = "label",
                  labels_kind: str | None = None, crops_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Apply a trained fold model to the rows of ``table`` (same columns as for training; labels
    optional and kept when present). Returns (and writes to ``out``, atomically) id, [label,]
    prob_0..prob_{C-1}, pred - or, for the attributes task, ``<attribute>_pred`` / ``_confidence``."""
    from tqdm import tqdm

    from PASTALib.train.common import resolve_device

    dev = resolve_device(device)
    model, meta = load_classifier(model_path, dev)
    task = meta["task"]
    tab = read_case_table(table, task, label_column=label_column, id_column=id_column,
                          labels_kind=labels_kind or meta["labels_kind"], require_labels=False,
                          class_values=meta["class_values"] if task != "attributes" else None)
    has_labels = any(c.target is not None for c in tab.cases) if task != "attributes" else bool(tab.attribute_columns)
    bar = tqdm(total=len(tab.cases), desc="crops", file=sys.stderr, disable=None if progress else True)
    crops = compute_crops(tab.cases, task, size=int(meta["input_size"]), margin_mm=float(meta["margin_mm"]),
                          cache_dir=Path(crops_dir) if crops_dir else None, on_case=lambda n, cid: bar.update(1))
    bar.close()
    logits = predict_logits(model, crops, device=dev, batch_size=batch_size, amp=True,
                            slf_values=meta["slf_values"])
    frame = _prediction_frame(task, tab.cases, logits, meta["class_values"], None, with_labels=has_labels)
    if out is not None:
        _atomic_csv(frame, Path(out))
    return frame


__all__ = [
    "BUNDLE_FORMAT", "DEFAULT_DETECTION_WEIGHTS", "TASKS", "Case", "CaseTable", "ClassifyConfig", "ClassifyError",
    "ClassifyResult", "FoldResult", "PastaClassifier", "build_classifier", "class_weight_vector", "compute_crops",
    "encoder_only", "load_classifier", "make_cv_splits", "make_loss", "predict_logits", "predict_table",
    "read_case_table", "read_init", "summarize_predictions", "train_classifier",
]

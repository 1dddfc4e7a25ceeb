"""Settings of the cross-validated classification fine-tuning (``pasta classify train``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PASTALib.anatomy.labelmaps import LABELS_KINDS
from PASTALib.model.preprocess import SLF_VALUES
from PASTALib.report.attributes import ATTRIBUTES, KEY_ALIASES
from PASTALib.train.common import TrainingError

TASKS = ("detection", "roi", "attributes")
DEFAULT_INPUT_SIZE = {"detection": 128, "roi": 96, "attributes": 96}
DEFAULT_DETECTION_WEIGHTS = (1.0, 10.0)  # normal : tumour
IMAGE_COLUMNS = ("image", "image_path")
COORD_COLUMNS = ("coordX", "coordY", "coordZ")
#: Table column names accepted for each attribute group (first match wins, case-insensitive).
ATTRIBUTE_COLUMNS: dict[str, tuple[str, ...]] = {
    key: (*(alias for alias, canonical in KEY_ALIASES.items() if canonical == key), key) for key in ATTRIBUTES
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
        if self.labels_kind not in LABELS_KINDS:
            raise ClassifyError(f"--labels-kind must be one of {', '.join(LABELS_KINDS)}, not {self.labels_kind!r}")
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

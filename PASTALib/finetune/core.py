"""Few-shot fine-tuning: read the Slicer export, split, prepare, train with stage 1's loop, validate.

Input (written by the PASTA module, ``PASTALogicLib.logic.export_training_case``)::

    FOLDER/pasta_fewshot.json          {"labels": {name: value}, "cases": [{"id", "image", "label", ...}]}
    FOLDER/imagesTr/<id>_0000.nii.gz   CT (HU) on its own grid
    FOLDER/labelsTr/<id>.nii.gz        label map on the CT grid, values from "labels"

Steps: the annotated label values are mapped, in increasing order, to contiguous training classes
1..C (0 background; ``classes.json``); the cases are split into ``folds`` folds by a permutation
seeded with ``seed`` (``splits.json``), fold ``fold`` is held out and K cases are drawn (seeded) from
the others; every case is resampled to the canonical LPS ``spacing_mm`` grid the network works on
(as ``pasta segment`` does) and written as a stage-1 case folder under ``OUT/prepared``. Training
is :func:`PASTALib.train.train_stage1` with ``init`` loaded ``for_finetuning=True`` (new
segmentation heads for C+1 classes, attribute head untouched), so the sampler (foreground
oversampling), Dice+CE deep-supervision loss, ``checkpoint_last.pt`` exact resume, metrics.csv and
PROGRESS lines are stage 1's. Stage 1's ``dice_lesion`` / ``dice_organ`` columns use PASTA's label
numbering (lesions 11-25), so for fine-tuning classes 1..C ``dice_organ`` is the Dice of "any
annotated class" (C ≤ 10) and ``dice_lesion`` is empty. At the end every held-out case is segmented
with PASTALib.infer's sliding window (Gaussian blending, on the canonical grid) and scored per class
(DSC, PASTALib.eval.dice) into ``validation.csv``.

Input map (``normalization``, stored in ``model_final.pth``'s metadata block and applied by ``pasta
segment``): from ``PASTA_final.pth`` (and from scratch) nnU-Net's CT normalisation with the training
cases' foreground statistics, as the authors fine-tune in nnU-Net v2; from a model of this library its
own map (SLF for stage 1).

``scratch=True`` trains the same architecture from random init (seeded), the paper's baseline. The
K x fold sweep that writes ``fewshot.csv`` is :mod:`PASTALib.finetune.sweep`. ``pasta segment
--checkpoint OUT/model_final.pth`` reads ``classes.json`` beside the model (:func:`read_classes`) and
writes the annotated label values.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from PASTALib.io.files import write_json_atomic, write_text_atomic
from PASTALib.io.image import read_image, read_label
from PASTALib.io.outputs import safe_name
from PASTALib.layout import CASE_IMAGE_NAME, CASE_LABEL_NAME
from PASTALib.progress import progress_line
from PASTALib.weights import CLASSES_NAME, read_classes  # noqa: F401  (part of finetune's API)
from PASTALib.train.common import IterationCallback, StopFlag, TrainingError

MANIFEST_NAME = "pasta_fewshot.json"
SPLITS_NAME = "splits.json"
VALIDATION_NAME = "validation.csv"
PREPARED_DIR = "prepared"


@dataclass(frozen=True)
class FewshotCase:
    id: str
    image: Path
    label: Path


@dataclass
class FinetuneConfig:
    data: str
    out: str
    init: str | None = None  # PASTA weights (None: PASTA_final.pth at default_weights_path())
    #: train the same architecture from random init (the paper's "from scratch" baseline): ``init``, when
    #: given, only supplies the layout (widths, stages); None: the published PASTA layout (UNetConfig())
    scratch: bool = False
    k: int | None = None  # training cases drawn from the training folds (None: all of them)
    fold: int = 0
    folds: int = 5
    iterations: int = 2000
    lr: float = 1e-4
    optimizer: str = "adam"  # adam (default for fine-tuning at lr 1e-4) or sgd (nnU-Net momentum 0.99)
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (128, 128, 128)
    fg_fraction: float = 0.33
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    spacing_mm: float | None = 1.0  # canonical LPS grid of the network; None: train on the files' own grids
    resume: bool = True
    evaluate: bool = True
    overlap: float = 0.5  # sliding-window overlap for the validation
    progress_lines: bool = False
    progress_bar: bool = True
    num_threads: int | None = None
    num_workers: int | None = None
    tensorboard: bool = True
    curves: bool = True
    #: input map of the segmentation network: "auto" (the init checkpoint's own when its metadata names one;
    #: nnU-Net's CT normalisation with statistics of the training cases when starting from PASTA_final.pth or
    #: from scratch, as the authors' nnU-Net fine-tuning; SLF for this library's stage-1 models), "nnunet_ct", "slf"
    normalization: str = "auto"
    #: foreground intensities sampled for nnU-Net's CT statistics (None: nnU-Net's 10e7 over all training cases,
    #: about a minute and 1 GB on a CPU; fewer gives an estimate of the same statistics)
    intensity_samples: int | None = None

    def validate(self) -> None:
        if self.folds < 2:
            raise TrainingError("--folds must be ≥ 2")
        if not 0 <= self.fold < self.folds:
            raise TrainingError(f"--fold must be in 0..{self.folds - 1} (got {self.fold})")
        if self.k is not None and self.k < 1:
            raise TrainingError("--k must be ≥ 1")
        if self.spacing_mm is not None and self.spacing_mm <= 0:
            raise TrainingError("--spacing must be positive")
        if self.intensity_samples is not None and self.intensity_samples < 1:
            raise TrainingError("--intensity-samples must be ≥ 1")
        if self.normalization not in ("auto", "nnunet_ct", "slf"):
            raise TrainingError(f"--normalization must be auto, nnunet_ct or slf (got {self.normalization!r})")


@dataclass
class FinetuneResult:
    iteration: int
    out: Path
    final_model: Path | None
    classes: Path
    splits: Path
    metrics: Path
    validation_csv: Path | None = None
    validation: list[dict[str, Any]] = field(default_factory=list)  # one row per held-out case and class
    mean_dice: float | None = None
    stopped_early: bool = False


# --- the few-shot folder -----------------------------------------------------------------------

def read_fewshot_folder(folder: str | os.PathLike) -> tuple[dict[str, int], list[FewshotCase]]:
    """(label name → value, cases sorted by id) from ``pasta_fewshot.json`` (or, without one, the
    imagesTr/labelsTr pairs with labels named ``label_<value>``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"few-shot folder {folder} does not exist")
    manifest_path = folder / MANIFEST_NAME
    cases: list[FewshotCase] = []
    labels: dict[str, int] = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            labels = {str(n): int(v) for n, v in manifest.get("labels", {}).items()}
            for entry in manifest.get("cases", []):
                cases.append(FewshotCase(str(entry["id"]), folder / entry["image"], folder / entry["label"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrainingError(f"{manifest_path} is not a valid few-shot manifest ({exc!r}); export the cases "
                                "again from the PASTA module") from None
    else:
        for label_path in sorted((folder / "labelsTr").glob("*.nii.gz")):
            cid = label_path.name[: -len(".nii.gz")]
            cases.append(FewshotCase(cid, folder / "imagesTr" / f"{cid}_0000.nii.gz", label_path))
    for c in cases:  # ids become folder names under OUT: '../../x' must not write outside it
        safe_name(c.id, f"case id in {manifest_path if manifest_path.is_file() else folder / 'labelsTr'}")
    if not cases:
        raise TrainingError(f"no annotated cases in {folder}: expected {MANIFEST_NAME} with imagesTr/<id>_0000.nii.gz "
                            "and labelsTr/<id>.nii.gz (mark cases in the PASTA module's few-shot section)")
    for c in cases:
        for p in (c.image, c.label):
            if not p.is_file():
                raise TrainingError(f"case {c.id}: {p} is missing")
    if not labels:  # no names: every value present in the label maps
        values = sorted({int(v) for c in cases for v in np.unique(sitk.GetArrayViewFromImage(read_label(c.label))) if v})
        labels = {f"label_{v}": v for v in values}
    bad = {n: v for n, v in labels.items() if not 1 <= v <= 255}
    if bad:
        raise TrainingError(f"label values must be 1-255 (0 is background): {bad}")
    return labels, sorted(cases, key=lambda c: c.id)


def class_mapping(labels: dict[str, int]) -> list[dict[str, Any]]:
    """Annotated label values in increasing order → training classes 1..C: [{class, name, label_value}]."""
    by_value: dict[int, str] = {}
    for name, value in sorted(labels.items(), key=lambda kv: (kv[1], kv[0])):
        by_value.setdefault(value, name)  # two names for one value: the first (sorted) name
    return [{"class": i + 1, "name": by_value[v], "label_value": v} for i, v in enumerate(sorted(by_value))]


def make_splits(case_ids: Sequence[str], *, folds: int, fold: int, k: int | None, seed: int) -> dict[str, Any]:
    """Fixed seeded ``folds``-fold split of the case ids; fold ``fold`` held out, K training cases drawn
    (seeded by ``seed`` and ``fold``) from the other folds. Depends only on the sorted ids and the settings."""
    ids = sorted(case_ids)
    if len(ids) < folds:
        raise TrainingError(f"{len(ids)} annotated case(s) cannot make {folds} folds; annotate more cases or "
                            f"use --folds {max(2, len(ids))}" if len(ids) >= 2 else
                            f"{len(ids)} annotated case: fine-tuning with a held-out fold needs at least 2")
    perm = np.random.default_rng(seed).permutation(len(ids))
    fold_lists = [sorted(ids[j] for j in perm[f::folds]) for f in range(folds)]
    val = fold_lists[fold]
    pool = sorted(c for f, lst in enumerate(fold_lists) if f != fold for c in lst)
    if k is not None and k > len(pool):
        raise TrainingError(f"--k {k} but the training folds of fold {fold} hold only {len(pool)} case(s)")
    if k is None or k == len(pool):
        train = pool
    else:
        rng = np.random.default_rng([seed, fold, k])
        train = sorted(pool[j] for j in rng.choice(len(pool), k, replace=False))
    return {"format": "pasta-finetune-splits/1", "seed": seed, "folds": folds, "fold": fold, "k": k,
            "fold_cases": fold_lists, "train_pool": pool, "train": train, "validation": val}


# --- preparation -------------------------------------------------------------------------------

def prepare_case(case: FewshotCase, value_to_class: dict[int, int], folder: Path,
                 spacing_mm: float | None) -> Path:
    """Write ``folder/<id>/img.nii.gz`` + ``label.nii.gz`` (classes 0..C) on the canonical grid."""
    from PASTALib.geometry import to_canonical

    image = read_image(case.image)
    label = read_label(case.label)
    if image.GetSize() != label.GetSize():
        raise TrainingError(f"case {case.id}: label size {label.GetSize()} differs from image size {image.GetSize()}")
    lab = sitk.GetArrayFromImage(label)
    unknown = sorted(int(v) for v in np.unique(lab) if v and int(v) not in value_to_class)
    if unknown:
        raise TrainingError(f"case {case.id}: label value(s) {unknown} are not named in {MANIFEST_NAME}")
    lut = np.zeros(max(256, int(lab.max()) + 1), np.uint8)
    for v, c in value_to_class.items():
        lut[v] = c
    mapped = sitk.GetImageFromArray(lut[lab.astype(np.int64)])
    mapped.CopyInformation(label)
    image = sitk.Cast(image, sitk.sitkFloat32)
    if spacing_mm is not None:
        image, mapping = to_canonical(image, is_label=False, spacing=spacing_mm)
        mapped, _ = to_canonical(mapped, mapping, is_label=True)
    out = folder / case.id
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(out / CASE_IMAGE_NAME))
    sitk.WriteImage(sitk.Cast(mapped, sitk.sitkUInt8), str(out / CASE_LABEL_NAME))
    return out


# --- validation --------------------------------------------------------------------------------

def evaluate_cases(network: torch.nn.Module, case_dirs: Sequence[Path], classes: Sequence[dict[str, Any]], *,
                   patch_size: Sequence[int], device: str | torch.device = "cpu", overlap: float = 0.5,
                   slf_values: Sequence[float] | None = None, output_channel: str = "class",
                   normalize: Any = None) -> list[dict[str, Any]]:
    """DSC per (prepared) case and class with PASTALib.infer's sliding window over the whole case.

    ``output_channel``: which network output a class is read from - ``"class"`` (the fine-tuned
    classes 1..C) or ``"label_value"`` (a model that predicts the label values themselves, e.g. the
    pretrained PASTA model for labels numbered as PASTA's 11-25 lesions: its zero-shot baseline).
    """
    from PASTALib.eval import dice
    from PASTALib.infer import InferenceConfig, sliding_window_probabilities
    from PASTALib.runtime import resolve_device
    from PASTALib.model.preprocess import SLF_VALUES

    dev = resolve_device(device)
    network.to(dev).eval()
    cfg = InferenceConfig(patch_size=tuple(patch_size), overlap=overlap, device=str(dev), batch_size=1)
    rows = []
    for case_dir in case_dirs:
        hu = sitk.GetArrayFromImage(read_image(Path(case_dir) / CASE_IMAGE_NAME)).astype(np.float32)
        ref = sitk.GetArrayFromImage(read_label(Path(case_dir) / CASE_LABEL_NAME))
        pred = sliding_window_probabilities(network, hu, cfg, dev, slf_values=tuple(slf_values or SLF_VALUES),
                                            normalize=normalize)
        pred = pred.argmax(0).cpu().numpy()
        for c in classes:
            channel = int(c["class"] if output_channel == "class" else c["label_value"])
            score = dice(pred == channel, ref == int(c["class"]), labels=[1], empty=math.nan)[1]
            rows.append({"case": Path(case_dir).name, "class": c["class"], "name": c["name"],
                         "label_value": c["label_value"], "dice": score,
                         "reference_voxels": int((ref == int(c["class"])).sum()),
                         "predicted_voxels": int((pred == channel).sum())})
    return rows


VALIDATION_FIELDS = ["case", "class", "name", "label_value", "dice", "reference_voxels", "predicted_voxels"]


def write_csv_atomic(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str],
                     float_fields: Sequence[str] = ()) -> Path:
    """CSV written to a temporary name and renamed (never a half-written table); NaN in a
    ``float_fields`` column is written empty (pandas reads it back as NaN)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{f: "" if math.isnan(float(r[f])) else f"{float(r[f]):.6f}" for f in float_fields}})
    write_text_atomic(path, buffer.getvalue())
    return path


def read_validation(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``validation.csv`` (dice NaN where the class is absent from reference and prediction)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{"case": r["case"], "class": int(r["class"]), "name": r["name"], "label_value": int(r["label_value"]),
                 "dice": float(r["dice"]) if r["dice"] else math.nan,
                 "reference_voxels": int(r["reference_voxels"]), "predicted_voxels": int(r["predicted_voxels"])}
                for r in csv.DictReader(fh)]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    return write_csv_atomic(path, rows, VALIDATION_FIELDS, float_fields=("dice",))




# --- the run -----------------------------------------------------------------------------------

def case_intensity_statistics(cases: Sequence[FewshotCase], total_samples: int | None = None) -> dict[str, Any]:
    """nnU-Net's CT normalisation of the fine-tuning cases (foreground = any annotated label, on each
    case's own grid, sampled as nnU-Net's fingerprint extractor): the metadata dict stored with the model."""
    from PASTALib.model.preprocess import foreground_intensity_statistics

    pairs = [(sitk.GetArrayFromImage(sitk.Cast(read_image(c.image), sitk.sitkFloat32)),
              sitk.GetArrayFromImage(read_label(c.label))) for c in cases]
    try:
        return foreground_intensity_statistics(pairs, total_samples=total_samples).to_dict()
    except ValueError as exc:
        raise TrainingError(f"cannot compute the intensity normalisation of the training cases: {exc}") from None


def choose_normalization(cfg: FinetuneConfig, init: Path | None, train_cases: Sequence[FewshotCase]) -> dict[str, Any]:
    """The segmentation input map of a fine-tuning run (see ``FinetuneConfig.normalization``) and why."""
    from PASTALib.model.preprocess import SLFNormalization

    choice = cfg.normalization
    if choice == "auto":
        if init is None or cfg.scratch:
            choice = "nnunet_ct"
        else:
            from PASTALib.capabilities import checkpoint_capabilities

            caps = checkpoint_capabilities(init)
            if caps.segmentation_normalization:  # a model of this library: keep what its encoder was trained on
                return dict(caps.segmentation_normalization)
            choice = "nnunet_ct" if caps.kind == "pasta_final" else "slf"
    if choice == "slf":
        return SLFNormalization().to_dict()
    return case_intensity_statistics(train_cases, cfg.intensity_samples)



def resolve_init(cfg: FinetuneConfig) -> Path | None:
    """The weights file a run starts from (from scratch: the layout source, or None for the published
    layout); MissingWeightsError (saying where to download PASTA_final.pth) when it is not there."""
    from PASTALib.weights import require_weights

    if cfg.scratch and not cfg.init:
        return None
    return require_weights(cfg.init)


def finetune(cfg: FinetuneConfig, *, callback: IterationCallback | None = None,
             stop: StopFlag | None = None) -> FinetuneResult:
    """Run (or resume) K-shot fine-tuning of fold ``cfg.fold``; see the module docstring. The output
    folder is locked for the run (a second run on it is an error)."""
    from PASTALib.io.outputs import folder_lock

    with folder_lock(cfg.out, what="fine-tuning folder"):
        return _finetune(cfg, callback=callback, stop=stop)


def _finetune(cfg: FinetuneConfig, *, callback: IterationCallback | None, stop: StopFlag | None) -> FinetuneResult:
    from PASTALib.model import UNetConfig
    from PASTALib.model.checkpoint import infer_config, load_state_dict_file
    from PASTALib.train import Stage1Config, train_stage1

    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    init = resolve_init(cfg)
    # from scratch: only the layout is read (from init when given, else the published PASTA layout)
    pre = infer_config(load_state_dict_file(init)) if init is not None else UNetConfig()

    labels, cases = read_fewshot_folder(cfg.data)
    classes = class_mapping(labels)
    splits = make_splits([c.id for c in cases], folds=cfg.folds, fold=cfg.fold, k=cfg.k, seed=cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    splits_path, classes_path = out / SPLITS_NAME, out / CLASSES_NAME
    classes_doc = {"format": "pasta-finetune-classes/1", "background": 0, "classes": classes,
                   "num_seg_classes": len(classes) + 1,
                   "note": "network output channel 'class' = annotated label value 'label_value'"}
    ckpt = out / "checkpoint_last.pt"
    if cfg.resume and ckpt.is_file():
        for path, now in ((splits_path, splits), (classes_path, classes_doc)):
            if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != now:
                raise TrainingError(f"{path} differs from this run's (the few-shot folder or --k/--fold/--folds/--seed "
                                    "changed since the checkpoint); use another --out or --no-resume")
    write_json_atomic(splits_path, splits)
    write_json_atomic(classes_path, classes_doc)
    write_json_atomic(out / "finetune_config.json",
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
                | {"init": str(init) if init is not None else None})

    value_to_class = {c["label_value"]: c["class"] for c in classes}
    by_id = {c.id: c for c in cases}
    prepared = out / PREPARED_DIR
    if prepared.exists():  # a fresh copy: cases of an earlier split must not stay in the training folder
        shutil.rmtree(prepared)
    for case_id in splits["train"]:
        prepare_case(by_id[case_id], value_to_class, prepared / "train", cfg.spacing_mm)
    val_dirs = [prepare_case(by_id[i], value_to_class, prepared / "validation", cfg.spacing_mm)
                for i in splits["validation"]] if cfg.evaluate else []

    normalization = choose_normalization(cfg, init, [by_id[i] for i in splits["train"]])
    write_json_atomic(out / "finetune_config.json", json.loads((out / "finetune_config.json").read_text(encoding="utf-8"))
                      | {"segmentation_normalization": normalization})
    s1 = Stage1Config(
        data=str(prepared / "train"), out=str(out), iterations=cfg.iterations, batch_size=cfg.batch_size,
        patch_size=tuple(cfg.patch_size), lr=cfg.lr, optimizer=cfg.optimizer, fg_fraction=cfg.fg_fraction,
        lesion_priority=0.0, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, device=cfg.device, amp=cfg.amp,
        num_classes=len(classes) + 1, base_channels=pre.base_channels, max_channels=pre.max_channels,
        num_stages=pre.num_stages, init=None if cfg.scratch else str(init), resume=cfg.resume, progress_lines=cfg.progress_lines,
        progress_bar=cfg.progress_bar, num_threads=cfg.num_threads, num_workers=cfg.num_workers,
        tensorboard=cfg.tensorboard, curves=cfg.curves, normalization=normalization,
        metadata={"kind": "finetune", "classes": classes},
    )
    result = FinetuneResult(0, out, None, classes_path, splits_path, out / "metrics.csv")
    tr = train_stage1(s1, callback=callback, stop=stop)
    result.iteration, result.final_model, result.stopped_early = tr.iteration, tr.final_model, tr.stopped_early
    if tr.final_model is None or not cfg.evaluate:
        return result

    from PASTALib.infer import load_model

    pm = load_model(tr.final_model, device=cfg.device)
    if cfg.progress_lines:
        progress_line(1.0, f"validating on {len(val_dirs)} held-out case(s)")
    rows = evaluate_cases(pm.network, val_dirs, classes, patch_size=cfg.patch_size, device=pm.device,
                          overlap=cfg.overlap, slf_values=pm.slf_values, normalize=pm.segmentation_normalization())
    result.validation = rows
    result.validation_csv = _write_rows(out / VALIDATION_NAME, rows)
    scores = [r["dice"] for r in rows if not math.isnan(r["dice"])]
    result.mean_dice = float(np.mean(scores)) if scores else None
    return result


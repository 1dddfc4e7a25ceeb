"""Whole-CT PASTA inference: canonical resampling → sliding window → labels on the input grid
→ lesion instances → attributes from the head → structured reports; and the files written."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from PASTALib.geometry import Grid, from_canonical, to_canonical
from PASTALib.infer.config import InferenceConfig, InferenceError, amp_dtype, resolve_device
from PASTALib.infer.lesions import (
    LESION_MAX,
    LESION_MIN,
    AnnotatedComponent,
    LesionFinding,
    build_lesion_report,
    classify_lesions,
    find_components,
    find_lesions,
)
from PASTALib.infer.sliding import segment_canonical
from PASTALib.errors import CheckpointError
from PASTALib.io.files import write_json_atomic, write_text_atomic
from PASTALib.labels import LesionType, Phase, label_name
from PASTALib.layout import LABELS_NAME, LESIONS_NAME, REPORTS_NAME, REPORTS_TEXT_NAME, RUN_NAME, SEG_NRRD_NAME
from PASTALib.capabilities import CheckpointCapabilities
from PASTALib.model.preprocess import SLF_VALUES, Normalization, SLFNormalization, normalization_from_dict
from PASTALib.weights import CLASSES_NAME, read_classes, weights_path

ProgressFn = Callable[[float, str], None]



@dataclass
class PastaModel:
    """A PASTA network ready for inference: on its device, in eval mode, with its SLF map.

    ``classes`` (a fine-tuned model, from the classes.json beside its checkpoint): output channel
    ``class`` → annotated ``label_value`` and ``name``; None: the channels are PASTA label values.
    """

    network: torch.nn.Module
    device: torch.device
    slf_values: tuple[float, ...] = SLF_VALUES
    checkpoint: Path | None = None
    classes: list[dict[str, Any]] | None = None
    #: what the checkpoint can do (PASTALib.capabilities); None for a network passed in directly
    capabilities: CheckpointCapabilities | None = None
    #: the network's compiled forms for the windows (OpenVINO), kept for the next CT (infer.openvino_runtime)
    runtime_cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def segmentation_normalization(self) -> Normalization:
        """The input map of the segmentation outputs: the checkpoint's (metadata), else the SLF map."""
        spec = self.capabilities.segmentation_normalization if self.capabilities is not None else None
        return normalization_from_dict(spec) if spec else SLFNormalization(tuple(self.slf_values))

    @property
    def divisor(self) -> int:
        return int(getattr(getattr(self.network, "config", None), "divisor", 32))

    @property
    def num_outputs(self) -> int:
        return int(getattr(getattr(self.network, "config", None), "num_seg_classes", 26))

    def channel_values(self) -> np.ndarray | None:
        """Lookup table output channel → label value written (None: identity, the PASTA numbering)."""
        if not self.classes:
            return None
        lut = np.zeros(self.num_outputs, np.uint8)
        for c in self.classes:
            lut[int(c["class"])] = int(c["label_value"])
        return lut

    @property
    def label_names(self) -> dict[int, str]:
        """Name of every label value the model writes: the annotated names of a fine-tuned model, else
        PASTA's (PASTALib.labels; "Label N" past 25 for a network trained with more classes)."""
        if self.classes:
            return {int(c["label_value"]): str(c["name"]) for c in self.classes}
        return {v: label_name(v) if v <= LESION_MAX else f"Label {v}" for v in range(1, self.num_outputs)}

    @property
    def annotated_names(self) -> dict[int, str]:
        """Annotated classes that are not PASTA lesion types: listed as components, not reported."""
        if not self.classes:
            return {}
        return {v: n for v, n in self.label_names.items() if not LESION_MIN <= v <= LESION_MAX}


def _checkpoint_slf_values(path: Path) -> tuple[float, ...] | None:
    """SLF values from the training run's config.json beside the checkpoint, if there is one."""
    cfg = path.parent / "config.json"
    try:
        values = json.loads(cfg.read_text()).get("slf_values") if cfg.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return tuple(float(v) for v in values) if values else None


def load_model(checkpoint: str | os.PathLike | None = None, *, device: str = "auto",
               slf_values: tuple[float, ...] | None = None, allow_pickle: bool = False) -> PastaModel:
    """Build the network from a weights file (layout read from it) and load it strictly.

    ``checkpoint`` defaults to :func:`PASTALib.model.default_weights_path` (``PASTA_final.pth``); a
    missing file raises MissingWeightsError saying where to download it. Also accepts this
    library's training outputs (``model_final.pth``, ``checkpoint_last.pt``). A ``classes.json``
    beside the file (``pasta finetune``) maps the output channels to the annotated label values;
    CheckpointError when its class count does not fit the network's output channels.
    """
    from PASTALib.capabilities import read_metadata, state_dict_capabilities
    from PASTALib.model.checkpoint import build_model_from_state_dict, extract_state_dict, read_checkpoint

    path = weights_path(checkpoint)
    dev = resolve_device(device)
    obj = read_checkpoint(path, allow_pickle=allow_pickle)
    try:
        sd = extract_state_dict(obj)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    metadata = read_metadata(obj)
    network, _ = build_model_from_state_dict(sd, path=path, device=dev)
    del obj, sd
    network.eval()
    slf = tuple(slf_values) if slf_values else (_checkpoint_slf_values(path) or SLF_VALUES)
    model = PastaModel(network, dev, slf, path)
    classes_path = path.parent / CLASSES_NAME
    classes = None
    if classes_path.is_file():
        classes = read_classes(classes_path)
        if len(classes) + 1 != model.num_outputs:
            raise CheckpointError(
                f"{classes_path} lists {len(classes)} class(es) + background = {len(classes) + 1} output channels, but "
                f"{path} has {model.num_outputs} output channels: they come from different runs. Keep each "
                f"model_final.pth with the {CLASSES_NAME} that `pasta finetune` wrote beside it (or remove "
                f"{CLASSES_NAME} for a model that predicts PASTA's label values)")
        model.classes = classes
    elif metadata is not None and metadata.get("classes"):
        model.classes = list(metadata["classes"])
    model.capabilities = state_dict_capabilities(network.state_dict(), metadata, model.classes, path)
    return model


def as_pasta_model(model: PastaModel | torch.nn.Module, cfg: InferenceConfig) -> PastaModel:
    if isinstance(model, PastaModel):
        if cfg.device not in ("auto", str(model.device)) and resolve_device(cfg.device) != model.device:
            model.network.to(resolve_device(cfg.device))
            model.device = resolve_device(cfg.device)
        if cfg.slf_values:
            model.slf_values = tuple(cfg.slf_values)
        return model
    device = resolve_device(cfg.device)
    model.to(device).eval()
    return PastaModel(model, device, tuple(cfg.slf_values or SLF_VALUES))


@dataclass
class SegmentationResult:
    """Labels on the input grid (organs 1-10, lesions 11-25), lesions and their reports."""

    labels: sitk.Image
    instances: sitk.Image  # uint16 lesion instance map on the input grid (LesionFinding.index, 0 elsewhere)
    lesions: list[LesionFinding]
    phase: Phase
    phase_source: str
    canonical_grid: Grid
    config: InferenceConfig
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: components of a fine-tuned model's annotated classes outside 11-25 (lesions.json, no report)
    components: list[AnnotatedComponent] = field(default_factory=list)
    #: name of every label value the model writes (run.json "label_names", segment names)
    label_names: dict[int, str] = field(default_factory=dict)

    @property
    def reports(self) -> list:
        return [f.report for f in self.lesions if f.report is not None]

    def reports_json(self) -> list[dict[str, Any]]:
        """Schema-valid report dicts (validated), one per lesion, largest first."""
        return [json.loads(r.to_json()) for r in self.reports]

    def report_lines(self) -> list[str]:
        return [f"Lesion {f.index}: {f.report.to_text()}{f.type_note}" for f in self.lesions if f.report is not None]


def _dicom_phase(ct: sitk.Image) -> Phase | None:
    if ct.HasMetaDataKey("0018|0010"):  # Contrast/Bolus Agent: present and not empty → contrast given
        agent = ct.GetMetaData("0018|0010").strip().upper()
        if agent and agent not in ("NONE", "NO", "N/A"):
            return Phase.ENHANCED
    return None


def decide_phase(cfg: InferenceConfig, ct: sitk.Image, labels: sitk.Image, organ_masks: Any = None,
                 lesion_type: LesionType = LesionType.LIVER_TUMOR) -> tuple[Phase, str]:
    """Enhancement wording: the setting, else DICOM Contrast/Bolus Agent, else aorta/IVC HU (with
    organ masks), else kidney/liver HU in the predicted organs, else the lesion type's template phase."""
    if cfg.phase != "auto":
        return (Phase.PLAIN if cfg.phase == "plain" else Phase.ENHANCED), "setting"
    tagged = _dicom_phase(ct)
    if tagged is not None:
        return tagged, "DICOM Contrast/Bolus Agent tag"
    from PASTALib.anatomy import estimate_phase

    estimate = estimate_phase(ct, masks=organ_masks, labels=labels)
    if estimate is not None:
        return estimate
    return lesion_type.default_phase, f"default phase of {lesion_type.slug} (no vessel, kidney or liver HU to measure)"


def _organ_map_on(ct: sitk.Image, organ_masks: Any) -> sitk.Image:
    """PASTA organ values 1-10 of ``organ_masks`` on the CT's grid."""
    from PASTALib.anatomy import OrganMasks

    if organ_masks.label_map.GetSize() != ct.GetSize():
        organ_masks = OrganMasks.from_label_map(organ_masks.label_map, organ_masks.names, reference=ct,
                                                source=organ_masks.source)
    organ_map = organ_masks.pasta_label_map(include_lesions=False)
    organ_map.CopyInformation(ct)
    return organ_map


def segment_ct(ct: sitk.Image | str | os.PathLike, model: PastaModel | torch.nn.Module,
               cfg: InferenceConfig | None = None, *, organ_masks: Any = None,
               progress: ProgressFn | None = None) -> SegmentationResult:
    """Segment a CT with PASTA and report every lesion.

    ``ct``: image (HU) or a path (NIfTI/NRRD/MHA/DICOM folder). ``organ_masks``: optional
    :class:`PASTALib.anatomy.OrganMasks` (e.g. TotalSegmentator) used for the report location and
    phase instead of the predicted organs. Returns labels on the input grid plus lesions/reports.
    """
    cfg = cfg or InferenceConfig()
    report = progress or (lambda f, m: None)
    if not isinstance(ct, sitk.Image):
        from PASTALib.io import read_ct

        ct = read_ct(ct)
    pm = as_pasta_model(model, cfg)
    if pm.capabilities is not None:  # e.g. PASTA_final.pth: an encoder + attribute head, no trained segmentation
        pm.capabilities.require_segmentation()
    cfg.validate(pm.divisor)
    # before any work (a missing OpenVINO fails here); run.json then says which path and runtime ran
    cfg = cfg.resolved(pm.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    report(0.02, "resampling to canonical 1 mm LPS")
    t = time.perf_counter()
    zoomed = None
    if cfg.compat == "authors":
        from PASTALib.infer.compat import zoom_to_canonical

        zoomed = zoom_to_canonical(ct, cfg.spacing_mm)
    canonical, mapping = zoomed or to_canonical(ct, is_label=False, spacing=cfg.spacing_mm)
    hu = sitk.GetArrayFromImage(canonical)  # (z, y, x) float32 HU
    timings["to_canonical"] = time.perf_counter() - t

    t = time.perf_counter()
    organ_labels = None
    if cfg.speed == "fast" and organ_masks is not None:  # the user's organ map bounds the windows: no coarse pass
        organ_c, _ = to_canonical(_organ_map_on(ct, organ_masks), mapping, is_label=True)
        organ_labels = sitk.GetArrayFromImage(organ_c)
    lab_c, box = segment_canonical(pm.network, hu, cfg, pm.device, slf_values=pm.slf_values, progress=report,
                                   normalize=pm.segmentation_normalization(),
                                   fraction_range=(0.05, 0.85), organ_labels=organ_labels,
                                   runtime_cache=pm.runtime_cache)
    lut = pm.channel_values()
    if lut is not None:  # fine-tuned: output channel c → the annotated label value of class c
        lab_c = lut[lab_c]
    timings["sliding_window"] = time.perf_counter() - t

    report(0.86, "mapping labels to the input grid")
    t = time.perf_counter()
    lab_img = sitk.GetImageFromArray(lab_c)
    lab_img.CopyInformation(canonical)
    labels = from_canonical(lab_img, mapping, is_label=True, pixel_type=sitk.sitkUInt8)
    timings["from_canonical"] = time.perf_counter() - t

    result = report_lesions(ct, labels, pm, cfg, organ_masks=organ_masks, progress=report)
    result.timings = {**timings, **result.timings, "total": time.perf_counter() - t0}
    result.canonical_grid = mapping.canonical
    if not mapping.is_exact_for_labels:
        result.warnings.append(
            "the input grid is not a whole-millimetre LPS grid: labels were predicted on the canonical grid and "
            "mapped back with nearest neighbour, so boundaries are quantised to the canonical spacing")
    return result


def report_lesions(ct: sitk.Image, labels: sitk.Image, model: PastaModel | torch.nn.Module,
                   cfg: InferenceConfig | None = None, *, organ_masks: Any = None,
                   progress: ProgressFn | None = None) -> SegmentationResult:
    """Lesion instances, attributes and structured reports for a label map on the CT's grid.

    Used by :func:`segment_ct` on the prediction, and on its own for an edited segmentation
    (e.g. corrected in Slicer's Segment Editor): reports are re-measured from the labels given.
    """
    cfg = cfg or InferenceConfig()
    say = progress or (lambda f, m: None)
    pm = as_pasta_model(model, cfg)
    if labels.GetSize() != ct.GetSize():
        raise InferenceError(f"label map size {labels.GetSize()} differs from the CT's {ct.GetSize()}; resample it onto the CT")
    labels = sitk.Cast(labels, sitk.sitkUInt8)
    labels.CopyInformation(ct)
    timings: dict[str, float] = {}
    say(0.88, "finding lesions")
    t = time.perf_counter()
    organ_labels = None if organ_masks is None else _organ_map_on(ct, organ_masks)
    labels, instances, lesions = find_lesions(ct, labels, min_volume_mm3=cfg.min_lesion_volume_mm3,
                                              organ_shell_mm=cfg.organ_shell_mm, organ_labels=organ_labels)
    labels, components = find_components(ct, labels, pm.annotated_names, min_volume_mm3=cfg.min_lesion_volume_mm3,
                                         first_index=len(lesions) + 1)
    timings["lesions"] = time.perf_counter() - t
    phase, phase_source = decide_phase(cfg, ct, labels, organ_masks,
                                       lesions[0].lesion_type if lesions else LesionType.LIVER_TUMOR)
    if lesions:
        from PASTALib.anatomy import OrganMasks

        if organ_masks is not None:
            side_masks = organ_masks
        else:  # annotated values past 25 (a fine-tuned model's own classes) are no PASTA organ: left out
            pasta_only = sitk.Mask(labels, sitk.BinaryThreshold(labels, 0, LESION_MAX, 1, 0))
            side_masks = OrganMasks.from_pasta_label_map(pasta_only)
        for f in lesions:
            f.location = side_masks.location_name(f.organ, f.measurement["centre_mm"])
        say(0.92, f"classifying attributes of {len(lesions)} lesion(s)")
        t = time.perf_counter()
        preds = classify_lesions(pm.network, ct, [f.measurement["centre_mm"] for f in lesions], device=pm.device,
                                 crop_size=cfg.crop_size, spacing=cfg.spacing_mm, slf_values=pm.slf_values,
                                 batch_size=cfg.batch_size, dtype=amp_dtype(pm.device, cfg.amp))
        for f, p in zip(lesions, preds):
            f.attributes = p
            f.report = build_lesion_report(f, phase)
        timings["attributes"] = time.perf_counter() - t
    say(0.97, f"done: {len(lesions)} lesion(s)" + (f", {len(components)} annotated component(s)" if components else ""))
    from PASTALib.geometry import canonical_mapping

    return SegmentationResult(labels, instances, lesions, phase, phase_source,
                              canonical_mapping(ct, cfg.spacing_mm).canonical, cfg, timings, [],
                              components=components, label_names=pm.label_names)


# --- files ------------------------------------------------------------------------------------

def is_dicom_input(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.is_dir():
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def write_outputs(result: SegmentationResult, out_dir: str | os.PathLike, *, source: str | os.PathLike | None = None,
                  checkpoint: str | os.PathLike | None = None, dicom: bool | None = None) -> dict[str, Path]:
    """Write labels.nii.gz, labels.seg.nrrd, reports.json, reports.txt, lesions.json, run.json and — for a
    DICOM source — seg.dcm (DICOM SEG) and sr.dcm (TID 1500 measurement report). Each file is atomic.

    lesions.json lists the lesions (``"kind": "lesion"``, with report details) and then a fine-tuned
    model's annotated components (``"kind": "annotated"``); run.json ``label_names`` names every label
    value the model writes (viewers name segments from it)."""
    from PASTALib.io import write_image, write_segmentation

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = result.label_names or {v: label_name(v) for v in range(1, LESION_MAX + 1)}  # a result built by hand
    files = {
        "labels": write_image(result.labels, out / LABELS_NAME),
        "labels_seg_nrrd": write_segmentation(result.labels, out / SEG_NRRD_NAME, names=names),
        "reports": write_json_atomic(out / REPORTS_NAME, result.reports_json()),
        "reports_text": write_text_atomic(out / REPORTS_TEXT_NAME, "".join(line + "\n" for line in result.report_lines())),
        "lesions": write_json_atomic(out / LESIONS_NAME, [f.details() for f in [*result.lesions, *result.components]]),
    }
    warn = list(result.warnings)
    if dicom is None:
        dicom = source is not None and is_dicom_input(source)
    if dicom:
        if source is None:
            raise InferenceError("DICOM SEG/SR export needs the source DICOM series folder")
        from PASTALib.dicom import export_dicom

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dicom_files = export_dicom(result, source, out)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            warn.append(str(w.message))
        files.update(dicom_files)
    run = {
        "source": str(source) if source is not None else None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "config": result.config.to_dict(),
        "phase": result.phase.value, "phase_source": result.phase_source,
        "lesions": len(result.lesions),
        "annotated_components": len(result.components),
        "label_names": {str(v): n for v, n in sorted(names.items())},
        "labels_present": sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(result.labels)) if v),
        "canonical_grid": {"size": list(result.canonical_grid.size), "origin": list(result.canonical_grid.origin)},
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "warnings": warn,
        "files": sorted(p.name for p in files.values()),
    }
    files["run"] = write_json_atomic(out / RUN_NAME, run)
    return files


def segment_case(ct_path: str | os.PathLike, out_dir: str | os.PathLike, model: PastaModel | torch.nn.Module,
                 cfg: InferenceConfig | None = None, *, organ_masks: Any = None,
                 progress: ProgressFn | None = None) -> tuple[SegmentationResult, dict[str, Path]]:
    """Read a CT (file or DICOM folder), segment it and write every output file into ``out_dir``."""
    from PASTALib.io import read_ct

    ct = read_ct(ct_path)
    result = segment_ct(ct, model, cfg, organ_masks=organ_masks, progress=progress)
    checkpoint = model.checkpoint if isinstance(model, PastaModel) else None
    files = write_outputs(result, out_dir, source=ct_path, checkpoint=checkpoint)
    if progress:
        progress(1.0, f"wrote {out_dir}")
    return result, files

"""SegmentationReportLogic: MRML side of PASTA segmentation, report cards and few-shot data.

Whole-CT inference and fine-tuning are long jobs: the widget runs them as a subprocess of the
library CLI (:func:`segment_command`, :func:`finetune_command`, run by
``PASTASlicerLib.jobs.BatchJob``: ``PROGRESS`` lines, Cancel kills the process tree). Everything
else happens here on nodes of the injected scene:

* :meth:`SegmentationReportLogic.import_segment_outputs` turns a ``pasta segment`` output folder
  into a segmentation node (one segment per lesion instance, "Lesion 1: Liver tumor", plus one per
  organ / other label) and a report-card text node referenced from it (saved with the scene);
* report cards are edited through :mod:`PASTALogicLib.reports` and exported as JSON or — for a CT
  that came from DICOM — as DICOM SEG + SR through ``PASTALib.dicom`` with the edited values;
* annotated cases are exported for ``pasta finetune``; :func:`resolve_checkpoint` picks the
  weights (public PASTA_final.pth, a chosen file, or the fine-tuned model) before a job starts.

Nothing here imports Qt, ``slicer.app`` or torch at import time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from PASTALib.errors import MissingWeightsError, PastaError  # light: PASTALib's package root imports nothing heavy
from PASTALib.io.files import write_json_atomic
from PASTASlicerLib import mrml
from PASTASlicerLib.jobs import cli_command, parse_progress  # noqa: F401  (one CLI runner for both modules)
from PASTASlicerLib.mrml import MRMLLogicBase

from .reports import ReportCards

#: Name of the manifest the fine-tuning command reads in a few-shot training folder.
FEWSHOT_MANIFEST = "pasta_fewshot.json"
#: Where ``pasta finetune --data F`` writes by default, relative to F.
FINETUNE_DIR = "finetune"
FINETUNED_MODEL = "model_final.pth"
FINETUNED_CLASSES = "classes.json"

#: Node reference role from a PASTA segmentation to its report-card text node.
REPORTS_REFERENCE_ROLE = "PASTAReports"
#: Volume attribute: the DICOM series (folder or one file) a CT was read from.
DICOM_SOURCE_ATTRIBUTE = "PASTA.DicomSource"
#: Segmentation attributes: the output folder imported, and the CT it belongs to.
OUTPUT_FOLDER_ATTRIBUTE = "PASTA.SegmentOutput"
SOURCE_VOLUME_ATTRIBUTE = "PASTA.SourceVolume"
#: Segment tags: the label value a segment stands for, and the lesion index (lesions.json).
LABEL_VALUE_TAG = "PASTA.LabelValue"
LESION_INDEX_TAG = "PASTA.LesionIndex"

LESION_VALUES = range(11, 26)


class SegmentImportError(PastaError, ValueError):
    """A ``pasta segment`` output folder cannot be imported (missing, corrupt or inconsistent files)."""


# --- CLI commands (run by PASTASlicerLib.jobs.BatchJob) --------------------------------------------


def segment_command(ct_path: str | os.PathLike, out_dir: str | os.PathLike, *, checkpoint: str | os.PathLike,
                    device: str = "auto", extra: Sequence[str] = (), python: str | None = None) -> list[str]:
    """``pasta segment --ct CT --out DIR --checkpoint W --progress-lines`` (no tqdm bar: the GUI parses lines)."""
    return cli_command("segment", "--ct", os.fspath(ct_path), "--out", os.fspath(out_dir),
                       "--checkpoint", os.fspath(checkpoint), "--device", device, "--progress-lines",
                       "--no-progress-bar", *extra, python=python)


def finetune_command(training_folder: str | os.PathLike, *, init: str | os.PathLike | None = None,
                     device: str = "auto", extra: Sequence[str] = (), python: str | None = None) -> list[str]:
    """``pasta finetune --data F --progress-lines`` (writes F/finetune/model_final.pth; re-running resumes)."""
    args = ["finetune", "--data", os.fspath(training_folder), "--device", device, "--progress-lines",
            "--no-progress-bar"]
    if init:
        args += ["--init", os.fspath(init)]
    return cli_command(*args, *extra, python=python)


def weights_download_command(*, url: str | None = None, python: str | None = None) -> list[str]:
    """``pasta weights download --progress-lines`` (the panel's Download weights button): the authors'
    PASTA_final.pth into the weights folder, checked and recorded; a partial download resumes."""
    return cli_command("weights", "download", "--progress-lines", *(["--url", url] if url else []), python=python)


def public_weights_installed() -> bool:
    """Whether PASTA_final.pth is at its default place (``$PASTA_WEIGHTS_DIR`` or ``~/.pasta/weights``)."""
    from PASTALib.weights import default_weights_path

    return default_weights_path().is_file()


# --- checkpoints ---------------------------------------------------------------------------------


def fine_tuned_model_path(training_folder: str | os.PathLike) -> Path:
    """``TRAINING_FOLDER/finetune/model_final.pth``: where ``pasta finetune --data F`` writes the model."""
    return Path(training_folder).expanduser() / FINETUNE_DIR / FINETUNED_MODEL


def fine_tuned_classes(training_folder: str | os.PathLike) -> list[str]:
    """Class names of the fine-tuned model (``classes.json`` beside it), in output-channel order."""
    path = fine_tuned_model_path(training_folder).with_name(FINETUNED_CLASSES)
    if not path.is_file():
        return []
    from PASTALib.weights import read_classes

    return [c["name"] for c in read_classes(path)]


def resolve_checkpoint(path: str | os.PathLike | None, use_fine_tuned: bool = False,
                       training_folder: str | os.PathLike | None = None, *, for_segmentation: bool = False) -> Path:
    """The weights file a segmentation job should use, checked before any subprocess starts.

    ``use_fine_tuned``: ``TRAINING_FOLDER/finetune/model_final.pth`` (run Fine-tune first);
    else ``path`` when given; else the public ``PASTA_final.pth`` at its default place
    (``$PASTA_WEIGHTS_DIR`` or ``~/.pasta/weights``). Missing weights raise PASTALib's
    ``MissingWeightsError`` whose message says where to get them. ``for_segmentation``: also check that the
    file can segment (:func:`segmentation_capabilities`; PASTA_final.pth cannot: fine-tune it first).
    """
    if use_fine_tuned:
        if not training_folder:
            raise MissingWeightsError("Use fine-tuned model is ticked but no training folder is set: choose the "
                                      "few-shot training folder that Fine-tune wrote to.")
        model = fine_tuned_model_path(training_folder)
        if not model.is_file():
            raise MissingWeightsError(f"No fine-tuned model at {model}: mark training cases and run Fine-tune "
                                      f"first (`pasta finetune --data {Path(training_folder)}` writes it there).")
        if for_segmentation:
            segmentation_capabilities(model)
        return model
    from PASTALib.weights import require_weights

    path = require_weights(path)
    if for_segmentation:
        segmentation_capabilities(path)
    return path


def segmentation_capabilities(path: str | os.PathLike):
    """What the checkpoint can do (PASTALib.capabilities, torch-free: shapes only), raising PASTALib's
    CheckpointError with the way forward (few-shot fine-tuning) when it cannot segment - e.g. the
    public PASTA_final.pth, an encoder + attribute head."""
    from PASTALib.capabilities import checkpoint_capabilities

    caps = checkpoint_capabilities(path)
    caps.require_segmentation()
    return caps


# --- the logic ----------------------------------------------------------------------------------


@dataclass
class SegmentImport:
    """What :meth:`SegmentationReportLogic.import_segment_outputs` added to the scene."""

    segmentation_node: Any
    report_node: Any
    cards: ReportCards
    lesion_segment_ids: dict[int, str] = field(default_factory=dict)  # lesion index -> segment id
    label_segment_ids: dict[int, str] = field(default_factory=dict)  # organ / other label value -> segment id

    @property
    def nodes(self) -> list:
        return [self.segmentation_node, self.report_node]


class SegmentationReportLogic(MRMLLogicBase):
    """Load CTs, import PASTA outputs as segments + report cards, export reports, few-shot cases."""

    # -- volumes ------------------------------------------------------------------------------

    def load_ct(self, path: str | os.PathLike, name: str | None = None):
        """Load a CT file, or a DICOM series (folder or one of its files) through PASTALib.io.

        A DICOM CT records its source in the ``PASTA.DicomSource`` attribute, for SEG/SR export.
        """
        from PASTALib.io.image import is_dicom_file

        path = Path(path)
        if not (path.is_dir() or (path.is_file() and is_dicom_file(path))):
            return mrml.load_volume(self.context, path, name)
        from PASTALib.io import read_ct

        image = read_ct(path)
        node = mrml.sitk_to_volume(self.context, image, name or (path.name if path.is_dir() else path.parent.name))
        node.SetAttribute(DICOM_SOURCE_ATTRIBUTE, str(path.resolve()))
        return node

    @staticmethod
    def dicom_source_of(ct_node) -> Path | None:
        """The DICOM series a CT node came from: ``PASTA.DicomSource``, or (Slicer's DICOM module) the
        file of its first ``DICOM.instanceUIDs`` entry in ``slicer.dicomDatabase``; None otherwise."""
        if ct_node is None:
            return None
        source = ct_node.GetAttribute(DICOM_SOURCE_ATTRIBUTE)
        if source and Path(source).exists():
            return Path(source)
        uids = (ct_node.GetAttribute("DICOM.instanceUIDs") or "").split()
        import slicer

        database = getattr(slicer, "dicomDatabase", None)
        if uids and database is not None:
            for uid in uids:
                found = database.fileForInstance(uid)
                if found and Path(found).is_file():
                    return Path(found)
        return None

    def import_prediction(self, label_map, ct_node, names: Mapping[int, str],
                          colors: Mapping[int, Sequence[float]] | None = None,
                          name: str | None = None):
        """Segmentation node from a label map (file path, SimpleITK or numpy), one segment per value in ``names``."""
        if isinstance(label_map, (str, os.PathLike)):
            from PASTALib.io import read_label

            label_map = read_label(label_map)
        return mrml.segmentation_from_label_map(self.context, label_map, ct_node, names, colors,
                                                name or f"{ct_node.GetName()} PASTA")

    # -- pasta segment outputs -> segments + report cards ------------------------------------------

    def import_segment_outputs(self, out_dir: str | os.PathLike, ct_node, name: str | None = None) -> SegmentImport:
        """Import a ``pasta segment`` output folder for ``ct_node`` (the CT it segmented).

        One segment per lesion instance of lesions.json ("Lesion 1: Liver tumor", its voxels exactly
        the instance's in labels.nii.gz, SNOMED CT terminology with the organ as region) and one per
        other label value present (organs, "Liver"); names come from run.json ``label_names`` when
        present, else PASTA's label names. The reports become report cards in a text node referenced
        from the segmentation (role ``PASTAReports``). On any error nothing is left in the scene.
        """
        out = Path(out_dir)
        labels, reports, lesions, names = self._read_outputs(out, ct_node)
        array = labels  # (k, j, i) uint16 on the CT grid
        instances = self._lesion_instances(array, lesions, out)

        # Segment values: other labels keep theirs, lesion instance i gets base + i.
        lesion_values = set(LESION_VALUES) | {int(les["label_value"]) for les in lesions}
        present = [int(v) for v in np.unique(array) if v]
        other = [v for v in present if v not in lesion_values]
        base = max([*present, 0]) + 1
        seg_values = np.zeros(array.shape, np.uint16 if base + len(lesions) < 65536 else np.uint32)
        seg_names: dict[int, str] = {}
        colors: dict[int, Sequence[float]] = {}
        # Terminology and colour follow what a PASTA value stands for ("Liver tumor"), also when
        # run.json renames it; other values use their name.
        coded: dict[int, str] = {}
        for v in other:
            seg_values[array == v] = v
            seg_names[v] = names.get(v, f"Label {v}")
            coded[v] = _pasta_name(v) or seg_names[v]
        for les in lesions:
            index, value = int(les["index"]), int(les["label_value"])
            seg_values[instances == index] = base + index
            seg_names[base + index] = f"Lesion {index}: {names.get(value, f'Label {value}')}"
            coded[base + index] = _pasta_name(value) or names.get(value, "")
        for v, coded_name in coded.items():
            color = mrml.color_for(coded_name)
            if color is not None:
                colors[v] = color
        before = _node_ids(self.context.scene)
        try:
            if not seg_names:
                raise SegmentImportError(f"{out / 'labels.nii.gz'} is empty: PASTA found no organ and no lesion. "
                                         "Nothing to import.")
            segmentation = mrml.segmentation_from_label_map(
                self.context, seg_values, ct_node, seg_names, colors, name or f"{ct_node.GetName()} PASTA")
            seg = segmentation.GetSegmentation()
            label_ids: dict[int, str] = {}
            lesion_ids: dict[int, str] = {}
            for value, segment_name in seg_names.items():
                segment_id = seg.GetSegmentIdBySegmentName(segment_name)
                if not segment_id:
                    raise SegmentImportError(f"segment {segment_name!r} was not created")
                segment = seg.GetSegment(segment_id)
                if value > base:
                    index = value - base
                    lesion_ids[index] = segment_id
                    segment.SetTag(LESION_INDEX_TAG, str(index))
                    segment.SetTag(LABEL_VALUE_TAG, str(int(next(les["label_value"] for les in lesions
                                                                 if int(les["index"]) == index))))
                else:
                    label_ids[value] = segment_id
                    segment.SetTag(LABEL_VALUE_TAG, str(value))
                # "Lesion 1: Liver tumor" is coded as its type (Neoplasm, region Liver), not by its name.
                term = mrml.terminology_string(coded[value])
                if term:
                    segment.SetTerminology(term)
            cards = ReportCards.from_outputs(reports, lesions, [lesion_ids[int(les["index"])] for les in lesions],
                                             source=str(out.resolve()))
            report_node = self.context.scene.AddNewNodeByClass("vtkMRMLTextNode", f"{segmentation.GetName()} reports")
            report_node.SetText(cards.to_json())
            segmentation.SetNodeReferenceID(REPORTS_REFERENCE_ROLE, report_node.GetID())
            segmentation.SetAttribute(OUTPUT_FOLDER_ATTRIBUTE, str(out.resolve()))
            segmentation.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, ct_node.GetID() or "")
        except BaseException:
            self._remove_new_nodes(before)
            raise
        return SegmentImport(segmentation, report_node, cards, lesion_ids, label_ids)

    def _read_outputs(self, out: Path, ct_node) -> tuple[np.ndarray, list, list, dict[int, str]]:
        """labels (k, j, i) on the CT grid, reports, lesions, {label value: name}; clear errors."""
        import SimpleITK as sitk

        from PASTALib.errors import PastaError
        from PASTALib.io import read_label
        from PASTALib.labels import label_name
        from PASTALib.layout import LABELS_NAME, LESIONS_NAME, REPORTS_NAME, RUN_NAME

        if not out.is_dir():
            raise SegmentImportError(f"PASTA output folder not found: {out}. Run `pasta segment --out {out}` first.")
        label_path = out / LABELS_NAME
        if not label_path.is_file():
            raise SegmentImportError(f"{label_path} is missing: {out} is not a complete `pasta segment` output; "
                                     "run the segmentation again.")
        try:
            labels = read_label(label_path)
        except PastaError as exc:
            raise SegmentImportError(f"{exc} Run the segmentation again.") from None
        docs = {}
        for file, default in ((REPORTS_NAME, None), (LESIONS_NAME, None), (RUN_NAME, {})):
            path = out / file
            if not path.is_file():
                if default is None:
                    raise SegmentImportError(f"{path} is missing: run the segmentation again.")
                docs[file] = default
                continue
            try:
                docs[file] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SegmentImportError(f"{path} is not valid JSON ({exc}); run the segmentation again.") from None
        reports, lesions, run = docs[REPORTS_NAME], docs[LESIONS_NAME], docs[RUN_NAME]
        if isinstance(lesions, list):  # a fine-tuned model's other classes ("kind": "annotated") have no report
            lesions = [e for e in lesions if isinstance(e, dict) and e.get("kind", "lesion") == "lesion"]
        if not isinstance(reports, list) or not isinstance(lesions, list) or len(reports) != len(lesions):
            raise SegmentImportError(f"{out}: reports.json and lesions.json must list the same lesions "
                                     f"({len(reports)} vs {len(lesions)}); run the segmentation again.")
        for rep, les in zip(reports, lesions):
            if int(rep.get("label_value", -1)) != int(les.get("label_value", -2)):
                raise SegmentImportError(f"{out}: report and lesion {les.get('index')} disagree on the lesion type; "
                                         "run the segmentation again.")

        ct = mrml.volume_to_sitk(ct_node)
        same = (labels.GetSize() == ct.GetSize()
                and np.allclose(labels.GetSpacing(), ct.GetSpacing(), atol=1e-4)
                and np.allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-3)
                and np.allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-5))
        if not same:
            raise SegmentImportError(
                f"{label_path} is not on the grid of CT '{ct_node.GetName()}' (size {labels.GetSize()} vs "
                f"{ct.GetSize()}): import the outputs of this CT, or pick the CT that was segmented.")
        names: dict[int, str] = {}
        for v in (int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v):
            try:
                names[v] = label_name(v)
            except ValueError:
                names[v] = f"Label {v}"
        for key, value in (run.get("label_names") or {}).items():  # fine-tuned models name their own classes
            names[int(key)] = str(value)
        return sitk.GetArrayFromImage(labels), reports, lesions, names

    @staticmethod
    def _lesion_instances(array: np.ndarray, lesions: Sequence[Mapping[str, Any]], out: Path) -> np.ndarray:
        """Instance map (lesion index per voxel) matching lesions.json.

        ``pasta segment`` numbers the 26-connected lesion components (each relabelled to one type)
        largest first; the components of the written labels are those instances, identified here
        by their bounding box and voxel count from lesions.json (an inconsistent folder is an error).
        """
        from scipy import ndimage

        values = sorted({int(les["label_value"]) for les in lesions} | set(LESION_VALUES))
        comp, _ = ndimage.label(np.isin(array, values), structure=np.ones((3, 3, 3), bool))
        boxes = ndimage.find_objects(comp)
        by_box = {tuple((s.start, s.stop) for s in sl): i for i, sl in enumerate(boxes, start=1) if sl is not None}
        instances = np.zeros(array.shape, np.uint16)
        for les in lesions:
            key = tuple(tuple(int(v) for v in b) for b in les["box_zyx"])
            component = by_box.pop(key, None)
            mask = comp == component if component is not None else None
            if mask is None or int(mask.sum()) != int(les["voxels"]):
                raise SegmentImportError(
                    f"{out}: lesion {les['index']} of lesions.json is not a component of labels.nii.gz "
                    "(the files come from different runs?); run the segmentation again.")
            instances[mask] = int(les["index"])
        if by_box:
            raise SegmentImportError(f"{out}: labels.nii.gz has {len(by_box)} lesion component(s) that lesions.json "
                                     "does not list; run the segmentation again.")
        return instances

    def _remove_new_nodes(self, before: set[str]) -> None:
        for node_id in sorted(_node_ids(self.context.scene) - before, reverse=True):
            node = self.context.scene.GetNodeByID(node_id)
            if node is not None:
                self.context.scene.RemoveNode(node)

    # -- report cards on the scene ------------------------------------------------------------------

    @staticmethod
    def report_node_of(segmentation_node):
        return segmentation_node.GetNodeReference(REPORTS_REFERENCE_ROLE) if segmentation_node is not None else None

    def report_cards(self, segmentation_node) -> ReportCards:
        """The report cards stored with a PASTA segmentation (raises when it has none)."""
        node = self.report_node_of(segmentation_node)
        if node is None:
            raise SegmentImportError(f"Segmentation '{segmentation_node.GetName()}' has no PASTA reports; "
                                     "segment the CT with PASTA first.")
        return ReportCards.from_json(node.GetText())

    def store_report_cards(self, segmentation_node, cards: ReportCards) -> None:
        """Write (edited) cards back to the segmentation's report node, so they persist with the scene."""
        node = self.report_node_of(segmentation_node)
        if node is None:
            raise SegmentImportError(f"Segmentation '{segmentation_node.GetName()}' has no PASTA reports node.")
        node.SetText(cards.to_json())

    def edit_report(self, segmentation_node, lesion_index: int, key: str, value: str) -> str:
        """Validate and store one edit; returns the stored wording (ReportEditError on a bad value)."""
        cards = self.report_cards(segmentation_node)
        stored = cards.card(lesion_index).set(key, value)
        self.store_report_cards(segmentation_node, cards)
        return stored

    def export_reports_json(self, segmentation_node, path: str | os.PathLike) -> Path:
        """The (edited) reports as JSON in reports.json's format, validated, written atomically."""
        return self.report_cards(segmentation_node).save_json(path)

    # -- DICOM SEG + SR with the edited reports -------------------------------------------------------

    def export_dicom(self, segmentation_node, ct_node, out_dir: str | os.PathLike) -> dict[str, Path]:
        """DICOM SEG (organ + lesion segments as they are now) and TID 1500 SR (the edited reports)
        referencing the CT's source series, through ``PASTALib.dicom.export_dicom``.

        Needs a CT read from DICOM (:meth:`dicom_source_of`). A lesion segment edited after the
        segmentation no longer matches its report's measurements: that is an error (re-segment).
        """
        labels, instances, lesions, source = self.dicom_export_inputs(segmentation_node, ct_node)
        return write_dicom_export(labels, instances, lesions, source, out_dir)

    def dicom_export_inputs(self, segmentation_node, ct_node):
        """``(labels, instances, lesions, source)`` for :func:`write_dicom_export`: the label and
        lesion-instance images on the CT grid, one ``{index, report, details}`` per report card and
        the DICOM source series. Reads no DICOM (on Slicer 5.10 the export itself runs in
        ``PASTALogicLib.dicom_export_job``, a subprocess with pydicom 3)."""
        import SimpleITK as sitk

        from PASTALib.dicom import DicomExportError

        source = self.dicom_source_of(ct_node)
        if source is None:
            raise DicomExportError(
                f"CT '{ct_node.GetName()}' was not loaded from DICOM, so there is no series for a DICOM SEG/SR to "
                "reference. Export JSON instead, or load the CT series through the DICOM module and segment it.")
        cards = self.report_cards(segmentation_node)
        labels, instances = self._label_and_instance_arrays(segmentation_node, ct_node, cards)
        ct_image = mrml.volume_to_sitk(ct_node)
        images = []
        for array in (labels, instances):
            image = sitk.GetImageFromArray(array)
            image.CopyInformation(ct_image)
            images.append(image)
        lesions = [{"index": c.index, "report": c.report, "details": dict(c.details)} for c in cards]
        return images[0], images[1], lesions, source

    def _label_and_instance_arrays(self, segmentation_node, ct_node, cards: ReportCards):
        """PASTA label map and lesion-instance map (k, j, i) on the CT grid from the segments' tags."""
        ids = mrml.segment_ids(segmentation_node)
        seg = segmentation_node.GetSegmentation()
        stacked = mrml.label_array_from_segmentation(self.context, segmentation_node, ct_node, ids)
        labels = np.zeros(stacked.shape, np.uint16)
        instances = np.zeros(stacked.shape, np.uint16)
        for n, segment_id in enumerate(ids, start=1):
            segment = seg.GetSegment(segment_id)
            value, index = _tag(segment, LABEL_VALUE_TAG), _tag(segment, LESION_INDEX_TAG)
            if value is None:
                continue  # a segment the user added: not part of PASTA's SEG
            mask = stacked == n
            labels[mask] = value
            if index is not None:
                instances[mask] = index
        for card in cards:
            voxels = int((instances == card.index).sum())
            expected = card.details.get("voxels")
            if expected is not None and voxels != int(expected):
                from PASTALib.dicom import DicomExportError

                raise DicomExportError(
                    f"Lesion {card.index} was edited after segmentation ({voxels} voxels, its report measured "
                    f"{expected}): the report's size and volume no longer describe it. Undo the segment edits or "
                    "segment again before exporting DICOM.")
        return labels, instances

    # -- few-shot training cases --------------------------------------------------------------

    def export_training_case(self, ct_node, segmentation_node, folder: str | os.PathLike,
                             case_id: str, label_values: Mapping[str, int] | None = None) -> dict:
        """Write one annotated case for fine-tuning and record it in the folder manifest.

        Layout (nnU-Net style, what ``pasta finetune`` reads): ``imagesTr/<case>_0000.nii.gz``,
        ``labelsTr/<case>.nii.gz`` on the CT grid, segment named ``n`` -> ``label_values[n]``
        (default :meth:`training_label_values`), and ``pasta_fewshot.json`` listing the cases and
        the label names ("Lesion 2: Liver tumor" is recorded as "Liver tumor"). Re-marking a case
        id replaces it.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", case_id):
            raise ValueError(f"Case id {case_id!r} may only use letters, digits, '_', '-', '.'")
        import SimpleITK as sitk

        if label_values is None:
            label_values = self.training_label_values(segmentation_node)
        names = mrml.segment_names(segmentation_node)
        if not names:
            raise ValueError(f"Segmentation '{segmentation_node.GetName()}' has no segments to train on.")
        unknown = sorted(set(names) - set(label_values))
        if unknown:
            raise ValueError(f"No label value for segment(s) {unknown}; known: {sorted(label_values)}")
        folder = Path(folder)
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        image_path = folder / "imagesTr" / f"{case_id}_0000.nii.gz"
        label_path = folder / "labelsTr" / f"{case_id}.nii.gz"
        sitk.WriteImage(mrml.volume_to_sitk(ct_node), str(image_path), True)
        labels = mrml.segmentation_to_sitk(self.context, segmentation_node, ct_node, label_values)
        sitk.WriteImage(labels, str(label_path), True)

        manifest = self.read_manifest(folder)
        manifest["labels"] = {**manifest.get("labels", {}),
                              **{_plain_name(n): int(v) for n, v in label_values.items() if n in names}}
        cases = [c for c in manifest.get("cases", []) if c["id"] != case_id]
        entry = {"id": case_id, "image": str(image_path.relative_to(folder)),
                 "label": str(label_path.relative_to(folder)), "segments": names}
        manifest["cases"] = cases + [entry]
        write_json_atomic(folder / FEWSHOT_MANIFEST, manifest)
        return entry

    @staticmethod
    def training_label_values(segmentation_node) -> dict[str, int]:
        """Label value per segment name for a training case: PASTA names (organs 1-10, lesion types
        11-25; "Lesion 2: Liver tumor" counts as "Liver tumor") keep PASTA's values, other names get
        stable unused values from 100 up."""
        from PASTALib.labels import LesionType, Organ

        known = {o.display_name: int(o) for o in Organ}
        known.update({t.display_name: int(t) for t in LesionType})
        values: dict[str, int] = {}
        seg = segmentation_node.GetSegmentation()
        extra = 100
        for segment_id in mrml.segment_ids(segmentation_node):
            segment = seg.GetSegment(segment_id)
            name = segment.GetName()
            tagged = _tag(segment, LABEL_VALUE_TAG)
            plain = _plain_name(name)
            value = tagged if tagged is not None and tagged in known.values() else known.get(plain)
            if value is None:
                value = values.get(name) or extra
                extra += 1
            values[name] = int(value)
        return values

    @staticmethod
    def read_manifest(folder: str | os.PathLike) -> dict:
        path = Path(folder) / FEWSHOT_MANIFEST
        if not path.is_file():
            return {"format": "pasta-fewshot/1", "labels": {}, "cases": []}
        return json.loads(path.read_text(encoding="utf-8"))

    def list_training_cases(self, folder: str | os.PathLike) -> list[str]:
        return [c["id"] for c in self.read_manifest(folder).get("cases", [])]


# --- helpers ------------------------------------------------------------------------------------


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _pasta_name(value: int) -> str | None:
    """PASTA's name of a label value (1-25), None for other values."""
    from PASTALib.labels import label_name

    return label_name(value) if 1 <= value <= 25 else None


def _plain_name(segment_name: str) -> str:
    """ "Lesion 2: Liver tumor" -> "Liver tumor" (the type a lesion-instance segment stands for)."""
    return re.sub(r"^Lesion \d+:\s*", "", segment_name)


def _tag(segment, key: str) -> int | None:
    import vtk

    value = vtk.reference("")
    if not segment.GetTag(key, value) or not str(value).strip():
        return None
    return int(str(value))


def write_dicom_export(labels, instances, lesions: Sequence[Mapping[str, Any]], source, out_dir) -> dict[str, Path]:
    """The export step that reads the DICOM series (pydicom + highdicom): labels onto the series'
    grid, then ``PASTALib.dicom.export_dicom`` with the cards' (edited) reports."""
    from types import SimpleNamespace

    from PASTALib.dicom import export_dicom

    images = _onto_source_grid([labels, instances], Path(source))
    cards = [SimpleNamespace(index=int(d["index"]), report=d["report"], details=dict(d.get("details") or {}))
             for d in lesions]
    result = EditedResult(images[0], images[1], [EditedLesion.from_card(c) for c in cards])
    return export_dicom(result, source, out_dir)


def _onto_source_grid(images: list, source: Path) -> list:
    """Nearest-neighbour copies of label images on the DICOM series' own grid (slice order as
    PASTALib.dicom reads it); exact when the CT node holds the same physical grid."""
    import SimpleITK as sitk

    from PASTALib.io import read_ct

    reference = read_ct(source, check_modality=False)
    out = []
    for image in images:
        if (image.GetSize() == reference.GetSize() and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
                and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)):
            out.append(image)
            continue
        out.append(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID()))
    return out


@dataclass
class EditedLesion:
    """What ``PASTALib.dicom`` reads of a lesion (LesionFinding's duck type), from an edited card.

    The organ and side follow the edited location; ``details()`` includes the edited report so
    an edited export gets its own SEG/SR UIDs.
    """

    index: int
    report: Any  # PASTALib.report.wording.StructuredReport
    longest_diameter_mm: float
    sidecar: dict = field(default_factory=dict)

    @classmethod
    def from_card(cls, card) -> EditedLesion:
        from PASTALib.report.wording import StructuredReport

        report = StructuredReport.from_json(json.dumps(card.report))
        return cls(card.index, report, float(card.details.get("longest_diameter_mm", max(report.size_zxy_mm))),
                   dict(card.details))

    @property
    def lesion_type(self):
        from PASTALib.labels import LesionType

        return LesionType.parse(self.report.lesion_type)

    @property
    def location(self) -> str:
        return self.report.location

    @property
    def organ(self):
        from PASTALib.labels import Organ

        plain = re.sub(r"^(right|left)\s+", "", self.report.location.strip(), flags=re.IGNORECASE).casefold()
        for organ in Organ:
            if organ.display_name.casefold() == plain:
                return organ
        return self.lesion_type.organ

    def details(self) -> dict[str, Any]:
        return {**self.sidecar, "index": self.index, "report": self.report.to_dict()}


@dataclass
class EditedResult:
    """What ``PASTALib.dicom.export_dicom`` reads of a SegmentationResult: labels, instances, lesions."""

    labels: Any  # SimpleITK label map (PASTA values) on the source series' grid
    instances: Any  # SimpleITK lesion-instance map (EditedLesion.index per voxel)
    lesions: list[EditedLesion]

#!/usr/bin/env python
"""Render the README screenshots, one PNG per module panel: ``python scripts/make_screenshots.py``.

Each screenshot is a Slicer-like window: the module panel on the left, the result views on
the right. Nothing is drawn by hand or typed in as a stand-in for a result:

* the panel is the module's own ``Resources/UI/<Module>.ui``, loaded at run time with
  PySide6's QUiLoader offscreen. Slicer's custom classes (qMRML*, qSlicer*, ctk*) do not
  exist in PySide6, so each is created as its nearest plain-Qt equivalent with the same
  properties (``STAND_INS``: collapsible button -> titled group box, slider widget ->
  slider + spin box, node combo box -> combo box, path line edit -> combo box + "..."),
  which keeps the real layout. The widgets are filled the way the module widget fills
  them, with values from real runs of the module logic (PASTASynthLib / PASTALogicLib on
  Slicer's MRML core, PyPI slicer-core) and PASTALib on the real CTs of the fetched test data
  (scripts/fetch_test_data.sh; read in place from its cache, never copied);
* the views (Slicer's four-up layout: axial, 3D / sagittal, coronal)
  are rendered offscreen by VTK from the MRML nodes: CT slices with the segments filled
  and outlined in their segment colours, and segment surfaces in 3D.

The full Slicer application is not used. Panels (``--panel``, default all):

* ``synthesis``     -> Resources/Screenshots/pastasynth.png: PASTASynth with a liver tumour
  synthesized into the TotalSegmentator example CT (point placed in the liver);
* ``reader_study``  -> pastasynth_reader_study.png: PASTASynth's batch generation and blinded
  reader study panels, with a real study (pyradiomics lung tumours + lung tumours that
  PASTALib synthesized into the same CTs) opened for a reader;
* ``segment``       -> pasta_segment.png: PASTA's Segment panel with one structured report card
  per lesion and the lesion segments. The PASTA weights are not bundled, so the model is not
  run: the lesions are two that PASTALib synthesized (liver tumour, kidney cyst), imported
  through the panel's import path, with the reports PASTALib measured from the image;
* ``fewshot``       -> pasta_fewshot.png: PASTA's Few-shot panel with the two pyradiomics lung
  CTs and their real tumour masks exported as training cases by the panel's logic.

Renders are deterministic (fixed seeds; 256-colour PNG) and kept under 300 KB each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "PASTASynth"), str(REPO / "PASTA")]
from fetch_test_data import data_root  # noqa: E402  (beside this script)

TEST_DATA = data_root()
OUT_DIR = REPO / "Resources" / "Screenshots"

PANELS = {"synthesis": "pastasynth.png", "reader_study": "pastasynth_reader_study.png",
          "segment": "pasta_segment.png", "fewshot": "pasta_fewshot.png"}
#: Window size of every screenshot (pixels) and the module panel's width.
WIDTH, MIN_HEIGHT, MAX_HEIGHT, PANEL_WIDTH = 1360, 780, 1000, 470
VIEW_SPACING_MM = 1.5  # the views resample the CT to this isotropic grid
MAX_BYTES = 300_000
#: Slicer's view colours: red (axial), yellow (sagittal), green (coronal), 3D.
VIEW_COLOURS = {"Axial": "#f34a33", "Sagittal": "#edd54c", "Coronal": "#6eb04b", "3D": "#7483e9"}
VIEW_LETTERS = {"Axial": "R", "Sagittal": "Y", "Coronal": "G", "3D": "1"}


# -- scene content shared by the views --------------------------------------------------------


@dataclass
class SegmentLayer:
    """One segment to draw: its mask on the volume grid (k, j, i), colour, 2D fill / 3D opacity."""

    mask: np.ndarray
    rgb: tuple[float, float, float]
    fill: float = 0.35
    opacity3d: float = 1.0


@dataclass
class ViewScene:
    """What the views show: a volume node, segment layers, window/level, the point to centre on."""

    volume_node: object
    layers: list[SegmentLayer]
    window_level: tuple[float, float]
    centre_lps: tuple[float, float, float]
    fov_mm: float | None = None  # slice view height in mm (Slicer's zoom); None: fit the slice
    corner_text: str = ""


@dataclass
class PanelCase:
    """A panel's .ui, how to fill it (name -> value setters) and the views beside it."""

    module: str
    title: str
    fill: callable
    views: ViewScene
    expanded: set[str] = field(default_factory=set)  # collapsible buttons shown open


def _ctx():
    from PASTASlicerLib import mrml

    return mrml.MRMLContext.headless()


def _layers(ctx, segmentation_node, volume_node, fill=0.35, opacity3d=None, only=None,
            background: set[str] | None = None) -> list[SegmentLayer]:
    """Segment masks on the volume grid, in the segment colours (as Slicer displays them)."""
    from PASTASlicerLib import mrml

    seg = segmentation_node.GetSegmentation()
    display = segmentation_node.GetDisplayNode()
    layers = []
    for segment_id in mrml.segment_ids(segmentation_node):
        if only is not None and segment_id not in only:
            continue
        mask = mrml.segment_mask(ctx, segmentation_node, segment_id, volume_node)
        if not mask.any():
            continue
        fill_here = fill if display is None or display.GetOpacity2DFill() > 0 else 0.0
        if background and segment_id in background:  # organs: a light fill, so the lesion shows through
            fill_here, opacity = fill_here * 0.4, 0.25
        else:
            opacity = (opacity3d or {}).get(segment_id, 1.0)
        layers.append(SegmentLayer(mask, tuple(seg.GetSegment(segment_id).GetColor()), fill_here, opacity))
    return layers


def _dependency_text() -> tuple[str, bool]:
    from PASTASlicerLib import dependencies

    report = dependencies.check_dependencies()
    return report.message, report.ok


def _require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"error: {path} not found; the screenshots read the fetched test data: "
                         f"run `bash scripts/fetch_test_data.sh` (or set PASTA_TEST_DATA to its folder)")
    return path


# -- panel cases ---------------------------------------------------------------------------------


def synthesis_case(ctx, seed: int = 7):
    """Liver tumour inserted by the module logic at the deepest liver point of the TotalSegmentator CT."""
    from PASTALib.report.attributes import Density, Heterogeneity, Invasion, Shape, Surface
    from PASTASynthLib import scenarios
    from PASTASynthLib.logic import SynthesisLogic

    data = _require(TEST_DATA / "totalsegmentator")
    logic = SynthesisLogic(context=ctx)
    label_path = data / "example_seg_fast_force_split.nii.gz"
    ct, organs = scenarios.load_case(ctx, data / "example_ct.nii.gz", label_path, scenarios.TOTALSEG_SYNTH_ORGANS,
                                     name="Abdomen CT")
    point = scenarios.add_point(ctx, scenarios.organ_point_ras(label_path, 5), "Lesion centre")
    spec = {"lesion_type": "liver_tumor", "size_mm": [34, 30, 32], "shape": Shape.IRREGULAR.value,
            "density": Density.HYPO.value, "heterogeneity": Heterogeneity.HETEROGENEOUS.value,
            "surface": Surface.WELL_DEFINED.value, "invasion": Invasion.NONE.value, "seed": seed}
    output = logic.synthesize(ct, organs, spec, point)
    return logic, ct, organs, point, spec, output


def build_synthesis(seed: int) -> PanelCase:
    ctx = _ctx()
    logic, ct, organs, point, spec, output = synthesis_case(ctx, seed)
    _phase, enhancement = logic.detect_enhancement(ct, organs)
    dependency_text, dependency_ok = _dependency_text()
    report_text = logic.report_text(output.report) + "\n\n" + json.dumps(output.report, indent=2, ensure_ascii=False)
    from PASTALib.synth import allowed_values

    allowed = allowed_values(spec["lesion_type"])
    low, high = logic.size_range_mm(spec["lesion_type"])

    def fill(ui, q):
        _fill_dependency(ui, dependency_text, dependency_ok)
        _set_node(ui, "inputVolumeSelector", ct.GetName())
        _set_node(ui, "organSegmentationSelector", organs.GetName())
        _set_node(ui, "locationPointsSelector", point.GetName())
        _fill_lesion_types(ui, spec["lesion_type"])
        _fill_attribute_combos(ui, allowed, spec)
        for axis, value in zip("XYZ", spec["size_mm"]):
            _set(ui, f"size{axis}SliderWidget", "range", (low, high))
            _set(ui, f"size{axis}SliderWidget", "value", value)
        _set(ui, "sampleLocationCheckBox", "checked", False)
        _set(ui, "enhancementLabel", "text", f"{enhancement} (template: Enhanced CT)")
        _set(ui, "seedSpinBox", "value", seed)
        _set(ui, "reportTextEdit", "plainText", report_text)
        _set(ui, "statusLabel", "text",
             f"Created {output.volume_node.GetName()}, {output.segmentation_node.GetName()}")
        _set(ui, "progressBar", "visible", False)
        _set(ui, "cancelButton", "enabled", False)
        _fill_reader_study_idle(ui, q)

    volume = output.volume_node
    layers = _layers(ctx, output.segmentation_node, volume, background={output.organ_segment_id})
    centre = tuple(output.report["centre_mm"])
    views = ViewScene(volume, layers, (400.0, 40.0), centre,
                      corner_text=f"B: {volume.GetName()}")
    return PanelCase("PASTASynth", "PASTA Lesion Synthesis", fill, views,
                     {"inputsCollapsibleButton", "attributesCollapsibleButton", "reportCollapsibleButton"})


def _lung_tumour_case(image_path: Path, seed: int, folder: Path) -> Path:
    """A lung tumour that PASTALib synthesizes into the CT's classical lung mask, cut to 160 mm
    around the lesion (the study crops to its field of view anyway), written as a synthesizer folder."""
    import SimpleITK as sitk

    from PASTALib.anatomy.lungmask import classical_lung_mask
    from PASTALib.io import read_ct
    from PASTALib.labels import LesionType
    from PASTALib.synth.pipeline import synthesize_lesion_in_masks
    from PASTALib.synth.spec import LesionSpec

    ct = read_ct(image_path)
    result = synthesize_lesion_in_masks(ct, classical_lung_mask(ct), LesionSpec(LesionType.LUNG_TUMOR, seed=seed))
    value = int(LesionType.LUNG_TUMOR)
    index = np.argwhere(sitk.GetArrayViewFromImage(result.labels) == value).mean(axis=0)[::-1]
    half = np.ceil(80.0 / np.asarray(ct.GetSpacing())).astype(int)
    lo = np.clip(np.round(index).astype(int) - half, 0, np.asarray(ct.GetSize()) - 1)
    hi = np.clip(np.round(index).astype(int) + half + 1, 1, np.asarray(ct.GetSize()))
    box = [slice(int(a), int(b)) for a, b in zip(lo, hi)]
    folder.mkdir(parents=True)
    sitk.WriteImage(sitk.Cast(result.ct[box[0], box[1], box[2]], sitk.sitkInt16), str(folder / "ct.nii.gz"))
    sitk.WriteImage(result.labels[box[0], box[1], box[2]], str(folder / "label.nii.gz"))
    (folder / "report.json").write_text(result.report.to_json(), encoding="utf-8")
    return folder


def build_reader_study(seed: int, work: Path) -> PanelCase:
    """A real blinded study (2 real + 2 synthesized lung tumours) opened by a reader at a synthetic case."""
    from PASTASynthLib.reader_study import ACCURACY_ANCHORS, ReaderStudyLogic
    from PASTASynthLib.scenarios import READER_STUDY_REPORT

    from PASTALib.review import (
        ATTRIBUTES,
        StudySettings,
        add_reader,
        create_study,
        real_case,
        synthetic_case,
    )

    data = _require(TEST_DATA / "pyradiomics")
    # Real cases need reference reports too, or the presence of attribute questions would reveal the
    # origin; the fixture report of the test suite stands in for a radiologist's (these are not shown).
    real = [real_case(data / f"lung{i}_image.nrrd", data / f"lung{i}_label.nrrd", "lung_tumor",
                      {"lesion_type": "lung_tumor", **READER_STUDY_REPORT}, [1]) for i in (1, 2)]
    synthetic = [synthetic_case(_lung_tumour_case(data / f"lung{i}_image.nrrd", seed + i, work / f"synth{i}"))
                 for i in (1, 2)]
    study, key = work / "study", work / "study_key"
    create_study(real, synthetic, study, key, settings=StudySettings(seed=seed, allow_changes=True))
    reader = "Dr. Rossi"
    add_reader(study, reader)
    ctx = _ctx()
    logic = ReaderStudyLogic(ctx)
    logic.open(study, reader)
    shown = logic.show_current()
    while shown is not None and not shown.attributes:  # show a case whose report statements can be rated
        shown = logic.next()
    answered, total = logic.progress()
    dependency_text, dependency_ok = _dependency_text()

    def fill(ui, q):
        _fill_dependency(ui, dependency_text, dependency_ok)
        _fill_lesion_types(ui, "lung_tumor")
        _set(ui, "batchInputPathLineEdit", "currentPath", "~/pasta/templates")
        _set(ui, "batchOutputPathLineEdit", "currentPath", "~/pasta/generated")
        _set(ui, "batchCountSpinBox", "value", 10)
        _set(ui, "progressBar", "visible", False)
        _set(ui, "readerNameLineEdit", "text", reader)
        _set(ui, "studyFolderPathLineEdit", "currentPath", "~/pasta/realism_study")
        _set(ui, "readerStudyStatusLabel", "text", f"Study opened for {reader}: {total} cases.")
        _set(ui, "caseTitleLabel", "text", f"{shown.title}: {shown.lesion_type}")
        _set(ui, "caseCounterLabel", "text", f"{shown.position} of {total} ({answered} answered)")
        _fill_attribute_ratings(ui, q, ATTRIBUTES, shown.report or {}, ACCURACY_ANCHORS,
                                {"location": 5, "size": 4, "shape": 4})
        _set(ui, "reasonLineEdit", "text", "margin looks too smooth")
        _set(ui, "previousCaseButton", "enabled", shown.position > 1)

    layers = _layers(ctx, shown.segmentation_node, shown.volume_node, fill=0.0)
    centre = (-shown.centre_ras[0], -shown.centre_ras[1], shown.centre_ras[2])
    views = ViewScene(shown.volume_node, layers, shown.window_level, centre,
                      corner_text=f"B: {shown.volume_node.GetName()}")
    return PanelCase("PASTASynth", "PASTA Lesion Synthesis", fill, views,
                     {"batchCollapsibleButton", "readerStudyCollapsibleButton"})


def build_segment(seed: int) -> PanelCase:
    """Two lesions PASTALib synthesized (liver tumour, then a left kidney cyst in the result) imported
    as a prediction; report cards = the reports PASTALib measured from the image."""
    import SimpleITK as sitk
    from PASTALogicLib.logic import SegmentationReportLogic
    from PASTASlicerLib import mrml

    from PASTALib.labels import LesionType, Organ

    ctx = _ctx()
    logic, _ct, organs, _point, _spec, first = synthesis_case(ctx, seed)
    cyst = {"lesion_type": "kidney_cyst", "side": "left", "size_mm": [24, 22, 24], "seed": seed}
    second = logic.synthesize(first.volume_node, organs, cyst, None, output_name="Abdomen CT")
    volume = second.volume_node
    labels = np.zeros(mrml.array_from_volume(volume).shape, np.uint8)
    for output in (first, second):  # the lesions, and the organs they sit in (PASTA predicts both)
        for segment_id, value_of in ((output.organ_segment_id, "organ"), (output.lesion_segment_id, "lesion")):
            mask = mrml.segment_mask(ctx, output.segmentation_node, segment_id, volume)
            lesion = LesionType.parse(output.report["lesion_type"])
            value = int(lesion.organ) if value_of == "organ" else int(lesion)
            labels[mask & ((labels == 0) | (value_of == "lesion"))] = value
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(mrml.volume_to_sitk(volume))
    names = {int(t): t.display_name for t in LesionType} | {int(o): o.display_name for o in Organ}
    names = {v: n for v, n in names.items() if (labels == v).any()}
    segmentation = SegmentationReportLogic(context=ctx).import_prediction(label_image, volume, names)
    reports = [first.report, second.report]
    for node in (first.volume_node, first.segmentation_node, second.segmentation_node):
        ctx.remove_node(node)  # keep the scene as after `pasta segment` + import
    dependency_text, dependency_ok = _dependency_text()

    def fill(ui, q):
        _fill_dependency(ui, dependency_text, dependency_ok)
        _set_node(ui, "inputVolumeSelector", volume.GetName())
        _set(ui, "checkpointPathLineEdit", "currentPath", "~/.pasta/weights/PASTA_final.pth")
        _set(ui, "deviceComboBox", "currentText", "auto")
        _set_node(ui, "outputSegmentationSelector", segmentation.GetName())
        _set(ui, "progressBar", "visible", False)
        _set(ui, "statusLabel", "text", f"{len(reports)} lesion(s) found")
        _fill_report_cards(ui, q, reports)
        _set(ui, "exportJsonButton", "enabled", True)  # as PASTAWidget.showReportCards once cards exist

    seg = segmentation.GetSegmentation()
    organ_ids = {seg.GetSegmentIdBySegmentName(o.display_name) for o in Organ} - {""}
    layers = _layers(ctx, segmentation, volume, background=organ_ids)
    views = ViewScene(volume, layers, (400.0, 40.0), tuple(reports[0]["centre_mm"]),
                      corner_text=f"B: {volume.GetName()}")
    return PanelCase("PASTA", "PASTA Tumor Segmentation", fill, views,
                     {"segmentCollapsibleButton", "reportCardsCollapsibleButton"})


def build_fewshot(seed: int, work: Path, cases=(1, 2)) -> PanelCase:
    """pyradiomics lung CTs with their real tumour masks, exported as few-shot training cases."""
    from PASTALogicLib.logic import SegmentationReportLogic
    from PASTASlicerLib import mrml
    from PASTASynthLib import scenarios
    from PASTASynthLib.logic import SynthesisLogic

    from PASTALib.labels import LesionType

    data = _require(TEST_DATA / "pyradiomics")
    ctx = _ctx()
    logic = SegmentationReportLogic(context=ctx)
    name = LesionType.LUNG_TUMOR.display_name
    folder = work / "fewshot"
    shown = None
    for i in cases:
        ct, annotation = scenarios.load_case(ctx, data / f"lung{i}_image.nrrd", data / f"lung{i}_label.nrrd",
                                             {1: name}, name=f"Chest CT {i}")
        annotation.SetName(f"Chest CT {i} annotation")
        logic.export_training_case(ct, annotation, folder, f"chest_ct_{i}", {name: int(LesionType.LUNG_TUMOR)})
        shown = (ct, annotation)
    ct, annotation = shown
    training = logic.list_training_cases(folder)
    lungs = SynthesisLogic(context=ctx).lung_mask_segmentation(ct)
    dependency_text, dependency_ok = _dependency_text()

    def fill(ui, q):
        _fill_dependency(ui, dependency_text, dependency_ok)
        _set_node(ui, "inputVolumeSelector", ct.GetName())
        _set_node(ui, "outputSegmentationSelector", "")
        _set(ui, "trainingFolderPathLineEdit", "currentPath", "~/pasta/fewshot_lung")
        _set_node(ui, "trainingSegmentationSelector", annotation.GetName())
        _set(ui, "caseIdLineEdit", "text", training[-1])
        _set(ui, "trainingCasesListWidget", "items", training)
        _set(ui, "fineTuneProgressBar", "visible", False)
        _set(ui, "progressBar", "visible", False)
        _set(ui, "useFineTunedCheckBox", "enabled", False)

    tumour = _layers(ctx, annotation, ct)
    lung_layers = _layers(ctx, lungs, ct, fill=0.0, opacity3d={i: 0.12 for i in mrml.segment_ids(lungs)})
    index_kji = np.argwhere(tumour[0].mask).mean(axis=0)
    centre = mrml.volume_to_sitk(ct).TransformContinuousIndexToPhysicalPoint([float(v) for v in index_kji[::-1]])
    views = ViewScene(ct, lung_layers + tumour, (1500.0, -600.0), tuple(centre),
                      corner_text=f"B: {ct.GetName()}")
    return PanelCase("PASTA", "PASTA Tumor Segmentation", fill, views, {"fewShotCollapsibleButton"})


# -- VTK offscreen views ----------------------------------------------------------------------------


def _vtk():
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless, no X warning
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()
    return vtk


def canonical_view_arrays(scene: ViewScene):
    """CT and segment masks on a canonical LPS grid [x, y, z] (right->left, anterior->posterior,
    inferior->superior) at VIEW_SPACING_MM, and the centre as a canonical index."""
    import SimpleITK as sitk
    from PASTASlicerLib import mrml

    from PASTALib.geometry.canonical import to_canonical

    reference = mrml.volume_to_sitk(scene.volume_node)
    ct, mapping = to_canonical(reference, is_label=False, spacing=VIEW_SPACING_MM)
    masks = []
    for layer in scene.layers:
        image = sitk.GetImageFromArray(layer.mask.astype(np.float32))
        image.CopyInformation(reference)
        masks.append(to_canonical(image, mapping, is_label=False, spacing=VIEW_SPACING_MM)[0])
    arrays = [sitk.GetArrayFromImage(i).transpose(2, 1, 0).astype(np.float32) for i in (ct, *masks)]
    centre = np.asarray(mapping.canonical.lps_to_index(scene.centre_lps), float)
    origin = np.asarray(mapping.canonical.origin, float)
    return arrays[0], arrays[1:], np.clip(centre, 0, np.array(arrays[0].shape) - 1), origin


def _plane(array: np.ndarray, view: str, c) -> np.ndarray:
    """A slice with row 0 at the top, in Slicer's radiological display orientation."""
    x, y, z = (int(round(v)) for v in c)
    if view == "Axial":  # patient right on the image left, anterior up
        return array[:, :, z].T
    if view == "Coronal":  # patient right on the left, superior up
        return array[:, y, :].T[::-1]
    return array[x, :, :].T[::-1]  # sagittal: anterior on the left, superior up


def _plane_centre(view: str, c, shape) -> tuple[float, float]:
    """(column, row) of the centre point in the plane of ``_plane``."""
    x, y, z = c
    if view == "Axial":
        return x, y
    if view == "Coronal":
        return x, shape[2] - 1 - z
    return y, shape[2] - 1 - z


def _grab(vtk, window) -> np.ndarray:
    import vtk.util.numpy_support as vtk_np

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    rgb = vtk_np.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    window.Finalize()
    return np.ascontiguousarray(rgb)


def _image_data(vtk, array: np.ndarray, spacing: float, vtk_type):
    import vtk.util.numpy_support as vtk_np

    flipped = np.ascontiguousarray(array[::-1])  # VTK rows go up
    image = vtk.vtkImageData()
    components = flipped.shape[2] if flipped.ndim == 3 else 1
    image.SetDimensions(flipped.shape[1], flipped.shape[0], 1)
    image.SetSpacing(spacing, spacing, 1.0)
    image.GetPointData().SetScalars(vtk_np.numpy_to_vtk(flipped.reshape(-1, components), deep=True,
                                                        array_type=vtk_type))
    return image


def render_slice_view(ct, masks, layers, centre, view: str, scene: ViewScene, size) -> np.ndarray:
    """One slice view: windowed CT, segment fills blended in, outlines on top (as Slicer draws them)."""
    vtk = _vtk()
    window_width, level = scene.window_level
    plane = _plane(ct, view, centre)
    gray = np.clip((plane - (level - window_width / 2)) / window_width, 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    mask_planes = [_plane(m, view, centre) for m in masks]
    for mask, layer in zip(mask_planes, layers):
        inside = (mask > 0.5)[..., None]
        rgb = np.where(inside, rgb * (1 - layer.fill) + np.asarray(layer.rgb) * layer.fill, rgb)
    rgb8 = (rgb * 255).round().astype(np.uint8)
    s = VIEW_SPACING_MM
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0, 0, 0)
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputData(_image_data(vtk, rgb8, s, vtk.VTK_UNSIGNED_CHAR))
    actor.InterpolateOn()
    renderer.AddActor(actor)
    for mask, layer in zip(mask_planes, layers):
        if not (mask > 0.5).any():
            continue
        contour = vtk.vtkContourFilter()
        contour.SetInputData(_image_data(vtk, mask.astype(np.float32), s, vtk.VTK_FLOAT))
        contour.SetValue(0, 0.5)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(contour.GetOutputPort())
        mapper.ScalarVisibilityOff()
        line = vtk.vtkActor()
        line.SetMapper(mapper)
        line.GetProperty().SetColor(*layer.rgb)
        line.GetProperty().SetLineWidth(2.0)
        line.SetPosition(0, 0, 0.5)
        renderer.AddActor(line)
    rows, cols = plane.shape
    if scene.fov_mm is None:  # Slicer's "fit to window": the whole slice, centred
        fx, fy = (cols - 1) * s / 2, (rows - 1) * s / 2
        scale = max(rows * s / 2, cols * s / 2 * size[1] / size[0])
    else:  # zoomed, centred on the point
        col, row = _plane_centre(view, centre, ct.shape)
        fx, fy, scale = col * s, (rows - 1 - row) * s, scene.fov_mm / 2
    camera = renderer.GetActiveCamera()
    camera.ParallelProjectionOn()
    camera.SetFocalPoint(fx, fy, 0)
    camera.SetPosition(fx, fy, 1000)
    camera.SetViewUp(0, 1, 0)
    camera.SetParallelScale(scale)
    renderer.ResetCameraClippingRange()
    if scene.corner_text:
        corner = vtk.vtkCornerAnnotation()
        corner.SetText(0, scene.corner_text)
        corner.GetTextProperty().SetColor(1, 1, 1)
        corner.GetTextProperty().SetFontSize(13)
        corner.SetMaximumFontSize(13)
        renderer.AddViewProp(corner)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    window.Render()
    return _grab(vtk, window)


def render_3d_view(masks, layers, size) -> np.ndarray:
    """Segment surfaces (smoothed, as Slicer's closed-surface representation) seen from anterior."""
    from scipy import ndimage

    vtk = _vtk()
    renderer = vtk.vtkRenderer()
    renderer.GradientBackgroundOn()  # Slicer's default 3D background
    renderer.SetBackground(0.478, 0.478, 0.651)
    renderer.SetBackground2(0.757, 0.765, 0.910)
    for mask, layer in zip(masks, layers):
        if not (mask > 0.5).any():
            continue
        import vtk.util.numpy_support as vtk_np

        # Only the segment's box (+ margin for the smoothing) is contoured: much faster for small lesions.
        inside = np.argwhere(mask > 0.5)
        lo = np.maximum(inside.min(axis=0) - 4, 0)
        hi = np.minimum(inside.max(axis=0) + 5, mask.shape)
        crop = (mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] > 0.5).astype(np.float32)
        smooth = ndimage.gaussian_filter(crop, 1.0, mode="constant")
        image = vtk.vtkImageData()
        image.SetDimensions(*smooth.shape)
        image.SetOrigin(*(lo * VIEW_SPACING_MM))
        image.SetSpacing(VIEW_SPACING_MM, VIEW_SPACING_MM, VIEW_SPACING_MM)
        image.GetPointData().SetScalars(vtk_np.numpy_to_vtk(np.ascontiguousarray(smooth.transpose(2, 1, 0)).ravel(),
                                                            deep=True, array_type=vtk.VTK_FLOAT))
        surface = vtk.vtkFlyingEdges3D()
        surface.SetInputData(image)
        surface.SetValue(0, 0.5)
        surface.ComputeNormalsOn()
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(surface.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*layer.rgb)
        actor.GetProperty().SetOpacity(layer.opacity3d)
        actor.GetProperty().SetSpecular(0.2)
        renderer.AddActor(actor)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    focal = np.asarray(camera.GetFocalPoint())
    distance = camera.GetDistance()
    # Canonical y runs anterior->posterior: look from anterior, superior (z) up; patient right on the left.
    camera.SetPosition(focal[0], focal[1] - distance, focal[2])
    camera.SetViewUp(0, 0, 1)
    camera.Azimuth(-25)
    camera.Elevation(10)
    renderer.ResetCamera()
    camera.Zoom(1.1)
    renderer.ResetCameraClippingRange()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    window.Render()
    return _grab(vtk, window)


def render_views(scene: ViewScene, width: int, height: int, bar: int) -> list[tuple[str, np.ndarray, str]]:
    """(view name, RGB image, bar text) in Slicer's four-up order (axial, 3D / sagittal, coronal)."""
    ct, masks, centre, origin = canonical_view_arrays(scene)
    centre_lps = origin + centre * VIEW_SPACING_MM
    offsets = {"Axial": f"S: {centre_lps[2]:.1f}mm", "Coronal": f"A: {-centre_lps[1]:.1f}mm",
               "Sagittal": f"R: {-centre_lps[0]:.1f}mm", "3D": ""}
    names, size = ["Axial", "3D", "Sagittal", "Coronal"], (width // 2, height // 2 - bar)
    views = []
    for name in names:
        if name == "3D":
            image = render_3d_view(masks, scene.layers, size)
        else:
            image = render_slice_view(ct, masks, scene.layers, centre, name, scene, size)
        views.append((name, image, offsets[name]))
    return views


# -- Qt panel (QUiLoader, offscreen) ----------------------------------------------------------------


def _qt():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtGui, QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["make_screenshots"])
    app.setStyle("Fusion")
    font = QtGui.QFont("DejaVu Sans")
    font.setPixelSize(12)
    app.setFont(font)
    return app


_EXPECTED_QT = ("QFormBuilder was unable to create", "could not be read", "QObject::connect",
                "is not declared", "is not of type", "No such signal")


def stand_in_classes():
    """Plain-Qt stand-ins for Slicer's custom widget classes, with the properties the .ui sets."""
    from PySide6 import QtCore, QtWidgets

    class CollapsibleButton(QtWidgets.QGroupBox):
        """ctkCollapsibleButton: a titled section whose contents hide when collapsed."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._text, self._collapsed = "", False

        def _title(self):
            self.setTitle(("\u25b8 " if self._collapsed else "\u25be ") + self._text)

        def getText(self):
            return self._text

        def setText(self, text):
            self._text = text
            self._title()

        def isCollapsed(self):
            return self._collapsed

        def setCollapsed(self, collapsed):
            self._collapsed = bool(collapsed)
            self._title()

        def applyCollapsed(self):
            """Hide the contents of a collapsed section (once, after the panel is filled)."""
            self.setFlat(self._collapsed)
            if self._collapsed:
                for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
                    child.hide()
                self.setFixedHeight(self.fontMetrics().height() + 14)

        text = QtCore.Property(str, getText, setText)
        title_ = QtCore.Property(str, getText, setText)
        collapsed = QtCore.Property(bool, isCollapsed, setCollapsed)

    class SliderWidget(QtWidgets.QWidget):
        """ctkSliderWidget: slider + spin box."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
            self.spin = QtWidgets.QDoubleSpinBox()
            self.spin.setMinimumWidth(78)
            layout.addWidget(self.slider, 1)
            layout.addWidget(self.spin)
            self.slider.setRange(0, 1000)

        def _sync(self):
            low, high = self.spin.minimum(), self.spin.maximum()
            self.slider.setValue(int(round(1000 * (self.spin.value() - low) / max(high - low, 1e-9))))

        def getValue(self):
            return self.spin.value()

        def setValue(self, value):
            self.spin.setValue(float(value))
            self._sync()

        def getMinimum(self):
            return self.spin.minimum()

        def setMinimum(self, value):
            self.spin.setMinimum(float(value))
            self._sync()

        def getMaximum(self):
            return self.spin.maximum()

        def setMaximum(self, value):
            self.spin.setMaximum(float(value))
            self._sync()

        def getDecimals(self):
            return self.spin.decimals()

        def setDecimals(self, value):
            self.spin.setDecimals(int(value))

        def getStep(self):
            return self.spin.singleStep()

        def setStep(self, value):
            self.spin.setSingleStep(float(value))

        def getSuffix(self):
            return self.spin.suffix()

        def setSuffix(self, value):
            self.spin.setSuffix(value)

        value = QtCore.Property(float, getValue, setValue)
        minimum = QtCore.Property(float, getMinimum, setMinimum)
        maximum = QtCore.Property(float, getMaximum, setMaximum)
        decimals = QtCore.Property(int, getDecimals, setDecimals)
        singleStep = QtCore.Property(float, getStep, setStep)
        suffix = QtCore.Property(str, getSuffix, setSuffix)

    class NodeComboBox(QtWidgets.QComboBox):
        """qMRMLNodeComboBox: the selected node's name."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._flags = {}

        def _flag(name):
            return QtCore.Property(bool, lambda self: self._flags.get(name, False),
                                   lambda self, v: self._flags.__setitem__(name, bool(v)))

        def getTypes(self):
            return self._flags.get("nodeTypes", [])

        def setTypes(self, value):
            self._flags["nodeTypes"] = list(value)

        nodeTypes = QtCore.Property("QStringList", getTypes, setTypes)
        showChildNodeTypes = _flag("showChildNodeTypes")
        noneEnabled = _flag("noneEnabled")
        addEnabled = _flag("addEnabled")
        removeEnabled = _flag("removeEnabled")
        renameEnabled = _flag("renameEnabled")

    class PathLineEdit(QtWidgets.QWidget):
        """ctkPathLineEdit: editable path + browse button."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.combo = QtWidgets.QComboBox()
            self.combo.setEditable(True)
            self.combo.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Fixed)
            button = QtWidgets.QToolButton()
            button.setText("...")
            layout.addWidget(self.combo, 1)
            layout.addWidget(button)

        def getPath(self):
            return self.combo.currentText()

        def setPath(self, value):
            self.combo.setEditText(value)

        def getFilters(self):
            return self._name_filters if hasattr(self, "_name_filters") else []

        def setFilters(self, value):
            self._name_filters = list(value)

        currentPath = QtCore.Property(str, getPath, setPath)
        nameFilters = QtCore.Property("QStringList", getFilters, setFilters)

    class MarkupsPlaceWidget(QtWidgets.QWidget):
        """qSlicerMarkupsPlaceWidget: place / delete tool buttons."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            for text in ("\u271a Place point", "Delete", "Delete all"):
                button = QtWidgets.QToolButton()
                button.setText(text)
                layout.addWidget(button)
            layout.addStretch(1)
            self._visible = True

        def getButtons(self):
            return self._visible

        def setButtons(self, value):
            self._visible = bool(value)

        buttonsVisible = QtCore.Property(bool, getButtons, setButtons)

    class CollapsibleGroupBox(QtWidgets.QGroupBox):
        """ctkCollapsibleGroupBox: a group box."""

        def getCollapsed(self):
            return False

        def setCollapsed(self, value):
            pass

        collapsed = QtCore.Property(bool, getCollapsed, setCollapsed)

    return {
        "ctkCollapsibleButton": CollapsibleButton,
        "ctkCollapsibleGroupBox": CollapsibleGroupBox,
        "ctkSliderWidget": SliderWidget,
        "ctkPathLineEdit": PathLineEdit,
        "ctkDirectoryButton": PathLineEdit,
        "qMRMLNodeComboBox": NodeComboBox,
        "qMRMLSegmentSelectorWidget": NodeComboBox,
        "qSlicerMarkupsPlaceWidget": MarkupsPlaceWidget,
        "qMRMLWidget": QtWidgets.QWidget,
        "qSlicerWidget": QtWidgets.QWidget,
        "ctkComboBox": QtWidgets.QComboBox,
        "ctkDoubleSpinBox": QtWidgets.QDoubleSpinBox,
        "ctkCheckBox": QtWidgets.QCheckBox,
        "qMRMLSegmentsTableView": QtWidgets.QTableWidget,
    }


def load_ui(path: Path):
    """The .ui as a widget tree, Slicer classes replaced by their stand-ins (others: the
    customwidget's Qt base, as QUiLoader does); Qt's expected loader messages are silenced."""
    from PySide6 import QtCore, QtUiTools

    stand_ins = stand_in_classes()
    unexpected: list[str] = []

    class Loader(QtUiTools.QUiLoader):
        def createWidget(self, class_name, parent=None, name=""):
            cls = stand_ins.get(class_name)
            if cls is None:
                return super().createWidget(class_name, parent, name)
            widget = cls(parent)
            widget.setObjectName(name)
            return widget

    def handler(mode, context, text):
        if not any(s in text for s in _EXPECTED_QT):
            unexpected.append(text)

    previous = QtCore.qInstallMessageHandler(handler)
    try:
        f = QtCore.QFile(str(path))
        if not f.open(QtCore.QIODevice.ReadOnly):
            raise SystemExit(f"error: cannot open {path}")
        loader = Loader()
        try:
            widget = loader.load(f)
        except RuntimeError as exc:  # PySide6 raises on XML it cannot parse
            raise SystemExit(f"error: {path.name} did not load: {exc} ({loader.errorString()})") from None
        finally:
            f.close()
    finally:
        QtCore.qInstallMessageHandler(previous)
    if widget is None:
        raise SystemExit(f"error: {path.name} did not load: {loader.errorString()}")
    for text in unexpected:
        print(f"Qt: {text}", file=sys.stderr)
    ui = {w.objectName(): w for w in widget.findChildren(QtCore.QObject) if w.objectName()}
    ui[widget.objectName()] = widget
    missing = {w.get("name") for w in ET.parse(path).getroot().iter("widget")} - set(ui)
    if missing:
        raise SystemExit(f"error: {path.name}: widgets missing from the loaded tree: {sorted(missing)}")
    return widget, ui


# Setters tolerate a widget the .ui no longer has (the .ui files change; the screenshot shows what is there).


def _set(ui, name: str, what: str, value) -> None:
    widget = ui.get(name)
    if widget is None:
        print(f"note: {name} is not in the .ui; not filled", file=sys.stderr)
        return
    if what == "text":
        widget.setText(value)
    elif what == "plainText":
        widget.setPlainText(value)
    elif what == "checked":
        widget.setChecked(value)
    elif what == "enabled":
        widget.setEnabled(value)
    elif what == "visible":
        widget.setVisible(value)
    elif what == "value":
        widget.setValue(value)
    elif what == "range":
        widget.setMinimum(value[0])
        widget.setMaximum(value[1])
    elif what == "currentPath":
        widget.setProperty("currentPath", value)
    elif what == "currentText":
        widget.setCurrentText(value)
    elif what == "items":
        widget.clear()
        widget.addItems(list(value))
        if value:
            widget.setCurrentRow(len(value) - 1)
    else:
        raise ValueError(what)


def _set_node(ui, name: str, node_name: str) -> None:
    widget = ui.get(name)
    if widget is None:
        print(f"note: {name} is not in the .ui; not filled", file=sys.stderr)
        return
    widget.clear()
    widget.addItem(node_name or "None")


def _fill_dependency(ui, text: str, ok: bool) -> None:
    _set(ui, "dependencyLabel", "text", text)
    _set(ui, "installDependenciesButton", "visible", not ok)


def _fill_lesion_types(ui, slug: str) -> None:
    """As PASTASynthWidget.setup: the 15 PASTALib lesion types, the chosen one selected."""
    from PASTALib.labels import LesionType

    combo = ui.get("lesionTypeComboBox")
    if combo is None:
        return
    combo.clear()
    for lesion_type in LesionType:
        combo.addItem(lesion_type.display_name, lesion_type.slug)
    combo.setCurrentIndex(combo.findData(slug))


def _fill_attribute_combos(ui, allowed: dict, spec: dict) -> None:
    """As PASTASynthWidget: each combo lists the enum, values the type does not allow are disabled."""
    from PASTALib.report.attributes import (
        Density,
        Heterogeneity,
        Invasion,
        Shape,
        Surface,
    )

    for name, key, enum in (("shapeComboBox", "shape", Shape), ("densityComboBox", "density", Density),
                            ("heterogeneityComboBox", "heterogeneity", Heterogeneity),
                            ("surfaceComboBox", "surface", Surface), ("invasionComboBox", "invasion", Invasion)):
        combo = ui.get(name)
        if combo is None:
            continue
        combo.clear()
        for member in enum:
            combo.addItem(member.value)
        model = combo.model()
        for i in range(combo.count()):
            model.item(i).setEnabled(combo.itemText(i) in allowed[key])
        combo.setCurrentText(spec.get(key, allowed[key][0]))


def _fill_reader_study_idle(ui, q) -> None:
    """The reader-study panel before a study is opened (as ReaderStudyPanel._showCase(None))."""
    _set(ui, "attributeRatingsGroupBox", "visible", False)
    for i in range(1, 6):
        _set(ui, f"likert{i}Button", "enabled", False)


def _fill_attribute_ratings(ui, q, attributes, report: dict, anchors, ratings: dict) -> None:
    """As ReaderStudyPanel.setup/_showCase: one row per report statement, 1-5 radios."""
    QtWidgets = q.QtWidgets
    box = ui.get("attributeRatingsGroupBox")
    if box is None or box.layout() is None:
        return
    grid = box.layout()
    row = 0
    for attribute in attributes:
        wording = report.get(attribute)
        if wording is None:
            continue
        label = QtWidgets.QLabel(f"{attribute.capitalize()}: \u201c{wording}\u201d")
        label.setWordWrap(True)
        # Grid rows do not grow for wrapped text by themselves: reserve the wrapped height at the
        # width column 0 gets beside five radio buttons.
        label.setMinimumHeight(label.heightForWidth(PANEL_WIDTH - 320))
        grid.addWidget(label, row, 0)
        group = QtWidgets.QButtonGroup(box)
        for score in range(1, 6):
            radio = QtWidgets.QRadioButton(str(score))
            radio.setToolTip(anchors[score - 1])
            radio.setChecked(ratings.get(attribute) == score)
            group.addButton(radio, score)
            grid.addWidget(radio, row, score)
        row += 1
    grid.setColumnStretch(0, 1)
    box.setVisible(row > 0)


REPORT_FIELDS = (("enhancement", "Enhancement"), ("location", "Location"), ("size", "Size"), ("shape", "Shape"),
                 ("density", "Density"), ("heterogeneity", "Heterogeneity"), ("surface", "Surface"),
                 ("invasion", "Invasion"))


def _fill_report_cards(ui, q, reports) -> None:
    """One card per lesion in the report-cards area: the 8 attributes, enumerated ones as combo boxes
    listing PASTALib's vocabularies, and the measurements behind the report."""
    from PASTALib.labels import LesionType, Phase
    from PASTALib.report.attributes import (
        Density,
        Heterogeneity,
        Invasion,
        Shape,
        Surface,
    )

    QtWidgets = q.QtWidgets
    holder = ui.get("reportCardsWidget")
    if holder is None:
        holder = next((w for n, w in ui.items() if "reportcard" in n.lower() and isinstance(w, QtWidgets.QWidget)
                       and w.layout() is not None), None)
    if holder is None:
        print("note: no report-card area in PASTA.ui; cards not drawn", file=sys.stderr)
        return
    layout = holder.layout() or QtWidgets.QVBoxLayout(holder)
    vocab = {"enhancement": Phase, "shape": Shape, "density": Density, "heterogeneity": Heterogeneity,
             "surface": Surface, "invasion": Invasion}
    for index, report in enumerate(reports, start=1):
        card = QtWidgets.QGroupBox(f"Lesion {index}: {LesionType.parse(report['lesion_type']).display_name}")
        form = QtWidgets.QFormLayout(card)
        form.setContentsMargins(6, 4, 6, 4)
        form.setVerticalSpacing(2)
        for key, label in REPORT_FIELDS:
            if key in vocab:
                field_widget = QtWidgets.QComboBox()
                field_widget.addItems([m.value for m in vocab[key]])
                field_widget.setCurrentText(report[key])
                field_widget.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToMinimumContentsLengthWithIcon)
                field_widget.setMinimumContentsLength(12)
            else:
                field_widget = QtWidgets.QLineEdit(str(report[key]))
            field_widget.setToolTip(str(report[key]))
            form.addRow(label + ":", field_widget)
        measured = QtWidgets.QLabel(f"Measured: {report['volume_mm3'] / 1000:.1f} ml, mean {report['mean_hu']:.0f} HU "
                                    f"(organ {report['organ_mean_hu']:.0f} HU)")
        measured.setStyleSheet("color: #555;")
        measured.setWordWrap(True)
        form.addRow(measured)
        text = QtWidgets.QLabel(report["text"])  # the one-line report, as under each card in PASTA.py
        text.setWordWrap(True)
        form.addRow(text)
        layout.addWidget(card)
    layout.addStretch(1)
    scroll = ui.get("reportCardsScrollArea")
    if scroll is not None:
        scroll.setMinimumHeight(min(layout.sizeHint().height() + 8, 560))


class _Q:
    """Lazy PySide6 namespace handed to the fill functions."""

    def __init__(self):
        from PySide6 import QtCore, QtGui, QtWidgets

        self.QtCore, self.QtGui, self.QtWidgets = QtCore, QtGui, QtWidgets


def _view_frame(q, name: str, image: np.ndarray, bar_text: str, bar: int):
    QtGui, QtWidgets = q.QtGui, q.QtWidgets
    frame = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(frame)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(0)
    header = QtWidgets.QLabel(f"  {VIEW_LETTERS[name]}   {bar_text}")
    header.setFixedHeight(bar)
    header.setStyleSheet(f"background: {VIEW_COLOURS[name]}; color: black; font-weight: bold;")
    layout.addWidget(header)
    h, w, _ = image.shape
    qimage = QtGui.QImage(image.tobytes(), w, h, 3 * w, QtGui.QImage.Format_RGB888).copy()
    picture = QtWidgets.QLabel()
    picture.setPixmap(QtGui.QPixmap.fromImage(qimage))
    picture.setFixedSize(w, h)
    layout.addWidget(picture)
    return frame


def _expand(widget_ui, expanded: set[str]) -> None:
    for name, widget in widget_ui.items():
        if hasattr(widget, "applyCollapsed"):
            widget.setCollapsed(name not in expanded)
            widget.applyCollapsed()


def compose(case: PanelCase, path: Path) -> Path:
    """Module panel (.ui) + VTK views in one Slicer-like window, written as a palette PNG."""
    _qt()
    q = _Q()
    QtGui, QtWidgets = q.QtGui, q.QtWidgets
    ui_path = REPO / case.module / "Resources" / "UI" / f"{case.module}.ui"
    panel, ui = load_ui(ui_path)
    # Sections built from their own .ui (the reader study) go above the panel's end spacer, as
    # the module widget's setup() puts them.
    for section_path in sorted(ui_path.parent.glob("*.ui")):
        if section_path != ui_path:
            section, section_ui = load_ui(section_path)
            panel.layout().insertWidget(panel.layout().count() - 1, section)
            ui.update(section_ui)
    case.fill(ui, q)
    _expand(ui, case.expanded)

    column = QtWidgets.QWidget()
    column.setFixedWidth(PANEL_WIDTH)
    column.setAutoFillBackground(True)
    col = QtWidgets.QVBoxLayout(column)
    col.setContentsMargins(6, 6, 6, 6)
    col.setSpacing(4)
    selector = QtWidgets.QHBoxLayout()
    selector.addWidget(QtWidgets.QLabel("Module:"))
    module_box = QtWidgets.QComboBox()
    module_box.addItem(case.title)
    selector.addWidget(module_box, 1)
    col.addLayout(selector)
    help_box = stand_in_classes()["ctkCollapsibleButton"]()
    help_box.setText("Help && Acknowledgement")  # && : QGroupBox mnemonic
    help_box.setCollapsed(True)
    help_box.applyCollapsed()
    col.addWidget(help_box)
    col.addWidget(panel)
    col.addStretch(1)
    column.adjustSize()
    needed = max(column.sizeHint().height(), col.totalHeightForWidth(PANEL_WIDTH))  # word-wrapped labels
    height = int(np.clip(needed, MIN_HEIGHT, MAX_HEIGHT))
    column.setFixedHeight(height)

    bar = 20
    views = render_views(case.views, WIDTH - PANEL_WIDTH, height, bar)
    window = QtWidgets.QWidget()
    window.setFixedSize(WIDTH, height)
    window.setStyleSheet("QWidget#viewArea { background: black; }")
    row = QtWidgets.QHBoxLayout(window)
    row.setContentsMargins(0, 0, 0, 0)
    row.setSpacing(0)
    row.addWidget(column)
    area = QtWidgets.QWidget()
    area.setObjectName("viewArea")
    grid = QtWidgets.QGridLayout(area)
    grid.setContentsMargins(0, 0, 0, 0)
    grid.setSpacing(0)
    for i, (name, image, text) in enumerate(views):
        r, c = divmod(i, 2)
        grid.addWidget(_view_frame(q, name, image, text, bar), r, c)
    row.addWidget(area, 1)
    window.show()  # offscreen: lays out and paints, nothing appears
    for _ in range(3):  # word-wrapped labels settle their height over a few layout passes
        QtWidgets.QApplication.processEvents()
        window.layout().activate()
    image = window.grab().toImage().convertToFormat(QtGui.QImage.Format_RGB888)
    window.close()
    w, h = image.width(), image.height()
    rgb = np.frombuffer(image.constBits(), np.uint8, count=image.bytesPerLine() * h).reshape(h, -1)[:, :3 * w]
    return write_png(rgb.reshape(h, w, 3), path)


def write_png(rgb: np.ndarray, path: Path) -> Path:
    """Palette PNG (median cut, no dithering: deterministic), 256 colours or fewer to stay under
    MAX_BYTES, written atomically."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        for colours in (256, 192, 160, 128, 96):  # fewest colour cuts that fit MAX_BYTES
            image = Image.fromarray(rgb).quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                                                  dither=Image.Dither.NONE)
            image.save(tmp, format="PNG", optimize=True)
            if tmp.stat().st_size <= MAX_BYTES:
                break
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def render_panel(panel: str, out_dir: Path = OUT_DIR, seed: int = 7) -> Path:
    """Build the panel's case, render it and write ``out_dir / PANELS[panel]``."""
    with tempfile.TemporaryDirectory(prefix="pasta_screenshots_") as work:
        if panel == "synthesis":
            case = build_synthesis(seed)
        elif panel == "reader_study":
            case = build_reader_study(seed, Path(work))
        elif panel == "segment":
            case = build_segment(seed)
        elif panel == "fewshot":
            case = build_fewshot(seed, Path(work))
        else:
            raise ValueError(f"unknown panel {panel!r}; one of {sorted(PANELS)}")
        path = compose(case, Path(out_dir) / PANELS[panel])
    size = path.stat().st_size
    if size > MAX_BYTES:
        print(f"warning: {path} is {size / 1000:.0f} KB (> {MAX_BYTES / 1000:.0f} KB)", file=sys.stderr)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", action="append", choices=sorted(PANELS),
                        help="panel to render (repeatable; default: all)")
    parser.add_argument("--out-dir", default=str(OUT_DIR), help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="synthesis / study seed (default: %(default)s)")
    args = parser.parse_args(argv)
    for panel in args.panel or list(PANELS):
        path = render_panel(panel, Path(args.out_dir), args.seed)
        print(f"wrote {path} ({path.stat().st_size / 1000:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

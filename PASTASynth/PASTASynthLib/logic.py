"""SynthesisLogic: MRML side of PASTA-Gen lesion synthesis.

The scene and the Volumes / Segmentations logics are injected, so the same class runs in
the Slicer application (``SynthesisLogic.from_slicer_application()``) and headless with
PyPI ``slicer-core`` (``SynthesisLogic.headless()``). It never modifies its inputs: every
result goes to new nodes, and a failed request (a PASTALib ``PastaError``: invalid
attribute, missing organ, lesion that does not fit...) leaves the scene exactly as it was.

Coordinates: Slicer markups are RAS, PASTALib is LPS (``x_lps = -x_ras``, ``y_lps = -y_ras``).
PASTALib is imported lazily inside the methods (keeps module loading light).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from PASTASlicerLib import mrml
from PASTASlicerLib.jobs import cli_command
from PASTASlicerLib.mrml import MRMLLogicBase

#: Node reference role from the output segmentation (and volume) to the report text node.
REPORT_REFERENCE_ROLE = "PASTAReport"
#: Attribute of the report text node holding the one-line report text.
REPORT_TEXT_ATTRIBUTE = "PASTA.ReportText"
#: Name of the (single) temporary preview volume.
PREVIEW_NAME = "PASTA preview"
PREVIEW_ATTRIBUTE = "PASTA.Preview"


def generate_command(output_dir: str | os.PathLike, *, templates: str | os.PathLike, per_type: int,
                     lesion_types: Sequence[str] | None = None, seed: int | None = None,
                     extra: Sequence[str] = (), python: str | None = None) -> list[str]:
    """``pasta synth generate`` (PASTA-Gen style dataset) with ``--progress-lines``.

    ``templates``: a folder of ``<name>/ct.nii.gz`` + ``<name>/organs.nii.gz`` (TotalSegmentator
    ids) or a CSV (see ``pasta synth generate --help``); ``per_type`` cases per lesion type.
    Rerunning the same command resumes.
    """
    args: list[str] = ["synth", "generate", "--templates", os.fspath(templates), "--out", os.fspath(output_dir),
                       "--per-type", str(int(per_type))]
    if seed is not None:
        args += ["--seed", str(int(seed))]
    args += [*extra, "--progress-lines"]
    if lesion_types:
        args += ["--types", *lesion_types]  # last: nargs="+"
    return cli_command(*args, python=python)


@dataclass
class SynthesisOutput:
    """Nodes and report produced by :meth:`SynthesisLogic.synthesize`.

    ``report`` is the structured report as a dict (``StructuredReport.to_dict()``),
    ``result`` the library's ``SynthesisResult`` (edited CT/labels as SimpleITK, resolved
    spec, timings), ``report_node`` a vtkMRMLTextNode with the report JSON.
    """

    volume_node: Any
    segmentation_node: Any
    report: dict
    report_node: Any = None
    result: Any = None
    organ_segment_id: str = ""
    lesion_segment_id: str = ""

    @property
    def nodes(self) -> list:
        return [n for n in (self.volume_node, self.segmentation_node, self.report_node) if n is not None]


@dataclass
class PreviewOutput:
    """The temporary preview: a volume holding only the changed crop of the synthetic CT."""

    volume_node: Any
    report: dict
    result: Any
    box: tuple = field(default_factory=tuple)  # input-grid index range (x, y, z) of the crop


class SynthesisLogic(MRMLLogicBase):
    """Load CTs, organ masks and locations from nodes, run synthesis into new nodes (node <->
    SimpleITK conversions and segmentations: PASTASlicerLib.mrml)."""

    # -- volumes ------------------------------------------------------------------------

    def load_ct(self, path: str | os.PathLike, name: str | None = None):
        """Load a CT file as a vtkMRMLScalarVolumeNode (geometry as the file says)."""
        node = mrml.load_volume(self.context, path, name)
        if node.GetClassName() != "vtkMRMLScalarVolumeNode":
            raise ValueError(f"{path} did not load as a scalar CT volume ({node.GetClassName()})")
        return node

    # -- organs and locations -----------------------------------------------------------

    def organ_masks(self, organ_labels, ct_node, ct_image=None):
        """``PASTALib.anatomy.OrganMasks`` on the CT grid from a segmentation node, a PASTA
        label map (SimpleITK, values 1-25) or an OrganMasks (returned as is).

        Segment names may be TotalSegmentator names ("liver", "kidney_left", "aorta"),
        aliases ("Right kidney", "lung_left") or PASTA names ("Liver", "Colon and rectum");
        PASTA lesion segments ("Liver tumor") count as lesions of their organ, so the
        healthy-organ check sees them. All segments are exported in one pass (order of the
        segmentation; later segments win where they overlap).
        """
        import SimpleITK as sitk

        from PASTALib.anatomy import OrganMasks
        from PASTALib.labels import LesionType

        if isinstance(organ_labels, OrganMasks):
            return organ_labels
        if ct_image is None:
            ct_image = mrml.volume_to_sitk(ct_node)
        if not hasattr(organ_labels, "GetSegmentation"):
            return OrganMasks.from_pasta_label_map(organ_labels, reference=ct_image)
        ids = mrml.segment_ids(organ_labels)
        if not ids:
            from PASTALib.errors import AnatomyError

            raise AnatomyError(f"The organ segmentation '{organ_labels.GetName()}' has no segments; "
                               "run TotalSegmentator or the lung mask first.")
        seg = organ_labels.GetSegmentation()
        lesion_names = {t.display_name.lower(): t for t in LesionType}
        names = {}
        for i, segment_id in enumerate(ids):
            name = seg.GetSegment(segment_id).GetName()
            lesion = lesion_names.get(name.strip().lower())
            names[i + 1] = f"lesion:{lesion.slug}" if lesion is not None else name
        array = mrml.label_array_from_segmentation(self.context, organ_labels, ct_node, ids)
        image = sitk.GetImageFromArray(array.astype(np.uint16 if len(ids) > 255 else np.uint8))
        image.CopyInformation(ct_image)
        return OrganMasks(image, names, source=f"segmentation '{organ_labels.GetName()}'")

    @staticmethod
    def location_lps(location) -> tuple[float, float, float] | None:
        """LPS mm of a location: a markups node (first control point, world RAS), a RAS
        triple, or None / an empty markups node (sample a location)."""
        if location is None:
            return None
        if hasattr(location, "GetNumberOfControlPoints"):
            if location.GetNumberOfControlPoints() == 0:
                return None
            ras = [0.0, 0.0, 0.0]
            location.GetNthControlPointPositionWorld(0, ras)
        else:
            ras = [float(v) for v in location]
            if len(ras) != 3:
                raise ValueError(f"A location is three RAS coordinates, got {location!r}")
        return (-float(ras[0]), -float(ras[1]), float(ras[2]))

    # -- synthesis (delegates to PASTALib.synth) ----------------------------------------

    @staticmethod
    def size_range_mm(lesion_type) -> tuple[float, float]:
        from PASTALib.labels import LesionType
        from PASTALib.synth import profile

        lo, hi = profile(LesionType.parse(lesion_type)).size_range_mm
        return float(lo), float(hi)

    @staticmethod
    def typical_size_mm(lesion_type) -> float:
        """Median diameter of the type's size prior (a sensible slider default)."""
        from PASTALib.labels import LesionType
        from PASTALib.synth import profile

        prof = profile(LesionType.parse(lesion_type))
        return float(np.clip(prof.size_median_mm, *prof.size_range_mm))

    def detect_enhancement(self, ct_node, organ_segmentation_node=None) -> tuple[Any, str]:
        """``(Phase or None, explanation)``: vessel-based phase detection when the organ
        segmentation has an aorta / inferior vena cava segment (``detect_phase``)."""
        from PASTALib.errors import AnatomyError

        if ct_node is None or organ_segmentation_node is None:
            return None, "Detected at synthesis (no organ segmentation selected)"
        from PASTALib.anatomy import detect_phase

        names = {n.strip().lower().replace(" ", "_") for n in mrml.segment_names(organ_segmentation_node)}
        if not names & {"aorta", "inferior_vena_cava"}:
            return None, "Estimated from organ HU at synthesis (no aorta/IVC segment)"
        ct_image = mrml.volume_to_sitk(ct_node)
        try:
            result = detect_phase(ct_image, self.organ_masks(organ_segmentation_node, ct_node, ct_image))
        except AnatomyError as exc:
            return None, str(exc)
        return result.phase, result.explanation

    @staticmethod
    def spec_from_parameters(lesion_type: str, size_xyz_mm=None, *, shape=None, density=None,
                             heterogeneity=None, surface=None, invasion=None, seed: int = 0,
                             side=None) -> dict:
        """LesionSpec dict from GUI values (report wordings; None / "" = sample from the profile)."""
        spec: dict[str, Any] = {"lesion_type": lesion_type, "seed": int(seed)}
        if size_xyz_mm is not None:
            spec["size_mm"] = [float(v) for v in size_xyz_mm]
        for key, value in (("shape", shape), ("density", density), ("heterogeneity", heterogeneity),
                           ("surface", surface), ("invasion", invasion), ("side", side)):
            if value not in (None, ""):
                spec[key] = value
        return spec

    def _spec_with_location(self, spec, location):
        from PASTALib.synth import LesionSpec

        if isinstance(spec, Mapping):
            spec = LesionSpec.from_dict(dict(spec))
        center = self.location_lps(location)
        if center is not None:
            spec = replace(spec, center_mm=center)
        return spec

    def _run(self, ct_node, organ_labels, spec, location=None, *, impression=None, phase=None, refiner=None):
        """Call PASTALib; adds nothing to the scene (temporary export nodes are removed)."""
        from PASTALib.synth.pipeline import synthesize_lesion_in_masks

        if ct_node is None:
            raise ValueError("Select a CT volume")
        if organ_labels is None:
            raise ValueError("Select an organ segmentation (or run TotalSegmentator / the lung mask)")
        spec = self._spec_with_location(spec, location)
        spec.validate()  # bad attributes fail before any image work
        ct_image = mrml.volume_to_sitk(ct_node)
        masks = self.organ_masks(organ_labels, ct_node, ct_image)
        return synthesize_lesion_in_masks(ct_image, masks, spec, phase=phase, impression=impression, refiner=refiner)

    def synthesize(self, ct_node, organ_segmentation_node, spec, location=None, *,
                   output_name: str | None = None, impression: str | None = None, phase=None,
                   refiner=None) -> SynthesisOutput:
        """Insert one synthetic lesion; the input CT node is never modified.

        ``organ_segmentation_node``: organ segments (TotalSegmentator or PASTA names), or a
        PASTA label map (SimpleITK) on the CT grid. ``spec``: ``LesionSpec`` or its dict
        (``lesion_type``, ``size_mm`` x/y/z, ``shape``, ``density``... ``seed``).
        ``location``: markups fiducial node / RAS triple (lesion centre) or None (sampled).
        Creates a scalar volume "<CT> + <Lesion type>", a segmentation (organ + lesion,
        named, coloured, SNOMED CT terminology) and a vtkMRMLTextNode with the report JSON
        (one-line text in attribute ``PASTA.ReportText``) referenced from the segmentation
        and the volume (role ``PASTAReport``). Any previous preview is removed. PASTALib
        errors (``PastaError``) propagate with their message; the scene is then unchanged.
        """
        from PASTALib.labels import LesionType

        result = self._run(ct_node, organ_segmentation_node, spec, location,
                           impression=impression, phase=phase, refiner=refiner)
        lesion = LesionType.parse(result.spec.lesion_type)
        organ = lesion.organ
        base = output_name or f"{ct_node.GetName()} + {lesion.display_name}"
        created: list = []
        try:
            volume = mrml.sitk_to_volume(self.context, result.ct, base)
            created.append(volume)
            display_src, display_dst = ct_node.GetDisplayNode(), volume.GetDisplayNode()
            if display_src is not None and display_dst is not None:
                display_dst.SetAutoWindowLevel(False)
                display_dst.SetWindowLevel(display_src.GetWindow(), display_src.GetLevel())
            names = {int(organ): organ.display_name, int(lesion): lesion.display_name}
            segmentation = mrml.segmentation_from_label_map(self.context, result.labels, volume, names,
                                                            name=f"{base} segmentation")
            created.append(segmentation)
            seg = segmentation.GetSegmentation()
            organ_id = seg.GetSegmentIdBySegmentName(organ.display_name) or ""
            lesion_id = seg.GetSegmentIdBySegmentName(lesion.display_name) or ""
            report = result.report.to_dict()
            report_node = self.context.scene.AddNewNodeByClass("vtkMRMLTextNode", f"{base} report")
            created.append(report_node)
            report_node.SetText(result.report.to_json())
            report_node.SetAttribute(REPORT_TEXT_ATTRIBUTE, result.report.to_text())
            report_node.SetAttribute("PASTA.Spec", json.dumps(result.spec.to_dict()))
            for node in (segmentation, volume):
                node.SetNodeReferenceID(REPORT_REFERENCE_ROLE, report_node.GetID())
            volume.SetAttribute("PASTA.SourceVolume", ct_node.GetID() or "")
        except BaseException:
            for node in reversed(created):
                self.context.remove_node(node)
            raise
        self.clear_preview()
        return SynthesisOutput(volume, segmentation, report, report_node, result, organ_id, lesion_id)

    @staticmethod
    def report_node_of(node):
        """The report text node referenced from an output volume / segmentation (or None)."""
        return node.GetNodeReference(REPORT_REFERENCE_ROLE) if node is not None else None

    def remove_outputs(self, output: SynthesisOutput) -> None:
        """Undo an Apply: remove the output volume, segmentation and report node."""
        for node in output.nodes:
            self.context.remove_node(node)

    # -- preview --------------------------------------------------------------------------

    def preview(self, ct_node, organ_segmentation_node, spec, location=None, *,
                impression: str | None = None, phase=None, refiner=None) -> PreviewOutput:
        """Synthesize and put only the changed crop into the temporary preview volume.

        The preview volume ("PASTA preview") has the crop's exact geometry (show it as the
        foreground layer over the input CT). It is replaced on each call and removed by
        :meth:`clear_preview`, :meth:`synthesize` (Apply) or the widget's Cancel. On error
        the previous preview stays and nothing is added.
        """
        result = self._run(ct_node, organ_segmentation_node, spec, location,
                           impression=impression, phase=phase, refiner=refiner)
        box = result.changed_box
        crop = result.ct[box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]]
        node = self.preview_node()
        node = mrml.sitk_to_volume(self.context, crop, PREVIEW_NAME, node=node)
        node.SetAttribute(PREVIEW_ATTRIBUTE, "1")
        node.SetAttribute(REPORT_TEXT_ATTRIBUTE, result.report.to_text())
        display_src, display_dst = ct_node.GetDisplayNode(), node.GetDisplayNode()
        if display_src is not None and display_dst is not None:
            display_dst.SetAutoWindowLevel(False)
            display_dst.SetWindowLevel(display_src.GetWindow(), display_src.GetLevel())
        return PreviewOutput(node, result.report.to_dict(), result, box)

    def preview_node(self):
        """The current preview volume of this scene, or None."""
        scene = self.context.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if node.GetAttribute(PREVIEW_ATTRIBUTE) == "1":
                return node
        return None

    def clear_preview(self) -> None:
        """Remove the preview volume (Apply / Cancel)."""
        node = self.preview_node()
        while node is not None:
            self.context.remove_node(node)
            node = self.preview_node()

    # -- organ masks: lung mask, TotalSegmentator -----------------------------------------

    def segmentation_from_organ_masks(self, masks, ct_node, name: str):
        """Segmentation node with one segment per structure present in ``masks``."""
        present = set(masks.present_structures())
        names = {v: n for v, n in masks.names.items() if n in present}
        if not names:
            from PASTALib.errors import AnatomyError

            raise AnatomyError(f"No structure was found in the CT ({masks.source}).")
        return mrml.segmentation_from_label_map(self.context, masks.label_map, ct_node, names, name=name)

    def lung_mask_segmentation(self, ct_node, name: str | None = None):
        """Classical lung mask (threshold + components) as a segmentation: "Right lung",
        "Left lung". Raises AnatomyError when no lung is found (not a chest CT)."""
        from PASTALib.anatomy import OrganMasks, classical_lung_mask

        masks = classical_lung_mask(mrml.volume_to_sitk(ct_node))
        display = {"lung_right": "Right lung", "lung_left": "Left lung"}
        masks = OrganMasks(masks.label_map, {v: display.get(n, n) for v, n in masks.names.items()}, masks.source)
        return self.segmentation_from_organ_masks(masks, ct_node, name or f"{ct_node.GetName()} lungs")

    def totalsegmentator_segmentation(self, ct_node, fast: bool = True, device: str = "cpu",
                                      name: str | None = None, allow_download: bool = False):
        """TotalSegmentator ``total`` organs as a segmentation (segments named like
        TotalSegmentator: "liver", "kidney_left", ...). Without TotalSegmentator or its
        weights this raises ``MissingWeightsError`` with the install steps; TotalSegmentator
        downloads missing weights only with ``allow_download`` (and never with PASTA_OFFLINE=1)."""
        from PASTALib.anatomy import run_totalsegmentator

        masks = run_totalsegmentator(mrml.volume_to_sitk(ct_node), fast=fast, device=device,
                                     allow_download=allow_download)
        return self.segmentation_from_organ_masks(masks, ct_node, name or f"{ct_node.GetName()} organs")

    def import_totalsegmentator_labels(self, label_path: str | os.PathLike, ct_node, name: str | None = None):
        """The label map written by ``PASTASynthLib.totalsegmentator_job`` as an organ segmentation
        of ``ct_node``, or None when the CT left the scene while the job ran (scene closed, node
        deleted): a finished job then adds nothing and raises nothing."""
        from PASTASlicerLib.jobs import nodes_in_scene

        if not nodes_in_scene(self.scene, ct_node):
            return None
        from PASTALib.anatomy import OrganMasks, resample_labels_to
        from PASTALib.anatomy.totalseg_classes import TOTAL_CLASSES
        from PASTALib.io.image import read_label

        ct_image = mrml.volume_to_sitk(ct_node)
        labels = resample_labels_to(read_label(label_path), ct_image)
        masks = OrganMasks(labels, dict(TOTAL_CLASSES), source="TotalSegmentator total")
        return self.segmentation_from_organ_masks(masks, ct_node, name or f"{ct_node.GetName()} organs")

    # -- reports --------------------------------------------------------------------------

    @staticmethod
    def report_text(report: Mapping[str, Any]) -> str:
        return str(report.get("text") or json.dumps(dict(report), indent=2, ensure_ascii=False))

    @staticmethod
    def save_report(report: Mapping[str, Any], path: str | os.PathLike) -> None:
        """Write the report as JSON (validated against PASTALib's schema)."""
        from PASTALib.report.schema import validate_report

        validate_report(dict(report))
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dict(report), f, indent=2, ensure_ascii=False)
            f.write("\n")

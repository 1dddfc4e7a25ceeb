"""SynthesisLogic: MRML side of PASTA-Gen lesion synthesis.

The scene and the Volumes / Segmentations logics are injected, so the same class runs in
the Slicer application (``SynthesisLogic.from_slicer_application()``) and headless with
PyPI ``slicer-core`` (``SynthesisLogic.headless()``). It never modifies its inputs: every
result goes to new nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from . import mrml
from .mrml import MRMLContext


@dataclass
class SynthesisOutput:
    """Nodes and report produced by :meth:`SynthesisLogic.synthesize`."""

    volume_node: Any
    segmentation_node: Any
    report: dict


class SynthesisLogic:
    """Load CTs, convert nodes <-> SimpleITK, build segmentations, run synthesis."""

    def __init__(self, scene=None, volumes_logic=None, segmentations_logic=None, *,
                 context: MRMLContext | None = None):
        if context is None:
            if scene is None or volumes_logic is None or segmentations_logic is None:
                raise ValueError("Pass scene, volumes_logic and segmentations_logic, or context=")
            context = MRMLContext(scene, volumes_logic, segmentations_logic)
        self.context = context

    @classmethod
    def headless(cls) -> "SynthesisLogic":
        return cls(context=MRMLContext.headless())

    @classmethod
    def from_slicer_application(cls) -> "SynthesisLogic":
        return cls(context=MRMLContext.from_slicer_application())

    @property
    def scene(self):
        return self.context.scene

    # -- volumes ------------------------------------------------------------------------

    def load_ct(self, path: str | os.PathLike, name: str | None = None):
        """Load a CT file as a vtkMRMLScalarVolumeNode (geometry as the file says)."""
        node = mrml.load_volume(self.context, path, name)
        if node.GetClassName() != "vtkMRMLScalarVolumeNode":
            raise ValueError(f"{path} did not load as a scalar CT volume ({node.GetClassName()})")
        return node

    def volume_to_sitk(self, node):
        """SimpleITK image (LPS) with the node's voxels and exact geometry."""
        return mrml.volume_to_sitk(node)

    def sitk_to_volume(self, image, name: str, labelmap: bool = False):
        """New scalar (or labelmap) volume node from a SimpleITK image, geometry exact."""
        node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        return mrml.sitk_to_volume(self.context, image, name, node_class)

    def clone_volume(self, node, name: str):
        """Deep copy of a volume node, so the input is never modified."""
        return mrml.clone_volume(self.context, node, name)

    # -- segmentations ------------------------------------------------------------------

    def segmentation_from_label_map(self, label_map, reference_volume, names: Mapping[int, str],
                                    colors: Mapping[int, Sequence[float]] | None = None,
                                    name: str = "Segmentation"):
        """vtkMRMLSegmentationNode with one named, coloured segment per value in ``names``.

        ``label_map``: numpy ``[k, j, i]`` array on ``reference_volume``'s grid, or a
        SimpleITK image. Values missing from ``names`` are ignored.
        """
        return mrml.segmentation_from_label_map(self.context, label_map, reference_volume,
                                                names, colors, name)

    def segment_voxel_counts(self, segmentation_node, reference_volume) -> dict[str, int]:
        return mrml.segment_voxel_counts(self.context, segmentation_node, reference_volume)

    def segmentation_to_sitk(self, segmentation_node, reference_volume, values: Mapping[str, int] | None = None):
        """Label map (SimpleITK, reference geometry): segment named ``n`` -> ``values[n]``.

        Without ``values`` segments get 1..N in segmentation order. Overlaps: later wins.
        """
        import numpy as np
        import SimpleITK as sitk

        ids = mrml.segment_ids(segmentation_node)
        seg = segmentation_node.GetSegmentation()
        shape = tuple(reversed(reference_volume.GetImageData().GetDimensions()))
        out = np.zeros(shape, np.uint16)
        for i, segment_id in enumerate(ids):
            segment_name = seg.GetSegment(segment_id).GetName()
            value = (values or {}).get(segment_name, i + 1 if values is None else 0)
            if value:
                out[mrml.segment_mask(self.context, segmentation_node, segment_id, reference_volume)] = value
        image = sitk.GetImageFromArray(out)
        image.CopyInformation(mrml.volume_to_sitk(reference_volume))
        return image

    def save_segmentation(self, segmentation_node, path: str | os.PathLike) -> None:
        mrml.save_node(segmentation_node, path)

    # -- synthesis (delegates to PASTALib.synth) ----------------------------------------

    def synthesize(self, ct_node, organ_labels, spec, output_name: str | None = None,
                   **options) -> SynthesisOutput:
        """Insert one synthetic lesion; the input CT node is left untouched.

        Delegates to ``PASTALib.synth.synthesize_lesion(ct: sitk.Image, organ_labels:
        sitk.Image, spec: LesionSpec | dict, *, phase=None, impression=None, refiner=None)
        -> SynthesisResult(ct, labels, report: StructuredReport, spec, ...)``, imported
        lazily so that loading the module never pulls heavy dependencies. (The original plan
        was ``synthesize_lesion(ct, organs: OrganMasks, spec, rng)``; the landed engine takes
        a PASTA organ label map, values 1-10, on the CT grid, and the seed inside ``spec``.)

        ``organ_labels``: a SimpleITK PASTA organ label map, or a segmentation node whose
        segments are named like ``PASTALib.labels.Organ`` display names (converted on the
        CT grid). ``options`` go to ``synthesize_lesion`` (phase, impression, refiner).
        Returns a new CT volume node, a segmentation node (organs + lesion, PASTA-Gen
        names) and the structured report as a dict.
        """
        from PASTALib import synth  # lazy: keeps module loading light
        from PASTALib.labels import LesionType, Organ

        names = {int(o): o.display_name for o in Organ}
        names.update({int(t): t.display_name for t in LesionType})
        if hasattr(organ_labels, "GetSegmentation"):
            organ_labels = self.segmentation_to_sitk(organ_labels, ct_node,
                                                     {n: v for v, n in names.items() if v <= 10})
        result = synth.synthesize_lesion(self.volume_to_sitk(ct_node), organ_labels, spec, **options)
        base = output_name or f"{ct_node.GetName()} synthetic"
        volume = self.sitk_to_volume(result.ct, base)
        display_src, display_dst = ct_node.GetDisplayNode(), volume.GetDisplayNode()
        if display_src is not None and display_dst is not None:
            display_dst.SetAutoWindowLevel(False)
            display_dst.SetWindowLevel(display_src.GetWindow(), display_src.GetLevel())
        segmentation = self.segmentation_from_label_map(result.labels, volume, names,
                                                        name=f"{base} labels")
        report = result.report.to_dict() if hasattr(result.report, "to_dict") else dict(result.report)
        return SynthesisOutput(volume, segmentation, report)

"""Thin MRML helper layer shared by the PASTA and PASTASynth modules.

Everything here uses only APIs that exist both in the Slicer application and in PyPI
``slicer-core`` (MRML nodes, ``vtkSlicer*Logic`` objects, storage nodes, VTK numpy
support). The scene and the logic objects are always passed in explicitly through an
:class:`MRMLContext`; nothing is looked up through ``slicer.app`` / ``slicer.mrmlScene``
except in :meth:`MRMLContext.from_slicer_application`, which only the Slicer GUI calls.

Geometry convention: SimpleITK images are LPS, MRML volume nodes are RAS, so
``IJKToRAS = diag(-1, -1, 1) @ IJKToLPS``. Voxel arrays are indexed ``[k, j, i]`` in both
(``sitk.GetArrayFromImage`` and ``slicer.util.arrayFromVolume`` agree).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

import slicer
import vtk
import vtk.util.numpy_support as vtk_np

#: Flip between LPS (ITK) and RAS (Slicer) physical coordinates; it is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# Loading-option bits of vtkSlicerVolumesLogic.AddArchetypeVolume.
_LOAD_LABELMAP = 1
_LOAD_SINGLE_FILE = 4


@dataclass
class MRMLContext:
    """The MRML scene plus the module logics the PASTA logic needs (injectable)."""

    scene: Any
    volumes_logic: Any
    segmentations_logic: Any
    app_logic: Any = None
    _keepalive: list = field(default_factory=list, repr=False)

    @classmethod
    def headless(cls) -> "MRMLContext":
        """A fresh scene wired like Slicer's core (works with PyPI ``slicer-core``)."""
        scene = slicer.vtkMRMLScene()
        app = slicer.vtkSlicerApplicationLogic()
        app.SetMRMLScene(scene)
        colors = app.GetColorLogic()
        colors.SetMRMLScene(scene)
        colors.AddDefaultColorNodes()
        app.SetModuleLogic("Colors", colors)
        volumes = slicer.vtkSlicerVolumesLogic()
        volumes.SetMRMLScene(scene)
        volumes.SetMRMLApplicationLogic(app)
        app.SetModuleLogic("Volumes", volumes)
        segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        segmentations.SetMRMLScene(scene)
        segmentations.SetMRMLApplicationLogic(app)
        app.SetModuleLogic("Segmentations", segmentations)
        return cls(scene, volumes, segmentations, app, [colors])

    @classmethod
    def from_slicer_application(cls) -> "MRMLContext":
        """The running Slicer application's scene and logics (GUI / Slicer tests only)."""
        return cls(
            slicer.mrmlScene,
            slicer.modules.volumes.logic(),
            slicer.modules.segmentations.logic(),
            slicer.app.applicationLogic(),
        )

    def remove_node(self, node) -> None:
        """Remove a node with its display and storage nodes (no leftovers in the scene)."""
        if node is None or node.GetScene() is None:
            return
        dependents = []
        for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                              ("GetNthStorageNode", "GetNumberOfStorageNodes")):
            if hasattr(node, count):
                dependents += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
        self.scene.RemoveNode(node)
        for dependent in dependents:
            if dependent is not None and dependent.GetScene() is not None:
                self.scene.RemoveNode(dependent)


# ---------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------


def ijk_to_ras_matrix(node) -> np.ndarray:
    """4x4 IJK->RAS matrix of a volume node as numpy."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def sitk_geometry_to_ras(image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin_ras, spacing, direction_ras 3x3 with unit columns) of a 3D SimpleITK image."""
    direction_lps = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    origin_ras = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return origin_ras, np.array(image.GetSpacing(), dtype=float), LPS_TO_RAS @ direction_lps


def set_volume_geometry_from_sitk(node, image) -> None:
    origin_ras, spacing, direction_ras = sitk_geometry_to_ras(image)
    node.SetOrigin(*origin_ras.tolist())
    node.SetSpacing(*spacing.tolist())
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(direction_ras[r, c]))
    node.SetIJKToRASDirectionMatrix(m)


def _check_untransformed(node) -> None:
    if node.GetParentTransformNode() is not None:
        raise ValueError(
            f"Volume '{node.GetName()}' is under a transform; harden the transform "
            "(Data module > right-click > Harden transform) before running PASTA."
        )


# ---------------------------------------------------------------------------------------
# Volume <-> numpy / SimpleITK
# ---------------------------------------------------------------------------------------


def array_from_volume(node) -> np.ndarray:
    """Copy of the voxel array ``[k, j, i]`` of a scalar or labelmap volume node."""
    image = node.GetImageData()
    if image is None:
        raise ValueError(f"Volume '{node.GetName()}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"Volume '{node.GetName()}' is not a scalar volume")
    shape = tuple(reversed(image.GetDimensions()))
    return vtk_np.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape).copy()


def update_volume_from_array(node, array: np.ndarray) -> None:
    """Replace the voxels of ``node`` with a deep copy of ``array`` (``[k, j, i]``)."""
    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise ValueError(f"Expected a 3D array, got shape {array.shape}")
    if array.dtype == np.int64 or array.dtype == np.uint64:
        # "long long" scalars do not render in Slicer; label maps fit in 32 bits.
        array = array.astype(np.int32)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(*reversed(array.shape))
    vtk_array = vtk_np.numpy_to_vtk(array.ravel(), deep=True, array_type=vtk_np.get_vtk_array_type(array.dtype))
    image.GetPointData().SetScalars(vtk_array)
    node.SetAndObserveImageData(image)


def volume_to_sitk(node):
    """SimpleITK image (LPS) with the voxels and exact geometry of a volume node."""
    import SimpleITK as sitk

    _check_untransformed(node)
    image = sitk.GetImageFromArray(array_from_volume(node))
    image.SetSpacing([float(s) for s in node.GetSpacing()])
    image.SetOrigin((LPS_TO_RAS @ np.array(node.GetOrigin(), dtype=float)).tolist())
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    direction_ras = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
    image.SetDirection((LPS_TO_RAS @ direction_ras).ravel().tolist())
    return image


def sitk_to_volume(
    ctx: MRMLContext,
    image,
    name: str,
    node_class: str = "vtkMRMLScalarVolumeNode",
    node=None,
):
    """Add (or update ``node``) a volume node holding a SimpleITK image, geometry exact."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("Only 3D scalar SimpleITK images can become volume nodes")
    if node is None:
        node = ctx.scene.AddNewNodeByClass(node_class, name)
    else:
        node.SetName(name)
    set_volume_geometry_from_sitk(node, image)
    update_volume_from_array(node, sitk.GetArrayFromImage(image))
    node.CreateDefaultDisplayNodes()
    return node


def array_to_volume(ctx: MRMLContext, array: np.ndarray, reference_volume, name: str,
                    node_class: str = "vtkMRMLScalarVolumeNode"):
    """Add a volume node with ``array`` (``[k, j, i]``) on the grid of ``reference_volume``."""
    ref_shape = tuple(reversed(reference_volume.GetImageData().GetDimensions()))
    if tuple(array.shape) != ref_shape:
        raise ValueError(f"Array shape {array.shape} does not match the reference volume {ref_shape}")
    node = ctx.scene.AddNewNodeByClass(node_class, name)
    m = vtk.vtkMatrix4x4()
    reference_volume.GetIJKToRASMatrix(m)
    node.SetIJKToRASMatrix(m)
    update_volume_from_array(node, array)
    node.CreateDefaultDisplayNodes()
    return node


def clone_volume(ctx: MRMLContext, node, name: str):
    """Deep copy of a scalar volume (voxels, geometry, display), so inputs stay untouched."""
    clone = ctx.scene.AddNewNodeByClass(node.GetClassName(), name)
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    clone.SetIJKToRASMatrix(m)
    image = vtk.vtkImageData()
    image.DeepCopy(node.GetImageData())
    clone.SetAndObserveImageData(image)
    clone.CreateDefaultDisplayNodes()
    src_display, dst_display = node.GetDisplayNode(), clone.GetDisplayNode()
    if src_display is not None and dst_display is not None:
        dst_display.Copy(src_display)
    if node.GetParentTransformNode() is not None:
        clone.SetAndObserveTransformNodeID(node.GetParentTransformNode().GetID())
    return clone


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def load_volume(ctx: MRMLContext, path: str | os.PathLike, name: str | None = None,
                labelmap: bool = False):
    """Load a volume file (.nrrd, .nii.gz, .mha, ...) through vtkSlicerVolumesLogic."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Volume file not found: {path}")
    if name is None:
        name = os.path.basename(path).split(".")[0]
    options = _LOAD_SINGLE_FILE | (_LOAD_LABELMAP if labelmap else 0)
    # The four-argument overload: the user-messages argument exists only in Slicer 5.13+.
    node = ctx.volumes_logic.AddArchetypeVolume(path, name, options, None)
    if node is None:
        raise OSError(f"Could not load volume {path}: no volume reader accepted the file "
                      "(not an image format Slicer reads, or a corrupt file)")
    return node


def save_node(node, path: str | os.PathLike) -> None:
    """Write a storable node (volume, segmentation, markups...) with its default storage node."""
    path = os.fspath(path)
    storage = node.GetStorageNode()
    if storage is None:
        node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
    if storage is None:
        raise OSError(f"Node '{node.GetName()}' cannot be stored")
    storage.SetFileName(path)
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(1)
    if not storage.WriteData(node):
        raise OSError(f"Could not write '{node.GetName()}' to {path}")


def write_volume(node, path: str | os.PathLike) -> None:
    """Write a volume with SimpleITK for a subprocess (compressed only for a ``.gz`` name: an
    uncompressed .nii is fast to write and to read)."""
    import SimpleITK as sitk

    path = os.fspath(path)
    sitk.WriteImage(volume_to_sitk(node), path, path.endswith(".gz"))


def load_segmentation(ctx: MRMLContext, path: str | os.PathLike, name: str | None = None):
    """Load a .seg.nrrd (or labelmap file read as a segmentation) through the Segmentations logic."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Segmentation file not found: {path}")
    node = ctx.segmentations_logic.LoadSegmentationFromFile(path, False, name or "")
    if node is None:
        raise OSError(f"Could not load segmentation {path}")
    return node


# ---------------------------------------------------------------------------------------
# Segmentations
# ---------------------------------------------------------------------------------------

# SNOMED CT codes (DICOM "SCT" scheme) for the anatomy PASTA works with; keys are
# lower-case names with spaces (TotalSegmentator names normalised, or PASTA organ names).
_ANATOMY = ("SCT", "123037004", "Anatomical Structure")
_ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")
_TISSUE = ("SCT", "85756007", "Tissue")
_RIGHT = ("SCT", "24028007", "Right")
_LEFT = ("SCT", "7771000", "Left")
_LIVER = ("SCT", "10200004", "Liver")
_KIDNEY = ("SCT", "64033007", "Kidney")
_BLADDER = ("SCT", "89837001", "Urinary bladder")
_GALLBLADDER = ("SCT", "28231008", "Gallbladder")
_PANCREAS = ("SCT", "15776009", "Pancreas")
_ESOPHAGUS = ("SCT", "32849002", "Esophagus")
_STOMACH = ("SCT", "69695003", "Stomach")
_COLON = ("SCT", "71854001", "Colon")
_LUNG = ("SCT", "39607008", "Lung")
_BONE = ("SCT", "272673000", "Bone")
_NEOPLASM = ("SCT", "108369006", "Neoplasm")
_CYST = ("SCT", "441457006", "Cyst")
_CALCULUS = ("SCT", "56381008", "Calculus")
TERMINOLOGY: dict[str, tuple] = {
    "liver": (_ANATOMY, _LIVER, None),
    "spleen": (_ANATOMY, ("SCT", "78961009", "Spleen"), None),
    "kidney": (_ANATOMY, _KIDNEY, None),
    "kidney right": (_ANATOMY, _KIDNEY, _RIGHT),
    "kidney left": (_ANATOMY, _KIDNEY, _LEFT),
    "right kidney": (_ANATOMY, _KIDNEY, _RIGHT),
    "left kidney": (_ANATOMY, _KIDNEY, _LEFT),
    "urinary bladder": (_ANATOMY, _BLADDER, None),
    "bladder": (_ANATOMY, _BLADDER, None),
    "gallbladder": (_ANATOMY, _GALLBLADDER, None),
    "pancreas": (_ANATOMY, _PANCREAS, None),
    "esophagus": (_ANATOMY, _ESOPHAGUS, None),
    "stomach": (_ANATOMY, _STOMACH, None),
    "colon": (_ANATOMY, _COLON, None),
    "colon and rectum": (_ANATOMY, _COLON, None),
    "lung": (_ANATOMY, _LUNG, None),
    "lung right": (_ANATOMY, _LUNG, _RIGHT),
    "lung left": (_ANATOMY, _LUNG, _LEFT),
    "right lung": (_ANATOMY, _LUNG, _RIGHT),
    "left lung": (_ANATOMY, _LUNG, _LEFT),
    "bone": (_ANATOMY, _BONE, None),
    "aorta": (_TISSUE, ("SCT", "15825003", "Aorta"), None),
    "inferior vena cava": (_TISSUE, ("SCT", "64131007", "Inferior vena cava"), None),
    "tumor": (_ALTERED, _NEOPLASM, None),
    "cancer": (_ALTERED, _NEOPLASM, None),
    "metastasis": (_ALTERED, _NEOPLASM, None),
    "cyst": (_ALTERED, _CYST, None),
    "stone": (_ALTERED, _CALCULUS, None),
    "gallstone": (_ALTERED, _CALCULUS, None),
}

#: Anatomic region of a lesion segment, from the first word of its name ("Liver tumor").
LESION_REGION: dict[str, tuple] = {
    "liver": _LIVER, "kidney": _KIDNEY, "bladder": _BLADDER, "gallbladder": _GALLBLADDER,
    "gallstone": _GALLBLADDER, "pancreas": _PANCREAS, "esophageal": _ESOPHAGUS, "gastric": _STOMACH,
    "colorectal": _COLON, "lung": _LUNG, "bone": _BONE,
}

#: Segment colours (RGB 0-255): Slicer's recommended anatomy colours for organs (DICOM
#: master list / GenericAnatomyColors); lesions get saturated colours that stand out on CT.
TERMINOLOGY_COLORS: dict[str, tuple[int, int, int]] = {
    "Liver": (221, 130, 101), "Kidney": (185, 102, 83), "Spleen": (157, 108, 162),
    "Urinary bladder": (222, 154, 132), "Gallbladder": (139, 150, 98), "Pancreas": (249, 180, 111),
    "Esophagus": (211, 171, 143), "Stomach": (216, 132, 105), "Colon": (204, 168, 143),
    "Lung": (197, 165, 145), "Bone": (241, 214, 145), "Aorta": (224, 97, 76),
    "Inferior vena cava": (0, 151, 206),
    "Neoplasm": (255, 40, 40), "Cyst": (40, 220, 255), "Calculus": (255, 240, 0),
}

#: Default segment colours (RGB 0-1), cycled by label order when no colour is known.
DEFAULT_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.87, 0.55, 0.41), (0.56, 0.93, 0.56), (0.30, 0.55, 0.85), (0.95, 0.85, 0.35),
    (0.80, 0.35, 0.70), (0.35, 0.80, 0.80), (0.95, 0.50, 0.20), (0.60, 0.45, 0.30),
    (0.90, 0.30, 0.30), (0.85, 0.85, 0.85),
)


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def terminology_for(name: str):
    """``(category, type, type_modifier)`` coded tuples for a segment name, or None."""
    key = _key(name)
    if key in TERMINOLOGY:
        return TERMINOLOGY[key]
    for word in ("gallstone", "cyst", "stone", "metastasis", "cancer", "tumor"):
        if key.endswith(word):
            return TERMINOLOGY[word]
    return None


def lesion_region_for(name: str):
    """Coded anatomic region of a lesion segment name ("Liver tumor" -> Liver), or None."""
    term = terminology_for(name)
    if term is None or term[0] != _ALTERED:
        return None
    key = _key(name)
    return LESION_REGION.get(key.split(" ")[0]) or LESION_REGION.get(key)


def color_for(name: str):
    """Recommended RGB (0-255) of a segment name from its terminology type, or None."""
    term = terminology_for(name)
    return TERMINOLOGY_COLORS.get(term[1][2]) if term is not None else None


def terminology_string(name: str) -> str:
    """Slicer's serialised terminology entry for a segment name ('' when unknown).

    Lesions ("Liver tumor") get category Morphologically Altered Structure, their type
    (Neoplasm / Cyst / Calculus) and the organ as anatomic region.
    """
    term = terminology_for(name)
    if term is None:
        return ""
    category, type_, modifier = term
    region = lesion_region_for(name)
    code = "^".join
    return "~".join([
        "Segmentation category and type - DICOM master list",
        code(category), code(type_), code(modifier or ("", "", "")),
        "Anatomic codes - DICOM master list", code(region or ("", "", "")), "^^",
    ])


def make_color_table(ctx: MRMLContext, names: Mapping[int, str],
                     colors: Mapping[int, Sequence[float]] | None = None,
                     table_name: str = "PASTA labels"):
    """A user colour table whose entry ``v`` is named ``names[v]`` (with terminology)."""
    table = ctx.scene.AddNewNodeByClass("vtkMRMLColorTableNode", table_name)
    table.SetTypeToUser()
    table.SetHideFromEditors(True)
    table.SetNumberOfColors(int(max(names)) + 1)
    table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for i, value in enumerate(sorted(names)):
        rgb = ((colors or {}).get(value) or color_for(str(names[value]))
               or DEFAULT_COLORS[i % len(DEFAULT_COLORS)])
        rgb = [c / 255.0 for c in rgb] if max(rgb) > 1.0 else list(rgb)
        table.SetColor(int(value), str(names[value]), float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)
        term = terminology_string(str(names[value]))
        if term:
            table.SetTerminologyFromString(int(value), term)
    return table


def segmentation_from_label_map(
    ctx: MRMLContext,
    label_map,
    reference_volume,
    names: Mapping[int, str],
    colors: Mapping[int, Sequence[float]] | None = None,
    name: str = "Segmentation",
):
    """New segmentation node with one segment per label value listed in ``names``.

    ``label_map`` is a numpy ``[k, j, i]`` array on the reference volume's grid, or a
    SimpleITK image (its own geometry is used). Label values not in ``names`` are
    dropped. Segment names, colours and terminology come from a temporary colour table,
    imported with ``vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode``.
    """
    if not names:
        raise ValueError("names must list at least one label value")
    if isinstance(label_map, np.ndarray):
        array = label_map
        labelmap_node = array_to_volume(ctx, np.zeros(array.shape, np.uint8), reference_volume,
                                        "__pasta_tmp_labels__", "vtkMRMLLabelMapVolumeNode")
    else:
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(label_map)
        labelmap_node = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__pasta_tmp_labels__")
        set_volume_geometry_from_sitk(labelmap_node, label_map)
    keep = np.isin(array, np.fromiter(names.keys(), dtype=np.int64))
    max_value = max(names)
    dtype = np.uint8 if max_value < 256 else np.uint16 if max_value < 65536 else np.int32
    update_volume_from_array(labelmap_node, np.where(keep, array, 0).astype(dtype))
    labelmap_node.CreateDefaultDisplayNodes()
    table = make_color_table(ctx, names, colors)
    labelmap_node.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())

    segmentation = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    try:
        ok = ctx.segmentations_logic.ImportLabelmapToSegmentationNode(labelmap_node, segmentation)
        if not ok:
            raise RuntimeError("ImportLabelmapToSegmentationNode failed")
    finally:
        ctx.remove_node(labelmap_node)
        ctx.remove_node(table)
    # The import takes names and colours from the table; terminology is set explicitly
    # (the import leaves the generic "Tissue" entry), and marked as user-chosen so Slicer
    # does not regenerate names/colours from terminology.
    seg = segmentation.GetSegmentation()
    for segment_id in segment_ids(segmentation):
        segment = seg.GetSegment(segment_id)
        term = terminology_string(segment.GetName())
        if term:
            segment.SetTerminology(term)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
    return segmentation


def segment_ids(segmentation_node) -> list[str]:
    ids = vtk.vtkStringArray()
    segmentation_node.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def segment_names(segmentation_node) -> list[str]:
    seg = segmentation_node.GetSegmentation()
    return [seg.GetSegment(i).GetName() for i in segment_ids(segmentation_node)]


def label_array_from_segmentation(ctx: MRMLContext, segmentation_node, reference_volume,
                                  ids: Iterable[str] | None = None) -> np.ndarray:
    """Multi-label ``[k, j, i]`` array on the reference grid: segment n of ``ids`` -> n+1."""
    ids = list(ids) if ids is not None else segment_ids(segmentation_node)
    tables_before = _node_ids(ctx.scene, "vtkMRMLColorTableNode")
    labelmap = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__pasta_tmp_export__")
    try:
        string_ids = vtk.vtkStringArray()
        for segment_id in ids:
            string_ids.InsertNextValue(segment_id)
        ok = ctx.segmentations_logic.ExportSegmentsToLabelmapNode(
            segmentation_node, string_ids, labelmap, reference_volume,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok:
            raise RuntimeError("ExportSegmentsToLabelmapNode failed")
        return array_from_volume(labelmap)
    finally:
        ctx.remove_node(labelmap)
        # The export creates a colour table ("<segmentation>_ColorTable"); drop it too.
        for node_id in _node_ids(ctx.scene, "vtkMRMLColorTableNode") - tables_before:
            ctx.remove_node(ctx.scene.GetNodeByID(node_id))


def _node_ids(scene, class_name: str) -> set[str]:
    return {scene.GetNthNodeByClass(i, class_name).GetID()
            for i in range(scene.GetNumberOfNodesByClass(class_name))}


def segment_mask(ctx: MRMLContext, segmentation_node, segment_id: str, reference_volume) -> np.ndarray:
    """Boolean ``[k, j, i]`` mask of one segment on the reference grid."""
    return label_array_from_segmentation(ctx, segmentation_node, reference_volume, [segment_id]) > 0


def segment_voxel_counts(ctx: MRMLContext, segmentation_node, reference_volume) -> dict[str, int]:
    """``{segment name: voxel count}`` on the reference grid."""
    seg = segmentation_node.GetSegmentation()
    return {
        seg.GetSegment(sid).GetName(): int(segment_mask(ctx, segmentation_node, sid, reference_volume).sum())
        for sid in segment_ids(segmentation_node)
    }


def segmentation_to_sitk(ctx: MRMLContext, segmentation_node, reference_volume,
                         values: Mapping[str, int] | None = None):
    """Label map (SimpleITK, reference geometry): segment named ``n`` -> ``values[n]``.

    Without ``values`` segments get 1..N in segmentation order. Overlaps: later wins.
    """
    import SimpleITK as sitk

    ids = segment_ids(segmentation_node)
    seg = segmentation_node.GetSegmentation()
    shape = tuple(reversed(reference_volume.GetImageData().GetDimensions()))
    out = np.zeros(shape, np.uint16)
    for i, segment_id in enumerate(ids):
        value = (values or {}).get(seg.GetSegment(segment_id).GetName(), i + 1 if values is None else 0)
        if value:
            out[segment_mask(ctx, segmentation_node, segment_id, reference_volume)] = value
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(volume_to_sitk(reference_volume))
    return image


def segment_terminology(segmentation_node, segment_id: str) -> str:
    """The serialised terminology entry of a segment ('' when none)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return segment.GetTerminology() or "" if segment.HasTerminology() else ""


class MRMLLogicBase:
    """Shared constructor of the module logics: an injected MRMLContext (scene + logics)."""

    def __init__(self, scene=None, volumes_logic=None, segmentations_logic=None, *,
                 context: MRMLContext | None = None):
        if context is None:
            if scene is None or volumes_logic is None or segmentations_logic is None:
                raise ValueError("Pass scene, volumes_logic and segmentations_logic, or context=")
            context = MRMLContext(scene, volumes_logic, segmentations_logic)
        self.context = context

    @classmethod
    def headless(cls):
        """A logic on a fresh scene of PyPI slicer-core (tests, scripts)."""
        return cls(context=MRMLContext.headless())

    @classmethod
    def from_slicer_application(cls):
        """A logic on the running Slicer application's scene."""
        return cls(context=MRMLContext.from_slicer_application())

    @property
    def scene(self):
        return self.context.scene


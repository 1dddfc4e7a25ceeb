"""Scenario checks of the shared MRML layer, run by pytest (slicer-core) and by
PASTASynthTest.runTest (in Slicer, through PASTASynthLib.scenarios.run_all).

Each scenario takes an :class:`~PASTASlicerLib.mrml.MRMLContext` and file paths, raises
``AssertionError`` with a clear message on failure and returns what it built.
:func:`make_synthetic_case` writes a small oblique, anisotropic CT + label map so the
scenarios also run where no test data is installed (inside Slicer); the PASTA module's
scenarios use it too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import mrml
from .mrml import LPS_TO_RAS, MRMLContext

#: TotalSegmentator "total" ids of the organs the MRML tests use (class_map_total.json).
TOTALSEG_TEST_ORGANS = {5: "liver", 2: "kidney_right", 3: "kidney_left", 21: "urinary_bladder"}


def make_synthetic_case(folder: str | os.PathLike) -> tuple[Path, Path, dict[int, str]]:
    """Write ``ct.nii.gz`` and ``labels.nii.gz`` (oblique, anisotropic) into ``folder``."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    shape = (24, 40, 36)  # k, j, i
    ct = rng.normal(40, 15, shape).round().astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels[((zz - 12) / 8) ** 2 + ((yy - 15) / 10) ** 2 + ((xx - 12) / 9) ** 2 <= 1] = 5
    labels[((zz - 10) / 5) ** 2 + ((yy - 28) / 6) ** 2 + ((xx - 26) / 5) ** 2 <= 1] = 2
    labels[2:5, 30:36, 2:6] = 21
    ct[labels == 5] += 60
    angle = np.deg2rad(12)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    paths = []
    for array, name in ((ct, "ct.nii.gz"), (labels, "labels.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.9, 2.5))
        image.SetOrigin((-31.5, 12.25, -80.0))
        image.SetDirection(direction.ravel().tolist())
        path = folder / name
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths[0], paths[1], {5: "liver", 2: "kidney_right", 21: "urinary_bladder"}


def _assert_same_geometry(image_a, image_b, what: str, atol: float = 1e-4) -> None:
    for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        a, b = np.array(getattr(image_a, attr)()), np.array(getattr(image_b, attr)())
        assert a.shape == b.shape and np.allclose(a, b, atol=atol), f"{what}: {attr[3:]} differs: {a} vs {b}"


def scenario_load_ct_geometry(ctx: MRMLContext, ct_path) -> object:
    """The loaded node's IJK->RAS equals SimpleITK's LPS geometry flipped; voxels equal."""
    import SimpleITK as sitk

    node = mrml.load_volume(ctx, ct_path, "CT")
    reference = sitk.ReadImage(str(ct_path))
    origin_ras, spacing, direction_ras = mrml.sitk_geometry_to_ras(reference)
    ijk_to_ras = mrml.ijk_to_ras_matrix(node)
    assert np.allclose(node.GetSpacing(), spacing, atol=1e-5), f"spacing {node.GetSpacing()} vs {spacing}"
    assert np.allclose(ijk_to_ras[:3, 3], origin_ras, atol=1e-4), f"origin {ijk_to_ras[:3, 3]} vs {origin_ras}"
    assert np.allclose(ijk_to_ras[:3, :3], direction_ras * spacing, atol=1e-4), "IJK->RAS direction differs"
    assert np.allclose(LPS_TO_RAS @ direction_ras, np.array(reference.GetDirection()).reshape(3, 3)), "LPS<->RAS"
    expected = sitk.GetArrayFromImage(reference)
    actual = mrml.array_from_volume(node)
    assert actual.shape == expected.shape, f"array shape {actual.shape} vs {expected.shape}"
    assert np.array_equal(actual, expected), "voxel values differ from SimpleITK's read"
    return node


def scenario_sitk_round_trip(ctx: MRMLContext, ct_path) -> None:
    """sitk -> node -> sitk and node -> clone are voxel- and geometry-exact; input untouched."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(ct_path))
    node = mrml.sitk_to_volume(ctx, image, "round trip")
    back = mrml.volume_to_sitk(node)
    _assert_same_geometry(image, back, "sitk->node->sitk", atol=1e-9)
    assert back.GetPixelID() == image.GetPixelID(), "pixel type changed"
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image)), "voxels changed"

    before = mrml.array_from_volume(node)
    clone = mrml.clone_volume(ctx, node, "clone")
    assert clone is not node and clone.GetImageData() is not node.GetImageData(), "clone shares image data"
    assert np.allclose(mrml.ijk_to_ras_matrix(clone), mrml.ijk_to_ras_matrix(node)), "clone geometry differs"
    clone_array = mrml.array_from_volume(clone)
    assert np.array_equal(clone_array, before), "clone voxels differ"
    mrml.update_volume_from_array(clone, clone_array + 1)
    assert np.array_equal(mrml.array_from_volume(node), before), "modifying the clone changed the input"

    labels = sitk.Cast(image > image.GetPixel(0, 0, 0), sitk.sitkUInt8)
    label_node = mrml.sitk_to_volume(ctx, labels, "labels", "vtkMRMLLabelMapVolumeNode")
    assert label_node.GetClassName() == "vtkMRMLLabelMapVolumeNode"
    assert np.array_equal(sitk.GetArrayFromImage(mrml.volume_to_sitk(label_node)), sitk.GetArrayFromImage(labels))


def scenario_segmentation_from_label_map(ctx: MRMLContext, ct_path, label_path, names: dict[int, str]):
    """One segment per requested label: names, and voxel counts equal to the label map's."""
    import SimpleITK as sitk

    ct = mrml.load_volume(ctx, ct_path, "CT")
    label_image = sitk.ReadImage(str(label_path))
    labels = sitk.GetArrayFromImage(label_image)
    nodes_before = ctx.scene.GetNumberOfNodes()
    segmentation = mrml.segmentation_from_label_map(ctx, label_image, ct, names, name="organs")
    present = {v: n for v, n in names.items() if np.any(labels == v)}
    assert sorted(mrml.segment_names(segmentation)) == sorted(present.values()), (
        f"segments {mrml.segment_names(segmentation)} vs labels {sorted(present.values())}")
    counts = mrml.segment_voxel_counts(ctx, segmentation, ct)
    for value, name in present.items():
        expected = int(np.count_nonzero(labels == value))
        assert counts[name] == expected, f"segment {name}: {counts[name]} voxels, label map has {expected}"
    # Same result from a numpy array on the CT grid.
    from_array = mrml.segmentation_from_label_map(ctx, labels, ct, names, name="organs (array)")
    assert mrml.segment_voxel_counts(ctx, from_array, ct) == counts, "numpy and SimpleITK inputs disagree"
    # No temporary nodes left behind: only the two segmentations and their display nodes.
    assert ctx.scene.GetNumberOfNodes() - nodes_before == 4, "temporary nodes were left in the scene"
    back = sitk.GetArrayFromImage(mrml.segmentation_to_sitk(ctx, segmentation, ct, {n: v for v, n in names.items()}))
    expected_back = np.where(np.isin(labels, list(present)), labels, 0)
    assert np.array_equal(back, expected_back), "segmentation -> label map is not voxel-exact"
    return ct, segmentation


def scenario_seg_nrrd_round_trip(ctx: MRMLContext, ct_path, label_path, names: dict[int, str],
                                 out_dir) -> Path:
    """Saving as .seg.nrrd and reading with slicerio (and Slicer) gives the same segments."""
    import SimpleITK as sitk
    import slicerio

    ct, segmentation = scenario_segmentation_from_label_map(ctx, ct_path, label_path, names)
    counts = mrml.segment_voxel_counts(ctx, segmentation, ct)
    path = Path(out_dir) / "organs.seg.nrrd"
    mrml.save_node(segmentation, path)
    assert path.is_file(), f"{path} was not written"

    seg_file = slicerio.read_segmentation(str(path))
    file_names = sorted(s["name"] for s in seg_file["segments"])
    assert file_names == sorted(counts), f"slicerio reads {file_names}, expected {sorted(counts)}"
    for segment in seg_file["segments"]:
        only = slicerio.extract_segments(seg_file, [(segment["name"], 1)])
        n = int(np.count_nonzero(only["voxels"]))
        assert n == counts[segment["name"]], f"{segment['name']}: file has {n} voxels, node {counts[segment['name']]}"
        assert segment.get("terminology", {}).get("category"), f"{segment['name']} lost its terminology"

    reloaded = mrml.load_segmentation(ctx, path, "reloaded")
    assert mrml.segment_voxel_counts(ctx, reloaded, ct) == counts, "Slicer re-read differs"
    assert sitk.ReadImage(str(path)).GetNumberOfPixels() > 0
    return path


def run_all(ctx: MRMLContext, work_dir, ct_path=None, label_path=None, names=None) -> None:
    """Every MRML-layer scenario; synthetic data unless a CT + label map are given."""
    work_dir = Path(work_dir)
    if ct_path is None:
        ct_path, label_path, names = make_synthetic_case(work_dir / "synthetic")
    scenario_load_ct_geometry(ctx, ct_path)
    scenario_sitk_round_trip(ctx, ct_path)
    scenario_seg_nrrd_round_trip(ctx, ct_path, label_path, names, work_dir)

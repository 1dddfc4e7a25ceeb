"""MRML logic of the modules on Slicer's real core (PyPI slicer-core), no Slicer app.

The scenario functions are the ones ``PASTASynthTest`` / ``PASTATest`` run inside Slicer;
here they run on a synthetic oblique case and on the TotalSegmentator example CT.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


slicer = pytest.importorskip("slicer")
sitk = pytest.importorskip("SimpleITK")

from PASTALogicLib import scenarios as pasta_scenarios  # noqa: E402
from PASTASlicerLib import mrml  # noqa: E402
from PASTASlicerLib import scenarios  # noqa: E402
from PASTASynthLib import scenarios as synth_scenarios  # noqa: E402
from PASTASynthLib.logic import SynthesisLogic  # noqa: E402


@pytest.fixture
def scene(ctx):
    return ctx.scene


@pytest.fixture(scope="session")
def ts_case(ts_data: Path):
    ct, labels = ts_data / "example_ct.nii.gz", ts_data / "example_seg_fast_force_split.nii.gz"
    class_map = json.loads((ts_data / "class_map_total.json").read_text())["total"]
    organs = scenarios.TOTALSEG_TEST_ORGANS
    for value, name in organs.items():  # ids as TotalSegmentator defines them
        assert class_map[str(value)] == name
    return ct, labels, organs


@pytest.fixture
def synthetic_case(tmp_path):
    return scenarios.make_synthetic_case(tmp_path / "synthetic")


def test_logic_takes_injected_scene(scene, ctx):
    logic = SynthesisLogic(scene, ctx.volumes_logic, ctx.segmentations_logic)
    assert logic.scene is scene
    with pytest.raises(ValueError):
        SynthesisLogic()


def test_load_ct_geometry_totalsegmentator(ctx, ts_case):
    ct_path, _, _ = ts_case
    node = scenarios.scenario_load_ct_geometry(ctx, ct_path)
    assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert np.allclose(node.GetSpacing(), (3.0, 3.0, 3.0))
    # NIfTI (LPS direction diag(-1,-1,1)) -> RAS identity directions in Slicer.
    assert np.allclose(mrml.ijk_to_ras_matrix(node)[:3, :3], np.diag([3.0, 3.0, 3.0]))


def test_load_ct_geometry_oblique(ctx, synthetic_case):
    scenarios.scenario_load_ct_geometry(ctx, synthetic_case[0])


def test_load_missing_file_is_clear(ctx, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        SynthesisLogic(context=ctx).load_ct(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("case", ["ts", "synthetic"])
def test_sitk_round_trip(ctx, case, ts_case, synthetic_case):
    scenarios.scenario_sitk_round_trip(ctx, ts_case[0] if case == "ts" else synthetic_case[0])


def test_segmentation_from_totalsegmentator_labels(ctx, ts_case):
    ct_path, label_path, organs = ts_case
    ct, segmentation = scenarios.scenario_segmentation_from_label_map(ctx, ct_path, label_path, organs)
    assert sorted(mrml.segment_names(segmentation)) == sorted(organs.values())
    seg = segmentation.GetSegmentation()
    liver = seg.GetSegment(seg.GetSegmentIdBySegmentName("liver"))
    assert "^10200004^Liver" in liver.GetTerminology()
    kidney_left = seg.GetSegment(seg.GetSegmentIdBySegmentName("kidney_left"))
    assert "^64033007^Kidney~SCT^7771000^Left" in kidney_left.GetTerminology()


def test_segmentation_custom_colors(ctx, synthetic_case):
    ct_path, label_path, names = synthetic_case
    logic = SynthesisLogic(context=ctx)
    ct = logic.load_ct(ct_path)
    segmentation = mrml.segmentation_from_label_map(ctx, sitk.ReadImage(str(label_path)), ct, names,
                                                    colors={5: (255, 0, 0)})
    seg = segmentation.GetSegmentation()
    assert np.allclose(seg.GetSegment(seg.GetSegmentIdBySegmentName("liver")).GetColor(), (1, 0, 0))


@pytest.mark.parametrize("case", ["ts", "synthetic"])
def test_seg_nrrd_round_trip(ctx, case, ts_case, synthetic_case, tmp_path):
    ct_path, label_path, names = ts_case if case == "ts" else synthetic_case
    scenarios.scenario_seg_nrrd_round_trip(ctx, ct_path, label_path, names, tmp_path)


def test_clone_never_modifies_input(ctx, ts_case):
    logic = SynthesisLogic(context=ctx)
    ct = logic.load_ct(ts_case[0], "CT")
    before = mrml.array_from_volume(ct).copy()
    clone = mrml.clone_volume(ctx, ct, "CT copy")
    mrml.update_volume_from_array(clone, np.zeros_like(before))
    assert np.array_equal(mrml.array_from_volume(ct), before)
    assert ct.GetName() == "CT" and clone.GetName() == "CT copy"


def test_pasta_export_training_case(ctx, ts_case, tmp_path):
    ct_path, label_path, organs = ts_case
    pasta_scenarios.scenario_progress_parsing()
    pasta_scenarios.scenario_export_training_case(ctx, ct_path, label_path, organs, tmp_path)


def test_slicer_test_entry_points(tmp_path):
    """What PASTASynthTest / PASTATest.runTest run inside Slicer (synthetic data)."""
    synth_scenarios.run_all(mrml.MRMLContext.headless(), tmp_path / "synth")
    pasta_scenarios.run_all(mrml.MRMLContext.headless(), tmp_path / "pasta")

"""PASTASynth synthesis panel logic on Slicer's real MRML core (PyPI slicer-core), no Slicer app.

The checks live in ``PASTASynthLib.scenarios`` (the same functions ``PASTASynthTest.runTest``
runs inside Slicer); here they run on the TotalSegmentator example CT with its real organ
labels, plus the batch-job subprocess handling (progress lines, cancel kills the tree).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA

slicer = pytest.importorskip("slicer")
sitk = pytest.importorskip("SimpleITK")

from PASTASlicerLib import jobs, mrml
from PASTASynthLib import scenarios
from PASTASynthLib.logic import PREVIEW_NAME, SynthesisLogic, generate_command

from PASTALib.errors import AnatomyError, MissingWeightsError, PastaError
from PASTALib.labels import LesionType, Organ, Phase


@pytest.fixture(scope="module")
def ts_paths(ts_data: Path):
    ct, labels = ts_data / "example_ct.nii.gz", ts_data / "example_seg_fast_force_split.nii.gz"
    class_map = json.loads((ts_data / "class_map_total.json").read_text())["total"]
    organs = dict(scenarios.TOTALSEG_SYNTH_ORGANS)  # a few organs keep the test fast
    for value, name in organs.items():
        assert class_map[str(value)] == name
    return ct, labels, organs


@pytest.fixture
def ts_case(ctx, ts_paths):
    ct_path, label_path, organs = ts_paths
    ct, segmentation = scenarios.load_case(ctx, ct_path, label_path, organs)
    liver_ras = scenarios.organ_point_ras(label_path, 5)
    return ct, segmentation, liver_ras


# -- synthesis through the logic -------------------------------------------------------------


def test_liver_tumor_at_markups_point(ctx, ts_case):
    ct, segmentation, liver_ras = ts_case
    point = scenarios.add_point(ctx, liver_ras)
    out = scenarios.scenario_synthesize(
        ctx, ct, segmentation, "liver_tumor", location=point, size_mm=(30, 26, 28), seed=1,
        expect_type_name="Liver tumor", expect_organ_name="Liver", expect_code="SCT^108369006^Neoplasm")
    assert out.report["location"] == "Liver" and out.report["lesion_type"] == "liver_tumor"
    # The markups point (RAS) became the LPS centre the library used.
    assert np.allclose(out.result.spec.center_mm, (-liver_ras[0], -liver_ras[1], liver_ras[2]), atol=1e-3)
    # Requested size (x, y, z) is what the report measures (Z×X×Y), within voxel rounding (3 mm).
    z, x, y = out.report["size_zxy_mm"]
    assert np.allclose((x, y, z), (30, 26, 28), atol=3.5), out.report["size"]
    # The example CT is non-contrast: the aorta/IVC segments make it Plain CT.
    assert out.report["enhancement"] == Phase.PLAIN.value
    assert out.volume_node.GetName() == "CT + Liver tumor"
    assert out.segmentation_node.GetNodeReference("PASTAReport").GetName() == "CT + Liver tumor report"


def test_kidney_cyst_sampled_location(ctx, ts_case):
    ct, segmentation, _ = ts_case
    out = scenarios.scenario_synthesize(
        ctx, ct, segmentation, "kidney_cyst", seed=2, expect_type_name="Kidney cyst",
        expect_organ_name="Kidney", expect_code="SCT^441457006^Cyst")
    assert out.report["location"] in ("Right kidney", "Left kidney")
    # The side in the report is the side of the kidney segment the cyst sits in.
    side = out.report["location"].split()[0].lower()
    names = {5: "liver", 2: "kidney_right", 3: "kidney_left"}
    labels = sitk.ReadImage(str(SHARED_DATA / "totalsegmentator" / "example_seg_fast_force_split.nii.gz"))
    index = labels.TransformPhysicalPointToIndex(out.report["centre_mm"])
    assert names.get(labels.GetPixel(index), "").endswith(side), (out.report["location"], labels.GetPixel(index))
    # Same request, same seed: same lesion (reproducible); outputs are separate nodes.
    again = SynthesisLogic(context=ctx).synthesize(ct, segmentation, {"lesion_type": "kidney_cyst", "seed": 2})
    assert again.volume_node is not out.volume_node
    assert np.array_equal(mrml.array_from_volume(again.volume_node), mrml.array_from_volume(out.volume_node))
    assert again.report == out.report


def test_errors_leave_the_scene_unchanged(ctx, ts_case):
    ct, segmentation, liver_ras = ts_case
    messages = scenarios.scenario_errors_leave_scene_unchanged(ctx, ct, segmentation, inside_ras=liver_ras)
    assert any("Allowed values" in m for m in messages)
    # No organ segmentation / no CT: clear ValueError, nothing added.
    logic = SynthesisLogic(context=ctx)
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="organ segmentation"):
        logic.synthesize(ct, None, {"lesion_type": "liver_tumor"})
    with pytest.raises(ValueError, match="CT volume"):
        logic.synthesize(None, segmentation, {"lesion_type": "liver_tumor"})
    # An empty segmentation: AnatomyError naming the fix.
    empty = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(AnatomyError, match="no segments"):
        logic.synthesize(ct, empty, {"lesion_type": "liver_tumor"})
    assert ctx.scene.GetNumberOfNodes() == n


def test_existing_lesion_segment_is_seen_by_the_healthy_organ_check(ctx, ts_case):
    """A PASTA output segmentation used as input: its 'Liver tumor' segment makes the liver
    unhealthy, so a second liver lesion is refused (scene unchanged)."""
    ct, segmentation, liver_ras = ts_case
    logic = SynthesisLogic(context=ctx)
    out = logic.synthesize(ct, segmentation, {"lesion_type": "liver_tumor", "seed": 5},
                           scenarios.add_point(ctx, liver_ras))
    masks = logic.organ_masks(out.segmentation_node, out.volume_node)
    assert masks.lesion_voxels(Organ.LIVER) == {"lesion:liver_tumor": int(out.report["volume_mm3"] / 27.0 + 0.5)}
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(PastaError, match="(?i)lesion"):
        logic.synthesize(out.volume_node, out.segmentation_node, {"lesion_type": "liver_cyst"})
    assert ctx.scene.GetNumberOfNodes() == n


def test_preview_apply_cancel_undo(ctx, ts_case):
    ct, segmentation, liver_ras = ts_case
    point = scenarios.add_point(ctx, liver_ras)
    scenarios.scenario_preview_apply_undo(ctx, ct, segmentation, point)
    logic = SynthesisLogic(context=ctx)
    preview = logic.preview(ct, segmentation, {"lesion_type": "liver_tumor", "seed": 9}, point)
    assert preview.volume_node.GetName() == PREVIEW_NAME
    # A failing preview keeps the previous one (scene unchanged).
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(PastaError):
        logic.preview(ct, segmentation, {"lesion_type": "liver_tumor", "shape": "Wall thickening"}, point)
    assert ctx.scene.GetNumberOfNodes() == n and logic.preview_node() is preview.volume_node


def test_location_ras_to_lps(ctx):
    point = scenarios.add_point(ctx, (10.5, -20.0, 30.0))
    assert SynthesisLogic.location_lps(point) == (-10.5, 20.0, 30.0)
    assert SynthesisLogic.location_lps((1.0, 2.0, 3.0)) == (-1.0, -2.0, 3.0)
    assert SynthesisLogic.location_lps(None) is None
    empty = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty")
    assert SynthesisLogic.location_lps(empty) is None  # no point: sample a location
    with pytest.raises(ValueError):
        SynthesisLogic.location_lps((1.0, 2.0))


def test_segment_names_map_to_pasta_organs(ctx, ts_paths):
    """TotalSegmentator names, Slicer-style names and PASTA names give the same organ masks."""
    ct_path, label_path, _ = ts_paths
    logic = SynthesisLogic(context=ctx)
    ct = logic.load_ct(ct_path, "CT")
    labels = sitk.ReadImage(str(label_path))
    variants = [
        {5: "liver", 2: "kidney_right", 3: "kidney_left"},
        {5: "Liver", 2: "Right kidney", 3: "Left kidney"},
        {5: "Liver", 2: "Kidney", 3: "Kidney"},
    ]
    reference = None
    for names in variants:
        segmentation = mrml.segmentation_from_label_map(ctx, labels, ct, names)
        masks = logic.organ_masks(segmentation, ct)
        liver, kidney = masks.organ_mask(Organ.LIVER), masks.organ_mask(Organ.KIDNEY)
        arr = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
        assert np.array_equal(liver, arr == 5) and np.array_equal(kidney, np.isin(arr, (2, 3))), names
        if reference is None:
            reference = masks.organ_mask(Organ.KIDNEY, "left")
        elif names[2] != "Kidney":  # unsided names are split at the midline instead
            assert np.array_equal(masks.organ_mask(Organ.KIDNEY, "left"), reference)


def test_allowed_values_and_spec_from_gui():
    from PASTALib.report.attributes import Invasion, Shape
    from PASTALib.synth import LesionSpec, allowed_values

    for lesion_type in LesionType:
        assert allowed_values(lesion_type.slug) == allowed_values(lesion_type)  # what the panel passes
        low, high = SynthesisLogic.size_range_mm(lesion_type.slug)
        assert 0 < low < SynthesisLogic.typical_size_mm(lesion_type.slug) < high
    liver = allowed_values("liver_tumor")
    assert Shape.WALL_THICKENING.value not in liver["shape"]
    assert Invasion.ADJACENT.value not in allowed_values("kidney_cyst")["invasion"]
    spec = SynthesisLogic.spec_from_parameters("liver_tumor", (25, 20, 30), shape="Irregular", density="",
                                               invasion=Invasion.NONE.value, seed=4)
    assert spec == {"lesion_type": "liver_tumor", "seed": 4, "size_mm": [25.0, 20.0, 30.0], "shape": "Irregular",
                    "invasion": Invasion.NONE.value}
    parsed = LesionSpec.from_dict(spec).validate()
    assert parsed.invasion is False and parsed.density is None


def test_terminology_of_every_pasta_segment():
    for organ in Organ:
        term = mrml.terminology_string(organ.display_name)
        assert "SCT^123037004^Anatomical Structure" in term, organ
        assert mrml.color_for(organ.display_name) is not None, organ
    for lesion in LesionType:
        term = mrml.terminology_string(lesion.display_name)
        assert "SCT^49755003^Morphologically Altered Structure" in term, lesion
        region = mrml.lesion_region_for(lesion.display_name)
        organ_code = mrml.terminology_for(lesion.organ.display_name)[1]
        assert region == organ_code, (lesion, region, organ_code)
        assert mrml.color_for(lesion.display_name) is not None, lesion
    assert "^56381008^Calculus" in mrml.terminology_string("Kidney stone")
    assert "^441457006^Cyst" in mrml.terminology_string("Pancreas cyst")


def test_detect_enhancement(ctx, ts_case, ts_paths):
    ct, segmentation, _ = ts_case
    logic = SynthesisLogic(context=ctx)
    n = ctx.scene.GetNumberOfNodes()
    phase, text = logic.detect_enhancement(ct, segmentation)
    assert phase is Phase.PLAIN and "aorta" in text
    no_vessels = mrml.segmentation_from_label_map(ctx, sitk.ReadImage(str(ts_paths[1])), ct, {5: "liver"})
    phase, text = logic.detect_enhancement(ct, no_vessels)
    assert phase is None and "no aorta/IVC" in text
    assert logic.detect_enhancement(ct, None)[0] is None
    assert ctx.scene.GetNumberOfNodes() == n + 2  # only the segmentation made here (+ display)


def test_lung_mask_and_totalsegmentator_buttons(ctx):
    import slicerio

    logic = SynthesisLogic(context=ctx)
    chest = logic.load_ct(Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd", "Chest")
    lungs = logic.lung_mask_segmentation(chest)
    assert sorted(mrml.segment_names(lungs)) == ["Left lung", "Right lung"]
    seg = lungs.GetSegmentation()
    assert "^39607008^Lung~SCT^24028007^Right" in seg.GetSegment(seg.GetSegmentIdBySegmentName("Right lung")).GetTerminology()
    out = logic.synthesize(chest, lungs, {"lesion_type": "lung_tumor", "seed": 0})
    assert out.report["location"] in ("Right lung", "Left lung")
    # No TotalSegmentator / weights here: the clear MissingWeightsError, scene unchanged.
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(MissingWeightsError, match="(?i)install"):
        logic.totalsegmentator_segmentation(chest, fast=True, device="cpu")
    assert ctx.scene.GetNumberOfNodes() == n


def test_report_save_and_text(ctx, ts_case, tmp_path):
    from PASTALib.report.wording import StructuredReport

    ct, segmentation, _ = ts_case
    logic = SynthesisLogic(context=ctx)
    out = logic.synthesize(ct, segmentation, {"lesion_type": "kidney_cyst", "seed": 1})
    path = tmp_path / "report.json"
    logic.save_report(out.report, path)
    assert StructuredReport.from_json(path.read_text(encoding="utf-8")).to_text() == out.report["text"]
    assert logic.report_text(out.report) == out.report["text"]
    assert SynthesisLogic.report_node_of(out.segmentation_node) is out.report_node
    with pytest.raises(PastaError):
        logic.save_report({"text": "not a report"}, tmp_path / "bad.json")


# -- batch job (subprocess) ------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_batch_job_cancel_kills_the_process_tree(tmp_path):
    scenarios.scenario_batch_job_cancel(tmp_path)


def test_batch_job_finishes_and_fails(tmp_path):
    script = "import sys\nfor i in range(5):\n    print(f'PROGRESS {i + 1}/5 case {i}', flush=True)\n"
    seen = []
    job = jobs.BatchJob([sys.executable, "-c", script], on_progress=lambda f, m: seen.append(f)).start()
    assert job.wait(timeout=60) == "finished" and job.returncode == 0
    assert seen == [0.2, 0.4, 0.6, 0.8, 1.0] and job.message == "case 4"
    bad = jobs.BatchJob([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]).start()
    assert bad.wait(timeout=60) == "failed" and bad.returncode == 3 and "boom" in bad.output_tail
    bad.cancel()  # cancelling a finished job is a no-op
    assert bad.state == "failed"


def test_pastalib_cli_runs_as_a_subprocess(tmp_path):
    """``python -m PASTALib`` works from the job runner (PYTHONPATH points at this PASTALib)."""
    lines = []
    job = jobs.BatchJob(jobs.cli_command("--help"), on_line=lines.append, cwd=tmp_path).start()
    assert job.wait(timeout=120) == "finished", job.output_tail
    assert any("synth" in line for line in lines)
    command = generate_command(tmp_path / "out", templates=tmp_path, per_type=2,
                                    lesion_types=["liver_tumor", "kidney_cyst"], seed=1)
    assert command[1:5] == ["-m", "PASTALib", "synth", "generate"] and "--progress-lines" in command
    assert command[command.index("--per-type") + 1] == "2" and command[-2:] == ["liver_tumor", "kidney_cyst"]
    generate = subprocess.run(jobs.cli_command("synth", "generate", "--help"), capture_output=True, text=True,
                              env=jobs.pastalib_env(), timeout=120, check=False)
    if generate.returncode != 0:
        pytest.skip("`pasta synth generate` is not in PASTALib yet (being written); the widget's call is wired")
    for flag in ("--templates", "--out", "--per-type", "--types", "--seed", "--progress-lines"):
        assert flag in generate.stdout, f"`pasta synth generate` lacks {flag}: the widget passes it"


def test_batch_generate_end_to_end(tmp_path):
    """The widget's batch call: a real ``pasta synth generate`` subprocess streaming progress."""
    generate = subprocess.run(jobs.cli_command("synth", "generate", "--help"), capture_output=True, text=True,
                              env=jobs.pastalib_env(), timeout=120, check=False)
    if generate.returncode != 0:
        pytest.skip("`pasta synth generate` is not in PASTALib yet")
    ct_path, label_path, _ = scenarios.make_synthetic_abdomen(tmp_path / "abdomen")
    template = tmp_path / "templates" / "abdomen"
    template.mkdir(parents=True)
    ct_path.rename(template / "ct.nii.gz")
    label_path.rename(template / "organs.nii.gz")
    seen = []
    job = jobs.BatchJob(generate_command(tmp_path / "out", templates=tmp_path / "templates", per_type=1,
                                              lesion_types=["liver_cyst"], seed=0),
                        on_progress=lambda f, m: seen.append(f)).start()
    assert job.wait(timeout=240) == "finished", job.output_tail
    assert seen and seen[-1] == 1.0 and seen == sorted(seen), seen
    assert list((tmp_path / "out").rglob("report.json")), job.output_tail

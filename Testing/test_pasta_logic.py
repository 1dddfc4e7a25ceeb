"""PASTA module logic (segment -> segments + report cards, DICOM SEG/SR, few-shot) on Slicer's real
MRML core (PyPI slicer-core), with real `pasta segment` outputs.

The model is the tiny PASTA network trained once per session on lesions synthesized into the real
TotalSegmentator example CT (conftest.py fixtures ``case``, ``checkpoint``, ``segmented``, shared
with test_infer.py). The checks are the scenario functions PASTATest.runTest calls inside Slicer.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest


slicer = pytest.importorskip("slicer")

import dicom_validators  # noqa: E402
from conftest import PATCH, SPACING, segment_args, segment_cli  # noqa: E402
from PASTALogicLib import reports, scenarios  # noqa: E402
from PASTALogicLib.logic import (  # noqa: E402
    SegmentationReportLogic,
    finetune_command,
    resolve_checkpoint,
    segment_command,
)
from PASTASlicerLib import mrml  # noqa: E402

from PASTALib.errors import MissingWeightsError, SpecificationError  # noqa: E402
from PASTALib.io import read_label  # noqa: E402


@pytest.fixture
def ct_node(ctx, case):
    return SegmentationReportLogic(context=ctx).load_ct(case.ct, "CT")


@pytest.fixture(scope="module")
def dicom_segmented(ts_data, checkpoint, tmp_path_factory):
    """`pasta segment` on the real DICOM series (JPEG 2000, empty UIDs): files + SEG + SR."""
    out = tmp_path_factory.mktemp("pasta_dicom") / "out"
    rc, _stdout, stderr = segment_cli(["--ct", str(ts_data / "example_ct_dicom"), "--out", str(out),
                                       "--min-lesion-volume", "100", *segment_args(checkpoint)])
    assert rc == 0, stderr
    assert (out / "sr.dcm").is_file()
    return out


# -- import -----------------------------------------------------------------------------------


def test_import_real_segment_outputs(ctx, ct_node, segmented):
    imported = scenarios.scenario_import_segment_outputs(ctx, ct_node, segmented.out)
    lesions = json.loads((segmented.out / "lesions.json").read_text())
    names = mrml.segment_names(imported.segmentation_node)
    print(f"{len(lesions)} lesions -> {len(names)} segments: {names[:3]}")
    assert len(lesions) >= 1
    # organ segments come first (label order: the trained test model also predicts e.g. the gallbladder), then lesions
    organs = len(imported.label_segment_ids)
    assert "Liver" in names[:organs] and names[organs] == "Lesion 1: Liver tumor"
    seg = imported.segmentation_node.GetSegmentation()
    first = seg.GetSegment(imported.lesion_segment_ids[1])
    assert "SCT^108369006^Neoplasm" in first.GetTerminology() and "SCT^10200004^Liver" in first.GetTerminology()
    assert np.allclose(first.GetColor(), np.array(mrml.TERMINOLOGY_COLORS["Neoplasm"]) / 255.0)
    # the cards carry the model's confidences from lesions.json
    assert 0.0 < imported.cards.cards[0].confidence("density") <= 1.0


def test_label_names_from_run_json(ctx, ct_node, segmented, tmp_path):
    """A fine-tuned model names its own classes in run.json "label_names"; those names are used."""
    out = tmp_path / "out"
    shutil.copytree(segmented.out, out)
    run = json.loads((out / "run.json").read_text())
    run["label_names"] = {"2": "Liver parenchyma", "12": "Hepatic lesion"}
    (out / "run.json").write_text(json.dumps(run))
    imported = scenarios.scenario_import_segment_outputs(ctx, ct_node, out)
    names = mrml.segment_names(imported.segmentation_node)
    organs = len(imported.label_segment_ids)
    assert "Liver parenchyma" in names[:organs] and names[organs] == "Lesion 1: Hepatic lesion"


def test_failed_import_leaves_scene_unchanged(ctx, ct_node, segmented, tmp_path):
    messages = scenarios.scenario_failed_import_leaves_scene(ctx, ct_node, segmented.out, tmp_path)
    assert "corrupt or truncated" in messages[0], messages[0]
    assert "not a component of labels.nii.gz" in messages[1]
    assert "reports.json is missing" in messages[2]


def test_import_for_another_ct_is_refused(ctx, segmented, ts_data):
    logic = SegmentationReportLogic(context=ctx)
    other = logic.load_ct(ts_data / "example_ct.nii.gz", "Whole CT")  # the uncropped CT: another grid
    before = ctx.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="not on the grid of CT 'Whole CT'"):
        logic.import_segment_outputs(segmented.out, other)
    assert ctx.scene.GetNumberOfNodes() == before


# -- report cards ------------------------------------------------------------------------------


def test_edit_card_and_export_json(ctx, ct_node, segmented, tmp_path):
    imported = SegmentationReportLogic(context=ctx).import_segment_outputs(segmented.out, ct_node)
    edited = scenarios.scenario_edit_and_export_json(ctx, imported.segmentation_node, tmp_path)
    original = json.loads((segmented.out / "reports.json").read_text())[0]
    changed = {k for k in original if original[k] != edited[k]}
    assert changed == {"density", "size_zxy_mm", "size", "text"}
    assert edited["volume_mm3"] == original["volume_mm3"]  # measurements are not editable


def test_edited_reports_persist_with_the_scene(ctx, ct_node, segmented, tmp_path):
    logic = SegmentationReportLogic(context=ctx)
    imported = logic.import_segment_outputs(segmented.out, ct_node)
    logic.edit_report(imported.segmentation_node, 1, "surface", "Well-defined margin")
    loaded = scenarios.scenario_reports_persist_with_scene(ctx, imported.segmentation_node, tmp_path)
    segmentation = loaded.scene.GetNodeByID(imported.segmentation_node.GetID())
    card = SegmentationReportLogic(context=loaded).report_cards(segmentation).card(1)
    assert card.report["surface"] == "Well-defined margin"
    loaded.scene.Clear(1)


def test_report_card_fields_follow_the_schema(segmented):
    report = json.loads((segmented.out / "reports.json").read_text())[0]
    card = reports.ReportCard(1, report)
    fields = {f.key: f for f in card.fields()}
    assert [f.label for f in card.fields()] == ["Enhancement status", "Location", "Size", "Shape", "Density",
                                                "Heterogeneity", "Surface", "Invasion"]
    assert fields["surface"].choices == ("Well-defined margin", "Ill-defined margin")
    assert "Right kidney" in fields["location"].choices and not fields["size"].is_choice
    assert reports.parse_size("25x25x37mm") == reports.parse_size("25 × 25 × 37") == (25, 25, 37)
    with pytest.raises(SpecificationError, match="Allowed values: Right lung, Left lung"):
        card.set("location", "Spleen")
    with pytest.raises(SpecificationError, match="not an editable report attribute"):
        card.set("volume_mm3", "1")
    copy = reports.ReportCards.from_json(reports.ReportCards([card]).to_json())
    assert copy.cards[0].report == card.report


# -- DICOM ------------------------------------------------------------------------------------


def test_dicom_seg_sr_hold_the_edited_value(ctx, dicom_segmented, ts_data, tmp_path):
    import highdicom as hd

    result = scenarios.scenario_dicom_export(ctx, ts_data / "example_ct_dicom", dicom_segmented, tmp_path)
    original = hd.sr.srread(dicom_segmented / "sr.dcm")
    edited = hd.sr.srread(result["files"]["dicom_sr"])
    # an edited report is a new SR instance (same source series), not a copy of the CLI's
    assert edited.SOPInstanceUID != original.SOPInstanceUID
    groups = original.content.get_volumetric_roi_measurement_groups()
    before = next(g for g in groups if g.tracking_identifier == f"Lesion {result['lesion']}")
    assert scenarios.sr_attributes(before)["density"] != result["density"]
    # both files pass dicom3tools and read back through dcmqi: the CLI's, and the edited one with the
    # edited density (same voxels and measurements)
    reports_json = json.loads((dicom_segmented / "reports.json").read_text())
    lesions = [les for les in json.loads((dicom_segmented / "lesions.json").read_text()) if les["kind"] == "lesion"]
    labels = read_label(dicom_segmented / "labels.nii.gz")
    cli_files = {"dicom_seg": dicom_segmented / "seg.dcm", "dicom_sr": dicom_segmented / "sr.dcm",
                 "dicom_uids": dicom_segmented / "dicom_uids.json"}
    dicom_validators.validate_export(cli_files, ts_data / "example_ct_dicom", labels, reports_json, lesions,
                                     tmp_path / "cli")
    edited_reports = [{**r, "density": result["density"]} if les["index"] == result["lesion"] else r
                      for r, les in zip(reports_json, lesions)]
    measured = dicom_validators.validate_export(result["files"], ts_data / "example_ct_dicom", labels, edited_reports,
                                                lesions, tmp_path / "edited")
    print(f"module export, dcmqi Dice per segment: {measured['dice']}")
    before_density = scenarios.sr_attributes(before)["density"]
    wrong = [{**r, "density": before_density} if les["index"] == result["lesion"] else r
             for r, les in zip(reports_json, lesions)]
    with pytest.raises(AssertionError, match="density"):  # the edited SR does not pass for the unedited report
        dicom_validators.validate_export(result["files"], ts_data / "example_ct_dicom", labels, wrong, lesions,
                                         tmp_path / "wrong")


# -- checkpoints and few-shot ----------------------------------------------------------------------


def test_checkpoint_resolution_messages(checkpoint, tmp_path):
    scenarios.scenario_checkpoint_messages(checkpoint, tmp_path / "training", tmp_path)


def test_commands_carry_progress_lines(tmp_path, checkpoint):
    seg = segment_command(tmp_path / "ct.nii.gz", tmp_path / "out", checkpoint=checkpoint, device="cpu")
    assert seg[1:3] == ["-m", "PASTALib"] and seg[3] == "segment" and "--progress-lines" in seg
    ft = finetune_command(tmp_path, init=checkpoint)
    assert ft[3:6] == ["finetune", "--data", str(tmp_path)] and "--progress-lines" in ft


def test_few_shot_mark_finetune_and_use(ctx, ct_node, segmented, checkpoint, tmp_path):
    imported = SegmentationReportLogic(context=ctx).import_segment_outputs(segmented.out, ct_node)
    folder = tmp_path / "fewshot"
    result = scenarios.scenario_few_shot(
        ctx, ct_node, imported.segmentation_node, folder, checkpoint,
        ["--iterations", "2", "--patch-size", str(PATCH), "--spacing", str(SPACING), "--batch-size", "1",
         "--no-validation", "--checkpoint-every", "1", "--threads", "1"])
    print(f"fine-tuned classes {result['classes']}; {len(result['progress'])} progress lines")
    # the classes are what the test model segmented (organs first, in label order), with the liver and its tumour
    assert {"Liver", "Liver tumor"} <= set(result["classes"]) and result["classes"].index("Liver") < result["classes"].index("Liver tumor")
    # "Use fine-tuned model" wins over a chosen checkpoint
    assert resolve_checkpoint(checkpoint, True, folder) == folder / "finetune" / "model_final.pth"
    with pytest.raises(MissingWeightsError, match="run Fine-tune"):
        resolve_checkpoint(checkpoint, True, tmp_path / "elsewhere")
    assert os.path.isfile(folder / "finetune" / "classes.json")

"""PASTASynth "Reader study" panel logic (ReaderStudyLogic) on Slicer's real MRML core (slicer-core).

The checks are the scenario functions in ``PASTASynthLib.scenarios`` that
``PASTASynthTest.runTest`` also runs inside Slicer. Studies: a realistic one (two real
pyradiomics lung tumours + two lung tumours synthesised by PASTALib.synth into the same
CTs, created with PASTALib.review.create_study) and tiny generated ones (fast).
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

slicer = pytest.importorskip("slicer")
sitk = pytest.importorskip("SimpleITK")

from PASTASlicerLib import mrml
from PASTASynthLib import scenarios
from PASTASynthLib.reader_study import ReaderStudyLogic

from PASTALib.review import (
    ReaderSession,
    StudySettings,
    StudyTamperedError,
    UnknownReaderError,
    add_reader,
    create_study,
    real_case,
    synthetic_case,
)


def _synthesize_lung_tumour(ct, seed: int):
    """PASTALib.synth's lung tumour in the CT's classical lung mask; a plain bright blob if the
    synthesizer (developed in parallel) fails on this CT."""
    try:
        from PASTALib.anatomy.lungmask import classical_lung_mask
        from PASTALib.labels import LesionType
        from PASTALib.synth.pipeline import synthesize_lesion_in_masks
        from PASTALib.synth.spec import LesionSpec

        result = synthesize_lesion_in_masks(ct, classical_lung_mask(ct), LesionSpec(LesionType.LUNG_TUMOR, seed=seed))
        return result.ct, result.labels, json.loads(result.report.to_json())
    except Exception as exc:  # noqa: BLE001 - fall back, say so
        print(f"PASTALib.synth failed ({type(exc).__name__}: {exc}); using a plain inserted blob")
        hu = sitk.GetArrayFromImage(ct).astype(np.int16)
        labels = np.zeros(hu.shape, np.uint8)
        z, y, x = (s // 2 for s in hu.shape)
        labels[z - 2:z + 2, y - 15:y + 15, x + 60:x + 90] = 11
        hu[labels > 0] = 40
        out, lab = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(labels)
        out.CopyInformation(ct)
        lab.CopyInformation(ct)
        return out, lab, {"lesion_type": "lung_tumor", "label_value": 11, **scenarios.READER_STUDY_REPORT}


def _crop_around_lesion(ct, labels, value: int, half_mm: float = 80.0):
    """The synthesizer's output cut to the lesion's neighbourhood (the study crops to 96 mm anyway;
    a smaller ct.nii.gz keeps the fixture fast)."""
    index = np.argwhere(sitk.GetArrayViewFromImage(labels) == value)
    if not len(index):
        return ct, labels
    centre = index.mean(axis=0)[::-1]  # x, y, z
    half = np.ceil(half_mm / np.asarray(ct.GetSpacing())).astype(int)
    size = np.asarray(ct.GetSize())
    lo = np.clip(np.round(centre).astype(int) - half, 0, size - 1)
    hi = np.clip(np.round(centre).astype(int) + half + 1, 1, size)
    box = [slice(int(a), int(b)) for a, b in zip(lo, hi)]
    return ct[box[0], box[1], box[2]], labels[box[0], box[1], box[2]]


@pytest.fixture(scope="module")
def lung_study(shared_data: Path, tmp_path_factory):
    """Real + PASTALib.synth lung tumours, 2 + 2, blinded by create_study; readers A and B."""
    from PASTALib.io import read_ct

    root = tmp_path_factory.mktemp("reader_panel")
    data = shared_data / "pyradiomics"
    real, synthetic = [], []
    for i in (1, 2):
        report = root / f"report{i}.json"
        report.write_text(json.dumps(scenarios.READER_STUDY_REPORT))
        real.append(real_case(data / f"lung{i}_image.nrrd", data / f"lung{i}_label.nrrd", "lung_tumor", report, [1]))
        ct, labels, synth_report = _synthesize_lung_tumour(read_ct(data / f"lung{i}_image.nrrd"), seed=i)
        ct, labels = _crop_around_lesion(ct, labels, int(synth_report.get("label_value", 11)))
        folder = root / "synthetic_outputs" / f"synth_case{i}"
        folder.mkdir(parents=True)
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(folder / "ct.nii.gz"))
        sitk.WriteImage(labels, str(folder / "label.nii.gz"))
        (folder / "report.json").write_text(json.dumps(synth_report))
        synthetic.append(synthetic_case(folder))
    study, key = root / "study", root / "study_key"
    create_study(real, synthetic, study, key, settings=StudySettings(seed=3, fov_mm=96, allow_changes=False))
    for reader in ("reader A", "reader B", "reader C"):
        add_reader(study, reader)
    return study, key


# -- blinding -----------------------------------------------------------------------------------


def test_headless_scene_has_no_leaks_to_begin_with(ctx, lung_study):
    assert scenarios.scene_leaks(ctx, scenarios.forbidden_strings(*lung_study)) == []


def test_leak_check_finds_what_it_looks_for(ctx, lung_study):
    """The blinding check is not vacuous: a source path, a case id, the key or an origin word anywhere is found."""
    study, key = lung_study
    forbidden = scenarios.forbidden_strings(study, key)
    key_json = json.loads((key / "key.json").read_text())
    case_id, case = next(iter(key_json["cases"].items()))
    assert str(key) in forbidden and case_id in forbidden and Path(case["image"]).name in forbidden
    node = ctx.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Case 1 of 4")
    for setter in (lambda: node.SetDescription(case["image"]), lambda: node.SetAttribute("origin", "synthetic"),
                   lambda: node.SetName(case_id), lambda: node.SetAttribute("key", str(key))):
        setter()
        assert scenarios.scene_leaks(ctx, forbidden), "a leak went unnoticed"
        node.SetName("Case 1 of 4")
        node.SetDescription(None)
        for name in node.GetAttributeNames() or ():
            node.RemoveAttribute(name)
        assert scenarios.scene_leaks(ctx, forbidden) == []
    # A storage node that remembers the case file is a leak too.
    node.AddDefaultStorageNode()
    node.GetStorageNode().SetFileName(str(study / "cases" / case_id / "image.nii.gz"))
    assert any("file names" in leak for leak in scenarios.scene_leaks(ctx, forbidden))


def test_blinded_walk_through_real_and_synthetic_cases(ctx, lung_study):
    study, key = lung_study
    titles = scenarios.scenario_reader_study_blinding(ctx, study, key, "reader A")
    assert titles == [f"Case {i} of 4" for i in range(1, 5)]


def test_case_geometry_and_voxels_match_the_study_files(ctx, lung_study):
    """The shown volume is the study image (voxels, LPS->RAS geometry); the lesion segment is its mask."""
    study, _ = lung_study
    logic = ReaderStudyLogic(ctx)
    logic.open(study, "reader C")
    shown = logic.show_current()
    image = sitk.ReadImage(str(study / "cases" / shown.case_id / "image.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(study / "cases" / shown.case_id / "mask.nii.gz")))
    assert np.array_equal(mrml.array_from_volume(shown.volume_node), sitk.GetArrayFromImage(image))
    origin_ras, spacing, direction_ras = mrml.sitk_geometry_to_ras(image)
    m = mrml.ijk_to_ras_matrix(shown.volume_node)
    assert np.allclose(m[:3, 3], origin_ras) and np.allclose(m[:3, :3], direction_ras * spacing)
    segment = mrml.segment_ids(shown.segmentation_node)[0]
    assert np.array_equal(mrml.segment_mask(ctx, shown.segmentation_node, segment, shown.volume_node), mask > 0)
    assert shown.centre_ras == (-0.0, -0.0, 0.0) or np.allclose(shown.centre_ras, 0.0)  # study centres the lesion
    assert shown.window_level == (1500.0, -600.0), "lung tumours open in a lung window"
    display = shown.volume_node.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == shown.window_level and not display.GetAutoWindowLevel()
    assert shown.segmentation_node.GetDisplayNode().GetOpacity2DFill() == 0.0, "the lesion is outlined, not covered"
    assert shown.report == scenarios.READER_STUDY_REPORT and shown.attributes == list(scenarios.READER_STUDY_REPORT)
    logic.close()


# -- answers, resume, errors ---------------------------------------------------------------------


def test_rate_resume_after_restart(ctx, lung_study):
    study, _ = lung_study
    given = scenarios.scenario_reader_study_resume(ctx, study, "reader B", n_answers=2)
    assert len(given) == 2


def test_reading_time_is_measured_from_when_the_case_was_shown(ctx, tmp_path):
    study, _ = scenarios.make_tiny_study(tmp_path, n=2)
    logic = ReaderStudyLogic(ctx)
    logic.open(study, "reader A")
    logic.show_current()
    time.sleep(0.3)
    answer = logic.rate(4, {"shape": 5, "invasion": None}, "  ")
    assert 0.3 <= answer.seconds < 5, answer.seconds
    assert answer.attributes == {"shape": 5} and answer.reason is None
    # Re-showing a case restarts its clock (time on screen, not since the study was opened).
    logic.next()
    answer = logic.rate(2)
    assert answer.seconds < 0.3, answer.seconds
    logic.close()
    # Committed at once: a second connection sees both answers without the logic closing anything.
    with ReaderSession(study, "reader A") as session:
        assert len(session.answers()) == 2


def test_errors_come_through_and_leave_the_scene_unchanged(ctx, tmp_path):
    study, _ = scenarios.make_tiny_study(tmp_path, n=2, readers=("reader A",))
    messages = scenarios.scenario_reader_study_errors(ctx, study, "reader A")
    assert any("pasta review add-reader" in m for m in messages), messages
    assert any("does not allow changing answers" in m for m in messages)
    assert any("modified after the study was created" in m for m in messages)


def test_changed_answers_when_the_study_allows_them(ctx, tmp_path):
    study, _ = scenarios.make_tiny_study(tmp_path, n=2, allow_changes=True)
    logic = ReaderStudyLogic(ctx)
    logic.open(study, "reader A")
    shown = logic.show_current()
    assert logic.rate(2).revision == 1 and not shown.locked
    assert logic.rate(4, reason="second look").revision == 2
    again = logic.next() and logic.previous()
    assert again.answer.realism == 4 and again.answer.revision == 2 and not again.locked
    logic.close()


def test_tampered_study_json_refuses_to_open(ctx, tmp_path):
    study, _ = scenarios.make_tiny_study(tmp_path, n=2)
    meta = study / "study.json"
    meta.write_text(meta.read_text().replace('"allow_changes": false', '"allow_changes": true'))
    logic = ReaderStudyLogic(ctx)
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(StudyTamperedError, match="study.json changed"):
        logic.open(study, "reader A")
    assert ctx.scene.GetNumberOfNodes() == n and not logic.is_open


def test_finished_reader_resumes_past_the_end(ctx, tmp_path):
    study, _ = scenarios.make_tiny_study(tmp_path, n=1)
    logic = ReaderStudyLogic(ctx)
    logic.open(study, "reader A")
    n0 = ctx.scene.GetNumberOfNodes()
    shown = logic.show_current()
    while shown is not None:
        logic.rate(3)
        shown = logic.next()
    assert logic.progress() == (2, 2) and logic.finished and ctx.scene.GetNumberOfNodes() == n0
    logic.close()
    reopened = ReaderStudyLogic(ctx)
    assert reopened.open(study, "reader A") is None and reopened.show_current() is None
    last = reopened.previous()
    assert last.position == 2 and last.locked and last.answer.realism == 3
    reopened.close()
    assert ctx.scene.GetNumberOfNodes() == n0
    with pytest.raises(UnknownReaderError, match="add-reader"):
        reopened.open(study, "Reader A")  # names are exact


def test_slicer_runtest_scenarios(ctx, tmp_path):
    """What PASTASynthTest.runTest runs inside Slicer (tiny generated study)."""
    scenarios.run_reader_study(ctx, tmp_path)


# -- the widget (cannot run here: no Slicer Qt) ------------------------------------------------------


def test_widget_wires_shortcuts_and_stays_thin():
    source = (REPO / "PASTASynth" / "PASTASynth.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    # The reader study is its own widget class; the module widget only builds it and forwards
    # enter / exit / scene close / cleanup.
    widget, panel = ast.unparse(classes["PASTASynthWidget"]), ast.unparse(classes["ReaderStudyPanel"])
    for needle in ("ReaderStudyPanel(readerStudyWidget, self.logic.synthesis.context)",
                   "loadUI(self.resourcePath('UI/ReaderStudyPanel.ui'))", "self.readerStudyPanel.setup(",
                   "self.readerStudyPanel.setEntered(True)", "self.readerStudyPanel.setEntered(False)",
                   "self.readerStudyPanel.onSceneStartClose()", "self.readerStudyPanel.cleanup()"):
        assert needle in widget, f"PASTASynthWidget lacks {needle}"
    assert "ReaderStudyLogic" not in widget and "likert" not in widget.lower(), "reader-study code left in the widget"
    for needle in ("qt.QShortcut", "qt.Qt.Key_Left", "qt.Qt.Key_Right", "qt.Qt.Key_PageUp", "qt.Qt.Key_PageDown",
                   "range(1, 6)", "ReaderStudyLogic(", "self.logic.rate,", "self.logic.next",
                   "self.logic.previous", "JumpAllSlices"):
        assert needle in panel, f"ReaderStudyPanel lacks {needle}"
    assert "ReaderSession" not in panel and "sqlite" not in panel, "the panel must go through ReaderStudyLogic"
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PASTASynthTest")
    assert "scenarios.run_reader_study(" in ast.unparse(test_class)
    run_test = next(n for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    assert "test_PASTASynthReaderStudy" in ast.unparse(run_test)

"""Scenario checks for the PASTA module, run by pytest (real `pasta segment` outputs of a trained test
model, the real DICOM series) and by PASTATest.runTest inside Slicer (:func:`run_all`).

Each scenario takes the MRML context and file paths, asserts what a user would check, and returns
what it built so pytest can measure more.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from PASTASlicerLib import mrml
from PASTASlicerLib.mrml import MRMLContext

from .logic import (
    SegmentationReportLogic,
    SegmentImport,
    SegmentImportError,
    fine_tuned_classes,
    fine_tuned_model_path,
    finetune_command,
    parse_progress,
    resolve_checkpoint,
)
from .reports import ReportEditError



def _expect_error(error: type[Exception], call, *needles: str, what: str) -> str:
    """Run ``call()``; it must raise ``error`` whose message contains every needle (no pytest in Slicer)."""
    try:
        call()
    except error as exc:
        text = str(exc)
        assert all(n in text for n in needles), text
        return text
    raise AssertionError(f"{what} did not fail with {error.__name__}")

def scenario_progress_parsing() -> None:
    assert parse_progress("PROGRESS 0.25 loading") == (0.25, "loading")
    assert parse_progress("PROGRESS 40% inference") == (0.4, "inference")
    assert parse_progress("PROGRESS 3/4 window") == (0.75, "window")
    assert parse_progress("loss 0.3") is None


def scenario_export_training_case(ctx: MRMLContext, ct_path, label_path, names: dict[int, str],
                                  out_dir) -> Path:
    """An imported label map exported as a few-shot case is voxel-exact, geometry-exact."""
    import SimpleITK as sitk

    logic = SegmentationReportLogic(context=ctx)
    ct = logic.load_ct(ct_path, "CT")
    segmentation = logic.import_prediction(label_path, ct, names)
    values = {n: v for v, n in names.items()}
    folder = Path(out_dir) / "fewshot"
    entry = logic.export_training_case(ct, segmentation, folder, "case001", values)
    logic.export_training_case(ct, segmentation, folder, "case001", values)  # idempotent
    assert logic.list_training_cases(folder) == ["case001"]
    image = sitk.ReadImage(str(folder / entry["image"]))
    labels = sitk.ReadImage(str(folder / entry["label"]))
    source_ct, source_labels = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(label_path))
    for a, b in ((image, source_ct), (labels, source_labels)):
        assert a.GetSize() == b.GetSize()
        assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source_ct))
    src = sitk.GetArrayFromImage(source_labels)
    expected = np.where(np.isin(src, list(names)), src, 0)
    assert np.array_equal(sitk.GetArrayFromImage(labels), expected), "exported labels differ"
    return folder


# --- pasta segment outputs -> segments + report cards -------------------------------------------


def scenario_import_segment_outputs(ctx: MRMLContext, ct_node, out_dir) -> SegmentImport:
    """One segment per lesion of lesions.json plus one per other label, names as run.json / PASTA
    name them, voxel-exact against labels.nii.gz on the CT grid; the report node holds reports.json."""
    import SimpleITK as sitk

    from PASTALib.labels import label_name

    out = Path(out_dir)
    logic = SegmentationReportLogic(context=ctx)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    reports = json.loads((out / "reports.json").read_text(encoding="utf-8"))
    lesions = json.loads((out / "lesions.json").read_text(encoding="utf-8"))
    run = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").is_file() else {}
    names = {int(k): v for k, v in (run.get("label_names") or {}).items()}
    imported = logic.import_segment_outputs(out, ct_node)
    segmentation = imported.segmentation_node
    other = sorted(int(v) for v in np.unique(labels) if v and not 11 <= v <= 25)
    assert len(imported.lesion_segment_ids) == len(lesions) == len(reports)
    assert sorted(imported.label_segment_ids) == other
    assert len(mrml.segment_ids(segmentation)) == len(lesions) + len(other)

    seg = segmentation.GetSegmentation()
    ids = [imported.label_segment_ids[v] for v in other] + [imported.lesion_segment_ids[int(les["index"])]
                                                            for les in lesions]
    stacked = mrml.label_array_from_segmentation(ctx, segmentation, ct_node, ids)  # one export, CT grid
    assert stacked.shape == labels.shape
    rebuilt = np.zeros_like(labels)
    for n, v in enumerate(other, start=1):
        assert seg.GetSegment(ids[n - 1]).GetName() == names.get(v, label_name(v))
        rebuilt[stacked == n] = v
    for n, les in enumerate(lesions, start=len(other) + 1):
        value = int(les["label_value"])
        segment = seg.GetSegment(ids[n - 1])
        assert segment.GetName() == f"Lesion {les['index']}: {names.get(value, label_name(value))}"
        mask = stacked == n
        assert int(mask.sum()) == int(les["voxels"]), f"lesion {les['index']}: voxel count differs"
        rebuilt[mask] = value
        if value in range(11, 26):  # PASTA lesion types: SNOMED CT morphology + the organ as region
            assert "SCT^49755003^Morphologically Altered Structure" in segment.GetTerminology()
    assert np.array_equal(rebuilt, labels), "segments differ from labels.nii.gz"

    node = logic.report_node_of(segmentation)
    assert node is not None and node.GetClassName() == "vtkMRMLTextNode"
    assert logic.report_cards(segmentation).reports() == reports, "report node differs from reports.json"
    assert [c.index for c in imported.cards] == [int(les["index"]) for les in lesions]
    return imported


def scenario_edit_and_export_json(ctx: MRMLContext, segmentation_node, work_dir) -> dict:
    """An invalid edit is refused with the allowed values (card and node unchanged); a valid edit
    is stored on the scene, regenerates the report text and round-trips through Export JSON."""
    from PASTALib.report.schema import validate_report

    logic = SegmentationReportLogic(context=ctx)
    cards = logic.report_cards(segmentation_node)
    card = cards.cards[0]
    before = logic.report_node_of(segmentation_node).GetText()
    _expect_error(ReportEditError, lambda: logic.edit_report(segmentation_node, card.index, "density", "Very dense"),
                  "Allowed values: Hypodense, Isodense, Hyperdense", what="an invalid density")
    _expect_error(ReportEditError, lambda: logic.edit_report(segmentation_node, card.index, "size", "about 3 cm"),
                  "Z×X×Y", what="an invalid size")
    assert logic.report_node_of(segmentation_node).GetText() == before, "a refused edit changed the scene"

    density = next(d for d in ("Hyperdense", "Isodense", "Hypodense") if d != card.report["density"])
    assert logic.edit_report(segmentation_node, card.index, "density", density.lower()) == density
    assert logic.edit_report(segmentation_node, card.index, "size", "31 x 22 x 19 mm") == "31×22×19mm"
    edited = logic.report_cards(segmentation_node).card(card.index)
    assert edited.report["density"] == density and edited.report["size_zxy_mm"] == [31, 22, 19]
    assert "; 31×22×19mm; " in edited.text and f"; {density}; " in edited.text
    assert sorted(edited.edited) == ["density", "size"]

    path = Path(work_dir) / "exported" / "reports.json"
    logic.export_reports_json(segmentation_node, path)
    written = json.loads(path.read_text(encoding="utf-8"))
    for report in written:
        validate_report(report)
    assert written[0] == edited.report and len(written) == len(cards)
    assert not [p for p in path.parent.iterdir() if p.name != path.name], "temporary files left behind"
    return edited.report


def scenario_reports_persist_with_scene(ctx: MRMLContext, segmentation_node, work_dir) -> MRMLContext:
    """The (edited) cards, segment tags and the CT link survive saving the scene and loading it again."""
    logic = SegmentationReportLogic(context=ctx)
    cards = logic.report_cards(segmentation_node)
    bundle = Path(work_dir) / "saved_scene"
    bundle.mkdir(parents=True, exist_ok=True)
    assert ctx.scene.SaveSceneToSlicerDataBundleDirectory(str(bundle)), "saving the scene failed"
    loaded = MRMLContext.headless()
    loaded.scene.SetURL(str(next(bundle.glob("*.mrml"))))
    assert loaded.scene.Import(), "loading the saved scene failed"
    segmentation = loaded.scene.GetNodeByID(segmentation_node.GetID())
    again = SegmentationReportLogic(context=loaded)
    assert again.report_cards(segmentation).to_json() == cards.to_json()
    assert mrml.segment_names(segmentation) == mrml.segment_names(segmentation_node)
    ct = loaded.scene.GetNodeByID(segmentation.GetAttribute("PASTA.SourceVolume"))
    assert ct is not None and ct.GetClassName() == "vtkMRMLScalarVolumeNode"
    return loaded


def scenario_failed_import_leaves_scene(ctx: MRMLContext, ct_node, out_dir, work_dir) -> list[str]:
    """Corrupt or inconsistent outputs raise a clear error and add no node to the scene."""
    logic = SegmentationReportLogic(context=ctx)
    messages = []
    cases = {
        "truncated": lambda d: _truncate(d / "labels.nii.gz"),
        "other run": lambda d: (d / "lesions.json").write_text(
            json.dumps([{**les, "voxels": int(les["voxels"]) + 1} for les in
                        json.loads((d / "lesions.json").read_text(encoding="utf-8"))]), encoding="utf-8"),
        "missing": lambda d: (d / "reports.json").unlink(),
    }
    for what, damage in cases.items():
        broken = Path(work_dir) / f"broken_{what.replace(' ', '_')}"
        if broken.exists():
            shutil.rmtree(broken)
        shutil.copytree(out_dir, broken)
        damage(broken)
        before = ctx.scene.GetNumberOfNodes()
        text = _expect_error(SegmentImportError, lambda: logic.import_segment_outputs(broken, ct_node),
                             what=f"importing {what} outputs")
        assert "run the segmentation again" in text.lower(), text
        messages.append(text)
        assert ctx.scene.GetNumberOfNodes() == before, f"{what}: a failed import left nodes in the scene"
    return messages


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- DICOM SEG + SR with the edited report -------------------------------------------------------


def sr_attributes(group) -> dict[str, str]:
    """Report attributes (key → exact wording) of a TID 1500 measurement group, decoded from its codes."""
    from PASTALib.dicom import attribute_name_code, attribute_wording
    from PASTALib.dicom.export import ATTRIBUTE_KEYS

    names = {attribute_name_code(key).value: key for key in ATTRIBUTE_KEYS}
    return {names[q.name.value]: attribute_wording(names[q.name.value], q.value)
            for q in group.get_qualitative_evaluations() if q.name.value in names}


def scenario_dicom_export(ctx: MRMLContext, dicom_folder, out_dir, work_dir) -> dict:
    """A CT read from a DICOM series, its `pasta segment` outputs imported and one card edited:
    the exported SEG has one segment per lesion with its voxels, the SR holds the edited value."""
    import highdicom as hd

    from PASTALib.dicom import DicomExportError

    logic = SegmentationReportLogic(context=ctx)
    ct = logic.load_ct(dicom_folder, "CT DICOM")
    assert logic.dicom_source_of(ct) is not None
    imported = logic.import_segment_outputs(out_dir, ct)
    card = imported.cards.cards[0]
    density = next(d for d in ("Hyperdense", "Isodense", "Hypodense") if d != card.report["density"])
    logic.edit_report(imported.segmentation_node, card.index, "density", density)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the example series has empty UIDs (GeneratedUIDWarning)
        files = logic.export_dicom(imported.segmentation_node, ct, Path(work_dir) / "dicom_export")
    sr = hd.sr.srread(files["dicom_sr"])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(imported.cards)
    first = next(g for g in groups if g.tracking_identifier == f"Lesion {card.index}")
    evaluations = sr_attributes(first)
    assert evaluations["density"] == density, evaluations
    seg = hd.seg.segread(files["dicom_seg"])
    lesions = {int(les["index"]): les for les in (c.details for c in imported.cards)}
    for description in seg.SegmentSequence:
        if description.SegmentLabel.startswith("Lesion "):
            index = int(description.SegmentLabel.split(":")[0].split()[1])
            mask = seg.get_volume(segment_numbers=[description.SegmentNumber], combine_segments=False).array
            assert int(mask.sum()) == int(lesions[index]["voxels"]), f"SEG lesion {index} voxels differ"

    plain = SegmentationReportLogic(context=ctx)
    nifti_ct = mrml.sitk_to_volume(ctx, mrml.volume_to_sitk(ct), "CT without DICOM source")
    _expect_error(DicomExportError, lambda: plain.export_dicom(imported.segmentation_node, nifti_ct,
                                                               Path(work_dir) / "never"),
                  "not loaded from DICOM", "Export JSON", what="DICOM export without a DICOM source")
    assert not (Path(work_dir) / "never").exists()
    return {"files": files, "density": density, "lesion": card.index, "evaluations": evaluations}


# --- checkpoints and few-shot ------------------------------------------------------------------


@contextlib.contextmanager
def _weights_dir(path) -> None:
    """``PASTA_WEIGHTS_DIR`` set to ``path`` for the block (where PASTA_final.pth is looked for)."""
    old = os.environ.get("PASTA_WEIGHTS_DIR")
    os.environ["PASTA_WEIGHTS_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PASTA_WEIGHTS_DIR", None)
        else:
            os.environ["PASTA_WEIGHTS_DIR"] = old


def scenario_checkpoint_messages(checkpoint, training_folder, work_dir) -> None:
    """Missing weights are reported before any job starts, saying where to get PASTA_final.pth."""
    from PASTALib.errors import MissingWeightsError

    empty = Path(work_dir) / "no_weights"
    empty.mkdir(parents=True, exist_ok=True)
    with _weights_dir(empty):
        for args in ((None,), (empty / "PASTA_final.pth",)):
            _expect_error(MissingWeightsError, lambda: resolve_checkpoint(*args), "PASTA_final.pth",
                          "github.com/LWHYC/PASTA", str(empty), what="missing PASTA weights")
        assert resolve_checkpoint(checkpoint) == Path(checkpoint)
        shutil.copy(checkpoint, empty / "PASTA_final.pth")
        assert resolve_checkpoint(None) == empty / "PASTA_final.pth"
    for folder, needle in ((None, "no training folder"), (training_folder, "run Fine-tune")):
        _expect_error(MissingWeightsError, lambda: resolve_checkpoint(checkpoint, True, folder), needle,
                      what="a missing fine-tuned model")


def scenario_few_shot(ctx: MRMLContext, ct_node, segmentation_node, training_folder, init_checkpoint,
                      finetune_args: Sequence[str] = (), timeout: float = 600.0) -> dict:
    """Mark the segmentation as two training cases, fine-tune in a subprocess with progress lines,
    then "Use fine-tuned model" resolves to TRAINING_FOLDER/finetune/model_final.pth with its classes."""
    from PASTASlicerLib.jobs import BatchJob

    logic = SegmentationReportLogic(context=ctx)
    folder = Path(training_folder)
    values = logic.training_label_values(segmentation_node)
    for case_id in ("case_a", "case_b"):  # two ids: the smallest held-out split is 1 of 2
        logic.export_training_case(ct_node, segmentation_node, folder, case_id)
    assert logic.list_training_cases(folder) == ["case_a", "case_b"]
    manifest = logic.read_manifest(folder)
    expected = {}
    for name, value in values.items():
        expected.setdefault(value, name.split(": ", 1)[-1])
    assert sorted(manifest["labels"].items(), key=lambda kv: kv[1]) == sorted(
        ((n, v) for v, n in expected.items()), key=lambda kv: kv[1]), manifest["labels"]

    progress: list[tuple[float, str]] = []
    command = finetune_command(folder, init=init_checkpoint, device="cpu",
                               extra=["--folds", "2", *finetune_args])
    job = BatchJob(command, on_progress=lambda f, m: progress.append((f, m)),
                   env={**os.environ, "OMP_NUM_THREADS": "1"}).start()
    state = job.wait(timeout=timeout)
    assert state == "finished", f"fine-tuning {state}:\n{job.output_tail[-3000:]}"
    fractions = [f for f, _ in progress]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, progress[-5:]
    model = resolve_checkpoint(None, True, folder)
    assert model == fine_tuned_model_path(folder) and model.is_file()
    classes = fine_tuned_classes(folder)
    assert classes == [expected[v] for v in sorted(expected)], classes
    return {"model": model, "classes": classes, "progress": progress}


# --- Slicer self-test -------------------------------------------------------------------------


def make_segment_outputs(folder) -> tuple[Path, Path, Path]:
    """A small oblique CT with a liver, a kidney and two lesions, and the `pasta segment` files
    written for it by PASTALib's own report and writer code (a random tiny network predicts the
    attributes): (ct path, output folder, weights file). Needs torch (used by runTest in Slicer)."""
    import SimpleITK as sitk
    import torch

    from PASTALib.infer import InferenceConfig, report_lesions
    from PASTALib.infer.pipeline import write_outputs
    from PASTALib.model import PastaUNet, UNetConfig
    from PASTASlicerLib.scenarios import make_synthetic_case

    folder = Path(folder)
    ct_path, label_path, _ = make_synthetic_case(folder / "case")
    ct = sitk.ReadImage(str(ct_path))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    pasta = np.zeros_like(lab)
    pasta[lab == 5] = 2  # TotalSegmentator liver -> PASTA liver
    pasta[lab == 2] = 8  # kidney
    zz, yy, xx = np.indices(lab.shape)
    pasta[(((zz - 12) / 3) ** 2 + ((yy - 15) / 4) ** 2 + ((xx - 12) / 4) ** 2 <= 1)] = 12  # liver tumour
    pasta[(((zz - 10) / 2) ** 2 + ((yy - 28) / 3) ** 2 + ((xx - 26) / 3) ** 2 <= 1)] = 24  # kidney cyst
    labels = sitk.GetImageFromArray(pasta)
    labels.CopyInformation(ct)
    torch.manual_seed(0)
    network = PastaUNet(UNetConfig.tiny(num_stages=5, base_channels=8)).eval()
    weights = folder / "tiny_model.pth"
    torch.save(network.state_dict(), weights)
    cfg = InferenceConfig(device="cpu", spacing_mm=2.0, crop_size=(32,) * 3, min_lesion_volume_mm3=5.0)
    result = report_lesions(ct, labels, network, cfg)
    out = folder / "out"
    write_outputs(result, out, source=ct_path, checkpoint=weights)
    return ct_path, out, weights


def run_all(ctx: MRMLContext, work_dir, ct_path=None, label_path=None, names=None, *,
            run_finetune: bool = False) -> None:
    """Everything PASTATest.runTest checks inside Slicer, on synthetic data (no model download)."""
    from PASTASlicerLib.scenarios import make_synthetic_case

    work = Path(work_dir)
    if ct_path is None:
        ct_path, label_path, names = make_synthetic_case(work / "synthetic")
    scenario_progress_parsing()
    scenario_export_training_case(ctx, ct_path, label_path, names, work)

    seg_ct, out, weights = make_segment_outputs(work / "segment")
    logic = SegmentationReportLogic(context=ctx)
    ct = logic.load_ct(seg_ct, "CT")
    imported = scenario_import_segment_outputs(ctx, ct, out)
    scenario_failed_import_leaves_scene(ctx, ct, out, work)
    scenario_edit_and_export_json(ctx, imported.segmentation_node, work)
    scenario_reports_persist_with_scene(ctx, imported.segmentation_node, work).scene.Clear(1)
    scenario_checkpoint_messages(weights, work / "fewshot_checks", work)
    if run_finetune:
        scenario_few_shot(ctx, ct, imported.segmentation_node, work / "fewshot_finetune", weights,
                          ["--iterations", "2", "--patch-size", "32", "--spacing", "2", "--batch-size", "1",
                           "--no-validation", "--checkpoint-every", "1"])

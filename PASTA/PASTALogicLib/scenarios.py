"""Scenario checks for the PASTA module, run by pytest and by PASTATest.runTest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from PASTASynthLib.mrml import MRMLContext

from .logic import SegmentationReportLogic, parse_progress


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


def run_all(ctx: MRMLContext, work_dir, ct_path=None, label_path=None, names=None) -> None:
    from PASTASynthLib.scenarios import make_synthetic_case

    if ct_path is None:
        ct_path, label_path, names = make_synthetic_case(Path(work_dir) / "synthetic")
    scenario_progress_parsing()
    scenario_export_training_case(ctx, ct_path, label_path, names, work_dir)

"""Whole-CT inference (PASTALib.infer, `pasta segment`): a tiny PASTA UNet is trained here, on CPU,
on lesions synthesized into a crop of the real TotalSegmentator example CT, then segments it.

Cost control (2 shared cores): the model works at a 3 mm canonical grid (``spacing_mm=3``; the
default is the paper's 1 mm) with 32³ windows and 5 stages, and is trained once per session
(fixtures `case`, `checkpoint`, `segmented` in conftest.py).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PASTALib.errors import MissingWeightsError
from PASTALib.infer import InferenceConfig, InferenceError, load_model, resolve_device, run_batch
from PASTALib.runtime import DeviceError
from PASTALib.io import read_ct, read_label
from PASTALib.report.measure import measure_lesion
from PASTALib.report.schema import validate_report

import dicom_validators
from conftest import PATCH, SPACING
from conftest import segment_args as _args
from conftest import segment_cli as _cli

REPO = Path(__file__).resolve().parents[1]
#: Whole-CT DSC measured with the conftest recipe (4.5 mm grid, 500 iterations, CE lesions x2 + deep supervision,
#: poly lr): "any lesion" 0.63, liver tumour 0.74 (0.42 / 0.47 with another training seed, which stands in for
#: another CPU's floating point taking another path); the kidney cyst (-1 HU in a 14 HU plain-CT kidney) is
#: not found. The bounds sit well below the worst seed; the former recipe (3 mm, 300 iterations, CE x10) gave
#: 0.155 / 0.11 with 54 lesion components.
LESION_DSC_BOUND = 0.25
LIVER_TUMOR_DSC_BOUND = 0.25
MAX_LESIONS = 12  # bounds the false-positive components (the former recipe: 54)


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def test_segment_finds_the_lesions(case, segmented):
    gt = sitk.GetArrayFromImage(read_label(case.gt))
    pred = sitk.GetArrayFromImage(read_label(segmented.out / "labels.nii.gz"))
    dsc_any = _dsc(gt >= 11, pred >= 11)
    dsc_liver_tumor = _dsc(gt == 12, pred == 12)
    print(f"lesion DSC any={dsc_any:.3f} liver_tumor={dsc_liver_tumor:.3f} kidney_cyst={_dsc(gt == 24, pred == 24):.3f} "
          f"organs liver={_dsc(gt == 2, pred == 2):.3f}; CLI {segmented.seconds:.1f}s")
    assert dsc_any > LESION_DSC_BOUND and dsc_liver_tumor > LIVER_TUMOR_DSC_BOUND
    reports = json.loads((segmented.out / "reports.json").read_text())
    print(f"{len(reports)} lesion(s): {[(r['lesion_type'], r['volume_mm3']) for r in reports]}")
    assert 1 <= len(reports) <= MAX_LESIONS
    assert reports[0]["lesion_type"] == "liver_tumor" and reports[0]["location"] == "Liver"  # the largest is the tumour


def test_output_grid_equals_input_grid(case, segmented):
    ct, labels = read_ct(case.ct), sitk.ReadImage(str(segmented.out / "labels.nii.gz"))
    assert labels.GetSize() == ct.GetSize()
    assert np.allclose(labels.GetSpacing(), ct.GetSpacing()) and np.allclose(labels.GetOrigin(), ct.GetOrigin())
    assert np.allclose(labels.GetDirection(), ct.GetDirection())
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= set(range(26))
    assert (segmented.out / "labels.seg.nrrd").is_file()


def test_reports_match_the_written_labels(case, segmented):
    ct = read_ct(case.ct)
    labels = read_label(segmented.out / "labels.nii.gz")
    reports = json.loads((segmented.out / "reports.json").read_text())
    lesions = json.loads((segmented.out / "lesions.json").read_text())
    lines = (segmented.out / "reports.txt").read_text().splitlines()
    assert len(reports) == len(lesions) == len(lines) >= 1
    values = [r["label_value"] for r in reports]
    for report, sidecar, line in zip(reports, lesions, lines):
        validate_report(report)
        # the line is the report's text, plus the uncertainty note when the type and the organ disagree
        suffix = "; lesion type uncertain (" if sidecar["type_uncertain"] else ""
        assert line.startswith(f"Lesion {sidecar['index']}: {report['text']}{suffix}"), line
        assert ("lesion type uncertain" in line) == sidecar["type_uncertain"], line
        assert set(sidecar["confidence"]) == {"shape", "density", "heterogeneity", "surface", "invasion"}
        assert all(0.0 < c <= 1.0 for c in sidecar["confidence"].values())
        if values.count(report["label_value"]) != 1:
            continue  # measure_lesion measures one label value; instances of one type are checked via the sidecar
        m = measure_lesion(ct, labels, report["label_value"], 2 if report["location"] == "Liver" else 8)
        x, y, z = (int(round(v)) for v in m["extents_xyz_mm"])
        assert report["size_zxy_mm"] == [z, x, y]
        assert report["volume_mm3"] == pytest.approx(m["volume_mm3"], abs=0.05)
        assert report["mean_hu"] == pytest.approx(m["mean_hu"], abs=0.05 + 1e-9)  # rounded to 0.1 HU
        assert sidecar["longest_diameter_mm"] >= max(report["size_zxy_mm"]) - 1e-6


def test_progress_lines(segmented):
    lines = [line for line in segmented.stdout.splitlines() if line.startswith("PROGRESS ")]
    fractions = [float(line.split()[1]) for line in lines]
    assert len(lines) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("window" in line for line in lines)


def test_dicom_series_gives_seg_and_sr(ts_data, case, checkpoint, tmp_path):
    """JPEG 2000 series with empty Study/Series/SOP UIDs: end to end through the CLI."""
    import highdicom as hd
    import pydicom

    out = tmp_path / "dicom"
    rc, stdout, stderr = _cli(["--ct", str(ts_data / "example_ct_dicom"), "--out", str(out), "--min-lesion-volume", "100",
                               *_args(checkpoint)])
    assert rc == 0, stderr
    run = json.loads((out / "run.json").read_text())
    assert any("empty UIDs" in w and "deterministic" in w for w in run["warnings"])
    uids = json.loads((out / "dicom_uids.json").read_text())
    seg = hd.seg.segread(out / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["SeriesInstanceUID"]
    source_sops = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
                   for p in (ts_data / "example_ct_dicom").iterdir()}
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= source_sops and referenced  # the real instance UIDs from the file meta headers
    reports = json.loads((out / "reports.json").read_text())
    seg_labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert sum(label.startswith("Lesion ") for label in seg_labels) == len(reports)
    sr = hd.sr.srread(out / "sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(reports)
    lesions = [les for les in json.loads((out / "lesions.json").read_text()) if les["kind"] == "lesion"]
    measured = dicom_validators.validate_export(
        {"dicom_seg": out / "seg.dcm", "dicom_sr": out / "sr.dcm", "dicom_uids": out / "dicom_uids.json"},
        ts_data / "example_ct_dicom", read_label(out / "labels.nii.gz"), reports, lesions, tmp_path / "validators")
    print(f"dcmqi Dice per segment: {measured['dice']}")
    # reading the series again gives the same generated UIDs (deterministic)
    from PASTALib.dicom import GeneratedUIDWarning, read_source_series

    with pytest.warns(GeneratedUIDWarning):
        assert read_source_series(ts_data / "example_ct_dicom").series_uid == uids["SeriesInstanceUID"]


def test_dicom_sr_measurements_equal_the_report(ts_data, checkpoint, tmp_path):
    """A known liver lesion label on the DICOM grid → reports → SEG + SR read back with highdicom."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from PASTALib.anatomy import OrganMasks
    from PASTALib.dicom import GeneratedUIDWarning, attribute_name_code, attribute_wording, export_dicom
    from PASTALib.dicom.export import ATTRIBUTE_KEYS
    from PASTALib.infer import report_lesions

    ct = read_ct(ts_data / "example_ct_dicom")
    organs = OrganMasks.from_label_map(read_label(ts_data / "example_seg_dicom.nii.gz"), reference=ct).pasta_label_map()
    a = sitk.GetArrayFromImage(organs)
    c = np.argwhere(a == 2).mean(0).astype(int)
    zz, yy, xx = np.indices(a.shape)
    a[(((zz - c[0]) / 5) ** 2 + ((yy - c[1]) / 15) ** 2 + ((xx - c[2]) / 15) ** 2 <= 1) & (a == 2)] = 12
    labels = sitk.GetImageFromArray(a)
    labels.CopyInformation(ct)
    model = load_model(checkpoint, device="cpu")
    result = report_lesions(ct, labels, model, InferenceConfig(device="cpu", spacing_mm=SPACING, crop_size=(32,) * 3))
    assert len(result.lesions) == 1
    with pytest.warns(GeneratedUIDWarning):
        files = export_dicom(result, ts_data / "example_ct_dicom", tmp_path)
    report, lesion = result.reports[0], result.lesions[0]
    seg = hd.seg.segread(files["dicom_seg"])
    number = next(s.SegmentNumber for s in seg.SegmentSequence if s.SegmentLabel.startswith("Lesion 1"))
    desc = seg.get_segment_description(number)
    assert desc.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    assert desc.segmented_property_type == codes.SCT.Neoplasm
    mask = seg.get_volume(segment_numbers=[number], combine_segments=False).array
    voxel = float(np.prod(ct.GetSpacing()))
    assert mask.sum() * voxel == pytest.approx(report.volume_mm3, abs=0.1)
    sr = hd.sr.srread(files["dicom_sr"])
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert group.referenced_segment.source_series_for_segmentation.value == \
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert values["Volume"] == pytest.approx(report.volume_mm3)
    z, x, y = report.size_zxy_mm
    assert (values["Craniocaudal extent (Z)"], values["Right-left extent (X)"], values["Anterior-posterior extent (Y)"]) == (z, x, y)
    evaluations = {q.name.value: attribute_wording(key, q.value) for q in group.get_qualitative_evaluations()
                   for key in ATTRIBUTE_KEYS if q.name.value == attribute_name_code(key).value}
    assert evaluations == {attribute_name_code(k).value: getattr(report, k) for k in ATTRIBUTE_KEYS}
    reports_json = [json.loads(report.to_json())]
    measured = dicom_validators.validate_export(files, ts_data / "example_ct_dicom", result.labels, reports_json,
                                                [json.loads(json.dumps(lesion.details()))], tmp_path / "validators")
    assert measured["dice"]["Lesion 1: Liver tumor (Liver)"] == 1.0
    assert group.finding_sites[0].value == codes.SCT.Liver


_RUNNER = ("import sys, argparse; from PASTALib.cli import segment; p = argparse.ArgumentParser(); "
           "segment.add_parser(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def test_batch_resumes_after_sigkill(case, checkpoint, tmp_path):
    table = tmp_path / "cases.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "ct"])
        for cid in ("a", "b", "c"):
            writer.writerow([cid, str(case.ct)])  # the same CT three times: no data copied
    out = tmp_path / "batch"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, "segment", "--batch", str(table), "--out", str(out),
                             "--progress-lines", *_args(checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, cwd=REPO)
    seen = []
    try:
        for line in proc.stdout:  # kill while case b is being segmented
            seen.append(line)
            if "case 2/3 b: segmenting" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-5:])
    assert (out / "a" / "run.json").is_file() and not (out / "b").exists()
    assert any(p.name.startswith(".b.partial-") for p in out.iterdir())  # the killed case's partial folder

    model = load_model(checkpoint, device="cpu")
    # resumed with the CLI's default path (speed auto: fast on this CPU), as rerunning the command would
    cfg = InferenceConfig(device="cpu", patch_size=(PATCH,) * 3, crop_size=(PATCH,) * 3, spacing_mm=SPACING, speed="auto")
    summary = run_batch(table, out, model, cfg)
    assert summary["skipped"] == ["a"] and summary["done"] == ["b", "c"] and not summary["failed"]
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", "manifest.csv"]  # no partial folder left
    for cid in "abc":
        assert json.loads((out / cid / "reports.json").read_text()) == json.loads((out / "a" / "reports.json").read_text())
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["id"] for r in rows] == ["a", "b", "c"] and {r["status"] for r in rows} == {"ok"}


def test_missing_checkpoint_says_where_to_get_the_weights(case, tmp_path, monkeypatch):
    monkeypatch.setenv("PASTA_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(MissingWeightsError, match="PASTA_final.pth"):
        load_model(device="cpu")
    rc, _out, err = _cli(["--ct", str(case.ct), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert rc == 2
    assert "PASTA_final.pth" in err and "github.com/LWHYC/PASTA" in err and str(tmp_path / "weights") in err
    assert not (tmp_path / "o" / "labels.nii.gz").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available.*--device cpu"):
        resolve_device("cuda")


def test_config_validation():
    with pytest.raises(InferenceError, match="multiples of 32"):
        InferenceConfig(patch_size=(100, 128, 128)).validate(32)
    with pytest.raises(InferenceError, match="overlap"):
        InferenceConfig(overlap=1.0).validate(32)


def test_sliding_window_mirroring_and_window_count():
    """Mirroring averages 2**3 flipped passes; the window counter matches MONAI's windows."""
    from PASTALib.infer.sliding import WindowPredictor, count_windows, sliding_window_probabilities
    from PASTALib.model import PastaUNet, UNetConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = PastaUNet(UNetConfig.tiny(num_stages=5)).eval()
    hu = np.random.default_rng(0).normal(0, 200, (32, 20, 40)).astype(np.float32)
    calls = []
    cfg = InferenceConfig(patch_size=(32,) * 3, overlap=0.5, device="cpu", mirroring=True, batch_size=1)
    prob = sliding_window_probabilities(model, hu, cfg, torch.device("cpu"), progress=lambda f, m: calls.append(f))
    assert prob.shape == (26, 32, 20, 40)  # 20 < window: padded and cropped back
    assert torch.allclose(prob.sum(0), torch.ones(()), atol=1e-4)
    assert len(calls) == count_windows((32, 32, 40), cfg.patch_size, cfg.overlap) and calls[-1] == 1.0
    predictor = WindowPredictor(model, torch.device("cpu"), cfg)
    x = torch.from_numpy(hu[:32, :, :32].copy())[None, None] / 1000
    x = torch.nn.functional.pad(x, [0, 0, 0, 12])
    with torch.no_grad():
        p = predictor(x)
        flipped = predictor(torch.flip(x, [2, 3, 4]))
    assert len(predictor.flips) == 8
    assert torch.allclose(torch.flip(flipped, [2, 3, 4]), p, atol=1e-5)  # TTA over all flips is flip-invariant

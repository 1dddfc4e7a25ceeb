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

from PASTALib.cli.demo import demo_ct_path
from PASTALib.cli.main import GROUPS, build_parser
from PASTALib.io import image_to_array, read_ct, read_label
from PASTALib.synth.report import validate_report


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


def test_demo_writes_a_consistent_case(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = _pasta("demo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "ct.nii.gz", "labels.nii.gz", "labels.seg.nrrd", "overview.png", "report.json", "report.txt", "spec.json",
    ]
    original = read_ct(demo_ct_path())
    ct, labels = read_ct(out / "ct.nii.gz"), read_label(out / "labels.nii.gz")
    assert ct.GetSize() == original.GetSize()
    assert np.allclose(ct.GetOrigin(), original.GetOrigin(), atol=1e-3)
    label_array, ct_array, original_array = image_to_array(labels), image_to_array(ct), image_to_array(original)
    assert set(np.unique(label_array)) == {0, 1, 11}  # lung + lung tumour
    lesion = label_array == 11
    # The report is measured from the image: volume and mean HU read back from the files.
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    voxel_mm3 = float(np.prod(ct.GetSpacing()))
    assert report["volume_mm3"] == pytest.approx(lesion.sum() * voxel_mm3, rel=1e-3)
    assert report["mean_hu"] == pytest.approx(ct_array[lesion].mean(), abs=1.0)
    assert report["location"].endswith("lung")
    assert (out / "report.txt").read_text().strip() == report["text"]
    # Lung tumour vs aerated lung: a strong positive contrast.
    lung = label_array == 1
    assert ct_array[lesion].mean() - np.median(original_array[lung]) > 300
    # Voxels far from the lesion are untouched.
    changed = ct_array != original_array
    assert changed.any()
    far = ~sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(lesion.transpose(2, 1, 0).astype(np.uint8)), [6, 6, 2])).transpose(2, 1, 0).astype(bool)
    assert not changed[far].any()
    segmentation = slicerio.read_segmentation(str(out / "labels.seg.nrrd"))
    assert {s["name"] for s in segmentation["segments"]} == {"Lung", "Lung tumor"}
    # Refuses to overwrite without --force and leaves the folder intact.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = _pasta("demo", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(list(tmp_path.iterdir())) == 1  # no staging folders left behind

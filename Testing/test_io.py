"""PASTALib.io on the real CTs of the fetched test data: formats, DICOM, errors, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from PASTALib.errors import InputImageError
from PASTALib.geometry import array_to_image, image_to_array
from PASTALib.io import (
    read_ct,
    read_image,
    read_label,
    write_image,
    write_segmentation,
)
from PASTALib.io.outputs import OutputError


def test_reads_jpeg2000_dicom_series_with_empty_uids(ts_data: Path) -> None:
    ct = read_ct(ts_data / "example_ct_dicom")
    assert ct.GetSize() == (512, 512, 20)
    assert ct.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert ct.GetPixelID() == sitk.sitkInt16
    assert ct.GetMetaData("0008|0060") == "CT"
    values = sitk.GetArrayViewFromImage(ct)
    assert values.min() == -1024  # RescaleIntercept applied: air outside the body in HU
    # Liver parenchyma (contrast) sits in the soft-tissue range at the image centre.
    assert 0 < np.median(values[10, 200:300, 150:250]) < 250


def test_single_dicom_file_reads_its_whole_series(ts_data: Path) -> None:
    # The series has empty Study/Series UIDs: the file's neighbours are still found as one series.
    folder = ts_data / "example_ct_dicom"
    by_file = read_ct(sorted(folder.iterdir())[7])
    by_folder = read_ct(folder)
    assert by_file.GetSize() == by_folder.GetSize() == (512, 512, 20)
    assert np.array_equal(sitk.GetArrayViewFromImage(by_file), sitk.GetArrayViewFromImage(by_folder))


def test_nrrd_nifti_and_mha_give_the_same_voxels_and_geometry(shared_data: Path, tmp_path: Path) -> None:
    nrrd = read_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    assert nrrd.GetSize() == (512, 512, 48)
    for suffix in (".mha", ".nii.gz"):
        copy = read_ct(write_image(nrrd, tmp_path / f"lung1{suffix}"))
        assert np.array_equal(sitk.GetArrayViewFromImage(copy), sitk.GetArrayViewFromImage(nrrd))
        assert copy.GetOrigin() == pytest.approx(nrrd.GetOrigin(), abs=1e-3)
        assert copy.GetDirection() == pytest.approx(nrrd.GetDirection(), abs=1e-6)
    ras_nifti = read_ct(shared_data / "totalsegmentator" / "example_ct.nii.gz")
    assert ras_nifti.GetPixelID() == sitk.sitkInt16  # stored int32, fits int16
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ras_nifti.GetDirection()) == "RAS"


def test_mr_volume_is_rejected_with_reason(ts_data: Path) -> None:
    with pytest.raises(InputImageError, match=r"does not look like a CT.*MR"):
        read_ct(ts_data / "example_mr_sm.nii.gz")
    # The same file is fine when no CT is required (e.g. just inspecting it).
    assert read_image(ts_data / "example_mr_sm.nii.gz").GetSize() == (117, 91, 20)


def test_normalised_intensities_are_rejected(ts_data: Path, tmp_path: Path) -> None:
    ct = sitk.Cast(read_ct(ts_data / "example_ct_sm.nii.gz"), sitk.sitkFloat32)
    normalised = sitk.RescaleIntensity(ct, 0.0, 1.0)
    with pytest.raises(InputImageError, match="normalised"):
        read_ct(write_image(normalised, tmp_path / "norm.nii.gz"))


def test_dicom_seg_object_is_not_an_image(shared_data: Path) -> None:
    with pytest.raises(InputImageError, match="DICOM SEG object"):
        read_ct(shared_data / "dcmqi" / "liver.dcm")


def test_missing_corrupt_and_non_3d_files(ts_data: Path, tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="not found"):
        read_ct(tmp_path / "nope.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes((ts_data / "example_ct_sm.nii.gz").read_bytes()[:20_000])
    with pytest.raises(InputImageError, match="corrupt"):
        read_ct(truncated)
    slice_2d = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(64, 64, sitk.sitkInt16), str(slice_2d))
    with pytest.raises(InputImageError, match="2D"):
        read_ct(slice_2d)
    rgb = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(rgb))
    with pytest.raises(InputImageError, match="components"):
        read_ct(rgb)
    empty_dir = tmp_path / "empty_dicom"
    empty_dir.mkdir()
    with pytest.raises(InputImageError, match="No DICOM series"):
        read_ct(empty_dir)


def test_label_reader_rejects_non_integer_images(ts_data: Path, tmp_path: Path) -> None:
    labels = read_label(ts_data / "example_seg.nii.gz")
    assert labels.GetPixelID() == sitk.sitkUInt16
    float_image = sitk.Cast(read_ct(ts_data / "example_ct_sm.nii.gz"), sitk.sitkFloat32) * 0.5
    with pytest.raises(InputImageError, match="non-integer"):
        read_label(write_image(float_image, tmp_path / "f.nii.gz"))


def test_write_is_atomic_and_leaves_nothing_on_failure(ts_data: Path, tmp_path: Path) -> None:
    ct = read_ct(ts_data / "example_ct_sm.nii.gz")
    with pytest.raises(InputImageError, match="Cannot write"):
        write_image(ct, tmp_path / "ct.png")
    # A folder has the target's name: refused, nothing written.
    blocked = tmp_path / "blocked.nii.gz"
    blocked.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_image(ct, blocked)
    target = write_image(ct, tmp_path / "ct.nii.gz")
    assert read_ct(target).GetSize() == ct.GetSize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.nii.gz", "ct.nii.gz"]


def test_array_helpers_use_xyz_order(ts_data: Path) -> None:
    ct = read_ct(ts_data / "example_ct_sm.nii.gz")
    array = image_to_array(ct)
    assert array.shape == ct.GetSize()
    assert array[5, 7, 3] == ct.GetPixel(5, 7, 3)
    back = array_to_image(array, ct)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))
    with pytest.raises(ValueError, match="differs"):
        array_to_image(array[:-1], ct)


def test_seg_nrrd_round_trip_through_slicerio(ts_data: Path, tmp_path: Path) -> None:
    labels = read_label(ts_data / "example_seg.nii.gz")
    path = write_segmentation(labels, tmp_path / "organs.seg.nrrd", names={5: "liver", 2: "kidney_right"})
    segmentation = slicerio.read_segmentation(str(path))
    names = {s["labelValue"]: s["name"] for s in segmentation["segments"]}
    assert names[5] == "liver" and names[2] == "kidney_right"
    assert set(names) == {int(v) for v in np.unique(image_to_array(labels)) if v}
    assert np.array_equal(segmentation["voxels"], image_to_array(labels))
    direction = np.array(labels.GetDirection()).reshape(3, 3) @ np.diag(labels.GetSpacing())
    assert np.allclose(segmentation["ijkToLPS"][:3, :3], direction)
    assert np.allclose(segmentation["ijkToLPS"][:3, 3], labels.GetOrigin())
    # Written through a temporary name: no partial files left beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["organs.seg.nrrd"]

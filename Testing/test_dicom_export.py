"""PASTALib.dicom on the real DICOM series (TotalSegmentator example: JPEG 2000, empty UIDs), checked
by dicom3tools and dcmqi (Testing/dicom_validators.py), without a model: lesion labels are drawn
into the series' organ map and the attributes set by hand, so this file runs in seconds.

Lesions: a liver tumour inside the liver, and voxels of the liver-tumour class inside the stomach
(what a weak network predicts): the second must be located in the stomach with an uncertain type.
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import dicom_validators as dv
from PASTALib.labels import Organ, Phase


@pytest.fixture(scope="module")
def exported(ts_data, tmp_path_factory):
    from PASTALib.anatomy import OrganMasks
    from PASTALib.dicom import export_dicom
    from PASTALib.infer.lesions import build_lesion_report, find_lesions
    from PASTALib.infer.pipeline import SegmentationResult
    from PASTALib.io import read_ct, read_label
    from PASTALib.model.attributes import ATTRIBUTE_GROUPS, AttributePrediction

    out = tmp_path_factory.mktemp("dicom_export")
    source = ts_data / "example_ct_dicom"
    ct = read_ct(source)
    organs = OrganMasks.from_label_map(read_label(ts_data / "example_seg_dicom.nii.gz"), reference=ct).pasta_label_map()
    a = sitk.GetArrayFromImage(organs)
    zz, yy, xx = np.indices(a.shape)
    for organ, radii in ((Organ.LIVER, (5, 15, 15)), (Organ.STOMACH, (3, 8, 8))):
        c = np.argwhere(a == int(organ)).mean(0).astype(int)
        a[(((zz - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2 + ((xx - c[2]) / radii[2]) ** 2 <= 1)
          & (a == int(organ))] = 12  # liver tumour class in both
    drawn = sitk.GetImageFromArray(a)
    drawn.CopyInformation(ct)
    labels, instances, lesions = find_lesions(ct, drawn, min_volume_mm3=10, organ_shell_mm=3, organ_labels=organs)
    assert len(lesions) == 2
    # attributes by hand: a different wording per lesion, so every code table is exercised twice
    for k, f in enumerate(lesions):
        values = {g.name: g.options[k % len(g.options)] for g in ATTRIBUTE_GROUPS}
        f.attributes = AttributePrediction(values, {g.name: {o: 1.0 / len(g.options) for o in g.options}
                                                    for g in ATTRIBUTE_GROUPS})
        f.report = build_lesion_report(f, Phase.ENHANCED if k == 0 else Phase.PLAIN)
    result = SegmentationResult(labels, instances, lesions, Phase.ENHANCED, "test", None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GeneratedUIDWarning: the example series has empty UIDs
        files = export_dicom(result, source, out)
    reports = [json.loads(f.report.to_json()) for f in lesions]
    details = [json.loads(json.dumps(f.details())) for f in lesions]
    return SimpleNamespace(files=files, source=source, labels=labels, lesions=lesions, reports=reports,
                           details=details, out=out)


def test_seg_and_sr_pass_dicom3tools_and_dcmqi(exported, tmp_path):
    measured = dv.validate_export(exported.files, exported.source, exported.labels, exported.reports,
                                  exported.details, tmp_path)
    print(f"dcmqi Dice per segment: {measured['dice']}")
    print(f"dciodvfy warnings (all allowed by name): SEG {sorted(set(measured['seg_warnings']))}, "
          f"SR {sorted(set(measured['sr_warnings']))}")
    assert len(measured["dice"]) == 5 + 2  # liver, pancreas, stomach, colon, bone + two lesions


def test_a_scan_without_lesions_gives_an_organ_seg_and_a_negative_finding(ts_data, exported, tmp_path):
    """No lesion found: the SEG holds the organs and the SR one "Finding: Absent" group (not a traceback:
    TID 1500 needs at least one measurement group)."""
    from PASTALib.dicom import export_dicom
    from PASTALib.infer.pipeline import SegmentationResult

    organs_only = sitk.Threshold(exported.labels, 0, 10, 0)  # lesion labels (11-25) cleared
    empty = sitk.Image(organs_only.GetSize(), sitk.sitkUInt16)
    empty.CopyInformation(organs_only)
    result = SegmentationResult(organs_only, empty, [], Phase.ENHANCED, "test", None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GeneratedUIDWarning
        files = export_dicom(result, exported.source, tmp_path / "out")
    measured = dv.validate_export(files, exported.source, organs_only, [], [], tmp_path / "validators")
    assert len(measured["dice"]) == 5 and not any(name.startswith("Lesion") for name in measured["dice"])


def test_broken_files_fail_the_validators(exported, tmp_path):
    # a SEG without a required (type 1) attribute: dciodvfy error
    seg = pydicom.dcmread(exported.files["dicom_seg"])
    del seg.SegmentSequence[0].SegmentAlgorithmType
    broken_seg = tmp_path / "broken_seg.dcm"
    seg.save_as(broken_seg)
    found = dv.dciodvfy(broken_seg)
    print(f"broken SEG: {found.errors}")
    assert any("Segment Algorithm Type" in e or "SegmentAlgorithmType" in e for e in found.errors)
    with pytest.raises(AssertionError, match="dciodvfy errors"):
        dv.assert_dciodvfy_clean(broken_seg)

    # an SR whose volume differs from the report: dcmqi reads the wrong value, the check fails
    sr = pydicom.dcmread(exported.files["dicom_sr"])
    volume = next(item for container in sr.ContentSequence for group in container.get("ContentSequence", [])
                  for item in group.get("ContentSequence", []) if item.ValueType == "NUM"
                  and item.ConceptNameCodeSequence[0].CodeValue == "118565006")
    volume.MeasuredValueSequence[0].NumericValue = float(volume.MeasuredValueSequence[0].NumericValue) + 1.0
    broken_sr = tmp_path / "broken_sr.dcm"
    sr.save_as(broken_sr)
    files = {**exported.files, "dicom_sr": broken_sr}
    with pytest.raises(AssertionError, match="SR .* vs report"):
        dv.validate_export(files, exported.source, exported.labels, exported.reports, exported.details, tmp_path / "v")

    # a new warning (an undeclared coding scheme) fails although it is not an error
    sr = pydicom.dcmread(exported.files["dicom_sr"])
    sr.ConceptNameCodeSequence[0].CodingSchemeDesignator = "99OTHER"
    odd_sr = tmp_path / "odd_sr.dcm"
    sr.save_as(odd_sr)
    with pytest.raises(AssertionError, match="new warnings"):
        dv.assert_dciodvfy_clean(odd_sr)


def test_type_and_location_come_from_one_organ_or_the_type_is_uncertain(exported):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    liver, stomach = sorted(exported.lesions, key=lambda f: f.organ != Organ.LIVER)
    assert (liver.organ, liver.lesion_type.organ, liver.type_uncertain) == (Organ.LIVER, Organ.LIVER, False)
    assert stomach.organ == Organ.STOMACH and stomach.location == "Stomach" and stomach.type_uncertain
    assert "lesion type uncertain (liver tumor predicted, located in the stomach)" in stomach.details()["text"]
    seg = hd.seg.segread(exported.files["dicom_seg"])
    types = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert types[f"Lesion {stomach.index}: lesion of uncertain type (Stomach)"] == codes.SCT.Lesion.value
    assert types[f"Lesion {liver.index}: Liver tumor (Liver)"] == codes.SCT.Neoplasm.value
    sr = hd.sr.srread(exported.files["dicom_sr"])
    by_lesion = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    uncertain = {q.name.value: q.value.value for q in by_lesion[f"Lesion {stomach.index}"].get_qualitative_evaluations()}
    assert uncertain["TYPE-CERTAINTY"] == "64957009" and uncertain["LESION-TYPE"] == "LESION-12"
    assert by_lesion[f"Lesion {stomach.index}"].finding_sites[0].value == codes.SCT.Stomach
    certain = {q.name.value for q in by_lesion[f"Lesion {liver.index}"].get_qualitative_evaluations()}
    assert "TYPE-CERTAINTY" not in certain


def test_private_codes_fit_are_declared_and_standard_where_one_exists(exported):
    from PASTALib.dicom import PASTA_CODES, PASTA_CODING_SCHEME, attribute_code, attribute_wording
    from PASTALib.report.attributes import Density, Heterogeneity, Invasion, Shape, Surface

    assert all(len(value) <= 16 for value in PASTA_CODES)  # Code Value is SH (16); no Long Code Value needed
    # one code per attribute value, and back
    for key, enum in (("enhancement", Phase), ("shape", Shape), ("density", Density),
                      ("heterogeneity", Heterogeneity), ("surface", Surface), ("invasion", Invasion)):
        used = [attribute_code(key, v.value) for v in enum]
        assert len({(c.value, c.scheme_designator) for c in used}) == len(used)
        assert [attribute_wording(key, c) for c in used] == [v.value for v in enum]
    assert attribute_code("surface", "Well-defined margin").scheme_designator == "SCT"
    assert attribute_code("shape", "Irregular").value == "49608001"
    sr = pydicom.dcmread(exported.files["dicom_sr"])
    declared = {i.CodingSchemeDesignator: i for i in sr.CodingSchemeIdentificationSequence}
    assert declared[PASTA_CODING_SCHEME].CodingSchemeName

    def private_codes(ds):
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    if item.get("CodingSchemeDesignator") == PASTA_CODING_SCHEME and "CodeValue" in item:
                        yield str(item.CodeValue), str(item.CodeMeaning)
                    yield from private_codes(item)

    used = set(private_codes(sr))
    assert used and all(PASTA_CODES[value] == meaning for value, meaning in used)

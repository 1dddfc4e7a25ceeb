"""DICOM SEG + TID 1500 SR (Comprehensive 3D SR) of a PASTA result, referencing the source series.

Source series whose Study/Series/SOP Instance UIDs are empty (anonymised exports such as the
TotalSegmentator example) cannot be referenced as they are. Missing UIDs are then filled
deterministically — the SOP Instance UID from the file meta header when it has one, else a hash
of the file; Study/Series/Frame of Reference UIDs from a hash of the instance UIDs — so every run
on the same files gives the same UIDs and the SEG and SR agree with each other. A
:class:`GeneratedUIDWarning` says so, and ``dicom_uids.json`` lists the UIDs used per file so the
source series can be re-labelled to match (a PACS holding the original empty-UID series cannot
link them otherwise).

Codes: SNOMED CT for organs and lesion morphology; the five PASTA attributes and the enhancement
use the private coding scheme ``99PASTA`` (code value = meaning = the report's exact wording),
because standard codes do not map one-to-one onto the paper's wording.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.errors import PastaError
from PASTALib.labels import LesionType, Organ

PASTA_CODING_SCHEME = "99PASTA"
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root; UIDs below are content hashes under it
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 901, 902


class DicomExportError(PastaError):
    """The DICOM SEG/SR cannot be written (source series unusable, nothing to export)."""


class GeneratedUIDWarning(UserWarning):
    """The source series lacked UIDs; deterministic ones were generated."""


@dataclass
class SourceSeries:
    """The source CT series as pydicom datasets (headers only), in the order SimpleITK stacks them."""

    files: list[Path]
    datasets: list[Any]  # pydicom.Dataset, UIDs filled
    generated: dict[str, Any] = field(default_factory=dict)  # what was generated (for dicom_uids.json)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts]))


def _series_files(path: Path) -> list[Path]:
    folder = path if path.is_dir() else path.parent
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise DicomExportError(f"no DICOM series in {folder}")
    sid = ids[0]
    if path.is_file():
        for s in ids:
            if str(path) in reader.GetGDCMSeriesFileNames(str(folder), s):
                sid = s
    return [Path(f) for f in reader.GetGDCMSeriesFileNames(str(folder), sid)]


def read_source_series(path: str | os.PathLike) -> SourceSeries:
    """Headers of the series ``read_ct(path)`` reads, in the same slice order, with UIDs made usable."""
    import pydicom

    files = _series_files(Path(path))
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    generated: dict[str, Any] = {"files": {}}
    missing: set[str] = set()
    keys = []
    for f, ds in zip(files, datasets):
        meta = getattr(ds, "file_meta", None)
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if not sop:
            sop = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "") if meta is not None else ""
            if not sop:
                sop = _uid("sop", hashlib.sha256(f.read_bytes()).hexdigest())
                missing.add("SOPInstanceUID (hash of the file)")
            else:
                missing.add("SOPInstanceUID (taken from the file meta header)")
            ds.SOPInstanceUID = sop
        if not str(ds.get("SOPClassUID", "") or ""):
            cls = str(getattr(meta, "MediaStorageSOPClassUID", "") or "") if meta is not None else ""
            ds.SOPClassUID = cls or CT_IMAGE_STORAGE
            missing.add("SOPClassUID")
        keys.append(sop)
    basis = sorted(keys)
    for attr, tag in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"), ("FrameOfReferenceUID", "frame-of-reference")):
        values = {str(ds.get(attr, "") or "") for ds in datasets}
        if values == {""} or "" in values:
            new = _uid(tag, *basis)
            for ds in datasets:
                if not str(ds.get(attr, "") or ""):
                    setattr(ds, attr, new)
            missing.add(attr)
            generated[attr] = new
    for ds in datasets:
        if not ds.get("SeriesNumber"):
            ds.SeriesNumber = 1
    for f, ds in zip(files, datasets):
        generated["files"][f.name] = {"SOPInstanceUID": str(ds.SOPInstanceUID), "SOPClassUID": str(ds.SOPClassUID)}
    generated["StudyInstanceUID"] = str(datasets[0].StudyInstanceUID)
    generated["SeriesInstanceUID"] = str(datasets[0].SeriesInstanceUID)
    generated["generated"] = sorted(missing)
    if missing:
        warnings.warn(
            f"The DICOM series in {files[0].parent} has empty UIDs ({', '.join(sorted(missing))}); deterministic "
            "UIDs were generated (same files → same UIDs) so the SEG and SR can reference it. They are listed in "
            "dicom_uids.json: apply them to the source series, or a PACS will not link the SEG/SR to it.",
            GeneratedUIDWarning, stacklevel=2,
        )
    return SourceSeries(files, datasets, generated)


# --- codes ------------------------------------------------------------------------------------

def _organ_code(organ: Organ):
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    table = {
        Organ.LUNG: codes.SCT.Lung, Organ.LIVER: codes.SCT.Liver, Organ.GALLBLADDER: codes.SCT.Gallbladder,
        Organ.PANCREAS: codes.SCT.Pancreas, Organ.ESOPHAGUS: codes.SCT.Esophagus, Organ.STOMACH: codes.SCT.Stomach,
        Organ.COLON: codes.SCT.LargeIntestine, Organ.KIDNEY: codes.SCT.Kidney,
        Organ.BLADDER: Code("89837001", "SCT", "Urinary bladder"), Organ.BONE: codes.SCT.Bone,
    }
    return table[Organ(organ)]


def _lesion_code(lesion: LesionType):
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    lesion = LesionType(lesion)
    if lesion in (LesionType.LIVER_CYST, LesionType.PANCREAS_CYST, LesionType.KIDNEY_CYST):
        return codes.SCT.Cyst
    if lesion in (LesionType.GALLSTONE, LesionType.KIDNEY_STONE):
        return Code("56381008", "SCT", "Calculus")
    if lesion is LesionType.BONE_METASTASIS:
        return codes.SCT.Metastasis
    return codes.SCT.Neoplasm


def _laterality(location: str):
    from pydicom.sr.codedict import codes

    low = location.lower()
    return codes.SCT.Right if low.startswith("right ") else codes.SCT.Left if low.startswith("left ") else None


def pasta_code(wording: str, meaning: str | None = None):
    """A private ``99PASTA`` code whose value is derived from the wording (≤ 16 characters)."""
    from pydicom.sr.coding import Code

    value = "".join(w[:1].upper() + w[1:] for w in wording.replace(",", " ").replace("-", " ").split())[:16]
    return Code(value, PASTA_CODING_SCHEME, meaning or wording)


ATTRIBUTE_NAMES = {
    "enhancement": "Enhancement status", "shape": "Shape", "density": "Density",
    "heterogeneity": "Heterogeneity", "surface": "Surface", "invasion": "Invasion",
}


# --- SEG --------------------------------------------------------------------------------------

def _algorithm():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from PASTALib import __version__

    return hd.AlgorithmIdentificationSequence(name="PASTA", family=codes.cid7162.ArtificialIntelligence,
                                              version=str(__version__))


def _digest(result: Any) -> str:
    h = hashlib.sha256(sitk.GetArrayViewFromImage(result.labels).tobytes())
    h.update(json.dumps([f.details() for f in result.lesions], sort_keys=True).encode())
    return h.hexdigest()


def build_segmentation(result: Any, source: SourceSeries, *, include_organs: bool = True) -> tuple[Any, dict[int, int]]:
    """DICOM SEG (binary, one segment per organ present and per lesion instance) on the source frames.

    Returns the dataset and {lesion index: segment number}.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = sitk.GetArrayFromImage(result.labels)  # (z, y, x): frame k = source file k
    instances = sitk.GetArrayFromImage(result.instances)
    first = source.datasets[0]
    if labels.shape != (len(source.datasets), int(first.Rows), int(first.Columns)):
        raise DicomExportError(
            f"the label map {labels.shape[::-1]} is not on the source series' grid "
            f"({int(first.Columns)}×{int(first.Rows)}×{len(source.datasets)}); segment the series itself")
    seg_map = np.zeros(labels.shape, np.uint16)
    descriptions = []
    number = 0
    algorithm = _algorithm()
    if include_organs:
        for organ in Organ:
            mask = labels == int(organ)
            if not mask.any():
                continue
            number += 1
            seg_map[mask] = number
            descriptions.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=organ.display_name,
                segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=_organ_code(organ),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            ))
    lesion_segments: dict[int, int] = {}
    digest = _digest(result)
    for f in result.lesions:
        number += 1
        seg_map[instances == f.index] = number
        lesion_segments[f.index] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"Lesion {f.index}: {f.lesion_type.display_name} ({f.location})"[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=_lesion_code(f.lesion_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=_uid("lesion", source.series_uid, digest, str(f.index)), tracking_id=f"Lesion {f.index}",
            anatomic_regions=[_organ_code(f.organ)],
        ))
    if not descriptions:
        raise DicomExportError("nothing was segmented (no organ, no lesion): no DICOM SEG to write")
    dtype = np.uint8 if number < 256 else np.uint16
    seg = hd.seg.Segmentation(
        source_images=source.datasets, pixel_array=seg_map.astype(dtype),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=_uid("seg-series", source.series_uid, digest), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=_uid("seg", source.series_uid, digest), instance_number=1,
        manufacturer="PASTALib", manufacturer_model_name="PASTA", software_versions=str(_version()),
        device_serial_number="0", content_description="PASTA organ and lesion segmentation",
        content_label="PASTA", series_description="PASTA segmentation",
    )
    return seg, lesion_segments


def _version() -> str:
    from PASTALib import __version__

    return str(__version__)


# --- SR (TID 1500) ----------------------------------------------------------------------------

def build_sr(result: Any, source: SourceSeries, seg: Any, lesion_segments: dict[int, int]) -> Any:
    """Comprehensive 3D SR with a TID 1500 Measurement Report: per lesion a volumetric ROI group
    (TID 1411) referencing its SEG segment and the source series, with volume, longest diameter,
    the three extents, mean HU, and the report attributes as coded qualitative evaluations."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    digest = _digest(result)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("device", "PASTALib"), name="PASTA", manufacturer_name="PASTALib", model_name="PASTA"),
    )
    context = hd.sr.ObservationContext(observer_device_context=observer)
    groups = []
    for f in result.lesions:
        r = f.report
        laterality = _laterality(f.location)
        site = hd.sr.FindingSite(anatomic_location=_organ_code(f.organ), laterality=laterality)
        z, x, y = r.size_zxy_mm
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Volume, value=float(r.volume_mm3), unit=codes.UCUM.CubicMillimeter),
            hd.sr.Measurement(name=codes.SCT.LongAxis, value=round(float(f.longest_diameter_mm), 2), unit=codes.UCUM.Millimeter),
            hd.sr.Measurement(name=pasta_code("Craniocaudal extent", "Craniocaudal extent (Z)"), value=float(z), unit=codes.UCUM.Millimeter),
            hd.sr.Measurement(name=pasta_code("Right-left extent", "Right-left extent (X)"), value=float(x), unit=codes.UCUM.Millimeter),
            hd.sr.Measurement(name=pasta_code("Anteroposterior extent", "Anterior-posterior extent (Y)"), value=float(y), unit=codes.UCUM.Millimeter),
            hd.sr.Measurement(name=codes.DCM.MeanAttenuationCoefficient if hasattr(codes.DCM, "MeanAttenuationCoefficient") else Code("112031", "DCM", "Attenuation Coefficient"),
                              value=float(r.mean_hu), unit=codes.UCUM.HounsfieldUnit),
        ]
        evaluations = [
            hd.sr.QualitativeEvaluation(name=pasta_code(ATTRIBUTE_NAMES[key]), value=pasta_code(getattr(r, key)))
            for key in ("enhancement", "shape", "density", "heterogeneity", "surface", "invasion")
        ]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid("lesion", source.series_uid, digest, str(f.index)),
                                                         identifier=f"Lesion {f.index}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=lesion_segments[f.index],
                source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid)),
            finding_type=_lesion_code(f.lesion_type), finding_sites=[site],
            measurements=measurements, qualitative_evaluations=evaluations,
            algorithm_id=hd.sr.AlgorithmIdentification(name="PASTA", version=_version()),
        ))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups or None,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*source.datasets, seg], content=report[0],
        series_instance_uid=_uid("sr-series", source.series_uid, digest), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid("sr", source.series_uid, digest), instance_number=1, manufacturer="PASTALib",
        is_complete=True, is_final=False, is_verified=False, series_description="PASTA structured report",
    )


def _save(ds: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        ds.save_as(str(tmp), enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_dicom(result: Any, source_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 seg_name: str = "seg.dcm", sr_name: str = "sr.dcm") -> dict[str, Path]:
    """Write the DICOM SEG, the TID 1500 SR and ``dicom_uids.json`` for a result on a DICOM series."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = read_source_series(source_path)
    seg, lesion_segments = build_segmentation(result, source)
    sr = build_sr(result, source, seg, lesion_segments)
    uids = dict(source.generated)
    uids["seg"] = {"SOPInstanceUID": str(seg.SOPInstanceUID), "SeriesInstanceUID": str(seg.SeriesInstanceUID),
                   "lesion_segments": {str(k): v for k, v in lesion_segments.items()}}
    uids["sr"] = {"SOPInstanceUID": str(sr.SOPInstanceUID), "SeriesInstanceUID": str(sr.SeriesInstanceUID)}
    from PASTALib.infer.pipeline import write_text_atomic

    return {
        "dicom_seg": _save(seg, out / seg_name),
        "dicom_sr": _save(sr, out / sr_name),
        "dicom_uids": write_text_atomic(out / "dicom_uids.json", json.dumps(uids, indent=2) + "\n"),
    }

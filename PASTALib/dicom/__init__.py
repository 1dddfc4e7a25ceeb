"""DICOM export of PASTA results: DICOM SEG (organ and lesion segments) and a TID 1500
measurement report (Comprehensive 3D SR) referencing the source CT series, with highdicom.

    from PASTALib.dicom import export_dicom
    export_dicom(result, "ct_dicom_folder/", "out/")   # out/seg.dcm, out/sr.dcm, out/dicom_uids.json
"""

from PASTALib.dicom.codes import (
    PASTA_CODES,
    PASTA_CODING_SCHEME,
    SEGMENT_RGB,
    attribute_code,
    attribute_name_code,
    attribute_wording,
)
from PASTALib.dicom.export import (
    DicomExportError,
    GeneratedUIDWarning,
    SourceSeries,
    apply_dicom_uids,
    build_segmentation,
    build_sr,
    export_dicom,
    long_axis_points,
    read_source_series,
    type_uncertain,
)

__all__ = [
    "PASTA_CODES", "PASTA_CODING_SCHEME", "SEGMENT_RGB", "DicomExportError", "GeneratedUIDWarning", "SourceSeries",
    "apply_dicom_uids", "attribute_code", "attribute_name_code", "attribute_wording", "build_segmentation", "build_sr", "export_dicom",
    "long_axis_points", "read_source_series", "type_uncertain",
]

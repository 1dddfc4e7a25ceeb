"""DICOM export of PASTA results: DICOM SEG (organ and lesion segments) and a TID 1500
measurement report (Comprehensive 3D SR) referencing the source CT series, with highdicom.

    from PASTALib.dicom import export_dicom
    export_dicom(result, "ct_dicom_folder/", "out/")   # out/seg.dcm, out/sr.dcm, out/dicom_uids.json
"""

from PASTALib.dicom.export import (
    PASTA_CODING_SCHEME,
    DicomExportError,
    GeneratedUIDWarning,
    SourceSeries,
    build_segmentation,
    build_sr,
    export_dicom,
    read_source_series,
)

__all__ = [
    "PASTA_CODING_SCHEME", "DicomExportError", "GeneratedUIDWarning", "SourceSeries", "build_segmentation",
    "build_sr", "export_dicom", "read_source_series",
]

"""File names of the output folders, declared once: the library writes them, the CLI checks them
before a run, the Slicer modules read them. Imports nothing (no torch), so any of them may import it.
"""

# `pasta segment --out DIR` (one case; --batch writes one such folder per case)
LABELS_NAME = "labels.nii.gz"
SEG_NRRD_NAME = "labels.seg.nrrd"
REPORTS_NAME = "reports.json"
REPORTS_TEXT_NAME = "reports.txt"
LESIONS_NAME = "lesions.json"  # sidecar: confidences, probabilities, longest diameter, extents
RUN_NAME = "run.json"
DICOM_SEG_NAME = "seg.dcm"
DICOM_SR_NAME = "sr.dcm"
#: Every file `pasta segment` may write into its output folder.
SEGMENT_OUTPUTS = (LABELS_NAME, SEG_NRRD_NAME, REPORTS_NAME, REPORTS_TEXT_NAME, LESIONS_NAME, RUN_NAME,
                   DICOM_SEG_NAME, DICOM_SR_NAME)

__all__ = [
    "DICOM_SEG_NAME", "DICOM_SR_NAME", "LABELS_NAME", "LESIONS_NAME", "REPORTS_NAME", "REPORTS_TEXT_NAME", "RUN_NAME",
    "SEGMENT_OUTPUTS", "SEG_NRRD_NAME",
]

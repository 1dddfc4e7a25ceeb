"""File and folder names of the output folders, declared once: the library writes them, the CLI checks
them before a run, the Slicer modules and the evaluation read them. Imports only the label enums (no
torch, no synth), so any of them may import it.
"""

from PASTALib.labels import LesionType

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

# A PASTA-Gen dataset (`pasta synth generate --out DIR`, `pasta data pasta-gen-30k`): DIR/<Organ>/<Kind>/<index>/
CASE_IMAGE_NAME = "img.nii.gz"  # the CT crop with the lesion
CASE_LABEL_NAME = "label.nii.gz"  # organ + lesion label map (PASTA label values)
CASE_TOTAL_NAME = "total.nii.gz"  # the template's TotalSegmentator map, same crop
CASE_TYPE_NAME = "type.json"  # the lesion's attributes, as PASTA-Gen-30K writes them
CASE_REPORT_NAME = "report.json"  # our structured report (attributes, wording, measurements)
CASE_META_NAME = "case.json"  # template, seed, attempt, phase: what resume and the manifest read
#: `pasta synth generate`'s cached template index (phase, healthy organs, the template CT's path) beside the cases
TEMPLATE_INDEX_NAME = "templates.index.json"
#: The files of one case of the published PASTA-Gen-30K.
PUBLISHED_CASE_FILES = (CASE_IMAGE_NAME, CASE_LABEL_NAME, CASE_TOTAL_NAME, CASE_TYPE_NAME)
#: The files of one case `pasta synth generate` writes (the published ones and ours).
CASE_FILES = (*PUBLISHED_CASE_FILES, CASE_REPORT_NAME, CASE_META_NAME)
#: PASTA-Gen-30K folder names (<Organ>/<Kind>) of each lesion type, as the public dataset spells them.
DATASET_FOLDERS: dict[LesionType, tuple[str, str]] = {
    LesionType.LUNG_TUMOR: ("Lung", "Tumor"),
    LesionType.LIVER_TUMOR: ("Liver", "Tumor"),
    LesionType.GALLBLADDER_CANCER: ("Gall", "Tumor"),
    LesionType.PANCREAS_TUMOR: ("Pancreas", "Tumor"),
    LesionType.ESOPHAGEAL_CANCER: ("Esophagus", "Tumor"),
    LesionType.GASTRIC_CANCER: ("Stomach", "Tumor"),
    LesionType.COLORECTAL_CANCER: ("Colon", "Tumor"),
    LesionType.KIDNEY_TUMOR: ("Kidney", "Tumor"),
    LesionType.BLADDER_CANCER: ("Bladder", "Tumor"),
    LesionType.BONE_METASTASIS: ("Bone", "Tumor"),
    LesionType.LIVER_CYST: ("Liver", "Cyst"),
    LesionType.GALLSTONE: ("Gall", "Stone"),
    LesionType.PANCREAS_CYST: ("Pancreas", "Cyst"),
    LesionType.KIDNEY_CYST: ("Kidney", "Cyst"),
    LesionType.KIDNEY_STONE: ("Kidney", "Stone"),
}
#: The lesion type of a ``<Organ>/<Kind>`` folder pair (the inverse of :data:`DATASET_FOLDERS`).
FOLDER_TYPES: dict[tuple[str, str], LesionType] = {folders: t for t, folders in DATASET_FOLDERS.items()}

__all__ = [
    "CASE_FILES", "CASE_IMAGE_NAME", "CASE_LABEL_NAME", "CASE_META_NAME", "CASE_REPORT_NAME", "CASE_TOTAL_NAME",
    "CASE_TYPE_NAME", "PUBLISHED_CASE_FILES", "DATASET_FOLDERS", "DICOM_SEG_NAME", "DICOM_SR_NAME", "FOLDER_TYPES", "LABELS_NAME", "LESIONS_NAME", "REPORTS_NAME",
    "REPORTS_TEXT_NAME", "RUN_NAME", "SEGMENT_OUTPUTS", "SEG_NRRD_NAME", "TEMPLATE_INDEX_NAME",
]

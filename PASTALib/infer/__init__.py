"""Whole-CT PASTA inference: segmentation, lesion instances, attributes and structured reports.

    from PASTALib.infer import InferenceConfig, load_model, segment_ct, write_outputs
    model = load_model()                          # PASTA_final.pth (MissingWeightsError says where to get it)
    result = segment_ct("ct.nii.gz", model, InferenceConfig(device="cuda", mirroring=True))
    result.labels                                 # SimpleITK label map on the input grid (organs 1-10, lesions 11-25)
    result.reports                                # StructuredReport per lesion (largest first)
    write_outputs(result, "out/", source="ct.nii.gz")

CLI: ``pasta segment --ct CT_OR_DICOM_DIR --out DIR [--checkpoint CKPT] [--device cpu|cuda]``,
batch: ``pasta segment --batch FOLDER_OR_CSV --out DIR`` (resumable).
"""

from PASTALib.infer.batch import BatchCase, discover_batch, run_batch
from PASTALib.infer.config import InferenceConfig, InferenceError, resolve_device
from PASTALib.infer.lesions import LesionFinding, classify_lesions, find_lesions, longest_diameter_mm
from PASTALib.infer.pipeline import (
    PastaModel,
    SegmentationResult,
    load_model,
    report_lesions,
    segment_case,
    segment_ct,
    write_outputs,
)
from PASTALib.infer.sliding import segment_canonical, sliding_window_probabilities

__all__ = [
    "BatchCase", "InferenceConfig", "InferenceError", "LesionFinding", "PastaModel", "SegmentationResult",
    "classify_lesions", "discover_batch", "find_lesions", "load_model", "longest_diameter_mm", "report_lesions", "resolve_device",
    "run_batch", "segment_canonical", "segment_case", "segment_ct", "sliding_window_probabilities", "write_outputs",
]

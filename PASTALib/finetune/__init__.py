"""Few-shot segmentation fine-tuning of PASTA on cases annotated in Slicer (docs/model.md, "Downstream tasks":
downstream few-shot segmentation, K ∈ {1, 2, 4, 8, 16}, 2,000 iterations, 5-fold CV).

    from PASTALib.finetune import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(data="fewshot/", out="runs/ft", k=4, fold=0))
    result.final_model, result.validation   # DIR/model_final.pth, per held-out case DSC

    from PASTALib.finetune import run_sweep             # every (K, fold) → OUT/k{K}/fold{f}, OUT/fewshot.csv
    run_sweep(FinetuneConfig(data="fewshot/", out="runs/pasta"), ks=(1, 2, 4, 8, 16))

Classification fine-tuning (plain-CT tumour detection from the organ box, staging/survival from ROIs
at lesion points, report attributes) with stratified k-fold CV::

    from PASTALib.finetune import ClassifyConfig, train_classifier
    train_classifier(ClassifyConfig(task="detection", table="cases.csv", out="runs/det"))

CLI: ``pasta classify train|predict`` and ``pasta finetune --data FOLDER --out DIR [--init CKPT|scratch] [--k K|1,2,4,8,16] [--fold i|all --folds 5] ...``.
The training loop, patch sampler, loss and exact resume are stage 1's (PASTALib.train.train_stage1).
"""

from PASTALib.finetune.classify import (
    ClassifyConfig,
    ClassifyError,
    ClassifyResult,
    FoldResult,
    PastaClassifier,
    load_classifier,
    make_cv_splits,
    predict_table,
    read_case_table,
    summarize_predictions,
    train_classifier,
)
from PASTALib.finetune.core import (
    CLASSES_NAME,
    SPLITS_NAME,
    VALIDATION_NAME,
    FewshotCase,
    FinetuneConfig,
    FinetuneResult,
    class_mapping,
    evaluate_cases,
    finetune,
    make_splits,
    prepare_case,
    read_classes,
    read_fewshot_folder,
    read_validation,
)
from PASTALib.finetune.crops import DetectionCrop, detection_crop, parse_organ
from PASTALib.finetune.sweep import FEWSHOT_NAME, SweepResult, SweepRun, plan_sweep, run_sweep

__all__ = [
    "CLASSES_NAME", "SPLITS_NAME", "VALIDATION_NAME", "FewshotCase", "FinetuneConfig", "FinetuneResult",
    "class_mapping", "evaluate_cases", "finetune", "make_splits", "prepare_case", "read_fewshot_folder",
    "read_classes", "read_validation", "FEWSHOT_NAME", "SweepResult", "SweepRun", "plan_sweep", "run_sweep",
    "ClassifyConfig", "ClassifyError", "ClassifyResult", "FoldResult", "PastaClassifier", "load_classifier",
    "make_cv_splits", "predict_table", "read_case_table", "summarize_predictions", "train_classifier",
    "DetectionCrop", "detection_crop", "parse_organ",
]

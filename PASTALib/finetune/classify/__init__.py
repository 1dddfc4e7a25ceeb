"""Downstream classification fine-tuning of the PASTA encoder with k-fold cross-validation.

docs/model.md, downstream tasks: plain-CT detection (organ box + margin, padded/resized to 128³,
class weights 10:1), staging / survival from ROIs at lesion points, report generation from 96³
crops; AUC / ACC / F1 with 1,000-replicate bootstrap CIs; 5-fold CV. Three tasks:

* ``detection``: rows ``image, organs, organ, label`` (0 normal / 1 tumour in that organ). Input:
  :func:`~PASTALib.finetune.crops.detection_crop` (organ box + ``margin_mm``, −1024-padded cube,
  resized to ``input_size``, default 128). Loss: cross-entropy with class weights, default
  normal:tumour = 1:10 - our reading of the paper's "class weights 10:1": the tumour class (the
  rare one) weighs ten times the normal class.
* ``roi``: rows ``image, coordX, coordY, coordZ`` (LPS mm) and a label column (integer classes,
  strings or a binary endpoint); input: a 1 mm crop of ``input_size`` (default 96) around the point
  (:func:`PASTALib.embed.crop.crop_at_point`). Plain (or ``--class-weights``) cross-entropy.
* ``attributes``: rows ``image, coordX/Y/Z`` plus report-attribute columns ``shape, density,
  heterogeneity, margin`` (or ``surface``), ``invasion`` in the report's exact wording (empty =
  unknown); fine-tunes PASTA's own 14-logit attribute head with the grouped cross-entropy.

Model: the PASTA encoder (stages 0..4 of :class:`~PASTALib.model.PastaUNet`, decoder dropped; the
feature is ``PastaUNet.encode``, GAP of stage 4) initialised from PASTA weights (``init``; the
layout is read from the file) or randomly (``init="scratch"``, a baseline), plus a new linear
head on the feature (detection / roi) or the checkpoint's attribute head (attributes). Input is the
SLF map of the HU crop. Adam (lr 1e-4), random mirroring, AMP on CUDA, ``freeze_encoder`` for a
linear probe. Every source of randomness derives from ``(seed, fold[, iteration])``, so each fold
is reproducible on its own and an interrupted fold resumes exactly from ``checkpoint_last.pt``.

Layout of OUT::

    crops/<hash>.npz          one int16 HU crop per row (reused by every fold and rerun)
    splits.json               fixed (stratified[, grouped]) folds: validation ids per fold
    classify_config.json      settings; a rerun with different training settings is refused
    fold_i/model.pth          classifier bundle (predict_table / `pasta classify predict`)
    fold_i/predictions.csv    the fold's validation rows; fold_i/done.json marks the fold finished
    predictions.csv           out-of-fold predictions: id, fold, label, prob_0..prob_{C-1}, pred
                              (`pasta evaluate cls --csv OUT/predictions.csv` reads it)
    metrics.csv/.md/.html     AUC / ACC / F1 (attributes: ACC / F1 per attribute) with bootstrap
                              95% CIs, pooled over the folds ("all") and per fold

Modules: ``config`` (ClassifyConfig, constants), ``table`` (the task table, CV splits, HU crops),
``network`` (PastaClassifier, init, loss, inference), ``folds`` (the per-fold training loop on
PASTALib.train.loop, the cross-validated run, predict_table), ``metrics`` (prediction tables,
bootstrap metrics).
"""

from PASTALib.finetune.classify.config import (
    BUNDLE_FORMAT,
    DEFAULT_DETECTION_WEIGHTS,
    TASKS,
    ClassifyConfig,
    ClassifyError,
)
from PASTALib.finetune.classify.folds import (
    ClassifyResult,
    FoldLoop,
    FoldResult,
    predict_table,
    train_classifier,
)
from PASTALib.finetune.classify.metrics import summarize_predictions
from PASTALib.finetune.classify.network import (
    PastaClassifier,
    build_classifier,
    class_weight_vector,
    encode_features,
    encoder_only,
    load_classifier,
    make_loss,
    predict_logits,
    read_init,
)
from PASTALib.finetune.classify.table import Case, CaseTable, compute_crops, make_cv_splits, read_case_table

__all__ = [
    "BUNDLE_FORMAT", "DEFAULT_DETECTION_WEIGHTS", "TASKS", "Case", "CaseTable", "ClassifyConfig", "ClassifyError",
    "ClassifyResult", "FoldLoop", "FoldResult", "PastaClassifier", "build_classifier", "class_weight_vector",
    "compute_crops", "encode_features", "encoder_only", "load_classifier", "make_cv_splits", "make_loss",
    "predict_logits", "predict_table", "read_case_table", "read_init", "summarize_predictions", "train_classifier",
]

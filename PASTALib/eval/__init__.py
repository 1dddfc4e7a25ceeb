"""Evaluation: metrics, bootstrap CIs, paired tests, result tables and few-shot plots.

Pure numpy / scipy / scikit-learn (+ matplotlib for plots); never imports torch.

Public API::

    from PASTALib.eval import dice, auc, accuracy, macro_f1, bootstrap_ci, wilcoxon_test
    rng = np.random.default_rng(0)
    ci = bootstrap_ci(auc, y_true, y_score, rng=rng)          # CI(estimate, low, high, ...)
    wilcoxon_test(dsc_a, dsc_b, alternative="greater")         # one-sided, paired
    paired_permutation_test(dsc_a, dsc_b, rng=rng)             # 10,000 sign flips
    write_table(rows, "out/results")                           # .csv + .md + .html
    plot_fewshot(summarize_fewshot(df, rng=rng), "fewshot.png")
"""

from PASTALib.eval.metrics import (
    accuracy,
    accuracy_rows,
    auc,
    auc_rows,
    dice,
    dice_binary,
    labels_from_scores,
    macro_f1,
    macro_f1_rows,
)
from PASTALib.eval.plots import FEW_SHOT_K, plot_fewshot, summarize_fewshot
from PASTALib.eval.report import to_html, to_markdown, write_table
from PASTALib.eval.stats import (
    CI,
    TestResult,
    bootstrap_ci,
    bootstrap_mean_ci,
    format_ci,
    paired_permutation_test,
    wilcoxon_test,
)
from PASTALib.eval.tasks import classification_summary, segmentation_summary

__all__ = [
    "CI", "FEW_SHOT_K", "TestResult", "accuracy", "accuracy_rows", "auc", "auc_rows", "bootstrap_ci", "bootstrap_mean_ci",
    "classification_summary", "dice", "dice_binary", "format_ci", "labels_from_scores", "macro_f1", "macro_f1_rows",
    "paired_permutation_test", "plot_fewshot", "segmentation_summary", "summarize_fewshot", "to_html",
    "to_markdown", "wilcoxon_test", "write_table",
]

"""``pasta evaluate``: Dice / AUC / ACC / F1 with bootstrap CIs, paired tests, few-shot plots, and the
realism of synthetic lesions against real ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from PASTALib.cli.args import positive_int, range_float, seed
from PASTALib.progress import Progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "evaluate", help="metrics with 95%% bootstrap CIs, paired tests, few-shot plots",
    ).add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="write <OUT>.csv, <OUT>.md and <OUT>.html (default: print only)")
        p.add_argument("--seed", type=seed, default=0, help="seed of the bootstrap / permutation generator (default 0)")
        p.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap replicates (default 1000)")

    seg = group.add_parser("seg", help="Dice per case and label of label maps matched by file name, mean with CI")
    seg.add_argument("--pred", required=True, help="folder of predicted label maps (.nii.gz/.nrrd/.seg.nrrd/.mha)")
    seg.add_argument("--ref", required=True, help="folder of reference label maps, same file names")
    seg.add_argument("--labels", type=positive_int, nargs="+", help="label values to score (default: those in each reference)")
    seg.add_argument("--empty-nan", action="store_true",
                     help="score a label absent from both maps as NaN (excluded) instead of 1.0")
    common(seg)
    seg.set_defaults(func=_seg)

    cls = group.add_parser("cls", help="AUC, accuracy and macro F1 with CIs from a predictions CSV")
    cls.add_argument("--csv", required=True, help="CSV with a label column and a score column (or prob_0..prob_C-1)")
    cls.add_argument("--label-col", help="reference label column (default: label / y_true / target)")
    cls.add_argument("--score-col", help="positive-class score column (default: score / prob / y_score / prob_1)")
    cls.add_argument("--pred-col", help="hard prediction column (default: threshold the scores)")
    cls.add_argument("--threshold", type=range_float(), default=0.5, help="score threshold for ACC/F1 (default 0.5)")
    common(cls)
    cls.set_defaults(func=_cls)

    cmp_ = group.add_parser("compare", help="one-sided paired Wilcoxon + permutation test: is A better than B?")
    cmp_.add_argument("--a", required=True, help="CSV of method A (per-case values)")
    cmp_.add_argument("--b", required=True, help="CSV of method B (same cases)")
    cmp_.add_argument("--col", help="value column (default: dsc / value / score)")
    cmp_.add_argument("--key", help="case column to pair on (default: case / case_id / id; else row order)")
    cmp_.add_argument("--alternative", choices=("greater", "less", "two-sided"), default="greater",
                      help="greater (default): A > B")
    cmp_.add_argument("--n-perm", type=positive_int, default=10000, help="permutations (default 10000)")
    common(cmp_)
    cmp_.set_defaults(func=_compare)

    few = group.add_parser("fewshot", help="few-shot curve (metric vs K) with shaded 95%% CI per method")
    few.add_argument("--csv", required=True, nargs="+",
                     help="CSV(s) with columns method, K, value (one row per repeat/case), or method, K, value, "
                          "low, high; several files (e.g. the fewshot.csv of a PASTA and a scratch sweep) are "
                          "concatenated")
    few.add_argument("--plot", required=True, help="output image (.png / .pdf / .svg)")
    few.add_argument("--value-col", default="value", help="metric column (default value)")
    few.add_argument("--k-col", default="K", help="K column (default K)")
    few.add_argument("--method-col", default="method", help="method column (default method)")
    few.add_argument("--metric", default="DSC", help="y-axis label (default DSC)")
    few.add_argument("--title", default="Few-shot performance")
    common(few)
    few.set_defaults(func=_fewshot)
    _add_realism_parser(group)


def _add_realism_parser(group: argparse._SubParsersAction) -> None:
    real = group.add_parser(
        "realism", help="can a classifier tell your real lesions from synthetic ones? (C2ST AUC, per-feature distances)",
        description=(
            "Shape features (sphericity, elongation, flatness, solidity, convexity, max-diameter ratio) and "
            "PyRadiomics first-order + texture features (GLCM, GLRLM, GLSZM) of real and synthetic lesions; the "
            "classifier two-sample AUC with a bootstrap CI and per-feature distances (SMD, KS, Wasserstein). "
            "Writes realism.html, realism.png, features.csv, distances.csv and summary.json to --out."
        ),
    )
    real.add_argument("--real", required=True,
                      help="CSV of real lesions: columns ct,mask[,label,id] (label = the lesion's mask value; "
                           "default every non-zero voxel); paths relative to the CSV")
    real.add_argument("--synthetic", required=True,
                      help="PASTA-Gen folder (pasta synth generate --out, or pasta data pasta-gen-30k --out)")
    real.add_argument("--out", default="realism_report", help="output folder (default realism_report)")
    real.add_argument("--types", nargs="+", help="only these synthetic lesion types (e.g. lung_tumor)")
    real.add_argument("--shape-only", action="store_true",
                      help="shape features only (masks without CTs; no PyRadiomics needed)")
    real.add_argument("--no-match-acquisition", action="store_true",
                      help="keep synthetic lesions on their own grid (default: resample each to a real scan's spacing)")
    real.add_argument("--reader-outline", choices=("auto", "on", "off"), default="auto",
                      help="fill each slice of a synthetic mask as a reader's traced outline when matching acquisition "
                           "(auto: when the real masks are closed outlines, as LIDC's contours are)")
    real.add_argument("--with-size", action="store_true",
                      help="let the classifier see the lesion volume too (default: size-free features only)")
    real.add_argument("--max-synthetic", type=positive_int, help="score a seeded random subset of this many synthetic lesions")
    real.add_argument("--seed", type=seed, default=0, help="seed of spacing draws, subset, folds and bootstrap (default 0)")
    real.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap replicates of the AUC (default 1000)")
    real.add_argument("--trees", type=positive_int, default=300, help="trees of the random forest (default 300)")
    real.add_argument("--no-bar", action="store_true", help="no tqdm progress bar on stderr")
    real.add_argument("--force", action="store_true", help="overwrite the report files in an existing --out")
    real.set_defaults(func=_realism)


def _input_paths(args: argparse.Namespace) -> list[str]:
    """Every input file or folder named on the command line (for the output checks)."""
    paths: list[str] = []
    for key in ("csv", "a", "b", "pred", "ref", "features", "real", "synthetic"):
        value = getattr(args, key, None)
        paths += value if isinstance(value, list) else [value] if value else []
    return paths


def _emit(df, args, title: str) -> None:
    from PASTALib.eval.report import check_table_outputs, to_markdown, write_table

    print(to_markdown(df), end="")
    if args.out:
        check_table_outputs(args.out, _input_paths(args))
        paths = write_table(df, args.out, title=title)
        print("wrote " + ", ".join(str(p) for p in paths.values()))


def _seg(args: argparse.Namespace) -> int:
    import numpy as np

    from PASTALib.eval.report import check_table_outputs, write_table
    from PASTALib.eval.tasks import evaluate_segmentation_dirs, segmentation_summary

    if args.out:
        for prefix in (args.out, f"{args.out}_per_case"):
            check_table_outputs(prefix, _input_paths(args))
    per_case = evaluate_segmentation_dirs(args.pred, args.ref, args.labels, empty=float("nan") if args.empty_nan else 1.0)
    summary = segmentation_summary(per_case, rng=np.random.default_rng(args.seed), n_resamples=args.n_boot)
    if args.out:
        write_table(per_case, f"{args.out}_per_case", title="Dice per case")
    _emit(summary, args, "Dice (mean, 95% bootstrap CI over cases)")
    return 0


def _cls(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from PASTALib.eval.tasks import classification_summary, find_column, score_columns

    df = pd.read_csv(args.csv)
    label_col = find_column(df, args.label_col, ("label", "y_true", "target", "truth"), "label")
    multi = score_columns(df)
    candidates = ("score", "prob", "y_score", "probability", "prob_1")
    if args.score_col:
        scores = df[find_column(df, args.score_col, (), "score")].to_numpy(float)
    elif len(multi) > 2:
        scores = df[multi].to_numpy(float)
    elif any(c.lower() in {str(x).lower() for x in df.columns} for c in candidates) or not args.pred_col:
        scores = df[find_column(df, None, candidates, "score")].to_numpy(float)
    else:
        scores = None  # hard predictions only: ACC / F1 without AUC
    pred = df[find_column(df, args.pred_col, (), "prediction")].to_numpy() if args.pred_col else None
    summary = classification_summary(df[label_col].to_numpy(), scores, pred, rng=np.random.default_rng(args.seed),
                                     threshold=args.threshold, n_resamples=args.n_boot)
    _emit(summary, args, "Classification (95% bootstrap CI)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from PASTALib.eval.stats import paired_permutation_test, wilcoxon_test
    from PASTALib.eval.tasks import EvaluationError, find_column

    a, b = pd.read_csv(args.a), pd.read_csv(args.b)
    col_a = find_column(a, args.col, ("dsc", "value", "score", "auc"), "value")
    col_b = find_column(b, col_a if args.col is None and col_a in b.columns else args.col, ("dsc", "value", "score", "auc"), "value")
    key = args.key
    if key is None:
        key = next((c for c in ("case", "case_id", "id") if c in a.columns and c in b.columns), None)
    if key is not None:
        extra = [c for c in ("label",) if c in a.columns and c in b.columns]
        merged = a.merge(b, on=[key, *extra], suffixes=("_a", "_b"), how="inner")
        if len(merged) != len(a) or len(merged) != len(b):
            raise EvaluationError(f"cases do not match: {len(a)} in A, {len(b)} in B, {len(merged)} in both (key {key!r})")
        va = merged[col_a + "_a" if col_a == col_b else col_a].to_numpy(float)
        vb = merged[col_b + "_b" if col_a == col_b else col_b].to_numpy(float)
    else:
        if len(a) != len(b):
            raise EvaluationError(f"no case column to pair on and the tables differ in length ({len(a)} vs {len(b)})")
        va, vb = a[col_a].to_numpy(float), b[col_b].to_numpy(float)
    rng = np.random.default_rng(args.seed)
    results = [wilcoxon_test(va, vb, alternative=args.alternative),
               paired_permutation_test(va, vb, rng=rng, n_resamples=args.n_perm, alternative=args.alternative)]
    df = pd.DataFrame([r.as_dict() for r in results])
    df.insert(1, "mean_a", float(np.mean(va)))
    df.insert(2, "mean_b", float(np.mean(vb)))
    _emit(df, args, f"Paired tests, A vs B ({args.alternative})")
    return 0


def _fewshot(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from PASTALib.eval.plots import plot_fewshot, summarize_fewshot

    df = pd.concat([pd.read_csv(path) for path in args.csv], ignore_index=True)
    summary = summarize_fewshot(df, rng=np.random.default_rng(args.seed), k_col=args.k_col, value_col=args.value_col,
                                group_col=args.method_col, n_resamples=args.n_boot)
    path = plot_fewshot(summary, args.plot, metric=args.metric, title=args.title)
    _emit(summary, args, "Few-shot (mean, 95% bootstrap CI)")
    print(f"wrote {path}")
    return 0


def _realism(args: argparse.Namespace) -> int:
    import numpy as np

    from PASTALib.eval.realism import evaluate_realism, radiomics_extractor
    from PASTALib.eval.realism_io import read_real_csv, read_synthetic_dir
    from PASTALib.eval.realism_report import summary, write_realism_report
    from PASTALib.eval.tasks import EvaluationError
    from PASTALib.io.outputs import check_outputs

    out = Path(args.out)
    check_outputs(_input_paths(args), folders=[out])
    if (out / "realism.html").exists() and not args.force:
        raise EvaluationError(f"{out} already holds a realism report; pass --force to overwrite it or choose another --out")
    if args.max_synthetic is not None and args.max_synthetic < 1:
        raise EvaluationError("--max-synthetic must be at least 1")
    if args.trees < 1 or args.n_boot < 1:
        raise EvaluationError("--trees and --n-boot must be at least 1")
    real = read_real_csv(args.real, shape_only=args.shape_only)
    synthetic = read_synthetic_dir(args.synthetic, types=args.types)
    if not args.shape_only:
        radiomics_extractor()  # fail before any work when PyRadiomics is missing
    print(f"{len(real)} real and {len(synthetic)} synthetic lesions"
          + (f" (scoring {args.max_synthetic})" if args.max_synthetic and args.max_synthetic < len(synthetic) else ""))
    total = len(real) + min(len(synthetic), args.max_synthetic or len(synthetic))
    bar = Progress(total, desc="lesions", unit="lesion", lines=False, bar=not args.no_bar)
    try:
        result = evaluate_realism(real, synthetic, rng=np.random.default_rng(args.seed), shape_only=args.shape_only,
                                  match_acquisition=not args.no_match_acquisition, with_size=args.with_size,
                                  reader_outline={"auto": None, "on": True, "off": False}[args.reader_outline],
                                  max_synthetic=args.max_synthetic, n_boot=args.n_boot, n_trees=args.trees,
                                  progress=lambda case: bar.advance(1, ""))
    finally:
        bar.close()
    paths = write_realism_report(result, out)
    s = summary(result)
    if s["auc"] is not None:
        a = s["auc"]
        print(f"C2ST AUC {a['estimate']:.3f} [{a['low']:.3f}, {a['high']:.3f}] (0.5 = indistinguishable)")
    for note in s["notes"]:
        print(f"note: {note}")
    for line in s["failed"]:
        print(f"skipped {line}")
    print("most separating: " + ", ".join(s["most_separating"]))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0

"""``pasta classify``: fine-tune the PASTA encoder for classification with k-fold cross-validation.

    pasta classify train --task detection|roi|attributes --table T.csv --out DIR [--folds 5] [--fold all|i]
                         [--input-size N] [--margin-mm 10] [--class-weights 1,10|balanced] [--iterations 1000]
                         [--lr 1e-4] [--batch-size 4] [--init PATH|scratch] [--freeze-encoder] [--device cuda]
                         [--seed 0] [--progress-lines]
    pasta classify predict --model DIR/fold_0/model.pth --table T.csv --out preds.csv

Writes DIR/splits.json, DIR/fold_i/{model.pth,predictions.csv}, DIR/predictions.csv (out-of-fold;
``pasta evaluate cls --csv DIR/predictions.csv`` reads it) and DIR/metrics.{csv,md,html}. The same
command resumes: finished folds are skipped, an interrupted fold continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import json

from PASTALib.cli.args import non_negative_float, non_negative_int, positive_float, positive_int, range_int, seed

TABLE_HELP = {
    "detection": "image, organs (label map), organ (e.g. liver, kidney_left, 8), label (0 normal / 1 tumour)",
    "roi": "image, coordX, coordY, coordZ (LPS mm), label (classes or a binary endpoint)",
    "attributes": "image, coordX, coordY, coordZ, shape, density, heterogeneity, margin, invasion (report wording)",
}


def _fold(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--fold takes 'all' or a fold number >= 0, not {text!r}") from None


def _weights(text: str) -> tuple[float, ...] | str:
    if text.strip().lower() == "balanced":
        return "balanced"
    try:
        return tuple(positive_float(v) for v in text.replace(":", ",").split(",") if v.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--class-weights takes a number > 0 per class (e.g. 1,10) or 'balanced', "
                                         f"not {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "classify", help="classification fine-tuning with k-fold CV (detection, ROI endpoints, report attributes)",
    ).add_subparsers(dest="command", metavar="COMMAND")

    t = group.add_parser("train", help="cross-validated fine-tuning; resumable",
                         description="Table columns (paths relative to the table's folder): "
                         + "; ".join(f"{k}: {v}" for k, v in TABLE_HELP.items())
                         + ". Optional: id, patient_id (cases of a patient share a fold), labels_kind.")
    t.add_argument("--task", required=True, choices=("detection", "roi", "attributes"))
    t.add_argument("--table", required=True, help="CSV table (see above)")
    t.add_argument("--out", required=True, help="output folder (reused to resume)")
    t.add_argument("--folds", type=range_int(2), default=5, help="cross-validation folds (default 5)")
    t.add_argument("--fold", type=_fold, default=None, help="'all' (default) or one fold number")
    t.add_argument("--input-size", type=positive_int, help="crop size in voxels (default 128 detection, 96 roi/attributes)")
    t.add_argument("--margin-mm", type=non_negative_float, default=10.0, help="detection: margin around the organ box (default 10)")
    t.add_argument("--class-weights", type=_weights,
                   help="cross-entropy weight per class, e.g. 1,10 (default for detection: normal 1, tumour 10; "
                        "uniform otherwise) or 'balanced' (inverse class frequency of the training folds)")
    t.add_argument("--label-col", dest="label_column", default="label", help="label column (default label)")
    t.add_argument("--id-col", dest="id_column", default="id", help="case id column (default id; else row number)")
    t.add_argument("--group-col", dest="group_column",
                   help="patient column for grouped folds (default: patient_id when present)")
    t.add_argument("--labels-kind", choices=("auto", "totalsegmentator", "pasta"), default="auto",
                   help="detection: organ label maps are TotalSegmentator 'total' ids or PASTA 1-25 "
                        "(default auto: TotalSegmentator when a value exceeds 25)")
    t.add_argument("--iterations", type=positive_int, default=1000, help="training iterations per fold (default 1000)")
    t.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate (default 1e-4)")
    t.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    t.add_argument("--batch-size", type=positive_int, default=4)
    t.add_argument("--init", "--checkpoint", dest="init",
                   help="PASTA weights (default: PASTA_WEIGHTS_DIR or ~/.pasta/weights/PASTA_final.pth); "
                        "'scratch' = random initialisation (baseline)")
    t.add_argument("--freeze-encoder", action="store_true", help="train the head only (linear probe)")
    t.add_argument("--no-augment", dest="augment", action="store_false", help="no random mirroring")
    t.add_argument("--feature-scaling", dest="standardize_features", choices=("auto", "on", "off"), default="auto",
                   type=str.lower, help="standardise the feature with training-fold statistics before the new linear "
                                        "head: auto (default) = on with --freeze-encoder, off when the encoder trains")
    t.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    t.add_argument("--no-amp", dest="amp", action="store_false", help="full precision on CUDA")
    t.add_argument("--seed", type=seed, default=0, help="seed of the splits, initialisation and batches (default 0)")
    t.add_argument("--checkpoint-every", type=positive_int, default=200)
    t.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap replicates of the CIs (default 1000)")
    t.add_argument("--no-resume", dest="resume", action="store_false", help="start over (cached crops are kept)")
    t.add_argument("--threads", type=positive_int, dest="num_threads")
    t.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <fraction> <message>' lines on stdout")
    t.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    t.set_defaults(func=_train)

    p = group.add_parser("predict", help="apply a trained fold model to a table")
    p.add_argument("--model", required=True, help="OUT/fold_i/model.pth of `pasta classify train`")
    p.add_argument("--table", required=True, help="CSV with the training table's input columns (labels optional)")
    p.add_argument("--out", required=True, help="predictions CSV")
    p.add_argument("--id-col", dest="id_column", default="id")
    p.add_argument("--label-col", dest="label_column", default="label")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--crops-dir", help="cache the crops here (default: no cache)")
    p.set_defaults(func=_predict)


def _train(args: argparse.Namespace) -> int:
    from PASTALib.finetune.classify import ClassifyConfig, train_classifier
    from PASTALib.io.outputs import check_outputs
    from PASTALib.train.common import StopFlag

    check_outputs([args.table, args.init], folders=[args.out])

    fields = ClassifyConfig.__dataclass_fields__
    kw = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    kw["fold"] = args.fold
    kw["standardize_features"] = {"auto": None, "on": True, "off": False}[args.standardize_features]
    cfg = ClassifyConfig(**kw)
    stop = StopFlag()
    with stop.install_signal_handlers():
        result = train_classifier(cfg, stop=stop)
    print(json.dumps({
        "out": str(result.out), "splits": str(result.splits), "folds_done": result.folds_done,
        "folds_trained": result.folds_trained,
        "predictions": str(result.predictions) if result.predictions else None,
        "metrics": str(result.metrics) if result.metrics else None,
    }, indent=2))
    if result.summary is not None:
        from PASTALib.eval.report import to_markdown

        print(to_markdown(result.summary), end="")
    if result.stopped_early:
        print("stopped; run the same command again to resume")
        return 130
    missing = [f for f in range(cfg.folds) if f not in result.folds_done]
    if missing:
        print(f"folds {missing} are not trained yet; out-of-fold predictions and metrics are written once every "
              "fold is done")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from PASTALib.finetune.classify import predict_table
    from PASTALib.io.outputs import check_outputs

    check_outputs([args.model, args.table], files=[args.out])
    frame = predict_table(args.model, args.table, out=args.out, device=args.device, batch_size=args.batch_size,
                          id_column=args.id_column, label_column=args.label_column, crops_dir=args.crops_dir)
    print(f"wrote {args.out} ({len(frame)} row(s))")
    return 0

"""``pasta embed``: lesion embeddings with the PASTA encoder, frozen-feature probes, stability."""

from __future__ import annotations

import argparse

from PASTALib.cli.args import non_negative_float, positive_float, positive_int, range_float, seed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "embed", help="lesion embeddings (PASTA encoder), k-NN / logistic probes, feature stability",
    ).add_subparsers(dest="command", metavar="COMMAND")

    ext = group.add_parser("extract", help="1024-d features of crops around lesion points listed in a CSV")
    ext.add_argument("--csv", required=True,
                     help="input CSV: image_path, coordX, coordY, coordZ (lesion centre, LPS mm) + optional columns")
    ext.add_argument("--out", required=True, help="output CSV (input columns + row_id + feat_0..); appended per batch")
    ext.add_argument("--npz", help="also write features (N, D) + input columns as .npz at the end")
    ext.add_argument("--weights", help="PASTA weights (default: $PASTA_WEIGHTS_DIR or ~/.pasta/weights/PASTA_final.pth)")
    ext.add_argument("--crop", type=positive_int, default=96, help="crop size in voxels at 1 mm (default 96; TumorImagingBench uses 48)")
    ext.add_argument("--batch-size", type=positive_int, default=4)
    ext.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    ext.add_argument("--no-resume", action="store_true", help="overwrite --out instead of skipping rows already embedded")
    ext.add_argument("--progress-lines", action="store_true", help="print PROGRESS <fraction> lines (for Slicer)")
    ext.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    ext.set_defaults(func=_extract)

    probe = group.add_parser("probe", help="k-NN (cosine) / logistic-regression probe AUC over repeated stratified splits")
    probe.add_argument("--features", required=True, help="features CSV from 'pasta embed extract' (or any CSV with feature columns)")
    probe.add_argument("--label", required=True, help="label / endpoint column")
    probe.add_argument("--feature-prefix", default="feat_", help="feature column prefix (default feat_)")
    probe.add_argument("--probe", choices=("knn", "logreg", "both"), default="both")
    probe.add_argument("--repeats", type=positive_int, default=50, help="stratified splits (default 50)")
    probe.add_argument("--train", type=range_float(0, 1, lo_open=True, hi_open=True), default=0.5, help="train fraction (default 0.5)")
    probe.add_argument("--val", type=range_float(0, 1, lo_open=True, hi_open=True), default=0.2, help="validation fraction for k / C (default 0.2)")
    probe.add_argument("--seed", type=seed, default=0)
    probe.add_argument("--out", help="write <OUT>.csv/.md/.html")
    probe.set_defaults(func=_probe)

    stab = group.add_parser("stability", help="feature change under ±2-3 mm seed shifts, HU offsets and noise")
    stab.add_argument("--csv", required=True, help="input CSV as for extract (lesion points)")
    stab.add_argument("--weights", help="PASTA weights (default as for extract)")
    stab.add_argument("--crop", type=positive_int, default=96)
    stab.add_argument("--device", default="auto")
    stab.add_argument("--shifts", type=positive_float, nargs="+", default=[2.0, 3.0], help="shift sizes in mm (default 2 3)")
    stab.add_argument("--hu", type=range_float(), nargs="+", default=[-20.0, 20.0], help="HU offsets (default -20 20)")
    stab.add_argument("--noise", type=non_negative_float, nargs="+", default=[10.0], help="noise SDs in HU (default 10)")
    stab.add_argument("--seed", type=seed, default=0)
    stab.add_argument("--out", help="write <OUT>.csv/.md/.html")
    stab.set_defaults(func=_stability)


def _extract(args: argparse.Namespace) -> int:
    import torch

    from PASTALib.embed.extractor import embed_table, load_embedder
    from PASTALib.io.outputs import check_outputs

    check_outputs([args.csv, args.weights], files=[args.out, args.npz])
    if args.threads:
        torch.set_num_threads(args.threads)
    embedder = load_embedder(args.weights, device=args.device, crop_size=args.crop, batch_size=args.batch_size)
    counts = embed_table(args.csv, args.out, embedder, npz=args.npz, resume=not args.no_resume,
                         progress_lines=args.progress_lines)
    print(f"{counts['embedded']} embedded, {counts['skipped']} already present, {counts['total']} rows -> {args.out}"
          + (f" (+ {args.npz})" if args.npz else ""))
    return 0


def _probe(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from PASTALib.embed.probes import repeated_split_auc
    from PASTALib.eval.report import check_table_outputs, to_markdown, write_table
    from PASTALib.eval.tasks import EvaluationError

    df = pd.read_csv(args.features)
    cols = [c for c in df.columns if str(c).startswith(args.feature_prefix)]
    if not cols:
        raise EvaluationError(f"no columns starting with {args.feature_prefix!r} in {args.features}")
    if args.label not in df.columns:
        raise EvaluationError(f"label column {args.label!r} not in {args.features}")
    df = df.dropna(subset=[args.label])
    X, y = df[cols].to_numpy(float), df[args.label].to_numpy()
    rows = []
    for name in (("knn", "logreg") if args.probe == "both" else (args.probe,)):
        res = repeated_split_auc(X, y, probe=name, rng=np.random.default_rng(args.seed), n_repeats=args.repeats,
                                 train=args.train, val=args.val)
        rows.append(res.as_dict())
    table = pd.DataFrame(rows)
    print(to_markdown(table), end="")
    if args.out:
        check_table_outputs(args.out, [args.features])
        write_table(table, args.out, title=f"Probe AUC ({args.label}, {args.repeats} stratified splits)")
    return 0


def _stability(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from PASTALib.embed.extractor import COORD_COLUMNS, load_embedder
    from PASTALib.embed.stability import perturbations, perturbed_features, stability_report, summarize_by_kind
    from PASTALib.eval.report import check_table_outputs, to_markdown, write_table
    from PASTALib.io import read_ct

    embedder = load_embedder(args.weights, device=args.device, crop_size=args.crop)
    df = pd.read_csv(args.csv)
    rng = np.random.default_rng(args.seed)
    specs = perturbations(args.shifts, args.hu, args.noise)
    feats, names = [], None
    for path, sub in df.groupby("image_path", sort=False):
        image = read_ct(path)
        f, names = perturbed_features(embedder, image, sub[list(COORD_COLUMNS)].to_numpy(float), rng=rng, specs=specs)
        feats.append(f)
    report = stability_report(np.concatenate(feats), names)
    summary = summarize_by_kind(report)
    print(to_markdown(summary), end="")
    if args.out:
        check_table_outputs(args.out, [args.csv, args.weights])
        write_table(report, args.out, title="Feature stability")
    return 0

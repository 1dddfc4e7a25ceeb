"""``pasta finetune``: K-shot segmentation fine-tuning on cases exported by the PASTA module.

    pasta finetune --data FEWSHOT_FOLDER --out runs/ft [--init PASTA_final.pth] [--k 4] [--fold 0 --folds 5]
                   [--iterations 2000] [--lr 1e-4] [--patch-size 128] [--device cuda] [--progress-lines]

Writes OUT/model_final.pth (use it with ``pasta segment --checkpoint``), OUT/classes.json (output
channel → annotated label value and name), OUT/splits.json, OUT/metrics.csv, OUT/validation.csv
(DSC per held-out case) and OUT/checkpoint_last.pt (the same command resumes exactly).

Several K (``--k 1,2,4,8,16``) or folds (``--fold all`` / ``--fold 0,2``) run the paper's few-shot
protocol: one run per (K, fold) in OUT/k{K}/fold{f}/ and OUT/fewshot.csv (method, K, fold, case,
class, name, value) for ``pasta evaluate fewshot``; ``--init scratch`` is the from-scratch baseline.
"""

from __future__ import annotations

import argparse
import json
import sys

from PASTALib.cli.args import fraction, non_negative_int, positive_float, positive_int, range_int, seed, size_triple


def int_list(text: str, minimum: int = 1) -> list[int]:
    """``4`` or ``1,2,4,8,16`` → [ints], each >= ``minimum``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum} or a comma-separated list of them "
                                         f"such as 1,2,4,8,16 (got {text!r})")
    return values


def fold_list(text: str) -> list[int] | None:
    """``0``, ``0,2`` or ``all`` (None); fold numbers start at 0."""
    return None if text.strip().lower() == "all" else int_list(text, minimum=0)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="few-shot segmentation fine-tuning on annotated cases (pasta_fewshot.json)")
    p.add_argument("--data", required=True, help="few-shot folder: pasta_fewshot.json, imagesTr/, labelsTr/")
    p.add_argument("--out", help="output folder (default: DATA/finetune)")
    p.add_argument("--init", "--checkpoint", dest="init",
                   help="PASTA weights to start from (default: PASTA_WEIGHTS_DIR or ~/.pasta/weights/PASTA_final.pth); "
                        "'scratch': the same architecture from random init (the baseline)")
    p.add_argument("--layout", help="with --init scratch: take the network layout (widths, stages) from these weights "
                                    "instead of the published PASTA layout")
    p.add_argument("--k", type=int_list, help="training cases drawn from the training folds (default: all; a sweep: "
                                              "1,2,4,8,16); several (1,2,4,8,16) run a few-shot sweep into OUT/k{K}/fold{f}")
    p.add_argument("--fold", type=fold_list, default=[0],
                   help="held-out fold (default 0); 'all' or a list (0,2) runs a few-shot sweep")
    p.add_argument("--folds", type=range_int(2), default=5, help="cross-validation folds (default 5)")
    p.add_argument("--iterations", type=positive_int, default=2000)
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--patch-size", type=size_triple, default=(128, 128, 128), help="N or D,H,W (multiples of 32)")
    p.add_argument("--fg-fraction", type=fraction, default=0.33, help="share of each batch forced onto annotated voxels")
    p.add_argument("--spacing", type=positive_float, default=1.0, dest="spacing_mm",
                   help="canonical LPS spacing in mm the cases are resampled to (default 1, the model's); 0: keep the files' grids")
    p.add_argument("--normalization", choices=("auto", "nnunet_ct", "slf"), default="auto",
                   help="input map: auto = the init model's own; from PASTA_final.pth or scratch nnU-Net's CT "
                        "normalisation with the training cases' foreground statistics (the authors' recipe), stored "
                        "in model_final.pth and applied by `pasta segment`")
    p.add_argument("--intensity-samples", type=positive_int,
                   help="foreground voxels sampled for the nnU-Net CT statistics (default nnU-Net's 10e7)")
    p.add_argument("--checkpoint-every", type=positive_int, default=100)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--no-validation", dest="evaluate", action="store_false",
                   help="skip the DSC of the held-out fold at the end")
    p.add_argument("--threads", type=positive_int, dest="num_threads")
    p.add_argument("--num-workers", type=non_negative_int)
    p.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <fraction> <message>' lines on stdout")
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    p.add_argument("--method", help="sweep: name of the curve in fewshot.csv (default PASTA, or scratch with --init scratch)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from PASTALib.eval.plots import FEW_SHOT_K
    from PASTALib.finetune import FinetuneConfig, finetune, run_sweep
    from PASTALib.io.outputs import check_outputs
    from PASTALib.train import StopFlag

    fields = FinetuneConfig.__dataclass_fields__
    kw = {k: v for k, v in vars(args).items() if k in fields and v is not None and k not in ("k", "fold")}
    kw["out"] = args.out or str(Path(args.data) / "finetune")
    check_outputs([args.data, None if (args.init or "").lower() == "scratch" else args.init, args.layout],
                  folders=[kw["out"]])
    if kw.get("spacing_mm") == 0:
        kw["spacing_mm"] = None
    if (args.init or "").lower() == "scratch":
        kw["scratch"], kw["init"] = True, args.layout
    elif args.layout:
        print("error: --layout applies to --init scratch (fine-tuning takes the layout of --init)", file=sys.stderr)
        return 2
    ks, folds = args.k, args.fold
    sweep = folds is None or len(folds) > 1 or (ks is not None and len(ks) > 1)
    stop = StopFlag()
    if sweep:
        cfg = FinetuneConfig(**kw)
        with stop.install_signal_handlers():
            res = run_sweep(cfg, ks or list(FEW_SHOT_K), folds, method=args.method, stop=stop)
        print(json.dumps({
            "out": str(res.out), "method": res.method, "fewshot_csv": str(res.csv) if res.csv else None,
            "runs": [{"K": r.k, "fold": r.fold, "out": str(r.out), "status": r.status, "mean_dice": r.mean_dice}
                     for r in res.runs],
            "skipped": res.notes,
        }, indent=2))
        if res.stopped_early:
            print("sweep stopped; run the same command again to resume")
            return 130
        return 0
    if args.method:
        print("note: --method names a sweep's curve in fewshot.csv; a single run writes no fewshot.csv", file=sys.stderr)
    cfg = FinetuneConfig(**kw, k=ks[0] if ks else None, fold=folds[0])
    with stop.install_signal_handlers():
        result = finetune(cfg, stop=stop)
    print(json.dumps({
        "iteration": result.iteration, "out": str(result.out),
        "final_model": str(result.final_model) if result.final_model else None,
        "classes": str(result.classes), "splits": str(result.splits), "metrics": str(result.metrics),
        "validation": str(result.validation_csv) if result.validation_csv else None,
        "mean_dice": result.mean_dice,
    }, indent=2))
    if result.stopped_early:
        print(f"stopped at iteration {result.iteration}; run the same command again to resume")
        return 130
    return 0

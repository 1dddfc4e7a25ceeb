"""``pasta train``: stage-1 segmentation pre-training and stage-2 attribute-head training.


Several GPUs (or CPU processes): the same command under torchrun, e.g.
``torchrun --nproc_per_node 4 -m PASTALib train stage1 --data gen/ --out runs/s1``
(``--batch-size`` is per process; rank 0 writes the outputs).
"""

from __future__ import annotations

import argparse
import json
import os

from PASTALib.cli.args import fraction, non_negative_int, positive_float, positive_int, range_float, seed, size_triple


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder of case folders (img.nii.gz, label.nii.gz, report.json)")
    p.add_argument("--out", required=True, help="output folder (checkpoint_last.pt, metrics.csv, model_final.pth)")
    p.add_argument("--iterations", type=positive_int, help="training iterations")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float, help="learning rate")
    p.add_argument("--checkpoint-every", type=positive_int, help="write checkpoint_last.pt every N iterations")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="full precision on CUDA (default: bf16/fp16 AMP)")
    p.add_argument("--amp-dtype", choices=("auto", "bf16", "fp16"),
                   help="autocast dtype on CUDA (default auto: bf16 from compute capability 8.0 (Ampere) on, "
                        "fp16 with a GradScaler on older GPUs such as V100 / T4)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if OUT/checkpoint_last.pt exists (default: resume from it)")
    p.add_argument("--threads", type=positive_int, dest="num_threads", help="CPU threads for torch")
    p.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <fraction> <message>' lines on stdout")
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="do not write OUT/tensorboard event files (written when the tensorboard package is installed)")
    p.add_argument("--no-curves", dest="curves", action="store_false", default=None,
                   help="do not draw OUT/curves.png at checkpoints")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("train", help="pre-train PASTA (stage 1 segmentation, stage 2 attributes)")
    sub = group.add_subparsers(dest="command", metavar="STAGE")

    s1 = sub.add_parser("stage1", help="segmentation of organs 1-10 + lesions 11-25 (Dice+CE, deep supervision, SGD poly)")
    _common(s1)
    s1.add_argument("--patch-size", type=size_triple, help="patch size N or D,H,W (default 128)")
    s1.add_argument("--fg-fraction", type=fraction, help="share of each batch forced onto foreground (default 0.33)")
    s1.add_argument("--base-channels", type=positive_int, help="channels of the first stage (default 64)")
    s1.add_argument("--max-channels", type=positive_int, help="channel cap (default 1024)")
    s1.add_argument("--stages", type=positive_int, dest="num_stages", help="number of stages incl. bottleneck (default 6)")
    s1.add_argument("--init", help="start from these PASTA weights (segmentation heads re-initialised if classes differ)")
    s1.add_argument("--optimizer", choices=("sgd", "adam"), help="sgd (default: nnU-Net recipe) or adam")
    s1.add_argument("--lesion-weight", type=positive_float,
                    help="loss weight of the lesion classes 11-25 (default 1: the recipe; ~10 helps short runs)")
    s1.add_argument("--num-workers", type=non_negative_int,
                    help="DataLoader worker processes making the patches (default: 0 on CPU, a few on CUDA); "
                         "> 0 seeds each batch from (seed, rank, iteration): exactly resumable, but a different "
                         "patch stream than 0, so keep it on/off across a resume")
    s1.add_argument("--compile", action="store_true", default=None,
                    help="torch.compile the model (falls back to eager with a notice where unsupported)")
    s1.add_argument("--compile-backend", help="torch.compile backend (default inductor)")
    s1.add_argument("--channels-last", action="store_true", default=None,
                    help="channels_last_3d memory format for the model and inputs (off by default: PASTA's "
                         "InstanceNorm3d layers convert the layout back and forth; see BENCHMARKS.md)")
    s1.set_defaults(func=_stage1)

    s2 = sub.add_parser("stage2", help="attribute head on the frozen UNet (lesion-centred crops, grouped CE, Adam)")
    _common(s2)
    s2.add_argument("--init", help="UNet weights: stage-1 OUT/model_final.pth or PASTA_final.pth "
                                   "(default: PASTA_WEIGHTS_DIR or ~/.pasta/weights/PASTA_final.pth)")
    s2.add_argument("--crop-size", type=size_triple, help="lesion crop N or D,H,W (default 96)")
    s2.add_argument("--val-fraction", type=range_float(0, 1, hi_open=True), help="share of cases held out for validation (default 0.2)")
    s2.add_argument("--eval-every", type=positive_int)
    s2.add_argument("--standardize-features", action="store_true", default=None,
                    help="fold the training features' mean/std into the new head's first layer "
                         "(helps a head trained from scratch; leave off when continuing a trained head)")
    s2.set_defaults(func=_stage2)


_SKIP = {"group", "command", "func"}


def _overrides(args: argparse.Namespace, cls) -> dict:
    fields = cls.__dataclass_fields__
    return {k: v for k, v in vars(args).items() if k not in _SKIP and k in fields and v is not None}


def _run(args: argparse.Namespace, stage: str) -> int:
    from PASTALib.train import (
        Stage1Config,
        Stage2Config,
        StopFlag,
        train_stage1,
        train_stage2,
    )

    from PASTALib.io.outputs import check_outputs

    cls, fn = (Stage1Config, train_stage1) if stage == "stage1" else (Stage2Config, train_stage2)
    check_outputs([args.data, getattr(args, "init", None)], folders=[args.out])
    cfg = cls(**_overrides(args, cls))
    stop = StopFlag()
    with stop.install_signal_handlers():
        result = fn(cfg, stop=stop)
    summary = {"stage": stage, "iteration": result.iteration, "out": str(result.out),
               "final_model": str(result.final_model) if result.final_model else None,
               "checkpoint": str(result.checkpoint), "metrics": str(result.metrics)}
    if result.summary:
        summary["validation"] = result.summary
    main = os.environ.get("RANK", "0") in ("", "0")  # under torchrun only rank 0 reports
    if main:
        print(json.dumps(summary, indent=2))
    if result.stopped_early:
        if main:
            print(f"stopped at iteration {result.iteration}; run the same command again to resume")
        return 130
    return 0


def _stage1(args: argparse.Namespace) -> int:
    return _run(args, "stage1")


def _stage2(args: argparse.Namespace) -> int:
    return _run(args, "stage2")

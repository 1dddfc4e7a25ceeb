"""``pasta refine``: train the refinement DDPM and refine synthesized lesions."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from PASTALib.cli.args import non_negative_float, positive_float, positive_int, seed

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("refine", help="refinement DDPM: train it, refine synthesized lesions").add_subparsers(
        dest="command", metavar="COMMAND")

    t = group.add_parser(
        "train", help="train the refinement DDPM on CTs with organ labels",
        description=(
            "Train the 3D conditional DDPM (organ mask as condition, L1 on the predicted noise, AdamW). "
            "--data holds one folder per case with ct.nii.gz + organs.nii.gz, or the PASTA-Gen layout "
            "img.nii.gz + label.nii.gz (organs 1-10, lesions 11-25 count as their organ). Writes to --out: "
            "checkpoint.pt (resumable), refiner.pt (weights for `pasta refine apply` / synthesis), "
            "loss.csv, loss.png, config.json."
        ),
    )
    t.add_argument("--data", required=True, help="folder of case folders (see description)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--labels-kind", choices=("auto", "pasta", "totalsegmentator"), default="auto",
                   help="label values: PASTA (default) or TotalSegmentator 'total' ids")
    t.add_argument("--iterations", type=positive_int, default=20000, help="total iterations (default 20000)")
    t.add_argument("--batch", type=positive_int, default=2, help="crops per iteration (default 2)")
    t.add_argument("--crop", type=positive_int, default=128, help="crop side in mm at 1 mm (default 128)")
    t.add_argument("--channels", default="16,32,64,64", help="channels per UNet level (default 16,32,64,64)")
    t.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    t.add_argument("--weight-decay", type=non_negative_float, default=1e-5, help="AdamW weight decay (default 1e-5)")
    t.add_argument("--train-t-max", type=positive_int, help="sample training timesteps below this only (default: all T)")
    t.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    t.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16 when supported, else fp16)")
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt (exact resume)")
    t.add_argument("--seed", type=seed, default=0)
    t.add_argument("--val-every", type=positive_int, default=250, help="validation every N iterations (default 250)")
    t.add_argument("--val-crops", type=positive_int, default=8, help="held-out validation crops (default 8)")
    t.add_argument("--checkpoint-every", type=positive_int, default=500, help="checkpoint every N iterations (default 500)")
    t.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <fraction> <message>' lines on stdout")
    t.add_argument("--threads", type=positive_int, help="torch CPU threads")
    t.set_defaults(func=_train)

    a = group.add_parser(
        "apply", help="refine the lesion neighbourhoods of a synthesized case",
        description=(
            "Partially noise each lesion's neighbourhood (lesion values 11-25 in --labels) to step t-1 and "
            "denoise it in t DDPM steps with sliding windows. Voxels farther than --margin mm from the "
            "lesion, and the labels, stay bit-identical. --out is a folder (ct.nii.gz, label.nii.gz, "
            "refine.json) or an image file name (the CT only)."
        ),
    )
    a.add_argument("--ct", required=True, help="synthesized CT")
    a.add_argument("--labels", required=True, help="its label map (PASTA values, lesion 11-25)")
    a.add_argument("--out", required=True, help="output folder or image file")
    a.add_argument("--checkpoint", required=True, help="refiner.pt from `pasta refine train`")
    a.add_argument("--margin", type=non_negative_float, help="refinement margin around the lesion in mm (default: the checkpoint's, 10)")
    a.add_argument("--steps", type=positive_int, help="denoising steps t (default: the checkpoint's, 5)")
    a.add_argument("--seed", type=seed, default=0)
    a.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    a.add_argument("--amp", action="store_true", help="bf16/fp16 autocast on CUDA")
    a.add_argument("--threads", type=positive_int, help="torch CPU threads")
    a.set_defaults(func=_apply)


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _train(args: argparse.Namespace) -> int:
    from PASTALib.io.outputs import check_outputs
    from PASTALib.refine import RefinerConfig, TrainOptions, load_cases, train_refiner
    from PASTALib.train.common import StopFlag

    check_outputs([args.data], folders=[args.out])
    _threads(args.threads)
    config = RefinerConfig(crop_size=args.crop, channels=tuple(int(c) for c in args.channels.split(",")), lr=args.lr,
                           weight_decay=args.weight_decay, train_t_max=args.train_t_max)
    cases = load_cases(args.data, args.labels_kind)
    options = TrainOptions(iterations=args.iterations, batch=args.batch, device=args.device, amp=args.amp,
                           resume=args.resume, seed=args.seed, val_every=args.val_every, val_crops=args.val_crops,
                           checkpoint_every=args.checkpoint_every, progress_lines=args.progress_lines)
    stop = StopFlag()  # SIGTERM/SIGINT: save a checkpoint at the end of the current iteration, then exit
    with stop.install_signal_handlers():
        result = train_refiner(config, cases, args.out, options, stop=stop, data_source=str(args.data))
    if result.stopped:
        print(f"stopped at iteration {result.iteration}; resume with --resume (checkpoint {result.files['checkpoint']})")
        return 130
    print(f"trained {result.iteration} iterations in {result.seconds:.0f} s; weights {result.files.get('weights')}; "
          f"validation L1 {result.val_losses[0][1]:.4f} -> {result.val_losses[-1][1]:.4f}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from PASTALib.anatomy.labelmaps import check_label_grid, resolve_labels_kind
    from PASTALib.io import read_ct, read_label, write_image
    from PASTALib.io.files import write_text_atomic
    from PASTALib.io.outputs import LOCK_NAME, check_outputs, folder_lock
    from PASTALib.refine import Refiner, refine_case

    inputs = [args.ct, args.labels, args.checkpoint]
    out = Path(args.out)
    to_file = out.name.lower().endswith(_IMAGE_SUFFIXES)
    if to_file:
        check_outputs(inputs, files=[out])
    else:
        check_outputs(inputs, folders=[out], names=("ct.nii.gz", "label.nii.gz", "refine.json"))
    # Held from the first read to the last file: two runs onto one output would mix their files.
    lock_folder, lock_name = (out.parent, f".{out.name}.pasta.lock") if to_file else (out, LOCK_NAME)
    with folder_lock(lock_folder, name=lock_name, what="output", clean=False):
        _threads(args.threads)
        overrides = {k: v for k, v in (("refine_steps", args.steps), ("margin_mm", args.margin)) if v is not None}
        refiner = Refiner.from_checkpoint(args.checkpoint, args.device, amp=args.amp, **overrides)
        ct = read_ct(args.ct)
        labels = read_label(args.labels)
        resolve_labels_kind(labels, "pasta", source=args.labels)
        labels = check_label_grid(labels, ct, source=args.labels)
        refined, infos = refine_case(ct, labels, refiner, seed=args.seed)
        if to_file:
            write_image(refined, out)
        else:
            out.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".refine-", dir=out))
            try:
                write_image(refined, staging / "ct.nii.gz")
                write_image(labels, staging / "label.nii.gz")
                write_text_atomic(staging / "refine.json", json.dumps({"checkpoint": str(args.checkpoint), "lesions": infos},
                                                                      indent=2, default=str) + "\n")
                for f in staging.iterdir():
                    f.replace(out / f.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        for info in infos:
            print(f"refined {info['lesion_type']} ({info['voxels']} voxels, {info['touched_voxels']} voxels changed) "
                  f"in {info['seconds']:.1f} s")
        print(f"wrote {out}")
        return 0

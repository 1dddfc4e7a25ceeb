"""``pasta segment``: whole-CT PASTA segmentation + structured reports (single CT or resumable batch).
"""

from __future__ import annotations

import argparse
import json
import sys

from PASTALib.cli.args import non_negative_float, positive_float, positive_int, range_float, size_triple
from PASTALib.progress import Progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment", help="segment organs and lesions with PASTA and write structured reports",
        description="Whole-CT PASTA inference: labels.nii.gz (+ labels.seg.nrrd), reports.json, reports.txt, "
                    "lesions.json (confidences, longest diameter) and, for a DICOM series, a DICOM SEG (seg.dcm) "
                    "and a TID 1500 SR (sr.dcm). Batch mode writes one folder per case and skips finished cases.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", help="CT file (NIfTI/NRRD/MHA) or DICOM series folder")
    src.add_argument("--batch", help="folder of CTs (files or DICOM sub-folders) or CSV with columns ct[,id]")
    p.add_argument("--out", required=True, help="output folder (batch: one sub-folder per case + manifest.csv)")
    p.add_argument("--checkpoint", help="segmentation weights: a `pasta train` / `pasta finetune` model_final.pth "
                                        "(PASTA_final.pth itself cannot segment: fine-tune it first; see "
                                        "`pasta weights info`)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--patch-size", type=size_triple, help="sliding-window size N or D,H,W (default 128)")
    p.add_argument("--overlap", type=range_float(0, 1, hi_open=True), help="window overlap fraction (default 0.5)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time mirroring over the 3 axes (8x slower; default: on with --compat authors, as "
                        "nnU-Net's predictor, off otherwise; only for models trained with mirroring augmentation)")
    p.add_argument("--compat", choices=("pasta", "authors"), default="pasta",
                   help="authors: the authors' settings for models fine-tuned their way (ndimage.zoom resampling with "
                        "aligned corners, logits blended with nnU-Net's Gaussian, mirroring unless --no-mirror; 8x slower)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--fast", dest="speed", action="store_const", const="fast",
                       help="fast path (the default on a CPU): windows only over the (dilated) organs PASTA reports on "
                            "except bone, taken from --organs or a coarse pass; bf16 where the CPU has native bf16; "
                            "OpenVINO when installed. Runs the reference's own windows that hold an organ, so the organs get "
                            "the reference's answer (up to bf16); about 4x faster on a CPU (--fast-grid organs: more); "
                            "bone metastases away from those organs are not searched (BENCHMARKS.md)")
    speed.add_argument("--exact", dest="speed", action="store_const", const="exact",
                       help="the reference path (the default on CUDA): every window of the body, overlap 0.5, full "
                            "precision on CPU")
    p.set_defaults(speed="auto")
    p.add_argument("--fast-grid", choices=("body", "organs"),  # infer.config.FAST_GRIDS (no torch import here)
                   help="--fast: body (default) runs the reference's own windows that hold an organ, so the organs get "
                        "the reference's answer; organs tiles the organs' box instead: fewer windows where the organs "
                        "fill the body (6.6x instead of 4.1x on a whole abdomen, 2 cores), but they sit elsewhere and "
                        "a model's answer can move with them, as when the field of view changes")
    p.add_argument("--runtime", choices=("auto", "torch", "openvino"),  # infer.config.RUNTIMES (no torch import here)
                   help="what runs the windows: auto (default) = OpenVINO for --fast on CPU when installed (pip install "
                        "openvino; ~3x faster per window than torch at f32, ~6x at bf16), else torch")
    p.add_argument("--sw-batch-size", type=positive_int, help="windows per forward pass (default 2)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="full precision on CUDA (default: bf16/fp16)")
    p.add_argument("--crop-size", type=size_triple, help="lesion crop for the attribute head N or D,H,W (default 96)")
    p.add_argument("--spacing", type=positive_float, help="canonical spacing in mm the model works at (default 1)")
    p.add_argument("--min-lesion-volume", type=non_negative_float, help="drop lesion components below this many mm³ (default 20)")
    p.add_argument("--phase", choices=["auto", "plain", "enhanced"], help="enhancement wording (default auto)")
    p.add_argument("--organs", help="TotalSegmentator 'total' label map of the CT, used for location and phase "
                                    "instead of the predicted organs (single CT only)")
    p.add_argument("--resample-labels", action="store_true",
                   help="resample an --organs map on another voxel grid onto the CT (default: refuse it)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    p.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <fraction> <message>' lines on stdout")
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")
    p.set_defaults(func=_segment)


class _SegmentProgress:
    """segment_ct's ``(fraction, message)`` callback on a :class:`Progress` of 1000 steps: window messages are
    throttled, stage notices and the plan always printed; the plan goes to stderr when no PROGRESS lines are
    asked for (the estimate is shown either way)."""

    def __init__(self, lines: bool, bar: bool) -> None:
        self.lines = lines
        self.progress = Progress(1000, desc="segment", lines=lines, bar=bar, every=2,
                                 bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        if message.startswith("plan:") and not self.lines:
            print(message, file=sys.stderr, flush=True)
        position = max(self.progress.position, round(min(max(float(fraction), 0.0), 1.0) * 1000))
        self.progress.update(position, message, force="window" not in message, status=message)

    def close(self) -> None:
        self.progress.close()


def _segment(args: argparse.Namespace) -> int:
    from PASTALib.infer import InferenceConfig, load_model, run_batch, segment_case
    from PASTALib.layout import SEGMENT_OUTPUTS
    from PASTALib.io.outputs import check_outputs

    # Before the model is loaded: an unwritable or wrong --out must not cost a whole inference.
    check_outputs([args.ct, args.batch, args.organs, args.checkpoint], folders=[args.out],
                  names=() if args.batch else SEGMENT_OUTPUTS)

    # --overlap sets the overlap of whichever path runs (the default path is decided by the device, later)
    overrides = {k: v for k, v in {
        "patch_size": args.patch_size, "crop_size": args.crop_size, "overlap": args.overlap,
        "fast_overlap": args.overlap, "batch_size": args.sw_batch_size,
        "spacing_mm": args.spacing, "min_lesion_volume_mm3": args.min_lesion_volume, "phase": args.phase,
        "num_threads": args.threads, "speed": args.speed, "runtime": args.runtime, "fast_grid": args.fast_grid,
    }.items() if v is not None}
    mirroring = args.compat == "authors" if args.mirror is None else args.mirror
    cfg = InferenceConfig(device=args.device, mirroring=mirroring, amp=args.amp, compat=args.compat, **overrides)
    progress = _SegmentProgress(args.progress_lines, args.progress_bar)
    try:
        progress(0.0, "loading model")
        model = load_model(args.checkpoint, device=args.device)
        model.capabilities.require_segmentation()  # before any output: PASTA_final.pth alone cannot segment
        cfg.validate(model.divisor)
        if args.batch:
            if args.organs:
                print("error: --organs applies to a single CT (--ct), not to --batch", file=sys.stderr)
                return 2
            summary = run_batch(args.batch, args.out, model, cfg, progress=progress)
            progress(1.0, f"batch done: {len(summary['done'])} segmented, {len(summary['skipped'])} skipped, "
                          f"{len(summary['failed'])} failed")
            progress.close()
            if args.json:
                print(json.dumps(summary, indent=2))
            else:
                for cid, err in summary["failed"].items():
                    print(f"FAILED {cid}: {err}", file=sys.stderr)
            return 1 if summary["failed"] else 0
        organ_masks = None
        if args.organs:
            from PASTALib.anatomy.labelmaps import organ_masks_for_ct
            from PASTALib.io import read_ct, read_label

            organ_masks = organ_masks_for_ct(read_label(args.organs), read_ct(args.ct), "totalsegmentator",
                                             source=args.organs, resample=args.resample_labels)
        result, files = segment_case(args.ct, args.out, model, cfg, organ_masks=organ_masks, progress=progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps({"lesions": result.reports_json(), "files": {k: str(v) for k, v in files.items()},
                          "warnings": result.warnings, "timings_s": result.timings}, indent=2, ensure_ascii=False))
    else:
        for line in result.report_lines() or ["no lesion found"]:
            print(line)
        print(f"wrote {args.out}")
    return 0

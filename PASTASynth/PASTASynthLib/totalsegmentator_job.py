"""TotalSegmentator in its own process, so that Slicer's GUI stays live and Cancel works.

The PASTASynth panel runs ``python -m PASTASynthLib.totalsegmentator_job --ct CT --out LABELS``
with Slicer's ``PythonSlicer`` through :class:`PASTASlicerLib.jobs.BatchJob` (the same runner as
batch generation) and polls it from a QTimer. This process prints ``PROGRESS <fraction>
<message>`` lines, ``error: ...`` on a refused input, and writes the ``total`` label map
atomically: LABELS is either complete or absent (failure, cancel), never half written.

No Slicer or Qt import; PASTALib (and TotalSegmentator, torch) only inside :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

MODULE = "PASTASynthLib.totalsegmentator_job"


def command(ct_path: str | os.PathLike, out_path: str | os.PathLike, *, fast: bool = True, device: str = "auto",
            allow_download: bool = False, python: str | None = None) -> list[str]:
    """The command line the panel starts (``python`` defaults to PythonSlicer inside Slicer)."""
    from PASTASlicerLib.jobs import python_executable

    args = [python or python_executable(), "-m", MODULE, "--ct", os.fspath(ct_path), "--out", os.fspath(out_path),
            "--device", device]
    return args + (["--fast"] if fast else []) + (["--allow-download"] if allow_download else [])


def _progress(fraction: float, message: str) -> None:
    print(f"PROGRESS {fraction:.3f} {message}", flush=True)


def _terminate(signum, frame) -> None:
    # Cancel sends SIGTERM to the process group: unwind so that the `finally` below removes
    # the partial file (SIGKILL follows after a grace period if this process does not exit).
    raise SystemExit(128 + signum)


def _partial_path(out: Path) -> Path:
    """A sibling temporary name with the same extension (SimpleITK picks the writer by it)."""
    name = out.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else out.suffix
    return out.with_name(f".partial-{os.getpid()}-{name[: len(name) - len(suffix)]}{suffix}")


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--ct", required=True, help="CT image file (NIfTI, NRRD, MHA)")
    parser.add_argument("--out", required=True, help="output label map (TotalSegmentator 'total' ids)")
    parser.add_argument("--fast", action="store_true", help="3 mm model (much faster, coarser)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--allow-download", action="store_true",
                        help="let TotalSegmentator download its missing weights (never with PASTA_OFFLINE=1)")
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)

    out = Path(args.out)
    if not Path(args.ct).is_file():
        print(f"error: CT file not found: {args.ct}", file=sys.stderr)
        return 2
    if not out.parent.is_dir():
        print(f"error: output folder does not exist: {out.parent}", file=sys.stderr)
        return 2
    _progress(0.02, "Loading TotalSegmentator")
    import SimpleITK as sitk

    from PASTALib.anatomy import run_totalsegmentator
    from PASTALib.errors import PastaError

    device = _device(args.device)
    _progress(0.05, f"TotalSegmentator{' --fast' if args.fast else ''} on {device}"
                    f"{' (minutes on CPU)' if device == 'cpu' else ''}")
    try:
        masks = run_totalsegmentator(args.ct, fast=args.fast, device=device, quiet=False,
                                     allow_download=args.allow_download)
    except PastaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _progress(0.95, "Writing the organ label map")
    partial = _partial_path(out)
    try:
        sitk.WriteImage(masks.label_map, str(partial), True)
        os.replace(partial, out)
    finally:
        if partial.exists():
            partial.unlink()
    _progress(1.0, f"{len(masks.present_structures())} structures segmented")
    return 0


if __name__ == "__main__":
    sys.exit(main())

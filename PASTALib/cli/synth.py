"""``pasta synth``: lesion synthesis (PASTA-Gen) from the command line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from PASTALib.labels import LesionType


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("synth", help="synthesize lesions (PASTA-Gen)").add_subparsers(dest="command", metavar="COMMAND")
    p = group.add_parser(
        "lesion", help="insert one lesion into a CT; writes ct.nii.gz, label.nii.gz, report.json, report.txt",
        description="Insert one synthetic lesion. Unspecified attributes are sampled from the type's profile (reproducible from --seed).",
    )
    p.add_argument("--ct", required=True, help="CT image (NIfTI, NRRD, MHA or DICOM folder)")
    p.add_argument("--organs", required=True, help="organ label map on the CT grid")
    p.add_argument("--labels-kind", choices=("pasta", "totalsegmentator"), default="pasta",
                   help="organ label values: PASTA 1-10 (default) or TotalSegmentator 'total' ids")
    p.add_argument("--type", required=True, help="lesion type: " + ", ".join(t.slug for t in LesionType))
    p.add_argument("--center", help="lesion centre x,y,z in LPS mm (default: sampled inside the organ)")
    p.add_argument("--size", help="extent x,y,z in mm (right-left, anterior-posterior, inferior-superior) or one diameter")
    p.add_argument("--shape", help="Round-like | Irregular | 'Wall thickening' | 'Punctate, nodular' (or round, irregular, wall, punctate)")
    p.add_argument("--density", help="Hypodense | Isodense | Hyperdense (or hypo, iso, hyper)")
    p.add_argument("--heterogeneity", help="Homogeneous | Heterogeneous")
    p.add_argument("--margin", help="well | ill (Well-defined / Ill-defined margin)")
    p.add_argument("--invasion", choices=("yes", "no"), help="grow into adjacent structures (malignant types only)")
    p.add_argument("--enhancement", help="phase of the CT: 'Plain CT' or 'Enhanced CT' (default: detected)")
    p.add_argument("--side", choices=("left", "right"), help="side for kidney/lung")
    p.add_argument("--impression", help="report impression; an organ it names is not used (healthy-organ check)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same output)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_lesion)


def _spec_from_args(args: argparse.Namespace):
    from PASTALib.synth import LesionSpec

    return LesionSpec(
        lesion_type=args.type, center_mm=args.center, size_mm=args.size, shape=args.shape, density=args.density,
        heterogeneity=args.heterogeneity, margin=args.margin,
        invasion=None if args.invasion is None else args.invasion == "yes",
        enhancement=args.enhancement, side=args.side, seed=args.seed,
    )


def _lesion(args: argparse.Namespace) -> int:
    from PASTALib.io import read_ct, read_label, write_image
    from PASTALib.synth.pipeline import synthesize_lesion, synthesize_lesion_in_masks

    spec = _spec_from_args(args)  # bad attributes fail before any image is read
    ct = read_ct(args.ct)
    labels = read_label(args.organs)
    if args.labels_kind == "totalsegmentator":
        from PASTALib.anatomy import OrganMasks

        masks = OrganMasks.from_label_map(labels, reference=ct, source=str(args.organs))
        result = synthesize_lesion_in_masks(ct, masks, spec, impression=args.impression)
    else:
        from PASTALib.geometry import resample_to_grid

        if labels.GetSize() != ct.GetSize() or labels.GetOrigin() != ct.GetOrigin() or labels.GetSpacing() != ct.GetSpacing():
            labels = resample_to_grid(labels, ct, is_label=True)  # nearest neighbour onto the CT grid
        result = synthesize_lesion(ct, labels, spec, impression=args.impression)

    # All four files go to a temporary sibling folder first, then move in: no partial output.
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
    try:
        write_image(result.ct, staging / "ct.nii.gz")
        write_image(result.labels, staging / "label.nii.gz")
        (staging / "report.json").write_text(result.report.to_json() + "\n", encoding="utf-8")
        (staging / "report.txt").write_text(result.report.to_text() + "\n", encoding="utf-8")
        (staging / "spec.json").write_text(json.dumps(result.spec.to_dict(), indent=2) + "\n", encoding="utf-8")
        for item in sorted(staging.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(result.report.to_text())
    print(f"wrote {out}/ct.nii.gz, label.nii.gz, report.json, report.txt, spec.json ({result.timings['total']:.2f} s)")
    return 0

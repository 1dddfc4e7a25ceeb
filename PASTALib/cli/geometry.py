"""``pasta geometry``: canonical 1 mm LPS resampling and back."""

from __future__ import annotations

import argparse

from PASTALib.cli.args import positive_float


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("geometry", help="canonical orientation and resampling").add_subparsers(
        dest="command", metavar="COMMAND"
    )
    canonical = group.add_parser("canonical", help="reorient to LPS and resample to isotropic spacing")
    canonical.add_argument("input", help="image or label map")
    canonical.add_argument("output", help="output file (.nii.gz, .nrrd, .mha)")
    canonical.add_argument("--label", action="store_true", help="nearest-neighbour (label map)")
    canonical.add_argument("--spacing", type=positive_float, default=1.0, help="isotropic spacing in mm (default 1)")
    canonical.set_defaults(func=_canonical)


def _canonical(args: argparse.Namespace) -> int:
    from PASTALib.geometry import to_canonical
    from PASTALib.io import read_ct, read_label, write_image
    from PASTALib.io.outputs import check_outputs

    check_outputs([args.input], files=[args.output])
    image = read_label(args.input) if args.label else read_ct(args.input)
    canonical, mapping = to_canonical(image, is_label=args.label, spacing=args.spacing)
    write_image(canonical, args.output)
    exact = "voxel-exact" if mapping.is_exact_for_labels else "not voxel-exact (input finer than the grid or oblique)"
    print(f"wrote {args.output}: size {mapping.canonical.size} at {args.spacing} mm; label round trip {exact}")
    return 0

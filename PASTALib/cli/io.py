"""``pasta io``: inspect images."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("io", help="inspect CT files").add_subparsers(dest="command", metavar="COMMAND")
    info = group.add_parser("info", help="geometry, orientation and HU range of an image; checks it is a CT")
    info.add_argument("path", help="NIfTI, NRRD, MHA file or DICOM series folder")
    info.add_argument("--label", action="store_true", help="the file is a label map (skip the CT check)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from PASTALib.io import read_ct, read_label

    image = read_label(args.path) if args.label else read_ct(args.path)
    values = sitk.GetArrayViewFromImage(image)
    info = {
        "size": list(image.GetSize()),
        "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
        "origin_lps_mm": [round(o, 3) for o in image.GetOrigin()],
        "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
    }
    if args.label:
        info["labels"] = [int(v) for v in np.unique(values) if v]
    else:
        info["hu_range"] = [float(values.min()), float(values.max())]
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return 0

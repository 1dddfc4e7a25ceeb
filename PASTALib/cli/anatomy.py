"""``pasta anatomy``: organ masks, healthy-organ status, study type, contrast phase, lung mask."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("anatomy", help="organ masks, study type, contrast phase, lung mask")
    commands = group.add_subparsers(dest="command", metavar="COMMAND")

    organs = commands.add_parser(
        "organs", help="organ volumes and healthy status, study type and contrast phase of a CT"
    )
    organs.add_argument("--ct", required=True, help="CT (NIfTI, NRRD, MHA or DICOM series folder)")
    source = organs.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", help="organ label map on the CT (TotalSegmentator 'total' ids by default)")
    source.add_argument("--totalsegmentator", action="store_true", help="run TotalSegmentator (optional extra)")
    source.add_argument("--lungmask", action="store_true", help="classical lung mask (chest CT, no model)")
    organs.add_argument("--pasta-labels", action="store_true",
                        help="--labels is a PASTA label map (organs 1-10, lesions 11-25)")
    organs.add_argument("--names", help="JSON {id: name} or CSV with columns id,structure for --labels")
    organs.add_argument("--resample-labels", action="store_true",
                        help="resample a --labels map on another voxel grid onto the CT (default: refuse it)")
    organs.add_argument("--fast", action="store_true", help="TotalSegmentator --fast (3 mm model)")
    organs.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="TotalSegmentator device")
    download = organs.add_mutually_exclusive_group()
    download.add_argument("--allow-download", action="store_true",
                          help="let TotalSegmentator download its missing weights (~1.5 GB, --fast ~0.2 GB)")
    download.add_argument("--offline", action="store_true", default=None,
                          help="never let TotalSegmentator download (also: PASTA_OFFLINE=1)")
    organs.add_argument("--impression", default=None, help="report impression text (organs it names are not healthy)")
    organs.add_argument("--json", action="store_true", help="print JSON")
    organs.set_defaults(func=_organs)

    lungmask = commands.add_parser("lungmask", help="classical left/right lung mask of a chest CT")
    lungmask.add_argument("--ct", required=True, help="chest CT")
    lungmask.add_argument("--out", required=True, help="output label map (.nii.gz, .nrrd): 1 right lung, 2 left lung")
    lungmask.add_argument("--pasta", action="store_true", help="write PASTA values instead (1 = lung)")
    lungmask.set_defaults(func=_lungmask)


def _read_names(path: str) -> dict[int, str]:
    """{id: name} from JSON ({"5": "liver"}) or CSV (columns id and structure or name)."""
    from PASTALib.errors import SpecificationError

    text = Path(path).read_text(encoding="utf-8")
    if path.lower().endswith(".json"):
        return {int(k): str(v) for k, v in json.loads(text).items()}
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "id" not in rows[0] or not ({"structure", "name"} & set(rows[0])):
        raise SpecificationError(f"{path}: a names CSV needs columns 'id' and 'structure' (or 'name').")
    key = "structure" if "structure" in rows[0] else "name"
    return {int(r["id"]): r[key] for r in rows}


def _organs(args: argparse.Namespace) -> int:
    from PASTALib.anatomy import (
        OrganMasks,
        assess_all_organs,
        classical_lung_mask,
        detect_phase,
        detect_study_type,
        run_totalsegmentator,
    )
    from PASTALib.errors import AnatomyError
    from PASTALib.io import read_ct, read_label

    ct = read_ct(args.ct)
    if args.labels:
        from PASTALib.anatomy.labelmaps import check_label_grid, resolve_labels_kind

        labels = read_label(args.labels)
        if args.pasta_labels:
            resolve_labels_kind(labels, "pasta", source=args.labels)  # a TotalSegmentator map is refused
        labels = check_label_grid(labels, ct, source=args.labels, resample=args.resample_labels)
        if args.pasta_labels:
            masks = OrganMasks.from_pasta_label_map(labels, reference=ct)
        else:
            names = _read_names(args.names) if args.names else None
            masks = OrganMasks.from_label_map(labels, names, reference=ct, source=Path(args.labels).name)
    elif args.totalsegmentator:
        masks = run_totalsegmentator(ct, fast=args.fast, device=args.device, allow_download=args.allow_download,
                                     offline=args.offline)
    else:
        masks = classical_lung_mask(ct)

    study = detect_study_type(masks)
    try:
        phase = detect_phase(ct, masks)
        phase_info = {"phase": phase.phase.value, "mean_hu": round(phase.mean_hu, 1),
                      "vessel_hu": {k: round(v, 1) for k, v in phase.vessel_hu.items()}}
    except AnatomyError as exc:
        phase_info = {"phase": None, "error": str(exc)}
    organs = [
        {
            "organ": masks.location_name(h.organ, side=h.side),
            "label": int(h.organ),
            "side": h.side,
            "volume_ml": round(h.volume_mm3 / 1000, 2),
            "healthy": h.healthy,
            "reason": h.reason,
        }
        for h in assess_all_organs(masks, args.impression)
    ]
    result = {
        "source": masks.source,
        "study_type": study.study_type.value,
        "study_type_decided_by": list(study.decided_by),
        **phase_info,
        "organs": organs,
    }
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(f"source: {masks.source}")
    print(f"study type: {study.explanation}")
    if phase_info["phase"]:
        print(f"phase: {phase.explanation}")
    else:
        print(f"phase: unknown ({phase_info['error']})")
    print(f"{'organ':<18} {'volume ml':>10}  status")
    for row in organs:
        status = "healthy" if row["healthy"] else f"not usable: {row['reason']}"
        print(f"{row['organ']:<18} {row['volume_ml']:>10.1f}  {status}")
    return 0


def _lungmask(args: argparse.Namespace) -> int:
    from PASTALib.anatomy import classical_lung_mask
    from PASTALib.io import read_ct, write_image
    from PASTALib.io.outputs import check_outputs
    from PASTALib.labels import Organ

    check_outputs([args.ct], files=[args.out])
    ct = read_ct(args.ct)
    masks = classical_lung_mask(ct)
    write_image(masks.pasta_label_map() if args.pasta else masks.label_map, args.out)
    volumes = {s: masks.organ_volume_mm3(Organ.LUNG, s) / 1e6 for s in ("right", "left")}
    print(f"wrote {args.out}: right lung {volumes['right']:.2f} L (label 1), left lung {volumes['left']:.2f} L (label 2)")
    return 0

"""``pasta synth``: lesion synthesis (PASTA-Gen) from the command line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from PASTALib.cli.args import positive_int, seed
from PASTALib.labels import LesionType
from PASTALib.progress import Progress, progress_line
from PASTALib.report.attributes import KEY_ALIASES, wordings

#: Files `pasta synth lesion` writes into --out.
LESION_FILES = ("ct.nii.gz", "label.nii.gz", "report.json", "report.txt", "spec.json")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("synth", help="synthesize lesions (PASTA-Gen)").add_subparsers(dest="command", metavar="COMMAND")
    p = group.add_parser(
        "lesion", help="insert one lesion into a CT; writes ct.nii.gz, label.nii.gz, report.json, report.txt",
        description="Insert one synthetic lesion. Unspecified attributes are sampled from the type's profile (reproducible from --seed).",
    )
    p.add_argument("--ct", required=True, help="CT image (NIfTI, NRRD, MHA or DICOM folder)")
    p.add_argument("--organs", required=True, help="organ label map on the CT grid")
    p.add_argument("--labels-kind", choices=("auto", "pasta", "totalsegmentator"), default="auto",
                   help="organ label values: PASTA 1-25 or TotalSegmentator 'total' ids (default auto: "
                        "TotalSegmentator when a value exceeds 25); a map that does not fit the kind is refused")
    p.add_argument("--resample-labels", action="store_true",
                   help="resample an organ map on another voxel grid onto the CT (default: refuse it)")
    p.add_argument("--type", required=True, help="lesion type: " + ", ".join(t.slug for t in LesionType))
    p.add_argument("--center", help="lesion centre x,y,z in LPS mm (default: sampled inside the organ)")
    p.add_argument("--size", help="extent x,y,z in mm (right-left, anterior-posterior, inferior-superior) or one diameter")
    short = {"shape": "round, irregular, wall, punctate", "density": "hypo, iso, hyper", "surface": "well, ill"}
    for key in ("shape", "density", "heterogeneity", "surface"):
        names = [f"--{key}"] + [f"--{alias}" for alias, canonical in KEY_ALIASES.items() if canonical == key]
        choices = " | ".join(repr(w) if " " in w else w for w in wordings(key))
        p.add_argument(*names, dest=key, help=choices + (f" (or {short[key]})" if key in short else ""))
    p.add_argument("--invasion", choices=("yes", "no"), help="grow into adjacent structures (malignant types only)")
    p.add_argument("--enhancement", help="phase of the CT: 'Plain CT' or 'Enhanced CT' (default: detected)")
    p.add_argument("--side", choices=("left", "right"), help="side for kidney/lung")
    p.add_argument("--impression", help="report impression; an organ it names is not used (healthy-organ check)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (same seed, same output)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_lesion)
    _add_generate_parser(group)


def _spec_from_args(args: argparse.Namespace):
    from PASTALib.synth import LesionSpec

    return LesionSpec(
        lesion_type=args.type, center_mm=args.center, size_mm=args.size, shape=args.shape, density=args.density,
        heterogeneity=args.heterogeneity, surface=args.surface,
        invasion=None if args.invasion is None else args.invasion == "yes",
        enhancement=args.enhancement, side=args.side, seed=args.seed,
    )


def _lesion(args: argparse.Namespace) -> int:
    from PASTALib.anatomy import OrganMasks
    from PASTALib.anatomy.labelmaps import check_label_grid, resolve_labels_kind
    from PASTALib.io import read_ct, read_label, write_image
    from PASTALib.io.files import write_text_atomic
    from PASTALib.io.outputs import check_outputs, folder_lock
    from PASTALib.synth.pipeline import synthesize_lesion, synthesize_lesion_in_masks

    spec = _spec_from_args(args)  # bad attributes fail before any image is read
    check_outputs([args.ct, args.organs], folders=[args.out], names=LESION_FILES)
    # Held from the first read to the last file: two runs into one --out would mix their files.
    with folder_lock(args.out, what="output folder", clean=False):
        ct = read_ct(args.ct)
        labels = read_label(args.organs)
        kind = resolve_labels_kind(labels, args.labels_kind, source=str(args.organs))
        labels = check_label_grid(labels, ct, source=str(args.organs), resample=args.resample_labels)
        if kind == "totalsegmentator":
            masks = OrganMasks.from_label_map(labels, reference=ct, source=str(args.organs))
            result = synthesize_lesion_in_masks(ct, masks, spec, impression=args.impression)
        else:
            result = synthesize_lesion(ct, labels, spec, impression=args.impression)

        # All four files go to a temporary sibling folder first, then move in: no partial output.
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
        try:
            write_image(result.ct, staging / "ct.nii.gz")
            write_image(result.labels, staging / "label.nii.gz")
            write_text_atomic(staging / "report.json", result.report.to_json() + "\n")
            write_text_atomic(staging / "report.txt", result.report.to_text() + "\n")
            write_text_atomic(staging / "spec.json", json.dumps(result.spec.to_dict(), indent=2) + "\n")
            for item in sorted(staging.iterdir()):
                os.replace(item, out / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(result.report.to_text())
        print(f"wrote {out}/ct.nii.gz, label.nii.gz, report.json, report.txt, spec.json ({result.timings['total']:.2f} s)")
        return 0


# ----------------------------------------------------------------------------- generate
def _add_generate_parser(group: argparse._SubParsersAction) -> None:
    g = group.add_parser(
        "generate", help="batch-generate a PASTA-Gen-30K style dataset (resumable, sharded, parallel)",
        description=(
            "Generate N synthetic lesions per type from template CTs into <out>/<Organ>/<Kind>/<index>/ "
            "(img.nii.gz 1 mm crop, label.nii.gz, total.nii.gz, type.json, report.json, case.json) plus "
            "manifest.csv. Rerun the same command to resume after a kill; --shard i/n splits the cases "
            "for a cluster job array. Templates: a folder of <name>/ct.nii.gz + <name>/organs.nii.gz "
            "(TotalSegmentator 'total' ids; organs_pasta.nii.gz for PASTA 1-10) [+ impression.txt], "
            "or a CSV with columns ct, organs [, name, labels_kind, impression]."
        ),
    )
    g.add_argument("--templates", required=True, help="template folder or CSV (see above)")
    g.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    g.add_argument("--per-type", type=positive_int, required=True, help="cases per lesion type")
    g.add_argument("--types", nargs="+", help="lesion types (default: all 15): " + ", ".join(t.slug for t in LesionType))
    g.add_argument("--workers", type=positive_int, default=1, help="worker processes (default 1)")
    g.add_argument("--shard", default="0/1", help="i/n: generate every n-th case starting at i (default 0/1)")
    g.add_argument("--seed", type=seed, default=0, help="global seed; case seeds derive from (seed, type, index)")
    g.add_argument("--crop-mm", type=positive_int, default=None, help="edge of the 1 mm output crop in mm (default 128; PASTA-Gen-30K: 280)")
    g.add_argument("--any-phase", action="store_true",
                   help="use templates of any contrast phase (default: the type's template phases, docs/labels-and-reports.md)")
    g.add_argument("--max-attempts", type=positive_int, default=None, help="tries per case with the next seed (default 5)")
    g.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <fraction> <message>' lines on stdout")
    g.add_argument("--no-bar", action="store_true", help="no tqdm progress bar on stderr")
    g.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    import sys

    from PASTALib.errors import SpecificationError
    from PASTALib.io.outputs import check_outputs
    from PASTALib.synth.generate import DEFAULT_CROP_MM, DEFAULT_MAX_ATTEMPTS, GenerateConfig, generate

    types = tuple(LesionType.parse(t) for item in (args.types or [t.slug for t in LesionType]) for t in item.split(",") if t)
    if not types:
        raise SpecificationError("--types is empty.")
    check_outputs([args.templates], folders=[args.out], names=["manifest.csv"])
    config = GenerateConfig(
        out=Path(args.out), per_type=args.per_type, types=types, seed=args.seed,
        crop_mm=args.crop_mm or DEFAULT_CROP_MM, any_phase=args.any_phase,
        max_attempts=args.max_attempts or DEFAULT_MAX_ATTEMPTS, workers=args.workers, shard=args.shard,
    )
    bar: Progress | None = None

    def progress(done: int, total: int, row: dict) -> None:
        nonlocal bar
        if bar is None:  # made at the first finished case: the total (left after a resume) is known then
            bar = Progress(total, desc="cases", unit="case", lines=args.progress_lines, bar=not args.no_bar,
                           initial=done - 1)
        text = f"{row['case_id']} {row['status']}"
        bar.update(done, f"{done}/{total} {text}", status=text)

    if args.progress_lines:
        progress_line(0.0, "indexing templates")
    try:
        summary = generate(args.templates, config, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    rate = summary.ok / summary.seconds * 3600 if summary.seconds > 0 else 0.0
    print(f"{summary.ok} generated, {summary.failed} failed, {summary.skipped} already done of {summary.total} "
          f"in {summary.seconds:.1f} s ({rate:.0f} cases/hour); manifest: {config.manifest_path}")
    for row in summary.rows:
        if row["status"] != "ok":
            print(f"failed {row['case_id']}: {row.get('error', '')}", file=sys.stderr)
    if summary.stopped:
        print("stopped: finished cases are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    failed = summary.failed + summary.skipped_failed
    if failed and not summary.ok and summary.skipped == summary.skipped_failed:
        from PASTALib.io.manifest import read_manifest
        from PASTALib.synth.generate import GenerationError

        first = next(row for row in [*summary.rows, *read_manifest(config.out)] if row["status"] != "ok")
        raise GenerationError(
            f"all {failed} cases failed (first: {first['case_id']}: {first.get('error', '')}). Fix the "
            "templates (a healthy organ of each type, the type's contrast phase: see docs/labels-and-reports.md), "
            "pass --any-phase, or choose types the templates support; then rerun.")
    if args.progress_lines:
        progress_line(1.0, "done")
    return 0

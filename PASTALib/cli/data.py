"""``pasta weights download|import`` and ``pasta data pasta-gen-30k``: getting weights and data.

    pasta weights download [--url URL] [--sha256 HEX] [--timeout 60] [--force] [--progress-lines]
    pasta weights import FILE [--progress-lines]
    pasta data pasta-gen-30k --types lung_tumor,liver_tumor --per-type N --out DIR [--revision REV]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from PASTALib.cli.args import positive_float, positive_int
from PASTALib.progress import Progress, progress_line


class ByteProgress:
    """The downloaders' ``(done, total)`` callback on a :class:`Progress` in bytes, made at the first call (when
    the length is known); ``span`` is the part of the command's PROGRESS range the transfer takes."""

    def __init__(self, label: str, lines: bool, bar: bool = True, *, span: tuple[float, float] = (0.0, 1.0)) -> None:
        self.label, self.lines, self.bar, self.span = label, lines, bar, span
        self.progress: Progress | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.progress is None:
            self.progress = Progress(total, desc=self.label, lines=self.lines, bar=self.bar, initial=done, unit="B",
                                     unit_scale=True, span=self.span, every=max(1, (total or 0) // 200))
        size = f" of {total / 1e6:.1f} MB" if total else ""
        self.progress.update(done, f"{self.label} {done / 1e6:.1f}{size}")

    def line(self, fraction: float, message: str) -> None:
        """A notice outside the transfer (checking, done): ``fraction`` of the whole command, not the span."""
        if self.lines:
            progress_line(fraction, message)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": str(result.path), "sha256": result.sha256, "action": result.action,
                          "layout": result.layout}, indent=2))
    else:
        print(result.summary())


def _download(args: argparse.Namespace) -> int:
    from PASTALib.model.install import download_weights

    progress = ByteProgress("PASTA_final.pth", args.progress_lines, span=(0.0, 0.95))
    progress.line(0.0, "checking the weights folder")
    try:
        result = download_weights(url=args.url, dest=args.dest, sha256=args.sha256, timeout=args.timeout,
                                  progress=progress, force=args.force)
    finally:
        progress.close()
    progress.line(1.0, f"{result.action}")
    _print(result, args.json)
    return 0


def _import(args: argparse.Namespace) -> int:
    from PASTALib.model.install import import_weights

    progress = ByteProgress("copy", args.progress_lines, span=(0.05, 0.95))
    progress.line(0.0, "checking the file's layout")
    try:
        result = import_weights(args.file, dest=args.dest, progress=progress)
    finally:
        progress.close()
    progress.line(1.0, result.action)
    _print(result, args.json)
    return 0


def add_weights_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``download`` and ``import`` to the ``pasta weights`` group's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dest", default=None, help="install here instead of $PASTA_WEIGHTS_DIR/PASTA_final.pth "
                                                     "(default ~/.pasta/weights/PASTA_final.pth)")
    common.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <fraction> <message>' lines on stdout")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    d = sub.add_parser("download", parents=[common], help="download PASTA_final.pth (authors' Google Drive file), check and record it",
                       description="Download PASTA_final.pth from the PASTA authors' Google Drive link (or --url / "
                                   "$PASTA_WEIGHTS_URL), resume a partial download, check every tensor against the "
                                   "published layout, install it atomically and record its SHA-256 beside it "
                                   "(PASTA_final.pth.sha256). Does nothing when it is installed already.")
    d.add_argument("--url", default=None, help="download from this URL (a mirror) instead of the authors' Drive file")
    d.add_argument("--sha256", default=None, help="expected SHA-256 of the file (e.g. of your institution's copy)")
    d.add_argument("--timeout", type=positive_float, default=60.0, help="seconds without data before giving up (default 60)")
    d.add_argument("--force", action="store_true", help="download again even when installed")
    d.set_defaults(func=_download)
    i = sub.add_parser("import", parents=[common], help="install a PASTA_final.pth brought in by hand (copy, check, record)",
                       description="Install a PASTA_final.pth downloaded by hand (no internet on this machine): the "
                                   "file's layout is checked, it is copied into the weights folder and its SHA-256 "
                                   "recorded. The source file is left in place.")
    i.add_argument("file", help="the downloaded PASTA_final.pth")
    i.set_defaults(func=_import)


def _pasta_gen(args: argparse.Namespace) -> int:
    from PASTALib.synth.pasta_gen_30k import download_pasta_gen

    progress = ByteProgress("PASTA-Gen-30K", args.progress_lines, bar=False)
    summary = download_pasta_gen(args.types, args.per_type, args.out, revision=args.revision,
                                 progress=lambda done, total, msg: progress.line(done / max(total, 1), msg))
    progress.line(1.0, f"{summary['cases']} cases in {args.out}")
    print(json.dumps(summary, indent=2) if args.json else f"{summary['cases']} cases ({summary['downloaded']} new) in {args.out}")
    return 0


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="command", metavar="COMMAND")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``data`` group, and ``download``/``import`` in the ``weights`` group (created here unless a
    group registered earlier in GROUPS, PASTALib.cli.weights with ``info``, made it)."""
    weights = subparsers.choices.get("weights") or subparsers.add_parser(
        "weights", help="PASTA weights: download, import", description="Install and check the PASTA weights.")
    add_weights_commands(_subcommands(weights))
    data = subparsers.add_parser("data", help="public data sets: download a PASTA-Gen-30K subset",
                                 description="Download public data sets in the layout this toolkit writes.")
    dsub = data.add_subparsers(dest="command", metavar="COMMAND")
    g = dsub.add_parser("pasta-gen-30k", help="download a subset of PASTA-Gen-30K (Hugging Face, MIT) as `pasta synth generate` lays it out",
                        description="Download N cases per lesion type of the published PASTA-Gen-30K "
                                    "(huggingface.co/datasets/LWHYC/PASTA-Gen-30K) into DIR laid out as "
                                    "`pasta synth generate` writes it (<Organ>/<Kind>/<index>/img.nii.gz, "
                                    "label.nii.gz, total.nii.gz, type.json + manifest.csv). Re-running resumes.")
    g.add_argument("--types", required=True, help="comma-separated lesion types, e.g. lung_tumor,liver_tumor")
    g.add_argument("--per-type", type=positive_int, required=True, help="cases per type (the first N by case number)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--revision", default=None, help="dataset revision (commit) to pin; default the newest")
    g.add_argument("--progress-lines", action="store_true", help="print 'PROGRESS <fraction> <message>' lines on stdout")
    g.add_argument("--json", action="store_true", help="print a JSON summary")
    g.set_defaults(func=_pasta_gen)

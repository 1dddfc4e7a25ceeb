"""Entry point of the ``pasta`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from PASTALib import __version__
from PASTALib.errors import PastaError

#: Subcommand groups: module under PASTALib.cli with ``add_parser(subparsers)``.
GROUPS = ("io", "geometry", "anatomy", "synth", "segment", "train", "finetune", "classify", "refine", "embed", "evaluate", "review", "demo", "weights", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pasta",
        description="PASTA pan-tumor CT toolkit: anatomy, lesion synthesis, structured reports.",
    )
    parser.add_argument("--version", action="version", version=f"PASTALib {__version__}")
    subparsers = parser.add_subparsers(dest="group", metavar="GROUP")
    for group in GROUPS:
        try:
            module = importlib.import_module(f"PASTALib.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name != f"PASTALib.cli.{group}":
                raise
            continue  # group not built yet
        module.add_parser(subparsers)
    parser.group_parsers = dict(subparsers.choices)  # for help on a bare group
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # No group, or a group without its subcommand: show the matching help and fail.
        parser.group_parsers.get(args.group, parser).print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except PastaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

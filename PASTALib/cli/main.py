"""Entry point of the ``pasta`` command."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence

from PASTALib import __version__
from PASTALib.errors import PastaError, printable

#: Subcommand groups: module under PASTALib.cli with ``add_parser(subparsers)``.
GROUPS = ("io", "geometry", "anatomy", "synth", "segment", "train", "finetune", "classify", "refine", "embed", "evaluate", "review", "demo", "weights", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pasta",
        description="PASTA pan-tumor CT toolkit: anatomy, lesion synthesis, structured reports.",
    )
    parser.add_argument("--version", action="version", version=f"PASTALib {__version__}")
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument("-v", "--verbose", action="store_true",
                         help="also print the library's notices on stderr (resumed runs, installed files...)")
    chatter.add_argument("-q", "--quiet", action="store_true",
                         help="no warnings on stderr, errors only; the output and PROGRESS lines are unchanged")
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


#: errno -> (what failed, how to fix it) for :func:`os_error_message`.
_OS_ERROR_HINTS = {
    errno.EACCES: ("permission denied on", "check the path's permissions or choose another location"),
    errno.EPERM: ("operation not permitted on", "check the path's permissions or choose another location"),
    errno.EROFS: ("read-only file system at", "choose an output location on a writable disk"),
    errno.ENOSPC: ("no space left on the device writing", "free disk space or choose another output location"),
    errno.EDQUOT: ("disk quota exceeded writing", "free space in your quota or choose another output location"),
    errno.EISDIR: ("a folder where a file is needed:", "pass a file path, not a folder"),
    errno.ENOTDIR: ("not a folder:", "a part of the path is a file; check the path"),
    errno.ENOENT: ("not found:", "check the path"),
    errno.EEXIST: ("already exists:", "remove it or choose another path"),
    errno.ENAMETOOLONG: ("file name too long:", "choose a shorter path"),
    errno.EMFILE: ("too many open files at", "raise the open-file limit (ulimit -n)"),
}


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, the system's reason and the fix."""
    what, fix = _OS_ERROR_HINTS.get(exc.errno, ("cannot access", "check the path and the disk"))
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{what} {paths or '(no path)'}: {reason}. Fix: {fix}."


class _PrintableStdout:
    """The command's stdout: control characters in what it prints are escaped (paths, case and reader
    names are user text; an escape sequence in one must not rewrite the terminal)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable(text))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _PrintableFormatter(logging.Formatter):
    """Log records as their plain message, control characters escaped like the command's output."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


@contextlib.contextmanager
def _log_to_stderr(level: int = logging.WARNING) -> Iterator[None]:
    """PASTALib's log records on stderr, one plain line each, while the command runs.

    The library only creates module loggers; this is the one place a handler is attached. It is removed
    afterwards, so an in-process caller (a test, a notebook) running several commands gets no duplicates.
    """
    logger = logging.getLogger("PASTALib")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # No group, or a group without its subcommand: show the matching help and fail.
        parser.group_parsers.get(args.group, parser).print_help(sys.stderr)
        return 2
    stdout, sys.stdout = sys.stdout, _PrintableStdout(sys.stdout)
    try:
        with _log_to_stderr(logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING):
            return int(args.func(args) or 0)
    except PastaError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # last resort: a file system refusal the command did not anticipate
        print(f"error: {printable(os_error_message(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())

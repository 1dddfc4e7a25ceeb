"""Progress of long runs: ``PROGRESS <fraction> <message>`` lines on stdout, which the Slicer modules
parse (PASTASlicerLib.jobs.parse_progress), and tqdm bars on stderr for the terminal.

The lines are a protocol, not logging: they stay on stdout, byte for byte, whatever the logging
configuration. :func:`progress_line` is the one place that writes them. Imports nothing heavy (no torch):
the CLI's download and synthesis commands use it too.
"""

from __future__ import annotations

import sys


def progress_line(value: float | str, text: str | None = None) -> None:
    """Print one ``PROGRESS <value> <text>`` line on stdout, flushed (the reader is another process).

    ``value`` is a fraction 0..1, written with four decimals, or a ready ``n/total`` count."""
    value = value if isinstance(value, str) else f"{value:.4f}"
    print(f"PROGRESS {value}" if text is None else f"PROGRESS {value} {text}", flush=True)


class Progress:
    """Position out of ``total`` steps, as a tqdm bar and throttled ``PROGRESS`` lines.

    A line is printed when the position crosses a multiple of ``every`` (so ``every=1`` prints each
    step, ``every=total // 200`` at most ~200 lines a run), when it reaches ``total``, or when forced.
    Positions may jump (a resumed run, a finished fold skipped): :meth:`update` takes the absolute
    position, :meth:`advance` a step count.
    """

    def __init__(self, total: int | None, *, desc: str, lines: bool, bar: bool = True, initial: int = 0,
                 every: int = 1, unit: str = "it", unit_scale: bool = False, span: tuple[float, float] = (0.0, 1.0),
                 bar_format: str | None = None) -> None:
        # total None: unknown (a download without a length): a counter bar, and lines only from line()
        self.total = None if total is None else max(int(total), 1)
        self.lines, self.every, self.span = lines, max(1, int(every)), span
        self.position = self._clamp(initial)
        self._last_line = self.position
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.position, desc=desc, unit=unit, unit_scale=unit_scale,
                             bar_format=bar_format, file=sys.stderr, dynamic_ncols=True, disable=None)

    def _clamp(self, position: int) -> int:
        position = max(int(position), 0)
        return position if self.total is None else min(position, self.total)

    def update(self, position: int, message: str, *, force: bool = False, status: str | None = None,
               **postfix: float) -> None:
        """Move to ``position``; ``status`` (a short text) and ``postfix`` values (loss...) go to the bar."""
        position = self._clamp(position)
        if self._bar is not None:
            self._bar.update(position - self.position)
            if status is not None:
                self._bar.set_postfix_str(status[:60], refresh=False)
            elif postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        crossed = position // self.every > self._last_line // self.every
        self.position = position
        if self.total is not None and (force or crossed or position == self.total):
            self._last_line = position
            self.line(position / self.total, message)

    def advance(self, steps: int, message: str, *, force: bool = False, **postfix: float) -> None:
        self.update(self.position + steps, message, force=force, **postfix)

    def line(self, fraction: float, text: str) -> None:
        """One ``PROGRESS`` line now (start / done notices), whatever the throttle; ``fraction`` (0..1 of this
        run) is mapped into ``span`` (the part of the whole job this run is)."""
        if self.lines:
            lo, hi = self.span
            progress_line(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

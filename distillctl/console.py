"""Terminal output: one rich console on stderr, progress bars that stay quiet off a TTY."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

_QUIET = False
#: off a terminal, progress is a plain line at most this often (seconds): `submit --wait` shows a job's newest
#: log line, so a long embed or distill job says how far it is instead of only its elapsed time
LINE_EVERY_S = 15.0


def set_quiet(quiet: bool) -> None:
    """Set by the CLI's ``--quiet``; library callers pass ``quiet=`` explicitly instead."""
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET or os.environ.get("DISTILLCTL_QUIET") == "1"


def err_console():
    """A rich console on stderr (stdout stays clean for ``--json``)."""
    return Console(stderr=True, highlight=False)


def info(message: str) -> None:
    """A status line on stderr, unless quiet."""
    if not is_quiet():
        err_console().print(message)


@contextlib.contextmanager
def progress(description: str, total: int | None, *, quiet: bool | None = None, unit: str = "it",
             fields: dict | None = None) -> Iterator["Bar"]:
    """A rich progress bar on a terminal; off a terminal (a log file) a plain line every
    :data:`LINE_EVERY_S` seconds (:class:`LineBar`); nothing when quiet.

    ``bar.advance(n, **fields)`` moves it on and updates the extra fields shown after the rate
    (e.g. ``loss=0.31``).
    """
    quiet = is_quiet() if quiet is None else quiet
    if quiet:
        yield Bar(None, None)
        return
    if not sys.stderr.isatty():  # a log file (a job of `submit`): a plain line every LINE_EVERY_S seconds
        bar = LineBar(description, total, unit)
        try:
            yield bar
        finally:
            bar.close()
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[progress.data.speed]{task.fields[rate]}"),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[extra]}")]
    with Progress(*columns, console=err_console(), transient=False) as prog:
        task = prog.add_task(description, total=total, extra="", rate="")
        yield Bar(prog, task, unit)


class Bar:
    def __init__(self, prog, task, unit: str = "it"):
        self._prog, self._task, self._unit = prog, task, unit

    def advance(self, n: float = 1, **fields) -> None:
        if self._prog is None:
            return
        extra = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._prog.advance(self._task, n)
        speed = self._prog.tasks[self._task].speed
        rate = f"{speed:,.1f} {self._unit}/s" if speed else ""
        self._prog.update(self._task, extra=extra, rate=rate)


class LineBar(Bar):
    """Progress as plain lines for a log file: ``embed: 2,400/27,122 sentences (9 %), 31.2 sentences/s, 77 s``,
    at most every :data:`LINE_EVERY_S` seconds, and a last line at the end when any was written and the count
    moved since (short tasks write none)."""

    def __init__(self, description: str, total: int | None, unit: str = "it", clock=None):
        super().__init__(None, None, unit)
        self._clock = clock or time.monotonic
        self._description, self._total = description, total
        self._done, self._fields, self._lines, self._done_written = 0.0, {}, 0, 0.0
        self._t0 = self._last = self._clock()

    def advance(self, n: float = 1, **fields) -> None:
        self._done += n
        self._fields.update(fields)
        if self._clock() - self._last >= LINE_EVERY_S:
            self._write()

    def close(self) -> None:
        if self._lines and self._done != self._done_written:  # not the same line twice
            self._write()

    def line(self) -> str:
        elapsed = self._clock() - self._t0
        done = f"{self._done:,.0f}" + (f"/{self._total:,} {self._unit}" if self._total else f" {self._unit}")
        pct = f" ({100 * self._done / self._total:.0f} %)" if self._total else ""
        rate = f", {self._done / elapsed:,.1f} {self._unit}/s" if elapsed > 0 else ""
        extra = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}" for k, v in self._fields.items())
        return f"{self._description}: {done}{pct}{rate}{extra}, {elapsed:.0f} s"

    def _write(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)
        self._last, self._lines, self._done_written = self._clock(), self._lines + 1, self._done

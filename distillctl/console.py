"""Terminal output: one rich console on stderr, progress bars that stay quiet off a TTY."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Set by the CLI's ``--quiet``; library callers pass ``quiet=`` explicitly instead."""
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET or os.environ.get("DISTILLCTL_QUIET") == "1"


def err_console():
    """A rich console on stderr (stdout stays clean for ``--json``)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def info(message: str) -> None:
    """A status line on stderr, unless quiet."""
    if not is_quiet():
        err_console().print(message)


@contextlib.contextmanager
def progress(description: str, total: int | None, *, quiet: bool | None = None, unit: str = "it",
             fields: dict | None = None) -> Iterator["Bar"]:
    """A rich progress bar, or a no-op when quiet or stderr is not a TTY.

    ``bar.advance(n, **fields)`` moves it on and updates the extra fields shown after the rate
    (e.g. ``loss=0.31``).
    """
    quiet = is_quiet() if quiet is None else quiet
    if quiet or not sys.stderr.isatty():
        yield Bar(None, None)
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

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

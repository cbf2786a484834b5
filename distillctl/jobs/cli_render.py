"""How ``submit``, ``status`` and ``cancel`` look on a terminal: Rich tables and the live view of ``--wait``.

The library (:mod:`distillctl.jobs.submit`) returns :class:`~distillctl.jobs.submission.Submission` objects
and never draws a table; the CLI renders them with the functions here.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from distillctl.console import err_console, is_quiet
from distillctl.jobs.submission import Submission
from distillctl.scheduling import FINAL, format_seconds

_STATE_STYLE = {"pending": "dim", "running": "bold cyan", "done": "green", "failed": "bold red", "cancelled": "yellow"}
#: ``status`` table colours
_STATUS_STYLE = {"running": "cyan", "done": "green", "failed": "red", "cancelled": "yellow", "pending": "dim"}


def progress_table(sub: Submission):
    """The live table of ``--wait``: redrawn every poll, so the only log it reads is the last few KB of
    each running job's log, for its latest line (a long job shows how far it is, not just that it runs)."""
    counts = sub.counts()
    done = sum(counts.get(s, 0) for s in FINAL)
    title = (f"{sub.path}  {done}/{len(sub.handles)} finished  "
             + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    t = Table(title=escape(title), title_justify="left", show_edge=False, box=None)
    for col in ("job", "state", "elapsed", "scheduler id"):
        t.add_column(col)
    t.add_column("latest output", overflow="ellipsis", no_wrap=True)
    for row in sub.job_rows(log_tails=False):  # redrawn every poll: no full log reading
        if row["state"] in ("pending", "done") and len(sub.handles) > 30:
            continue  # big sweeps: only what moves
        style = _STATE_STYLE.get(row["state"], "")
        handle = sub.handles.get(row["id"])
        latest = sub.latest_line(handle) if handle is not None and row["state"] == "running" else ""
        t.add_row(escape(row["id"]), f"[{style}]{row['state']}[/]", format_seconds(row["elapsed"]),
                  escape(str(row["scheduler_id"] or "–")), escape(latest))
    return t


class LiveView:
    """A :class:`~distillctl.jobs.follow.FollowView` that redraws :func:`progress_table` on stderr."""

    def __init__(self):
        self.live = None

    def start(self, sub: Submission) -> None:
        self.live = Live(progress_table(sub), console=err_console(), refresh_per_second=4, transient=False)
        self.live.start()

    def update(self, sub: Submission) -> None:
        if self.live is not None:
            self.live.update(progress_table(sub))

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def follow_view():
    """The view for ``--wait``: a live table on a terminal, else None (the library's line per state change)."""

    return LiveView() if not is_quiet() and sys.stderr.isatty() else None


def print_status(sub: Submission) -> None:
    """``status`` / ``cancel``: a table of the jobs, the log tail of failed ones, the finished reports."""
    console = Console(highlight=False)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(sub.counts().items()))
    table = Table(title=escape(f"{sub.path}: {sub.state} ({counts})"), title_justify="left")
    for col in ("job", "state", "scheduler id", "elapsed", "exit", "note"):
        table.add_column(col)
    rows = sub.job_rows()
    for r in rows:
        table.add_row(escape(r["id"]), f"[{_STATUS_STYLE.get(r['state'], '')}]{r['state']}[/]",
                      escape(str(r["scheduler_id"] or "–")), format_seconds(r["elapsed"]),
                      "" if r["exit_code"] is None else str(r["exit_code"]),
                      escape(r["reason"]) if r["state"] != "done" else "")
    console.print(table)
    for r in rows:
        if r.get("log_tail"):
            console.print(f"[red]--- {escape(r['id'])}[/]: last lines of {escape(r['log'])}")
            console.print(r["log_tail"], markup=False)
    for report in sub.reports():
        console.print(f"report: {report}", markup=False)
    if any(r["state"] == "failed" for r in rows):
        console.print(f"retry with `distillctl submit --retry-failed {sub.path}`", markup=False)


def print_sweep_summary(sub: Submission) -> None:
    """``submit --wait`` of a sweep: test accuracy of every (point, ipc), distilled vs random."""
    def pm(x):
        return "–" if not x else f"{x['mean'] * 100:.2f} ± {x['std'] * 100:.2f}"

    rows = sub.summary()
    if not rows:
        return
    table = Table(title="test accuracy (%) by sweep point", title_justify="left")
    for col in ("point", "ipc", "distilled", "random", "gain (pp)", "full data"):
        table.add_column(col, justify="left" if col == "point" else "right")
    for r in rows:
        gain = r["gain_over_random"]
        table.add_row(escape(r["point"]), str(r["ipc"]), pm(r["distilled"]), pm(r["random"]),
                      "–" if gain is None else f"{gain * 100:+.2f}",
                      "–" if r["full"] is None else f"{r['full'] * 100:.2f}")
    Console().print(table)

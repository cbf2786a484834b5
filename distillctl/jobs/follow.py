"""Following a submission: poll its scheduler until every job is final (``submit --wait``).

What the user sees while it polls is a *view*: any object with ``start(sub)``, ``update(sub)`` (after
every poll) and ``stop()``. The library's default view prints one line on stderr each time a job
changes state; the CLI passes a live table instead when stderr is a terminal
(:mod:`distillctl.jobs.cli_render`).
"""

from __future__ import annotations

import time
from typing import Protocol

from distillctl.console import err_console, is_quiet
from distillctl.errors import RunCancelled, RunError
from distillctl.jobs.submission import Submission
from distillctl.scheduling import FINAL, format_seconds

#: seconds between two status polls when a scheduler's ``poll_seconds`` is unset (0 or None)
DEFAULT_POLL_SECONDS = 5.0


class FollowView(Protocol):
    """What :func:`follow` shows while it polls."""

    def start(self, sub: Submission) -> None: ...

    def update(self, sub: Submission) -> None: ...

    def stop(self) -> None: ...


#: seconds between two "still running" lines of :class:`LineView` while no job changes state
HEARTBEAT_SECONDS = 30.0


class LineView:
    """One line on stderr each time a job leaves ``pending``: ``[3/9] done      embed 12s``; and while
    jobs run with no change, every ``heartbeat`` seconds one line per running job with its elapsed time
    and the latest line of its log: ``[0/9] running   embed 1m15s: embedding train 12000/120000``
    (a long first job would otherwise look like a hang). ``clock``: the time source (tests)."""

    def __init__(self, heartbeat: float = HEARTBEAT_SECONDS, clock=time.time):
        self.heartbeat, self.clock = heartbeat, clock

    def start(self, sub: Submission) -> None:
        self.seen = {k: h.state for k, h in sub.handles.items()}
        self.last_said = self.clock()

    def update(self, sub: Submission) -> None:
        total = len(sub.handles)
        done = sum(x.state in FINAL for x in sub.handles.values())
        now = self.clock()
        for jid, h in sub.handles.items():
            if self.seen.get(jid) != h.state:
                self.seen[jid] = h.state
                if h.state == "pending":
                    continue
                el = format_seconds(h.elapsed()) if h.final else ""
                extra = f" ({h.reason})" if h.reason and h.state != "done" else ""
                say(f"[{done}/{total}] {h.state:<9} {jid} {el}{extra}".rstrip())
                self.last_said = now
        if now - self.last_said >= self.heartbeat:
            for jid, h in sub.handles.items():
                if h.state == "running":
                    latest = sub.latest_line(h)
                    say(f"[{done}/{total}] running   {jid} {format_seconds(h.elapsed(now))}"
                        + (f": {latest}" if latest else ""))
            self.last_said = now

    def stop(self) -> None:
        pass


class NoView:
    """Shows nothing (``quiet``)."""

    def start(self, sub: Submission) -> None:
        pass

    def update(self, sub: Submission) -> None:
        pass

    def stop(self) -> None:
        pass


def quiet_of(quiet: bool | None) -> bool:
    """``quiet``, or the process-wide setting (``--quiet``, ``DISTILLCTL_QUIET``) when it is None."""

    return is_quiet() if quiet is None else quiet


def say(msg: str) -> None:
    """A plain line on stderr (no markup)."""

    err_console().print(msg, highlight=False, markup=False)


def poll_seconds(scheduler) -> float:
    """How often to ask ``scheduler`` for job states: its ``poll_seconds`` (Scheduler default: 5 s)."""
    return float(scheduler.poll_seconds or DEFAULT_POLL_SECONDS)


def follow(sub: Submission, *, quiet: bool | None = None, poll: float | None = None,
           timeout: float | None = None, view: FollowView | None = None) -> Submission:
    """Poll until every job is final, showing progress; :class:`RunError` when a job failed,
    :class:`RunCancelled` (a RunError; CLI exit 3) when none failed but some were cancelled.

    ``view``: what to show while polling (default: a line per state change; nothing when quiet).
    ``poll``: seconds between polls (default: the scheduler's). ``timeout``: give up after that long.
    """
    if quiet_of(quiet):
        view = NoView()
    elif view is None:
        view = LineView()
    poll = poll or poll_seconds(sub.scheduler)
    t0 = time.time()
    stopped = False
    view.start(sub)
    try:
        while True:
            sub.refresh()
            view.update(sub)
            if all(h.final for h in sub.handles.values()):
                break
            if timeout is not None and time.time() - t0 > timeout:
                raise RunError(f"{sub.path}: jobs still running after {timeout:.0f} s")
            time.sleep(poll)
    except KeyboardInterrupt:
        view.stop()
        stopped = True
        say(f"stopped following; the jobs go on. `distillctl status {sub.path}` shows them, "
            f"`distillctl cancel {sub.path}` stops them")
        raise
    finally:
        if not stopped:
            view.stop()
    failed = [jid for jid, h in sub.handles.items() if h.state == "failed"]
    if failed:
        raise RunError(failure_message(sub, failed, time.time() - t0))
    cancelled = [jid for jid, h in sub.handles.items() if h.state == "cancelled"]
    if cancelled:  # e.g. `distillctl cancel` from another shell: the results are incomplete, not a success
        raise RunCancelled(f"{len(cancelled)} of {len(sub.handles)} job(s) cancelled before they finished "
                           f"({', '.join(cancelled[:3])}{', ...' if len(cancelled) > 3 else ''}); re-submit them "
                           f"with `distillctl submit --retry-failed {sub.path}`")
    return sub


def failure_message(sub: Submission, failed: list[str], seconds: float) -> str:
    """What ``--wait`` says when jobs failed: the first three, each with the tail of its log."""
    lines = []
    for jid in failed[:3]:
        lines.append(f"{jid}: {sub.handles[jid].reason or 'failed'}; log {sub.handles[jid].log}")
        lines += ["    " + x for x in sub.log_tail(sub.handles[jid], 5).splitlines()]
    skipped = sum(h.state == "cancelled" for h in sub.handles.values())
    return (f"{len(failed)} job(s) failed, {skipped} skipped, in {format_seconds(seconds)}:\n"
            + "\n".join(lines) + f"\nretry them with `distillctl submit --retry-failed {sub.path}`")

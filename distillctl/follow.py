"""Following a submission: poll its scheduler until every job is final (``submit --wait``).

What the user sees while it polls is a *view*: any object with ``start(sub)``, ``update(sub)`` (after
every poll) and ``stop()``. The library's default view prints one line on stderr each time a job
changes state; the CLI passes a live table instead when stderr is a terminal
(:mod:`distillctl.cli_render`).
"""

from __future__ import annotations

import time
from typing import Protocol

from distillctl.errors import RunError
from distillctl.scheduling import FINAL, format_seconds
from distillctl.submission import Submission

#: seconds between two status polls when a scheduler's ``poll_seconds`` is unset (0 or None)
DEFAULT_POLL_SECONDS = 5.0


class FollowView(Protocol):
    """What :func:`follow` shows while it polls."""

    def start(self, sub: Submission) -> None: ...

    def update(self, sub: Submission) -> None: ...

    def stop(self) -> None: ...


class LineView:
    """One line on stderr each time a job leaves ``pending``: ``[3/9] done      embed 12 s``."""

    def start(self, sub: Submission) -> None:
        self.seen = {k: h.state for k, h in sub.handles.items()}

    def update(self, sub: Submission) -> None:
        total = len(sub.handles)
        for jid, h in sub.handles.items():
            if self.seen.get(jid) != h.state:
                self.seen[jid] = h.state
                if h.state == "pending":
                    continue
                done = sum(x.state in FINAL for x in sub.handles.values())
                el = format_seconds(h.elapsed()) if h.final else ""
                extra = f" ({h.reason})" if h.reason and h.state != "done" else ""
                say(f"[{done}/{total}] {h.state:<9} {jid} {el}{extra}".rstrip())

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
    from distillctl.console import is_quiet

    return is_quiet() if quiet is None else quiet


def say(msg: str) -> None:
    """A plain line on stderr (no markup)."""
    from distillctl.console import err_console

    err_console().print(msg, highlight=False, markup=False)


def poll_seconds(scheduler) -> float:
    """How often to ask ``scheduler`` for job states: its ``poll_seconds`` (Scheduler default: 5 s)."""
    return float(scheduler.poll_seconds or DEFAULT_POLL_SECONDS)


def follow(sub: Submission, *, quiet: bool | None = None, poll: float | None = None,
           timeout: float | None = None, view: FollowView | None = None) -> Submission:
    """Poll until every job is final, showing progress; :class:`RunError` when a job failed.

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

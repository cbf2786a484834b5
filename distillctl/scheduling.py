"""The scheduler surface: jobs (command lines with dependencies), handles, and the Scheduler base class.

A :class:`Job` is one ``distillctl ...`` command line (any argv, in fact) run in its own directory,
with its log file, the ids of the jobs it waits for and the resources it asks for. A scheduler plugin
(``local``, ``slurm``, or a third party's; a subclass of :class:`Scheduler`) turns a list of jobs into
:class:`JobHandle` objects and answers ``status`` / ``cancel`` / ``logs`` for them later, from another
process if need be: a handle is plain data (``to_dict`` / ``from_dict``) and carries the scheduler's
state folder.

Dependency rule shared by every scheduler: a job runs only when every job it depends on is ``done``;
when one of them fails or is cancelled the job is ``cancelled`` (skipped) and never runs. A dependency
on a job that is *not* in the submitted list counts as satisfied (it finished in an earlier attempt:
this is how ``submit --retry-failed`` re-runs only part of a graph).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from distillctl.errors import UserError

#: every state a job can be in; the last three are final
STATES = ("pending", "running", "done", "failed", "cancelled")
FINAL = frozenset({"done", "failed", "cancelled"})


@dataclass
class Job:
    """One command line of a job graph.

    ``id`` is unique within a submission (``distill-ipc5``, ``window=40/eval-ipc1``) and is what
    ``depends_on`` refers to. ``group`` names jobs of the same shape (the same stage of different sweep
    points): a scheduler may send a group out as one job array. ``resources`` are scheduler hints
    (``cpus``, ``gpus``, ``mem``, ``time`` in minutes) that override the scheduler's defaults.
    ``requeue`` marks a job that can be stopped at any moment and re-run with the same command line,
    continuing from its last checkpoint (``distillctl distill --resume``).
    """

    id: str
    argv: list[str]
    cwd: str
    log: str
    name: str = ""
    kind: str = ""
    group: str = ""
    depends_on: list[str] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    requeue: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def command_line(self) -> str:
        """The argv as one shell-quoted line (what a user types to re-run the job by hand)."""
        return shlex.join(self.argv)


@dataclass
class JobHandle:
    """What a scheduler knows about one submitted job; plain data, stored in ``submission.json``.

    ``scheduler_id`` is the scheduler's own name for the job (a SLURM job id such as ``1234_2``, or
    ``<runner pid>:<job id>`` for the local scheduler). ``folder`` is the scheduler's state folder, so a
    new process can ask for the status with nothing but the handle. Times are UNIX seconds.
    """

    job_id: str
    scheduler: str
    scheduler_id: str | None = None
    state: str = "pending"
    exit_code: int | None = None
    log: str | None = None
    folder: str | None = None
    started: float | None = None
    ended: float | None = None
    reason: str = ""
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds the job has run (so far, while running); None before it started."""
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (now or time.time())
        return max(0.0, end - self.started)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobHandle":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Scheduler:
    """Base class of scheduler plugins (``factory(options) -> Scheduler``; a class taking its options is
    its own factory).

    Required: :meth:`submit`, :meth:`status`, :meth:`cancel`. Optional, with working defaults here:
    :attr:`name`, :attr:`options`, :attr:`poll_seconds`, :meth:`preflight`, :meth:`describe`, :meth:`logs`,
    :meth:`log_files`.
    Raise :class:`distillctl.errors.UserError` for what the user must fix (a missing client command, an
    unknown partition): the command exits 2 with that one line.
    """

    #: the name used in messages ("submitted 5 jobs to the local scheduler"); defaults to the plugin name
    name: str = "scheduler"
    #: the validated options (a PluginOptions model) the scheduler was built with; stored with a submission
    options: Any = None
    #: seconds between two status polls while ``submit --wait`` follows the jobs
    poll_seconds: float = 5.0

    def __init__(self, options: Any = None):
        self.options = options

    def submit(self, jobs: Sequence[Job], folder: Path) -> list[JobHandle]:
        """Start the jobs (in dependency order); one handle per job, in the order given.

        ``folder`` is where the scheduler keeps its own files (state, batch scripts); it exists.
        """
        raise NotImplementedError(f"scheduler {self.name!r} does not implement submit()")

    def status(self, handles: Sequence[JobHandle]) -> list[JobHandle]:
        """Fresh handles (state, exit code, times) for the given ones, in the same order."""
        raise NotImplementedError(f"scheduler {self.name!r} does not implement status()")

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        """Stop the jobs that have not finished; their dependents are cancelled too."""
        raise NotImplementedError(f"scheduler {self.name!r} does not implement cancel()")

    def preflight(self) -> None:
        """Optional: check that jobs can be submitted at all (e.g. the client commands exist), before
        ``submit`` writes anything; raise :class:`UserError` when not. Default: nothing to check."""

    def describe(self, jobs: Sequence[Job], folder: Path) -> str:
        """Optional: what ``submit`` would do, as text, without doing it (``--dry-run``).
        Default: each job in dependency order with what it waits for and its command line."""
        lines = [f"{self.name} scheduler: {len(jobs)} jobs, state in {folder}"]
        for job in topological_order(jobs):
            after = f" (after {', '.join(job.depends_on)})" if job.depends_on else ""
            lines.append(f"  {job.id}{after}: {job.command_line()}")
        return "\n".join(lines) + "\n"

    def log_files(self, handle: JobHandle) -> list[str]:
        """Optional: the files holding the job's output, most useful first (a failed job's summary shows
        the tail of the first one that has text). Default: ``[handle.log]`` when it is set."""
        return [handle.log] if handle.log else []

    def logs(self, handle: JobHandle) -> str:
        """Optional: the job's log (stdout and stderr) so far; '' when there is none yet.
        Default: the text of the :meth:`log_files`, one after the other."""
        return "".join(read_log(path) for path in self.log_files(handle))


# -- graph helpers ---------------------------------------------------------------------------------

def check_graph(jobs: Sequence[Job]) -> None:
    """Unique ids, and no cycles among jobs of the list (a :class:`UserError` otherwise).

    Dependencies on ids outside the list are allowed: they count as satisfied (see module doc).
    """
    ids = [j.id for j in jobs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UserError(f"job graph: duplicate job ids {', '.join(dupes)}")
    topological_order(jobs)


def topological_order(jobs: Sequence[Job]) -> list[Job]:
    """Jobs ordered so every job comes after the jobs it depends on (stable: keeps the given order
    among independent jobs). A cycle is a :class:`UserError` naming the jobs in it."""
    by_id = {j.id: j for j in jobs}
    order: list[Job] = []
    mark: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(job: Job, path: list[str]) -> None:
        m = mark.get(job.id)
        if m == 2:
            return
        if m == 1:
            cycle = path[path.index(job.id):] + [job.id]
            raise UserError(f"job graph: dependency cycle {' -> '.join(cycle)}")
        mark[job.id] = 1
        for dep in job.depends_on:
            if dep in by_id:
                visit(by_id[dep], path + [job.id])
        mark[job.id] = 2
        order.append(job)

    for j in jobs:
        visit(j, [])
    return order


def downstream(jobs: Sequence[Job], roots: Iterable[str]) -> set[str]:
    """``roots`` and every job that depends on one of them, directly or not."""
    children: dict[str, list[str]] = {}
    for j in jobs:
        for dep in j.depends_on:
            children.setdefault(dep, []).append(j.id)
    out: set[str] = set()
    stack = list(roots)
    while stack:
        jid = stack.pop()
        if jid in out:
            continue
        out.add(jid)
        stack.extend(children.get(jid, ()))
    return out


def overall_state(handles: Sequence[JobHandle]) -> str:
    """One word for a submission: running > pending > failed > cancelled > done."""
    states = {h.state for h in handles}
    for s in ("running", "pending", "failed", "cancelled"):
        if s in states:
            return s
    return "done"


def tail(path: str | Path | None, lines: int = 20, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    if not path:
        return ""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def read_log(path: str | Path | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def safe_name(job_id: str) -> str:
    """A file-name-safe form of a job id (``window=40/eval-ipc1`` -> ``window=40__eval-ipc1``)."""
    out = "".join(c if (c.isalnum() or c in "._=-+") else "_" for c in job_id.replace("/", "__"))
    return out.lstrip(".") or "job"


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether process ``pid`` exists (not a zombie) and, on Linux, its command line contains ``marker``.

    The marker guards against a recycled pid: a runner's state file path, a job's first argument.
    """
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
            if marker is not None:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                return marker in cmdline
            return True
        except (OSError, IndexError):
            return False
    if os.name == "posix" and not Path("/proc/self").exists():  # macOS and friends: no /proc
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return False


def format_seconds(seconds: float | None) -> str:
    """``73.2`` -> ``1m13s``; ``None`` -> ``–``."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"

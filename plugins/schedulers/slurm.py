"""The ``slurm`` scheduler: a job graph as generated ``sbatch`` scripts on a real SLURM cluster.

Why scripts and not submitit: every job is already a ``distillctl`` command line, so there is no
Python callable to pickle; a plain script is what a cluster user reads, re-submits by hand and
debugs, and it needs nothing of the submitting process (submitit re-imports pickled functions in the
same environment). Arrays with per-task ``aftercorr`` dependencies, ``--kill-on-invalid-dep`` and
a requeue trap are one line each in a script, and the scripts are stable text, tested as golden
files. ``--dry-run`` prints exactly what would be submitted.

How a graph goes out:

- Jobs of the same group (one stage of every sweep point) and the same resources become one job
  array, ``array_parallelism`` tasks at a time. Task *i* of an array that only needs task *i* of
  another array waits with ``aftercorr``; a dependency every task shares is an ``afterok``. A group
  whose dependencies fit neither form is sent as single jobs with ``afterok`` on individual tasks.
- ``--kill-on-invalid-dep=yes``: the dependents of a failed job are cancelled by SLURM, not left
  pending forever.
- Every job may be requeued (``--requeue``, e.g. after preemption) and re-runs the same command.
  Jobs marked ``requeue`` (distill stages) also get ``--signal=B:USR1@signal_seconds``: the script
  traps it, stops the command (its last checkpoint stays), and requeues itself; the command
  (``distillctl distill --resume RUN_DIR``) then continues from that checkpoint.
- The script appends the command's output to the job's log and writes ``state/<job>.start`` and
  ``state/<job>.exit`` (exit code, time) next to the scripts: ``status`` reads those first, then
  ``squeue``, then ``sacct`` (which lags and may be missing on clusters without accounting).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Optional, Sequence

from pydantic import Field, field_validator, model_validator

from distillctl.errors import RunError, UserError
from distillctl.options import PluginOptions
from distillctl.runs import atomic_write_text, new_run_id
from distillctl.scheduling import Job, JobHandle, read_log, safe_name, Scheduler, topological_order

STAGE_KINDS = ("embed", "distill", "eval", "baseline", "report")
#: seconds any slurm command may take before we give up on it
COMMAND_TIMEOUT = 60


class SlurmResources(PluginOptions):
    """Per-stage overrides of the job resources (``stages: {distill: {gpus: 1, time: 240}}``)."""

    time: Optional[int] = Field(None, ge=1, description="Time limit in minutes.")
    cpus: Optional[int] = Field(None, ge=1, description="CPUs per job (--cpus-per-task).")
    gpus: Optional[int] = Field(None, ge=0, description="GPUs per job (--gres=gpu:N).")
    mem: Optional[str] = Field(None, description="Memory per job (--mem), e.g. 8G or 16000M.")
    partition: Optional[str] = Field(None, description="Partition (--partition).")

    @field_validator("mem")
    @classmethod
    def _mem(cls, v):
        if v is not None and not re.fullmatch(r"\d+[KMGT]?", str(v)):
            raise ValueError("memory like 8G, 16000M or 4096 (megabytes)")
        return v


class SlurmOptions(PluginOptions):
    partition: Optional[str] = Field(None, description="Partition (--partition); null = the cluster's default.")
    time: int = Field(60, ge=1, description="Time limit per job in minutes (--time).")
    cpus: int = Field(1, ge=1, description="CPUs per job (--cpus-per-task); also the job's OMP_NUM_THREADS.")
    gpus: int = Field(0, ge=0, description="GPUs per job (--gres=gpu:N); 0 = none.")
    mem: Optional[str] = Field(None, description="Memory per job (--mem), e.g. 8G; null = the cluster's default.")
    account: Optional[str] = Field(None, description="Account to charge (--account).")
    qos: Optional[str] = Field(None, description="Quality of service (--qos).")
    array_parallelism: Optional[int] = Field(
        None, ge=1, description="Tasks of one job array running at once (--array=0-N%P); null = no limit."
    )
    extra: list[str] = Field(
        [], description="Extra #SBATCH lines, e.g. ['--constraint=a100', '--exclusive'] (the '#SBATCH' is optional)."
    )
    setup: Optional[list[str]] = Field(
        None, description="Shell lines run before each command (module load, conda activate, exports); null = "
        "activate the virtual environment of the submitting Python when there is one."
    )
    signal_seconds: int = Field(
        120, ge=1, description="Seconds before the time limit at which resumable jobs (distill stages) are told "
        "to stop and requeue themselves (--signal=B:USR1@N)."
    )
    stages: dict[Literal["embed", "distill", "eval", "baseline", "report"], SlurmResources] = Field(
        {}, description="Resource overrides per stage, e.g. {distill: {gpus: 1, time: 240}}."
    )
    job_name: str = Field("distillctl", description="Prefix of the SLURM job names.")

    @field_validator("mem")
    @classmethod
    def _mem(cls, v):
        return SlurmResources._mem(v)

    @field_validator("extra")
    @classmethod
    def _extra(cls, v):
        out = []
        for line in v:
            line = str(line).strip()
            if "\n" in line:
                raise ValueError("one #SBATCH option per item")
            line = line.removeprefix("#SBATCH").strip()
            if not line.startswith("-"):
                raise ValueError(f"{line!r} is not an sbatch option (e.g. --constraint=a100)")
            out.append(line)
        return out

    @model_validator(mode="after")
    def _signal_fits(self):
        times = [self.time] + [s.time for s in self.stages.values() if s.time]
        if self.signal_seconds >= min(times) * 60:
            raise ValueError(f"signal_seconds ({self.signal_seconds}) must be shorter than the time limit "
                             f"({min(times)} min)")
        return self


# -- planning: groups, arrays and dependencies ---------------------------------------------------------

@dataclass
class Dependency:
    """``afterok`` on a whole group / some of its tasks, or ``aftercorr`` (task i waits for task i)."""

    kind: Literal["afterok", "aftercorr"]
    group: str
    tasks: Optional[list[int]] = None  # None: every task (or the single job)


@dataclass
class Group:
    """One sbatch submission: a single job, or an array of jobs of the same shape."""

    name: str
    jobs: list[Job]
    resources: dict
    requeue: bool
    depends: list[Dependency] = field(default_factory=list)

    @property
    def array(self) -> bool:
        return len(self.jobs) > 1


def resolve_resources(job: Job, options: SlurmOptions) -> dict:
    """Defaults <- ``stages[job.kind]`` <- ``job.resources``."""
    res = {"time": options.time, "cpus": options.cpus, "gpus": options.gpus, "mem": options.mem,
           "partition": options.partition}
    stage = options.stages.get(job.kind)
    if stage is not None:
        res.update({k: v for k, v in stage.model_dump().items() if v is not None})
    res.update({k: v for k, v in job.resources.items() if k in res and v is not None})
    return res


def plan(jobs: Sequence[Job], options: SlurmOptions) -> list[Group]:
    """Group jobs into arrays and express every dependency; groups come in submission order."""
    jobs = topological_order(jobs)
    in_batch = {j.id for j in jobs}

    # 1. Candidate arrays: the same group name, resources and requeue flag.
    buckets: dict[str, list[Job]] = {}
    meta: dict[str, tuple[dict, bool]] = {}
    for j in jobs:
        res = resolve_resources(j, options)
        key = json.dumps([j.group or j.id, res, j.requeue], sort_keys=True)
        buckets.setdefault(key, []).append(j)
        meta[key] = (res, j.requeue)
    groups: list[Group] = []
    used: set[str] = set()
    for key, members in buckets.items():
        base = safe_name(members[0].group or members[0].id)
        name, n = base, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        res, rq = meta[key]
        ids = {m.id for m in members}
        if len(members) > 1 and any(d in ids for m in members for d in m.depends_on):
            groups += _singletons(members, res, rq, used)  # a chain inside a group: no array
        else:
            groups.append(Group(name, members, res, rq))

    # 2. Dependencies, group by group in topological order (splitting groups that cannot be an array).
    owner: dict[str, tuple[Group, int]] = {}
    ordered = _order_groups(groups)
    if ordered is None:  # a cycle between groups (never for submit's graphs): fall back to single jobs
        ordered = []
        for g in groups:
            ordered += _singletons(g.jobs, g.resources, g.requeue, used) if g.array else [g]
        ordered = _order_groups(ordered) or ordered
    out: list[Group] = []
    for g in ordered:
        parts = [g]
        deps = _dependencies(g, owner, in_batch)
        if deps is None:
            parts = _singletons(g.jobs, g.resources, g.requeue, used)
        for p in parts:
            p.depends = deps if deps is not None else _dependencies(p, owner, in_batch)
            for i, j in enumerate(p.jobs):
                owner[j.id] = (p, i)
            out.append(p)
    return out


def _singletons(jobs: list[Job], res: dict, requeue: bool, used: set[str]) -> list[Group]:
    out = []
    for j in jobs:
        name, n = safe_name(j.id), 2
        while name in used:
            name, n = f"{safe_name(j.id)}-{n}", n + 1
        used.add(name)
        out.append(Group(name, [j], res, requeue))
    return out


def _order_groups(groups: list[Group]) -> list[Group] | None:
    where = {j.id: g.name for g in groups for j in g.jobs}
    by_name = {g.name: g for g in groups}
    order, mark = [], {}

    def visit(g: Group) -> bool:
        if mark.get(g.name) == 2:
            return True
        if mark.get(g.name) == 1:
            return False
        mark[g.name] = 1
        for j in g.jobs:
            for d in j.depends_on:
                if d in where and where[d] != g.name and not visit(by_name[where[d]]):
                    return False
        mark[g.name] = 2
        order.append(g)
        return True

    for g in groups:
        if not visit(g):
            return None
    return order


def _dependencies(g: Group, owner: dict, in_batch: set[str]) -> list[Dependency] | None:
    """The dependency list of group ``g``, or None when an array cannot express it."""
    per_task: list[dict[str, set[int]]] = []  # for each task: dependency group name -> task indices
    groups: dict[str, Group] = {}
    for j in g.jobs:
        need: dict[str, set[int]] = {}
        for d in j.depends_on:
            if d not in in_batch:
                continue  # finished in an earlier attempt
            h, i = owner[d]
            groups[h.name] = h
            need.setdefault(h.name, set()).add(i)
        per_task.append(need)
    deps = []
    for hname, h in groups.items():
        sets = [need.get(hname, set()) for need in per_task]
        if all(s == sets[0] for s in sets):
            tasks = None if (not h.array or sets[0] == set(range(len(h.jobs)))) else sorted(sets[0])
            deps.append(Dependency("afterok", hname, tasks))
        elif g.array and len(h.jobs) == len(g.jobs) and all(s == {i} for i, s in enumerate(sets)):
            deps.append(Dependency("aftercorr", hname))
        else:
            return None
    return deps


def dependency_arg(deps: Sequence[Dependency], ids: dict[str, str]) -> str | None:
    """``afterok:12:13_0,aftercorr:14`` from dependencies and the submitted ids of their groups."""
    parts = []
    for d in deps:
        jid = ids[d.group]
        if d.kind == "aftercorr":
            parts.append(f"aftercorr:{jid}")
        elif d.tasks is None:
            parts.append(f"afterok:{jid}")
        else:
            parts.append("afterok:" + ":".join(f"{jid}_{t}" for t in d.tasks))
    return ",".join(parts) or None


def sbatch_calls(groups: Sequence[Group], folder: Path) -> str:
    """The submission as shell lines ``distill_1=$(sbatch --parsable --dependency=aftercorr:$distill_0 ...)``."""
    var = {g.name: re.sub(r"\W", "_", g.name) for g in groups}
    lines = []
    for g in groups:
        dep = dependency_arg(g.depends, {d.group: f"${var[d.group]}" for d in g.depends})
        lines.append(f"{var[g.name]}=$(sbatch --parsable{f' --dependency={dep}' if dep else ''} "
                     f"{quote_path(Path(folder) / (g.name + '.sbatch'))})")
    return "\n".join(lines) + "\n"


# -- the batch script ------------------------------------------------------------------------------------

def quote_path(path: str | Path) -> str:
    """A path in single quotes, always (``'/runs/my run/x.out'``; a ``'`` inside as ``'"'"'``).

    shlex.quote leaves a path bare when it happens to be safe, and a template or a path edited by hand
    later then breaks on the first space. sbatch reads ``#SBATCH`` lines with the same quoting rules as
    the shell (checked on SLURM 22.05: single, double and escaped quotes), so one form serves both."""
    return "'" + str(path).replace("'", "'\"'\"'") + "'"


def default_setup() -> list[str]:
    """Activate the submitting interpreter's virtual environment, if it runs in one."""
    if sys.prefix != sys.base_prefix and Path(sys.prefix, "bin", "activate").exists():
        return [f"source {quote_path(Path(sys.prefix, 'bin', 'activate'))}"]
    return [f"export PATH={quote_path(os.path.dirname(sys.executable))}:\"$PATH\""]


# ~90 lines on purpose: the script reads top to bottom as the text it writes (header, job table, run, requeue)
def render_script(group: Group, options: SlurmOptions, folder: Path, setup: list[str] | None = None) -> str:
    """The sbatch script of one group (deterministic text: golden-tested)."""
    folder = Path(folder)
    r = group.resources
    setup = options.setup if options.setup is not None else (setup if setup is not None else default_setup())
    n = len(group.jobs)
    kind = group.jobs[0].kind or "job"
    out_pattern = folder / f"{group.name}-%A_%a.out" if group.array else folder / f"{group.name}-%j.out"
    lines = [
        "#!/bin/bash",
        f"# distillctl: {n} {kind} job{'s' if n > 1 else ''} ({group.name}), generated by `distillctl submit`.",
        "# Dependencies are given on the sbatch command line (see submission.json).",
        f"#SBATCH --job-name={options.job_name}-{group.name}"[:120],
        f"#SBATCH --output={quote_path(out_pattern)}",
        f"#SBATCH --time={r['time']}",
        f"#SBATCH --cpus-per-task={r['cpus']}",
    ]
    if r.get("gpus"):
        lines.append(f"#SBATCH --gres=gpu:{r['gpus']}")
    if r.get("mem"):
        lines.append(f"#SBATCH --mem={r['mem']}")
    if r.get("partition"):
        lines.append(f"#SBATCH --partition={r['partition']}")
    if options.account:
        lines.append(f"#SBATCH --account={options.account}")
    if options.qos:
        lines.append(f"#SBATCH --qos={options.qos}")
    if group.array:
        par = f"%{options.array_parallelism}" if options.array_parallelism else ""
        lines.append(f"#SBATCH --array=0-{n - 1}{par}")
    lines += ["#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --kill-on-invalid-dep=yes"]
    if group.requeue:
        lines.append(f"#SBATCH --signal=B:USR1@{options.signal_seconds}")
    lines += [f"#SBATCH {x}" for x in options.extra]
    lines += ["", "set -uo pipefail", 'case "${SLURM_ARRAY_TASK_ID:-0}" in']
    for i, j in enumerate(group.jobs):
        q = shlex.quote
        lines += [
            f"  {i}) JOB={q(j.id)}",
            f"     CWD={quote_path(j.cwd)}",
            f"     LOG={quote_path(j.log)}",
            f"     MARK={quote_path(folder / 'state' / safe_name(j.id))}",
            f"     CMD=({' '.join(q(a) for a in j.argv)}) ;;",
        ]
        env = " ".join(f"{k}={q(v)}" for k, v in sorted(j.env.items()))
        if env:
            lines[-1] = lines[-1].removesuffix(" ;;")
            lines.append(f"     export {env} ;;")
    lines += [
        '  *) echo "distillctl: no job for array task ${SLURM_ARRAY_TASK_ID:-0}" >&2; exit 2 ;;',
        "esac",
        'mkdir -p "$(dirname "$LOG")" "$(dirname "$MARK")" "$CWD"',
        'exec >>"$LOG" 2>&1',
        'echo "# distillctl job $JOB: SLURM job $SLURM_JOB_ID${SLURM_ARRAY_JOB_ID:+ (array ${SLURM_ARRAY_JOB_ID} task '
        '${SLURM_ARRAY_TASK_ID})}, restart ${SLURM_RESTART_COUNT:-0}, on $(hostname) at $(date -Iseconds)"',
        'echo "# cwd: $CWD"',
        'echo "# command: ${CMD[*]}"',
        '[ -e "$MARK.start" ] || date +%s.%N >"$MARK.start"',
        'rm -f "$MARK.exit"',
    ]
    lines += setup
    lines += [
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" MKL_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        'cd "$CWD" || { echo "1 $(date +%s)" >"$MARK.exit"; exit 1; }',
    ]
    if group.requeue:
        lines += [
            "# Near the time limit SLURM sends USR1 (--signal): stop the command (its last checkpoint",
            "# stays), requeue this job, and the same command resumes from that checkpoint.",
            "REQUEUE=0",
            'on_usr1() { REQUEUE=1; echo "# $(date -Iseconds): time limit near: stopping to requeue"; '
            'kill -TERM "$child" 2>/dev/null; }',
            "trap on_usr1 USR1",
            '"${CMD[@]}" &',
            "child=$!",
            "# (wait returns early, > 128, when USR1 interrupts it: then wait again for the command to stop)",
            'while :; do wait "$child"; rc=$?; [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null || break; done',
            'if [ "$REQUEUE" = 1 ]; then',
            '  echo "# requeueing SLURM job $SLURM_JOB_ID at $(date -Iseconds)"',
            '  scontrol requeue "$SLURM_JOB_ID" && exit 0',
            '  echo "# scontrol requeue failed: the job ends here"',
            "fi",
        ]
    else:
        lines += ['"${CMD[@]}"', "rc=$?"]
    lines += [
        'echo "$rc $(date +%s.%N)" >"$MARK.exit"',
        'echo "# exit code $rc at $(date -Iseconds)"',
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


# -- the scheduler ----------------------------------------------------------------------------------------

def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise UserError(f"slurm scheduler: `{cmd[0]}` not found; it needs the SLURM client commands "
                        f"(sbatch, squeue, sacct, scancel) on PATH (or use --scheduler local)")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RunError(f"`{shlex.join(cmd[:3])} ...` did not answer within {COMMAND_TIMEOUT} s") from None
    if check and proc.returncode != 0:
        raise RunError(f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']}")
    return proc


#: SLURM job states -> distillctl states
_STATE_MAP = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_FED": "pending",
    "REQUEUE_HOLD": "pending", "RESV_DEL_HOLD": "pending", "SUSPENDED": "pending", "PREEMPTED": "pending",
    "RESIZING": "pending", "SPECIAL_EXIT": "failed",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
    "COMPLETED": "done",
    "FAILED": "failed", "TIMEOUT": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "failed",
    "CANCELLED": "cancelled", "REVOKED": "cancelled",
}


def map_state(slurm_state: str) -> str:
    """``CANCELLED by 0`` / ``TIMEOUT`` / ``RUNNING`` -> a distillctl state (unknown ones: pending)."""
    word = (slurm_state or "").strip().split(" ")[0].rstrip("+").upper()
    return _STATE_MAP.get(word, "pending")


def expand_array_id(text: str) -> list[str]:
    """``12_[0-2,5%2]`` -> ``['12_0', '12_1', '12_2', '12_5']`` (tasks not started yet); others unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]*)\]", text.strip())
    if not m:
        return [text.strip()]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += [f"{m.group(1)}_{i}" for i in range(int(a), int(b) + 1)]
        elif part.strip().isdigit():
            out.append(f"{m.group(1)}_{int(part)}")
    return out


def _read_marker(path: Path) -> tuple[int, float] | None:
    try:
        rc, ts = path.read_text().split()[:2]
        return int(rc), float(ts)
    except (OSError, ValueError):
        return None


def _parse_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, TypeError):
        return None


class SlurmScheduler(Scheduler):
    """Jobs as sbatch scripts (arrays for sweeps, afterok/aftercorr dependencies, requeue on timeout)."""

    name = "slurm"

    def __init__(self, options: SlurmOptions | None = None):
        self.options = options or SlurmOptions()

    # -- submit / describe -------------------------------------------------------------------------
    def preflight(self) -> None:
        """Fail early (before anything is written) when the SLURM client commands are missing."""
        missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
        if missing:
            raise UserError(f"slurm scheduler: {', '.join(missing)} not found on PATH; submit from a machine with "
                            f"the SLURM client commands (or use --scheduler local)")

    def describe(self, jobs: Sequence[Job], folder: Path) -> str:
        """The sbatch calls (a runnable shell sequence) and every batch script, as ``submit`` would write them."""
        folder = Path(folder) / "slurm" / "SUBMIT_ID"
        groups = plan(jobs, self.options)
        scripts = [f"# ---- {folder / (g.name + '.sbatch')}\n" + render_script(g, self.options, folder) for g in groups]
        head = (f"# slurm scheduler: {len(jobs)} jobs in {len(groups)} submissions (job arrays where jobs share a "
                f"stage); the sbatch calls:\n")
        return head + sbatch_calls(groups, folder) + "\n" + "\n".join(scripts)

    def submit(self, jobs: Sequence[Job], folder: Path) -> list[JobHandle]:
        sub = Path(folder).resolve() / "slurm" / new_run_id()
        (sub / "state").mkdir(parents=True, exist_ok=True)
        groups = plan(jobs, self.options)
        setup = default_setup()
        ids: dict[str, str] = {}
        handles: dict[str, JobHandle] = {}
        try:
            for g in groups:
                script = atomic_write_text(sub / f"{g.name}.sbatch", render_script(g, self.options, sub, setup))
                dep = dependency_arg(g.depends, ids)
                cmd = ["sbatch", "--parsable"] + ([f"--dependency={dep}"] if dep else []) + [str(script)]
                jid = _run(cmd).stdout.strip().split(";")[0]
                if not jid.isdigit():
                    raise RunError(f"sbatch answered {jid!r} instead of a job id")
                ids[g.name] = jid
                for i, j in enumerate(g.jobs):
                    sid = f"{jid}_{i}" if g.array else jid
                    out = sub / (f"{g.name}-{jid}_{i}.out" if g.array else f"{g.name}-{jid}.out")
                    handles[j.id] = JobHandle(job_id=j.id, scheduler=self.name, scheduler_id=sid, log=j.log,
                                              folder=str(sub), extra={"marker": str(sub / "state" / safe_name(j.id)),
                                                                      "slurm_out": str(out), "script": str(script),
                                                                      "submitted": time.time()})
        except BaseException:
            if ids:  # never leave half a graph queued
                _run(["scancel", *ids.values()], check=False)
            raise
        return [handles[j.id] for j in jobs]

    # -- status ---------------------------------------------------------------------------------------
    def status(self, handles: Sequence[JobHandle]) -> list[JobHandle]:
        fresh = [JobHandle.from_dict(h.to_dict()) for h in handles]
        open_ = [h for h in fresh if not h.final and h.scheduler_id]
        for h in open_:  # markers written by the script: authoritative for done / failed and times
            mark = h.extra.get("marker")
            if mark:
                try:
                    h.started = float(Path(mark + ".start").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
                m = _read_marker(Path(mark + ".exit"))
                if m is not None:
                    h.exit_code, h.ended = m
                    h.state = "done" if m[0] == 0 else "failed"
                    h.reason = "" if m[0] == 0 else f"exit code {m[0]}"
        open_ = [h for h in open_ if not h.final]
        if not open_:
            return fresh
        queue = self._squeue({h.scheduler_id.split("_")[0] for h in open_})
        missing = []
        for h in open_:
            q = queue.get(h.scheduler_id)
            if q is None:
                missing.append(h)
                continue
            h.state = map_state(q[0])
            h.reason = "" if q[1] in ("None", "") else q[1]
            if h.state == "running" and h.started is None:
                h.started = time.time()
        if missing:
            bases = {h.scheduler_id.split("_")[0] for h in missing}
            acct = self._sacct(bases)
            if any(h.scheduler_id not in acct for h in missing):
                acct = {**self._scontrol(bases), **acct}
            for h in missing:
                a = acct.get(h.scheduler_id)
                if a is None:
                    if time.time() - float(h.extra.get("submitted", 0)) < 30:
                        continue  # just submitted: not visible everywhere yet
                    h.state = "cancelled" if h.extra.get("cancel_requested") else "failed"
                    h.reason = "no trace in squeue or sacct (and no exit record): the job vanished"
                    continue
                state, code, start, end, why = a
                h.state = map_state(state)
                h.reason = "" if h.state == "done" else state.lower().split(" by ")[0]
                if h.state == "cancelled" and why.startswith("Dependency"):
                    h.reason = "cancelled: a dependency failed"
                elif h.state == "failed" and state.upper().startswith("TIMEOUT"):
                    h.reason = "time limit reached"
                if code:
                    try:
                        h.exit_code = int(code.split(":")[0])
                    except ValueError:
                        pass
                h.started = h.started or _parse_time(start)
                h.ended = _parse_time(end) if h.final else None
        return fresh

    def _squeue(self, base_ids: set[str]) -> dict[str, tuple[str, str]]:
        """``{scheduler id: (STATE, reason)}`` for queued or running jobs (array tasks one by one)."""
        if not base_ids:
            return {}
        proc = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(sorted(base_ids))], check=False)
        if proc.returncode != 0:  # 22.05 rejects the whole list when one id is unknown: ask for ours
            proc = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "--me"], check=False)
        out = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 3:
                for jid in expand_array_id(parts[0]):
                    out[jid] = (parts[1], parts[2])
        return out

    def _scontrol(self, base_ids: set[str]) -> dict[str, tuple[str, str, str, str]]:
        """Like :meth:`_sacct` from ``scontrol show job`` (recently finished jobs, no accounting needed)."""
        out = {}
        for base in sorted(base_ids):
            proc = _run(["scontrol", "-o", "show", "job", base], check=False)
            if proc.returncode != 0:
                continue
            for line in proc.stdout.splitlines():
                f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                task = f.get("ArrayTaskId")
                jid = f"{f.get('ArrayJobId')}_{task}" if task and task.isdigit() else f.get("JobId", "")
                out[jid] = (f.get("JobState", ""), f.get("ExitCode", ""), f.get("StartTime", ""), f.get("EndTime", ""),
                            f.get("Reason", ""))
        return out

    def _sacct(self, base_ids: set[str]) -> dict[str, tuple[str, str, str, str]]:
        """``{scheduler id: (State, ExitCode, Start, End, Reason)}`` from accounting ({} when there is none)."""
        if not base_ids or shutil.which("sacct") is None:
            return {}
        proc = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode,Start,End,Reason",
                     "-j", ",".join(sorted(base_ids))], check=False)
        out = {}
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) >= 6:
                    for jid in expand_array_id(parts[0]):
                        out[jid] = (parts[1], parts[2], parts[3], parts[4], parts[5])
        return out

    # -- cancel / logs ----------------------------------------------------------------------------------
    def cancel(self, handles: Sequence[JobHandle]) -> None:
        ids = [h.scheduler_id for h in handles if not h.final and h.scheduler_id]
        for h in handles:
            if not h.final:
                h.extra["cancel_requested"] = True
        if ids:
            _run(["scancel", *ids], check=False)

    def log_files(self, handle: JobHandle) -> list[str]:
        """The files holding the job's output, most useful first: its log, then SLURM's own ``--output``
        file (what the batch script printed around the job's command, and SLURM's messages)."""
        return [f for f in (handle.log, handle.extra.get("slurm_out")) if f]

    def logs(self, handle: JobHandle) -> str:
        """The text of :meth:`log_files` that say anything, in that order, one after another."""
        text = ""
        for part in map(read_log, self.log_files(handle)):
            if part.strip():
                text += ("\n" if text and not text.endswith("\n") else "") + part
        return text

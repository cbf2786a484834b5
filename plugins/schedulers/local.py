"""The ``local`` scheduler: run a job graph on this machine, ``workers`` jobs at a time.

``submit`` writes the graph to a state file (``FOLDER/local/<id>.json``) and starts a detached runner
process (``python -m distillctl_plugins.schedulers.local_runner STATE_FILE``, its own session, re-parented to
init), then returns at once: the jobs keep running when the shell that submitted them goes away. The
runner alone writes the state file (atomically) while it lives; ``status`` reads it from any process,
and ``cancel`` asks the runner to cancel jobs (their ids in a request file the runner reads; SIGTERM to
the runner stops everything).

Each job is a subprocess in its own process group (so cancelling kills the whole job), its stdout and
stderr appended to the job's log with a header (attempt, command line, working directory) and a
footer (exit code, seconds). Jobs get ``OMP_NUM_THREADS`` = ``threads`` when set; by default each job takes
its share of the machine (cores / ``workers``, less busy ones: :mod:`distillctl.threads`), so ``workers`` jobs
share the machine instead of each using every core. A failed job cancels everything downstream of it; the
other branches of the graph keep running to the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

from pydantic import Field

from distillctl.errors import RunError
from distillctl.options import PluginOptions
from distillctl.runs import atomic_write_json, new_run_id
from distillctl.scheduling import (FINAL, Job, JobHandle, Scheduler, format_seconds, pid_alive, read_log,
                                   topological_order)

#: seconds between two looks of the runner at its jobs
POLL_SECONDS = 0.05
#: seconds a cancelled job gets between SIGTERM and SIGKILL
KILL_GRACE_SECONDS = 10.0


class LocalOptions(PluginOptions):
    workers: int = Field(1, ge=1, description="Jobs run at the same time on this machine.")
    threads: Optional[int] = Field(
        None, ge=1,
        description="CPU threads per job (OMP_NUM_THREADS, MKL_NUM_THREADS); null = from the machine when each job "
        "starts: the cores it may use (affinity, cgroup quota) divided by `workers`, less the cores other "
        "processes keep busy, at least 1 (distillctl.threads). Set 1 where foreign jobs come and go after a job "
        "started: torch's waiting threads spin, and with 2 threads per job beside another torch job on a 2-core "
        "machine a distill ran ~40x slower (157 vs 4 s; BENCHMARKS.md, \"Torch threads on a busy machine\").",
    )


def job_environment(base: Mapping[str, str], threads: Optional[int], workers: int) -> dict:
    """The environment a job of this scheduler runs in (``base``: the submitting process's): ``threads`` exported
    as its thread count when set (over any ``OMP_NUM_THREADS``); else each job measures its share of the machine
    when it starts (it knows ``workers`` run at once), so the submitting process's own machine-derived count is
    dropped (a count the user exported stays). ``distillctl plan`` forecasts with the same count
    (:func:`distillctl.planning.job_threads`)."""
    from distillctl.threads import JOBS_VARIABLE, MACHINE_VARIABLE, THREAD_VARIABLES, machine_derived

    env = dict(base)
    env.pop("PYTHONUNBUFFERED", None)
    # `distillctl` resolves to the interpreter environment that submitted the graph.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    else:
        if machine_derived(env):
            for name in THREAD_VARIABLES:
                env.pop(name, None)
        env.pop(MACHINE_VARIABLE, None)
        env[JOBS_VARIABLE] = str(workers)
    return env


def _now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _write_state(path: Path, state: dict) -> None:
    atomic_write_json(path, state)


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class LocalScheduler(Scheduler):
    """Jobs as subprocesses of a detached runner on this machine."""

    name = "local"
    #: seconds between two status polls while `submit --wait` follows the jobs (a state file read)
    poll_seconds = 0.5

    def __init__(self, options: LocalOptions | None = None):
        self.options = options or LocalOptions()

    @property
    def threads(self) -> Optional[int]:
        """Threads per job; None: each job takes its share of the machine (:func:`distillctl.threads.machine_threads`)."""
        return self.options.threads

    # -- submit --------------------------------------------------------------------------------
    def submit(self, jobs: Sequence[Job], folder: Path) -> list[JobHandle]:
        given = list(jobs)
        jobs = topological_order(given)
        state_dir = Path(folder) / "local"
        state_dir.mkdir(parents=True, exist_ok=True)
        state_file = (state_dir / f"{new_run_id()}.json").resolve()
        state = {
            "version": 1,
            "workers": self.options.workers,
            "threads": self.threads,
            "jobs": [j.to_dict() for j in jobs],
            "states": {j.id: {"state": "pending"} for j in jobs},
            "runner": {"pid": None, "started": None, "ended": None, "host": socket.gethostname()},
        }
        _write_state(state_file, state)
        runner_log = state_file.with_suffix(".log")
        # The runner forks once more and its first child exits: the runner is re-parented to init
        # (no zombie in this process, survives the terminal), and its pid is in the state file.
        with open(runner_log, "ab") as log:
            starter = subprocess.run(
                [sys.executable, "-m", "distillctl_plugins.schedulers.local_runner", str(state_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=120,
            )
        runner_pid = (_read_state(state_file) or {}).get("runner", {}).get("pid")
        if starter.returncode != 0 or not runner_pid:
            raise RunError(f"local scheduler: the runner did not start (exit {starter.returncode}); "
                           f"see {runner_log}")
        return [JobHandle(job_id=j.id, scheduler=self.name, scheduler_id=f"{runner_pid}:{j.id}", log=j.log,
                          folder=str(state_dir), extra={"state_file": str(state_file), "runner_pid": runner_pid})
                for j in given]

    def describe(self, jobs: Sequence[Job], folder: Path) -> str:
        return (f"local scheduler: {len(jobs)} jobs on this machine, {self.options.workers} at a time, "
                + (f"{self.threads} thread(s) each" if self.threads else "threads from the machine (its cores / "
                   f"{self.options.workers}, less busy ones)") + f"; state in {Path(folder) / 'local'}/")

    # -- status / cancel / logs ----------------------------------------------------------------
    def status(self, handles: Sequence[JobHandle]) -> list[JobHandle]:
        out = []
        cache: dict[str, dict | None] = {}
        for h in handles:
            sf = h.extra.get("state_file")
            if sf not in cache:
                cache[sf] = _effective_state(Path(sf)) if sf else None
            st = cache[sf]
            if st is None:
                out.append(JobHandle.from_dict({**h.to_dict(), "state": "failed",
                                                "reason": f"local state file {sf} is missing or unreadable"}))
                continue
            js = st["states"].get(h.job_id, {"state": "pending"})
            out.append(JobHandle.from_dict({**h.to_dict(), "state": js["state"], "exit_code": js.get("exit_code"),
                                            "started": js.get("started"), "ended": js.get("ended"),
                                            "reason": js.get("reason", "")}))
        return out

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        by_file: dict[str, list[JobHandle]] = {}
        for h in handles:
            if h.extra.get("state_file") and not h.final:
                by_file.setdefault(h.extra["state_file"], []).append(h)
        for sf, hs in by_file.items():
            _cancel_runner(Path(sf), [h.job_id for h in hs])

    def log_files(self, handle: JobHandle) -> list[str]:
        """The files holding the job's output, most useful first: its log (stdout and stderr, with the
        runner's header and footer)."""
        return [handle.log] if handle.log else []

    def logs(self, handle: JobHandle) -> str:
        return read_log(handle.log)


def _other_host(st: dict) -> bool:
    """The runner lives on another machine (a shared file system): its pid means nothing here."""
    host = (st.get("runner") or {}).get("host")
    return bool(host) and host != socket.gethostname()


def _cancel_runner(state_file: Path, job_ids: list[str]) -> None:
    """Ask the runner to cancel ``job_ids`` (their dependents follow), and wait until it has.

    The request is a line per job id appended to ``<state>.cancel``, which the runner reads on every
    pass; without a live runner the state file is settled here (orphaned job processes killed).
    """
    with open(state_file.with_suffix(".cancel"), "a", encoding="utf-8") as fh:
        fh.write("".join(f"{j}\n" for j in job_ids))
    st = _read_state(state_file) or {}
    pid = (st.get("runner") or {}).get("pid")
    remote = _other_host(st)  # the runner is on another machine (shared file system): only the file works

    def settled() -> bool:
        now = _read_state(state_file) or {}
        return bool((now.get("runner") or {}).get("ended")) or all(
            now.get("states", {}).get(j, {}).get("state") in FINAL for j in job_ids)

    deadline = time.time() + KILL_GRACE_SECONDS + 20
    while time.time() < deadline and not settled() and (remote or pid_alive(pid, str(state_file))):
        time.sleep(0.05)
    if remote or pid_alive(pid, str(state_file)):
        return
    # No runner (it died, or just finished): settle the file ourselves, killing orphaned jobs.
    st = _read_state(state_file)
    if st is None:
        return
    changed = False
    for job in st["jobs"]:
        js = st["states"][job["id"]]
        if js["state"] in FINAL or job["id"] not in job_ids:
            continue
        if js["state"] == "running" and pid_alive(js.get("pid"), _marker(job)):
            _kill_group(js["pid"], wait=True)
        js.update(state="cancelled", reason="cancelled", ended=js.get("ended") or time.time())
        changed = True
    if changed:
        _write_state(state_file, st)


def _effective_state(state_file: Path) -> dict | None:
    """The state file as the runner left it, with jobs of a runner that died settled (not written)."""
    st = _read_state(state_file)
    if st is None:
        return None
    runner = st.get("runner") or {}
    if runner.get("ended") or _other_host(st) or pid_alive(runner.get("pid"), str(state_file)):
        return st
    for job in st["jobs"]:
        js = st["states"][job["id"]]
        if js["state"] == "running":
            if pid_alive(js.get("pid"), _marker(job)):
                js["reason"] = "its runner process is gone; the job process still runs"
            else:
                js.update(state="failed", reason="the local runner process ended while the job ran "
                          "(killed, or the machine restarted); `distillctl submit --retry-failed RUN` re-runs it")
        elif js["state"] == "pending":
            js.update(state="cancelled", reason="the local runner process ended before the job started")
    return st


def _marker(job: dict) -> str:
    """A string the job's command line contains (guards against a recycled pid)."""
    return job["argv"][-1] if job.get("argv") else ""


def _kill_group(pid: int, *, wait: bool = False, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the job's process group, then SIGKILL it after KILL_GRACE_SECONDS."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + KILL_GRACE_SECONDS
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not pid_alive(pid):
            break
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        proc.wait()


# -- the runner process ------------------------------------------------------------------------------

class _Runner:
    """Runs the graph of one state file to the end; the only writer of that file while it lives."""

    def __init__(self, state_file: Path):
        self.path = state_file
        self.state = _read_state(state_file)
        if self.state is None:
            raise SystemExit(f"local runner: cannot read {state_file}")
        self.jobs = {j["id"]: Job.from_dict(j) for j in self.state["jobs"]}
        self.order = [j["id"] for j in self.state["jobs"]]  # already topological
        self.procs: dict[str, tuple[subprocess.Popen, object]] = {}
        self.stop = False

    def save(self) -> None:
        _write_state(self.path, self.state)

    def env(self) -> dict:
        return job_environment(os.environ, self.state.get("threads"), self.state.get("workers") or 1)

    def start(self, jid: str, base_env: dict) -> None:
        job, js = self.jobs[jid], self.state["states"][jid]
        Path(job.log).parent.mkdir(parents=True, exist_ok=True)
        log = open(job.log, "ab", buffering=0)
        attempt = js.get("attempt", 1)
        header = (f"# distillctl job {jid} (local scheduler, state {self.path.name}) started {_now_iso()} on "
                  f"{socket.gethostname()}\n# cwd: {job.cwd}\n# command: {job.command_line()}\n")
        log.write(header.encode())
        env = {**base_env, **job.env, "DISTILLCTL_JOB_ID": jid}
        exe = shutil.which(job.argv[0], path=env["PATH"]) if job.argv else None
        started = time.time()
        if exe is None:
            log.write(f"# command not found: {job.argv[0] if job.argv else '(empty argv)'}\n".encode())
            log.close()
            js.update(state="failed", exit_code=127, started=started, ended=started,
                      reason=f"command not found: {job.argv[0] if job.argv else '(empty)'}", attempt=attempt)
            return
        try:
            Path(job.cwd).mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen([exe, *job.argv[1:]], cwd=job.cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            log.write(f"# could not start: {exc}\n".encode())
            log.close()
            js.update(state="failed", exit_code=126, started=started, ended=started, reason=f"could not start: {exc}")
            return
        self.procs[jid] = (proc, log)
        js.update(state="running", pid=proc.pid, started=started, ended=None, exit_code=None, reason="")

    def reap(self) -> bool:
        changed = False
        for jid, (proc, log) in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            js = self.state["states"][jid]
            ended = time.time()
            js.update(ended=ended, exit_code=rc)
            if rc == 0:
                js.update(state="done", reason="")
            else:
                why = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
                js.update(state="failed", reason=why)
            log.write(f"# exit code {rc} after {format_seconds(ended - js['started'])} ({_now_iso()})\n".encode())
            log.close()
            del self.procs[jid]
            changed = True
        return changed

    def settle_pending(self) -> bool:
        """Cancel pending jobs that can never run (a dependency failed or was cancelled)."""
        changed = False
        states = self.state["states"]
        for jid in self.order:  # topological: a cancellation reaches every descendant in one pass
            js = states[jid]
            if js["state"] != "pending":
                continue
            bad = [d for d in self.jobs[jid].depends_on if d in states and states[d]["state"] in ("failed", "cancelled")]
            if bad:
                js.update(state="cancelled", reason=f"dependency {bad[0]} {states[bad[0]]['state']}", ended=time.time())
                changed = True
        return changed

    def ready(self) -> list[str]:
        states = self.state["states"]
        return [jid for jid in self.order if states[jid]["state"] == "pending"
                and all(d not in states or states[d]["state"] == "done" for d in self.jobs[jid].depends_on)]

    def cancel(self, ids: set[str] | None = None) -> bool:
        """Cancel the given jobs (all when None): kill the running ones, skip the pending ones."""
        changed = False
        for jid, (proc, log) in list(self.procs.items()):
            if ids is not None and jid not in ids:
                continue
            _kill_group(proc.pid, proc=proc)
            js = self.state["states"][jid]
            js.update(state="cancelled", reason="cancelled", ended=time.time(), exit_code=proc.returncode)
            log.write(f"# cancelled ({_now_iso()})\n".encode())
            log.close()
            del self.procs[jid]
            changed = True
        for jid in self.order:
            js = self.state["states"][jid]
            if js["state"] == "pending" and (ids is None or jid in ids):
                js.update(state="cancelled", reason="cancelled", ended=time.time())
                changed = True
        return changed

    def cancel_requests(self, path: Path) -> set[str]:
        try:
            return {x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()}
        except OSError:
            return set()

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # detached: a closing terminal must not stop the graph
        cancel_file = self.path.with_suffix(".cancel")
        workers = int(self.state.get("workers") or 1)
        base_env = self.env()
        while True:
            if self.stop:  # SIGTERM / SIGINT: stop everything
                self.cancel()
                self.save()
                break
            changed = self.cancel(self.cancel_requests(cancel_file)) if cancel_file.exists() else False
            changed |= self.reap()
            changed |= self.settle_pending()
            for jid in self.ready()[: max(0, workers - len(self.procs))]:
                self.start(jid, base_env)
                changed = True
            if changed:
                self.save()
            if not self.procs and not self.ready():
                self.settle_pending()  # a job that failed to start just now cancels its dependents
                stuck = [j for j in self.order if self.state["states"][j]["state"] == "pending"]
                for jid in stuck:  # cannot happen in a checked (acyclic) graph; never spin on it
                    self.state["states"][jid].update(state="cancelled", reason="dependencies can never be met",
                                                     ended=time.time())
                break
            time.sleep(POLL_SECONDS)
        self.state["runner"]["ended"] = time.time()
        self.save()

    def _on_signal(self, signum, frame) -> None:
        self.stop = True


def main(argv: list[str] | None = None) -> int:
    """``python -m distillctl_plugins.schedulers.local_runner STATE_FILE``: daemonise, then run the graph."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m distillctl_plugins.schedulers.local_runner STATE_FILE", file=sys.stderr)
        return 2
    state_file = Path(args[0]).resolve()
    pid = os.fork()
    if pid > 0:  # the starter: wait until the runner has recorded itself, then leave
        deadline = time.time() + 60
        while time.time() < deadline:
            st = _read_state(state_file) or {}
            if (st.get("runner") or {}).get("pid"):
                return 0
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return 1
            time.sleep(0.02)
        return 1
    # the runner: its own session, no terminal; its parent exits, so init adopts it
    os.setsid()
    runner = _Runner(state_file)
    runner.state["runner"].update(pid=os.getpid(), started=time.time())
    runner.save()
    print(f"{_now_iso()} runner {os.getpid()} started: {len(runner.order)} jobs, "
          f"{runner.state.get('workers')} worker(s)", flush=True)
    try:
        runner.run()
    except BaseException as exc:  # leave a trace and a consistent file
        print(f"{_now_iso()} runner failed: {type(exc).__name__}: {exc}", flush=True)
        runner.cancel()
        runner.state["runner"]["ended"] = time.time()
        runner.save()
        os._exit(1)
    counts: dict[str, int] = {}
    for s in runner.state["states"].values():
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    print(f"{_now_iso()} runner finished: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), flush=True)
    os._exit(0)

"""A third-party distillctl scheduler: the whole job graph as one bash script, run in the background.

``submit`` writes ``<folder>/jobs.sh`` (the jobs in dependency order; a job whose dependency did not
finish with exit 0 is skipped) and starts it detached; every job leaves ``<folder>/state/<job>.exit``
with its exit code (or ``cancelled``). ``status`` reads those files; ``cancel`` creates
``<folder>/state/CANCEL``, which stops the script before its next job. ``describe`` (``submit
--dry-run``) prints the script. ``preflight``, ``logs`` and ``log_files`` keep the defaults of
:class:`distillctl.scheduling.Scheduler`.
"""

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from pydantic import Field

from distillctl import UserError, hookimpl
from distillctl.options import PluginOptions
from distillctl.scheduling import JobHandle, Scheduler, safe_name, topological_order


class ScriptOptions(PluginOptions):
    shell: str = Field("bash", description="Shell that runs the script (a command on PATH).")
    keep_going: bool = Field(True, description="After a failed job, still run the jobs that do not depend on it.")


class ScriptScheduler(Scheduler):
    name = "script"
    poll_seconds = 0.5

    def __init__(self, options: ScriptOptions | None = None):
        self.options = options or ScriptOptions()

    def preflight(self) -> None:  # overrides the default (nothing to check)
        if shutil.which(self.options.shell) is None:
            raise UserError(f"scheduler script: shell {self.options.shell!r} not found on PATH")

    def script(self, jobs, folder: Path) -> str:
        state = Path(folder) / "state"
        lines = ["#!/usr/bin/env bash", f"# distillctl job graph: {len(jobs)} jobs",
                 f"mkdir -p {shlex.quote(str(state))}"]
        for job in topological_order(jobs):
            me = shlex.quote(str(state / safe_name(job.id)))
            deps = " && ".join(f'[ "$(cat {shlex.quote(str(state / safe_name(d)))}.exit 2>/dev/null)" = 0 ]'
                               for d in job.depends_on if d in {j.id for j in jobs}) or "true"
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in job.env.items())
            lines += [
                f"# {job.id}",
                f"if [ -e {shlex.quote(str(state / 'CANCEL'))} ] || ! {{ {deps}; }}; then echo cancelled > {me}.exit",
                f"else date +%s > {me}.start; (cd {shlex.quote(job.cwd)} && {env} {job.command_line()}) "
                f"> {shlex.quote(job.log)} 2>&1; echo $? > {me}.exit",
                "fi" if self.options.keep_going else f'fi; [ "$(cat {me}.exit)" = 0 ] || exit 1',
            ]
        return "\n".join(lines) + "\n"

    def describe(self, jobs, folder) -> str:
        return f"script scheduler: {self.options.shell} {Path(folder) / 'jobs.sh'}\n" + self.script(jobs, folder)

    def submit(self, jobs, folder) -> list[JobHandle]:
        folder = Path(folder)
        path = folder / "jobs.sh"
        path.write_text(self.script(jobs, folder))
        for job in jobs:
            Path(job.log).parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([self.options.shell, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(folder / "jobs.sh.log", "ab"), start_new_session=True, env=dict(os.environ))
        return [JobHandle(job.id, self.name, scheduler_id=f"{proc.pid}:{job.id}", log=job.log, folder=str(folder))
                for job in jobs]

    def status(self, handles) -> list[JobHandle]:
        out = []
        for h in handles:
            state = Path(h.folder) / "state" / safe_name(h.job_id)
            new = JobHandle.from_dict(h.to_dict())
            code = _read(state.with_suffix(".exit"))
            started = _read(state.with_suffix(".start"))
            if started:
                new.started = float(started)
            if code == "cancelled":
                new.state = "cancelled"
            elif code:
                new.exit_code = int(code)
                new.state = "done" if new.exit_code == 0 else "failed"
                new.ended = new.ended or time.time()
            else:
                new.state = "running" if started else "pending"
            out.append(new)
        return out

    def cancel(self, handles) -> None:
        for folder in {h.folder for h in handles if h.folder}:
            (Path(folder) / "state").mkdir(parents=True, exist_ok=True)
            (Path(folder) / "state" / "CANCEL").touch()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@hookimpl
def register_schedulers(register):
    register("script", ScriptScheduler, options=ScriptOptions,
             description="the job graph as one bash script in the background (jobs.sh)")

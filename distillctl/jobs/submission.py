"""Submission state on disk: ``<runs_dir>/<name>/<id>/submission.json`` and what is read back from it.

A submission folder holds ``submission.json`` (points, jobs, scheduler section, handles, attempts),
``logs/`` and, for one recipe, the run directory itself (``distilled/``, ``eval/``, ``report.md``); a
sweep gets one run directory per point beside ``submission.json`` (``<id>/window=40/``).
``distillctl status RUN`` reads it from any shell: every scheduler handle is plain data.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from distillctl import yaml12
from distillctl.errors import UserError
from distillctl.plugins import get_registry
from distillctl.recipe import Recipe
from distillctl.runs import atomic_write_json
from distillctl.scheduling import format_seconds, Job, JobHandle, overall_state, tail

SUBMISSION_FILE = "submission.json"
#: log lines shown for a failed job by `status`
LOG_TAIL_LINES = 15


@dataclass
class Submission:
    """A submitted (or dry-run) graph: its folder, jobs, handles and scheduler."""

    path: Path
    data: dict
    jobs: list[Job]
    handles: dict[str, JobHandle]
    scheduler: Any = None
    dry_run: bool = False
    description: str = ""

    # -- persistence -------------------------------------------------------------------------------
    @property
    def file(self) -> Path:
        return self.path / SUBMISSION_FILE

    def save(self) -> None:
        self.data["jobs"] = [j.to_dict() for j in self.jobs]
        self.data["handles"] = {k: h.to_dict() for k, h in self.handles.items()}
        self.data["updated"] = time.time()
        atomic_write_json(self.file, self.data)

    @classmethod
    def load(cls, run: str | Path) -> "Submission":
        file = find_submission(run)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{file}: unreadable submission state ({exc})") from None
        jobs = [Job.from_dict(j) for j in data.get("jobs", [])]
        handles = {k: JobHandle.from_dict(h) for k, h in data.get("handles", {}).items()}
        return cls(file.parent, data, jobs, handles, scheduler=make_scheduler(data["scheduler"]))

    # -- views -------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return overall_state([self.handles[j.id] for j in self.jobs if j.id in self.handles]) if self.handles \
            else ("dry-run" if self.dry_run else "pending")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in self.handles.values():
            out[h.state] = out.get(h.state, 0) + 1
        return out

    def reports(self) -> list[Path]:
        """report.md of every point whose report job is done."""
        out = []
        for p in self.data.get("points", []):
            rid = ("" if p["name"] == "" else p["name"] + "/") + "report"
            h = self.handles.get(rid)
            if h is not None and h.state == "done":
                out.append(Path(p["run_dir"]) / "report.md")
        compare = self.handles.get("compare")  # a sweep's comparison of its points (distillctl.reporting.compare)
        if compare is not None and compare.state == "done":
            out.append(self.path / "comparison.md")
        return out

    def summary(self) -> list[dict]:
        """One row per (point, ipc) from the points' report.json: distilled vs random accuracy (for sweeps)."""
        rows = []
        for p in self.data.get("points", []):
            f = Path(p["run_dir"]) / "report.json"
            try:
                rep = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            full = ((rep.get("full") or {}).get("accuracy") or {}).get("mean")
            for row in (rep.get("tables") or {}).get("accuracy", []):
                d, r = row.get("distilled"), row.get("random")
                rows.append({"point": p["name"], "values": p["values"], "ipc": row["ipc"],
                             "distilled": d, "random": r, "gain_over_random": row.get("gain_over_random"),
                             "full": full, "report": str(Path(p["run_dir"]) / "report.md")})
        return rows

    def log_tail(self, handle: JobHandle, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the job's output: the first of the scheduler's log files
        (``scheduler.log_files(handle)``: ``[handle.log]`` by default, else the job's log) that has any."""
        paths = self.scheduler.log_files(handle) or [next((j.log for j in self.jobs if j.id == handle.job_id), None)]
        for path in paths:
            text = tail(path, lines)
            if text:
                return text
        return ""

    def latest_line(self, handle: JobHandle, max_bytes: int = 8192) -> str:
        """The job's latest line of output ('' when none yet): what ``--wait`` shows while it runs.

        Only the last ``max_bytes`` of the log are read (this runs every poll). A progress bar's
        carriage-return updates count as lines, and the scheduler's own ``# ...`` header lines are
        skipped: they say that the job started, not how far it is."""
        paths = self.scheduler.log_files(handle) or [next((j.log for j in self.jobs if j.id == handle.job_id), None)]
        for path in paths:
            text = tail(path, 40, max_bytes=max_bytes)
            for line in reversed(text.replace("\r", "\n").splitlines()):
                line = line.strip()
                if line and not line.startswith("# "):
                    return line
        return ""

    def job_rows(self, *, log_tails: bool = True) -> list[dict]:
        """One row per job (state, scheduler id, elapsed, exit code, log, command line); with ``log_tails``
        a failed job's row also has ``log_tail`` (its logs are read: off for the live table of ``--wait``,
        which redraws every poll)."""
        now = time.time()
        rows = []
        for j in self.jobs:
            h = self.handles.get(j.id)
            row = {"id": j.id, "kind": j.kind, "state": h.state if h else "not submitted",
                   "scheduler_id": h.scheduler_id if h else None,
                   "elapsed": round(h.elapsed(now), 1) if h and h.elapsed(now) is not None else None,
                   "exit_code": h.exit_code if h else None, "reason": h.reason if h else "",
                   "attempt": h.attempt if h else 0, "log": j.log, "command": j.command_line(),
                   "depends_on": list(j.depends_on)}
            if log_tails and h is not None and h.state == "failed":
                row["log_tail"] = self.log_tail(h)
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {"submission": str(self.path), "scheduler": self.data["scheduler"]["name"], "state": self.state,
                "dry_run": self.dry_run, "counts": self.counts(),
                "points": [{"name": p["name"], "values": p["values"], "run_dir": p["run_dir"]}
                           for p in self.data.get("points", [])],
                "reports": [str(r) for r in self.reports()], "summary": self.summary(), "jobs": self.job_rows()}

    # -- scheduler calls ---------------------------------------------------------------------------
    def refresh(self) -> "Submission":
        """Ask the scheduler for the state of every unfinished job; persist the answer when it changed."""
        open_ = [h for h in self.handles.values() if not h.final]
        if open_ and not self.dry_run:
            before = [h.to_dict() for h in open_]  # a scheduler may update the handles in place
            fresh = self.scheduler.status(open_)
            for h in fresh:
                self.handles[h.job_id] = h
            if [h.to_dict() for h in fresh] != before:  # polls of a quiet graph write nothing
                self.save()
        return self


def find_submission(run: str | Path) -> Path:
    """``submission.json`` of RUN: the submission folder, a run directory inside it, or the file."""
    p = Path(run)
    if p.is_file() and p.name == SUBMISSION_FILE:
        return p
    if not p.exists():
        raise UserError(f"{run}: no such submission folder")
    for cand in (p, *list(p.resolve().parents)[:2]):
        if (cand / SUBMISSION_FILE).is_file():
            return cand / SUBMISSION_FILE
    raise UserError(f"{run}: not a submission (no {SUBMISSION_FILE} here or in the two folders above; "
                    f"`distillctl submit RECIPE` creates one)")


def describe_run(run: str | Path) -> dict | None:
    """What a plain run directory (``distillctl distill`` / ``embed``'s output, not a submission) holds,
    for ``status``: ``None`` when RUN is not a run directory either.

    Keys: ``run_dir``, ``recipe``, ``stage`` (the manifest's), ``created``, ``ipc`` (the recipe's stages),
    ``sets`` (ipc values with a distilled set), ``checkpoints``, ``last_metrics`` (the last line of
    metrics.jsonl), ``evaluated``, ``baselines``, ``report``, ``state`` and ``next`` (the command that
    continues it, or ``None``)."""
    p = Path(run)
    if not p.is_dir() or not ((p / "manifest.json").is_file() or (p / "recipe.resolved.yaml").is_file()):
        return None
    p = p.resolve()
    try:
        manifest = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        manifest = {}
    ipc: list[int] = []

    try:
        recipe = yaml12.load((p / "recipe.resolved.yaml").read_text(encoding="utf-8")) or {}
        ipc = [int(x) for x in ((recipe.get("distill") or {}).get("ipc") or [])]
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):  # damaged: describe the rest
        recipe = {}
    sets = sorted(int(m.group(1)) for f in (p / "distilled").glob("ipc*.safetensors")
                  if (m := re.fullmatch(r"ipc(\d+)\.safetensors", f.name)))
    last = tail(p / "metrics.jsonl", 1)
    try:
        last_metrics = json.loads(last) if last else None
    except json.JSONDecodeError:
        last_metrics = None
    baselines = sorted(f.stem.removeprefix("baseline-") for f in (p / "eval").glob("baseline-*.json"))
    evaluated = (p / "eval" / "results.json").is_file()
    report = (p / "report.md").is_file()
    recipe_file = p / "recipe.resolved.yaml"
    if ipc and not set(ipc) <= set(sets):
        todo = [i for i in ipc if i not in sets]
        state = (f"distill unfinished: sets for ipc {', '.join(map(str, sets)) or 'none'}, "
                 f"missing {', '.join(map(str, todo))} (running, or interrupted)")
        nxt = f"distillctl distill {recipe_file} --resume {p}"
    elif sets and not evaluated:
        state, nxt = "distilled, not evaluated", f"distillctl eval {p}"
    elif evaluated and not report:
        state, nxt = "evaluated, no report", f"distillctl report {p}"
    elif report:
        state, nxt = "complete (report.md written)", None
    else:
        state, nxt = f"{manifest.get('stage') or 'unknown'} run", None
    return {"run_dir": str(p), "recipe": manifest.get("recipe_name") or recipe.get("name"),
            "stage": manifest.get("stage"), "created": manifest.get("created"), "ipc": ipc, "sets": sets,
            "checkpoints": len(list((p / "checkpoints").glob("*"))) if (p / "checkpoints").is_dir() else 0,
            "last_metrics": last_metrics, "evaluated": evaluated, "baselines": baselines, "report": report,
            "state": state, "next": nxt}


def run_text(info: dict) -> str:
    """:func:`describe_run` as lines for ``status``."""
    lines = [f"{info['run_dir']}: a {info['stage'] or ''} run directory of recipe {info['recipe']!r} "
             f"(not a submission: no jobs to follow)".replace("a  run", "a run"),
             f"  state:       {info['state']}",
             f"  sets:        {', '.join(f'ipc{i}' for i in info['sets']) or 'none yet'}"
             + (f" (recipe stages: {', '.join(map(str, info['ipc']))})" if info["ipc"] else ""),
             f"  checkpoints: {info['checkpoints']}"]
    m = info["last_metrics"]
    if m:
        keys = [k for k in ("ipc", "step", "loss", "val_accuracy", "best_val_accuracy", "event", "elapsed") if k in m]
        shown = ", ".join(f"{k} {m[k]:.4g}" if isinstance(m[k], float) else f"{k} {m[k]}" for k in keys)
        lines.append(f"  last metrics: {shown}")
    lines.append(f"  evaluated:   {'yes' if info['evaluated'] else 'no'}; baselines: "
                 f"{', '.join(info['baselines']) or 'none'}; report.md: {'yes' if info['report'] else 'no'}")
    if info["next"]:
        lines.append(f"  next: {info['next']}")
    return "\n".join(lines)


def make_scheduler(section: dict, registry=None):
    """The scheduler plugin named by a stored ``{name: ..., <options>}`` section."""

    registry = registry or get_registry()
    section = dict(section)
    info = registry.get("scheduler", section.pop("name"))
    return info.make(info.parse_options(section))


def default_scheduler_section() -> dict:
    """The ``scheduler`` section a recipe gets when it has none (the recipe schema's default)."""

    return Recipe.model_fields["scheduler"].default_factory().model_dump(mode="json")


def options_dict(sched) -> dict:
    """A scheduler's validated options as plain data (``{}`` for a scheduler without options)."""
    return sched.options.model_dump(mode="json") if sched.options is not None else {}


def hand_over(sub: Submission, jobs: Sequence[Job], attempt: int) -> None:
    """Submit ``jobs`` to the submission's scheduler and record their handles (attempt ``attempt``)."""
    handles = sub.scheduler.submit(list(jobs), sub.path)
    for h in handles:
        h.attempt = attempt
        sub.handles[h.job_id] = h
    sub.data["attempts"].append({"attempt": attempt, "time": time.time(), "jobs": [j.id for j in jobs]})
    sub.save()


def status_text(sub: Submission) -> str:
    """A plain summary for logs and tests: one line per job, then the tail of each failed job's log."""
    rows = sub.job_rows()
    w = max([len(r["id"]) for r in rows] + [3])
    lines = [f"{sub.path}: {sub.state} ({', '.join(f'{v} {k}' for k, v in sorted(sub.counts().items()))})"]
    for r in rows:
        extra = f"  {r['reason']}" if r["reason"] and r["state"] != "done" else ""
        lines.append(f"  {r['id']:<{w}}  {r['state']:<9}  {str(r['scheduler_id'] or '–'):<14}  "
                     f"{format_seconds(r['elapsed']):>7}{extra}")
    for r in rows:
        if r.get("log_tail"):
            lines.append(f"--- {r['id']}: last lines of {r['log']}")
            lines += ["  " + x for x in r["log_tail"].splitlines()]
    return "\n".join(lines)

"""submit: a recipe (or a sweep of it) as a graph of ``distillctl`` jobs, run by a scheduler plugin.

The graph of one recipe::

    embed ─┬─ distill-ipc1 ── distill-ipc5 ── distill-ipc10      (a Boost-DD chain: one job per stage,
           │      │               │               │               each resuming the run directory)
           │   eval-ipc1 ──── eval-ipc5 ───── eval-ipc10          (each set once its stage is done)
           ├─ baseline-random, baseline-full, baseline-majority   (recipe.baseline.kinds)
           └──────────────────────────────────────────── report   (after every eval and baseline)

``embed`` runs once per distinct dataset x encoder (its cache is shared); a baseline arm runs once
per distinct protocol (data, encoder, student, eval budget, seed, ipc values) and points of a sweep
that share it link to its results. Every job is a plain command line in its run directory, e.g.
``distillctl distill RUN/recipe.resolved.yaml --resume RUN --stage 5``, so it can be re-run by hand.

A submission lives in ``<runs_dir>/<name>/<id>/``: ``submission.json`` (points, jobs, scheduler
handles), ``logs/`` and, for one recipe, the run directory itself (``distilled/``, ``eval/``,
``report.md``); a sweep gets one run directory per point beside ``submission.json``
(``<id>/window=40/``). ``distillctl status RUN`` reads it from any shell.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from distillctl.errors import RunError, UserError
from distillctl.scheduling import (FINAL, Job, JobHandle, check_graph, downstream, format_seconds, overall_state,
                                   tail)

SUBMISSION_FILE = "submission.json"
#: seconds between two status polls while following a submission (--wait)
POLL_SECONDS = {"local": 0.5}
DEFAULT_POLL_SECONDS = 5.0
#: log lines shown for a failed job by `status`
LOG_TAIL_LINES = 15


# -- sweeps ---------------------------------------------------------------------------------------------

def split_values(text: str) -> list[str]:
    """``1,5,[1, 5],{a: 1}`` -> ``['1', '5', '[1, 5]', '{a: 1}']``: commas inside brackets or quotes stay."""
    out, depth, cur, quote = [], 0, "", None
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_sweep(item: str) -> tuple[str, list[str]]:
    """``distill.unroll.window=20,40`` -> (``distill.unroll.window``, [``20``, ``40``])."""
    if "=" not in item:
        raise UserError(f"--sweep {item!r}: expected KEY.PATH=V1,V2,..., e.g. distill.unroll.window=20,40")
    key, raw = item.split("=", 1)
    key = key.strip()
    values = [v for v in split_values(raw)]
    if not key or not raw.strip() or any(v == "" for v in values):
        raise UserError(f"--sweep {item!r}: expected KEY.PATH=V1,V2,... with non-empty values")
    if len(set(values)) != len(values):
        raise UserError(f"--sweep {item!r}: a value is repeated")
    return key, values


def _slug(value: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", value).strip("-.")
    return s or "x"


@dataclass
class Point:
    """One configuration of a sweep (the recipe itself when there is no sweep)."""

    name: str  # directory name inside the submission ('' for a single recipe)
    values: dict[str, str]  # sweep key -> value (as typed)
    recipe: Any  # the validated Recipe


def expand_points(recipe_path: str | Path, overrides: Sequence[str] = (), sweeps: Sequence[str] = (),
                  scheduler: str | None = None, registry=None) -> list[Point]:
    """Validate the recipe with ``--set`` values and every point of the cartesian product of ``--sweep``s."""
    from distillctl.recipe import RecipeError, apply_overrides, read_recipe_file, validate_recipe

    path = Path(recipe_path)
    base = apply_overrides(read_recipe_file(path), list(overrides), "--set")
    if scheduler is not None:
        current = base.get("scheduler")
        name = current.get("name") if isinstance(current, dict) else current
        if name != scheduler:  # another scheduler's options would not validate: start from its defaults
            base["scheduler"] = {"name": scheduler}
    parsed = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in parsed]
    if len(set(keys)) != len(keys):
        raise UserError(f"--sweep: key {next(k for k in keys if keys.count(k) > 1)!r} is swept twice; "
                        f"give all its values in one --sweep")
    for k in keys:
        if k.split(".")[0] in ("name", "runs_dir", "scheduler"):
            raise UserError(f"--sweep {k}: the name, runs_dir and scheduler are shared by every point of a sweep")
    # short labels: the last part of each key, unless two keys end the same
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [t if tails.count(t) == 1 else k for t, k in zip(tails, keys)]

    points: list[Point] = []
    problems: list[str] = []
    combos = list(itertools.product(*[vals for _, vals in parsed])) if parsed else [()]
    used: set[str] = set()
    for combo in combos:
        values = dict(zip(keys, combo))
        data = apply_overrides(base, [f"{k}={v}" for k, v in values.items()], "--sweep")
        label = "_".join(f"{lab}={_slug(v)}" for lab, v in zip(labels, combo))
        try:
            recipe = validate_recipe(data, source=str(path), base_dir=path.parent, registry=registry)
        except RecipeError as exc:
            where = f" (sweep point {', '.join(f'{k}={v}' for k, v in values.items())})" if values else ""
            problems += [p + where for p in exc.problems]
            continue
        name, n = label, 2
        while name in used:
            name, n = f"{label}-{n}", n + 1
        used.add(name)
        points.append(Point(name, values, recipe))
    if problems:
        raise RecipeError(problems)
    return points


# -- the graph ------------------------------------------------------------------------------------------

def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def embed_key(recipe) -> str:
    """What the embedding cache of a recipe depends on: one ``embed`` job per distinct key."""
    d = recipe.to_dict()
    return _canonical({k: d.get(k) for k in ("dataset", "encoder", "embed", "seed")})


def baseline_key(recipe, kind: str) -> str:
    """What a baseline arm's numbers depend on: one job per distinct key (points of a sweep share it)."""
    from distillctl.baselines import PROTOCOL_SECTIONS, SUBSET_KINDS

    d = recipe.to_dict()
    key = {k: d.get(k) for k in PROTOCOL_SECTIONS}
    key["kind"] = kind
    if kind in SUBSET_KINDS:
        key["ipc"] = sorted(recipe.baseline.ipc or recipe.distill.ipc)
    return _canonical(key)


@dataclass
class Graph:
    jobs: list[Job]
    run_dirs: dict[str, Path]  # point name -> run directory
    links: list[tuple[Path, Path]] = field(default_factory=list)  # (link, target): shared baseline results
    reports: dict[str, Path] = field(default_factory=dict)  # point name -> report.md


def build_graph(points: Sequence[Point], folder: Path, exe: Sequence[str] = ("distillctl",)) -> Graph:
    """The job graph of a submission in ``folder`` (absolute paths; nothing is written).

    ``exe`` is the command that starts the CLI in a job (``distillctl``; tests use a wrapper).
    """
    folder = Path(folder).resolve()
    exe = list(exe)
    single = len(points) == 1 and not points[0].values
    jobs: list[Job] = []
    run_dirs: dict[str, Path] = {}
    links: list[tuple[Path, Path]] = []
    reports: dict[str, Path] = {}

    # 1. embed: once per distinct dataset x encoder (x embed settings x seed).
    embed_ids: dict[str, str] = {}
    keys = list(dict.fromkeys(embed_key(p.recipe) for p in points))
    for i, key in enumerate(keys):
        owner = next(p for p in points if embed_key(p.recipe) == key)
        jid = "embed" if len(keys) == 1 else f"embed-{i + 1}"
        run = folder if single else folder / owner.name
        jobs.append(Job(id=jid, argv=[*exe, "embed", str(run / "recipe.resolved.yaml")], cwd=str(folder),
                        log=str(folder / "logs" / f"{jid}.log"), name=jid, kind="embed", group="embed"))
        embed_ids[key] = jid

    baseline_owner: dict[str, tuple[str, Path]] = {}  # baseline key -> (job id, results file)
    for p in points:
        run = folder if single else folder / p.name
        run_dirs[p.name] = run
        prefix = "" if single else f"{p.name}/"
        recipe_file = str(run / "recipe.resolved.yaml")
        logs = run / "logs"
        emb = embed_ids[embed_key(p.recipe)]
        chain = list(p.recipe.distill.ipc)

        # 2. distill: one job per Boost-DD stage, each continuing the run directory (--resume), so a
        #    requeued or retried stage picks up its newest checkpoint and the finished stages before it.
        prev = None
        eval_prev = None
        eval_ids = []
        for si, ipc in enumerate(chain):
            did = f"{prefix}distill-ipc{ipc}"
            argv = [*exe, "distill", recipe_file, "--resume", str(run)]
            if len(chain) > 1:
                argv += ["--stage", str(ipc)]
            jobs.append(Job(id=did, argv=argv, cwd=str(run), log=str(logs / f"distill-ipc{ipc}.log"),
                            name=did, kind="distill", group=f"distill-{si}",
                            depends_on=[emb] + ([prev] if prev else []), requeue=True))
            # 3. eval of the stage's set as soon as it exists. The evals of a run share its
            #    eval/results.json, so they run one after another.
            eid = f"{prefix}eval-ipc{ipc}"
            jobs.append(Job(id=eid, argv=[*exe, "eval", str(run / "distilled" / f"ipc{ipc}.safetensors")],
                            cwd=str(run), log=str(logs / f"eval-ipc{ipc}.log"), name=eid, kind="eval",
                            group=f"eval-{si}", depends_on=[did] + ([eval_prev] if eval_prev else [])))
            prev, eval_prev = did, eid
            eval_ids.append(eid)

        # 4. baselines: one job per distinct protocol; other points link to its results file.
        base_ids = []
        for kind in p.recipe.baseline.kinds:
            key = baseline_key(p.recipe, kind)
            results = run / "eval" / f"baseline-{kind}.json"
            if key in baseline_owner:
                bid, target = baseline_owner[key]
                links.append((results, target))
            else:
                bid = f"{prefix}baseline-{kind}"
                jobs.append(Job(id=bid, argv=[*exe, "baseline", recipe_file, "--kind", kind, "--run-dir", str(run)],
                                cwd=str(run), log=str(logs / f"baseline-{kind}.log"), name=bid, kind="baseline",
                                group=f"baseline-{kind}", depends_on=[emb]))
                baseline_owner[key] = (bid, results)
            base_ids.append(bid)

        # 5. report: after every eval and baseline of the point.
        rid = f"{prefix}report"
        jobs.append(Job(id=rid, argv=[*exe, "report", str(run)], cwd=str(run), log=str(logs / "report.log"),
                        name=rid, kind="report", group="report", depends_on=eval_ids + base_ids))
        reports[p.name] = run / "report.md"
    check_graph(jobs)
    return Graph(jobs, run_dirs, links, reports)


# -- the submission --------------------------------------------------------------------------------------

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
        from distillctl.runs import atomic_write_json

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
        (``scheduler.log_files(handle)``; just ``handle.log`` for a scheduler without one) that has any."""
        files = getattr(self.scheduler, "log_files", None)
        if callable(files):
            paths = files(handle)
        else:  # a scheduler that does not say: the log file of the job
            paths = [handle.log or next((j.log for j in self.jobs if j.id == handle.job_id), None)]
        for path in paths:
            text = tail(path, lines)
            if text:
                return text
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


def make_scheduler(section: dict, registry=None):
    """The scheduler plugin named by a stored ``{name: ..., <options>}`` section."""
    from distillctl.plugins import get_registry

    registry = registry or get_registry()
    section = dict(section)
    info = registry.get("scheduler", section.pop("name"))
    return info.factory(info.parse_options(section))


# -- the library functions ------------------------------------------------------------------------------

def submit(recipe_path: str | Path, *, overrides: Sequence[str] = (), sweeps: Sequence[str] = (),
           scheduler: str | None = None, dry_run: bool = False, wait: bool = False,
           quiet: bool | None = None, argv: list[str] | None = None,
           exe: Sequence[str] = ("distillctl",)) -> Submission:
    """Expand a recipe (and sweeps) into jobs and hand them to the scheduler.

    ``scheduler`` overrides the recipe's ``scheduler.name`` (with that scheduler's default options).
    ``dry_run``: build everything, write nothing (``Submission.description`` holds the graph and, for
    SLURM, the batch scripts). ``wait``: follow the jobs to the end (live progress) and raise
    :class:`RunError` when one failed. ``exe``: how a job starts the CLI (default ``distillctl``, found
    on the job's PATH). Returns the :class:`Submission` (its folder in ``.path``).
    """
    from distillctl.runs import create_run_dir, new_run_id

    points = expand_points(recipe_path, overrides, sweeps, scheduler)
    first = points[0].recipe
    sched_section = first.scheduler.model_dump(mode="json")
    folder = (Path(first.runs_dir) / first.name / new_run_id()).resolve()
    graph = build_graph(points, folder, exe)
    sched = make_scheduler(sched_section)
    data = {
        "version": 1, "id": folder.name, "name": first.name, "created": time.time(),
        "recipe": str(Path(recipe_path).resolve()), "overrides": list(overrides), "sweeps": list(sweeps),
        "command": list(argv if argv is not None else sys.argv), "cwd": os.getcwd(),
        "scheduler": sched_section,
        "points": [{"name": p.name, "values": p.values, "run_dir": str(graph.run_dirs[p.name])} for p in points],
        "attempts": [],
    }
    sub = Submission(folder, data, graph.jobs, {}, scheduler=sched, dry_run=dry_run)
    if dry_run:
        sub.description = describe_graph(sub, graph) + "\n" + sched.describe(graph.jobs, folder)
        return sub

    if hasattr(sched, "preflight"):  # e.g. the slurm client commands are missing: fail before writing
        sched.preflight()
    # Run directories first (resolved recipe + manifest): every job reads its recipe from there.
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    for p in points:
        create_run_dir(p.recipe, stage="submit", run_dir=graph.run_dirs[p.name], argv=data["command"],
                       extra_manifest={"submission": str(folder), "sweep_point": p.values or None})
    for link, target in graph.links:
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to(os.path.relpath(target, link.parent))
    sub.save()  # the graph is on disk before anything runs: `status` works at once
    _hand_over(sub, graph.jobs, attempt=1)
    if wait:
        follow(sub, quiet=quiet)
    return sub


def submit_jobs(jobs: Sequence[Job], folder: str | Path, *, scheduler: dict | None = None, name: str = "jobs",
                wait: bool = False, quiet: bool | None = None) -> Submission:
    """Submit any job graph (command lines with dependencies) as a submission in ``folder``.

    The same machinery as :func:`submit` without a recipe: ``status``, ``cancel`` and
    ``retry_failed`` work on the folder afterwards. ``scheduler`` is a section such as
    ``{"name": "local", "workers": 2}`` (default: local).
    """
    section = dict(scheduler or {"name": "local"})
    sched = make_scheduler(section)
    section = {"name": section["name"], **_options_dict(sched)}
    check_graph(jobs)
    if hasattr(sched, "preflight"):
        sched.preflight()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = {"version": 1, "id": folder.name, "name": name, "created": time.time(), "recipe": None,
            "overrides": [], "sweeps": [], "command": list(sys.argv), "cwd": os.getcwd(), "scheduler": section,
            "points": [], "attempts": []}
    sub = Submission(folder, data, list(jobs), {}, scheduler=sched)
    sub.save()
    _hand_over(sub, list(jobs), attempt=1)
    if wait:
        follow(sub, quiet=quiet)
    return sub


def _options_dict(sched) -> dict:
    opts = getattr(sched, "options", None)
    return opts.model_dump(mode="json") if opts is not None and hasattr(opts, "model_dump") else {}


def quiet_of(quiet: bool | None) -> bool:
    from distillctl.console import is_quiet

    return is_quiet() if quiet is None else quiet


def _hand_over(sub: Submission, jobs: list[Job], attempt: int) -> None:
    """Submit ``jobs`` to the scheduler and record their handles."""
    handles = sub.scheduler.submit(jobs, sub.path)
    for h in handles:
        h.attempt = attempt
        sub.handles[h.job_id] = h
    sub.data["attempts"].append({"attempt": attempt, "time": time.time(), "jobs": [j.id for j in jobs]})
    sub.save()


def status(run: str | Path) -> Submission:
    """The submission of RUN with fresh job states (written back to ``submission.json``)."""
    return Submission.load(run).refresh()


def cancel(run: str | Path) -> Submission:
    """Cancel every job of RUN that has not finished; returns the refreshed submission."""
    sub = status(run)
    open_ = [h for h in sub.handles.values() if not h.final]
    if open_:
        sub.scheduler.cancel(open_)  # schedulers may note the request in the handles (the same objects)
        sub.save()
        deadline = time.time() + 30
        while True:  # SLURM takes a moment to report the cancellation
            sub.refresh()
            if all(sub.handles[h.job_id].final for h in open_) or time.time() > deadline:
                break
            time.sleep(0.5)
    return sub


def retry_failed(run: str | Path, *, wait: bool = False, quiet: bool | None = None) -> Submission:
    """Re-submit the failed and cancelled jobs of RUN and everything downstream of them.

    Finished jobs keep their results; dependencies on them count as met. Distill stages continue
    from their newest checkpoint (``--resume``). A submission with jobs still pending or running is
    refused (wait for it, or cancel it first).
    """
    sub = status(run)
    busy = [h.job_id for h in sub.handles.values() if not h.final]
    if busy:
        raise UserError(f"{sub.path}: {len(busy)} job(s) still pending or running ({', '.join(busy[:3])}"
                        f"{', ...' if len(busy) > 3 else ''}); wait for them or `distillctl cancel {sub.path}` first")
    bad = [j.id for j in sub.jobs if sub.handles.get(j.id) is None or sub.handles[j.id].state in ("failed", "cancelled")]
    if not bad:
        raise UserError(f"{sub.path}: nothing to retry: every job is done")
    again = downstream(sub.jobs, bad)
    jobs = [j for j in sub.jobs if j.id in again]
    attempt = max((h.attempt for h in sub.handles.values()), default=1) + 1
    _hand_over(sub, jobs, attempt)
    if wait:
        follow(sub, quiet=quiet)
    return sub


def follow(sub: Submission, *, quiet: bool | None = None, poll: float | None = None,
           timeout: float | None = None) -> Submission:
    """Poll until every job is final, showing progress; :class:`RunError` when a job failed."""
    quiet = quiet_of(quiet)
    poll = poll or POLL_SECONDS.get(sub.scheduler.name, DEFAULT_POLL_SECONDS)
    total = len(sub.handles)
    t0 = time.time()
    seen: dict[str, str] = {k: h.state for k, h in sub.handles.items()}
    live = None
    if not quiet and sys.stderr.isatty():
        from rich.live import Live

        from distillctl.console import err_console

        live = Live(_progress_table(sub), console=err_console(), refresh_per_second=4, transient=False)
        live.start()
    try:
        while True:
            sub.refresh()
            if live is not None:
                live.update(_progress_table(sub))
            elif not quiet:
                for jid, h in sub.handles.items():
                    if seen.get(jid) != h.state:
                        seen[jid] = h.state
                        if h.state == "pending":
                            continue
                        done = sum(x.state in FINAL for x in sub.handles.values())
                        el = format_seconds(h.elapsed()) if h.final else ""
                        extra = f" ({h.reason})" if h.reason and h.state != "done" else ""
                        _say(f"[{done}/{total}] {h.state:<9} {jid} {el}{extra}".rstrip())
            if all(h.final for h in sub.handles.values()):
                break
            if timeout is not None and time.time() - t0 > timeout:
                raise RunError(f"{sub.path}: jobs still running after {timeout:.0f} s")
            time.sleep(poll)
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
            live = None
        _say(f"stopped following; the jobs go on. `distillctl status {sub.path}` shows them, "
             f"`distillctl cancel {sub.path}` stops them")
        raise
    finally:
        if live is not None:
            live.stop()
    failed = [jid for jid, h in sub.handles.items() if h.state == "failed"]
    if failed:
        lines = []
        for jid in failed[:3]:
            lines.append(f"{jid}: {sub.handles[jid].reason or 'failed'}; log {sub.handles[jid].log}")
            lines += ["    " + x for x in sub.log_tail(sub.handles[jid], 5).splitlines()]
        skipped = sum(h.state == "cancelled" for h in sub.handles.values())
        raise RunError(f"{len(failed)} job(s) failed, {skipped} skipped, in {format_seconds(time.time() - t0)}:\n"
                       + "\n".join(lines) + f"\nretry them with `distillctl submit --retry-failed {sub.path}`")
    return sub


def _say(msg: str) -> None:
    from distillctl.console import err_console

    err_console().print(msg, highlight=False, markup=False)


_STATE_STYLE = {"pending": "dim", "running": "bold cyan", "done": "green", "failed": "bold red", "cancelled": "yellow"}


def _progress_table(sub: Submission):
    from rich.markup import escape
    from rich.table import Table

    counts = sub.counts()
    done = sum(counts.get(s, 0) for s in FINAL)
    title = (f"{sub.path}  {done}/{len(sub.handles)} finished  "
             + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    t = Table(title=escape(title), title_justify="left", show_edge=False, box=None)
    for col in ("job", "state", "elapsed", "scheduler id"):
        t.add_column(col)
    for row in sub.job_rows(log_tails=False):  # redrawn every poll: no log reading
        if row["state"] in ("pending", "done") and len(sub.handles) > 30:
            continue  # big sweeps: only what moves
        style = _STATE_STYLE.get(row["state"], "")
        t.add_row(escape(row["id"]), f"[{style}]{row['state']}[/]", format_seconds(row["elapsed"]),
                  escape(str(row["scheduler_id"] or "–")))
    return t


def describe_graph(sub: Submission, graph: Graph) -> str:
    """The jobs, their dependencies and command lines, as text (``--dry-run``)."""
    lines = [f"submission {sub.path} (dry run: nothing was written or started)",
             f"scheduler: {sub.data['scheduler']['name']}; {len(graph.jobs)} jobs for "
             f"{len(sub.data['points'])} point(s)"]
    for p in sub.data["points"]:
        if p["values"]:
            lines.append(f"  point {p['name']}: " + ", ".join(f"{k}={v}" for k, v in p["values"].items()))
    lines.append("")
    for j in graph.jobs:
        after = f"   (after {', '.join(j.depends_on)})" if j.depends_on else ""
        lines.append(f"{j.id}{after}")
        lines.append(f"    $ {j.command_line()}")
    for link, target in graph.links:
        lines.append(f"link {link} -> {target}")
    return "\n".join(lines) + "\n"


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

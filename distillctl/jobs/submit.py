"""submit: a recipe (or a sweep of it) as a graph of ``distillctl`` jobs, run by a scheduler plugin.

This module is the entry point of the library calls behind ``distillctl submit``, ``status`` and
``cancel``; each part of the work lives in its own module:

- :mod:`distillctl.jobs.sweeps`: ``--sweep`` values, and the validated recipe of every sweep point;
- :mod:`distillctl.jobs.jobgraph`: the graph of jobs (embed, distill stages, eval, baselines, report);
- :mod:`distillctl.jobs.submission`: the submission folder and ``submission.json`` (state on disk);
- :mod:`distillctl.jobs.follow`: polling a submission until it is finished (``--wait``).

How a submission looks on the terminal is the CLI's business (:mod:`distillctl.jobs.cli_render`). Which
scheduler runs the jobs comes from the recipe's ``scheduler`` section (or ``--scheduler``); the core
names none.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from distillctl.errors import UserError
from distillctl.jobs.follow import FollowView, follow
from distillctl.jobs.jobgraph import Graph, build_graph, describe_graph
from distillctl.plugins import get_registry, with_registry
from distillctl.runs import create_run_dir, new_run_id
from distillctl.scheduling import Job, check_graph, downstream
from distillctl.jobs.submission import (Submission,
                                   default_scheduler_section, hand_over, make_scheduler,
                                   options_dict)
from distillctl.jobs.sweeps import Point, expand_points


@with_registry  # registry=: run with that plugin registry (default: get_registry())
def submit(recipe_path: str | Path, *, overrides: Sequence[str] = (), sweeps: Sequence[str] = (),
           scheduler: str | None = None, dry_run: bool = False, wait: bool = False,
           quiet: bool | None = None, argv: list[str] | None = None,
           exe: Sequence[str] = ("distillctl",), view: FollowView | None = None) -> Submission:
    """Expand a recipe (and sweeps) into jobs and hand them to the scheduler.

    ``scheduler`` overrides the recipe's ``scheduler.name`` (with that scheduler's default options).
    ``dry_run``: build everything, write nothing (``Submission.description`` holds the graph and, for
    SLURM, the batch scripts). ``wait``: follow the jobs to the end (progress shown by ``view``, see
    :func:`~distillctl.jobs.follow.follow`) and raise :class:`RunError` when one failed. ``exe``: how a job
    starts the CLI (default ``distillctl``, found on the job's PATH). Returns the :class:`Submission`
    (its folder in ``.path``).
    """
    # 1. Every point of the sweep as a validated recipe; the first one names the submission.
    points = expand_points(recipe_path, overrides, sweeps, scheduler)
    check_inputs(points)  # a missing data file fails here, not minutes later in the embed job
    first = points[0].recipe
    folder = (Path(first.runs_dir) / first.name / new_run_id()).resolve()

    # 2. The jobs, and the scheduler the recipe asks for.
    graph = build_graph(points, folder, exe)
    sched_section = first.scheduler.model_dump(mode="json")
    sched = make_scheduler(sched_section)

    # 3. The submission as it will be stored.
    data = _submission_data(folder, first.name, sched_section, argv,
                            recipe=str(Path(recipe_path).resolve()), overrides=overrides, sweeps=sweeps,
                            points=[{"name": p.name, "values": p.values, "run_dir": str(graph.run_dirs[p.name])}
                                    for p in points])
    sub = Submission(folder, data, graph.jobs, {}, scheduler=sched, dry_run=dry_run)
    if not dry_run:
        sched.preflight()  # the scheduler can run anything (e.g. its client commands exist): before writing
    # 3b. Resources the scheduler takes and the recipe leaves open (SLURM --time / --mem) from a plan.
    planned = _planned_resources(points, graph, sched, quiet)
    if dry_run:
        sub.description = (describe_graph(graph, folder, sched_section["name"], points) + "\n"
                           + "".join(line + "\n" for line in planned) + ("\n" if planned else "")
                           + sched.describe(graph.jobs, folder))
        return sub

    # 4. Write the run directories (every job reads its recipe from there), open the trackers' runs (MLflow:
    #    a parent and a child per point; the jobs of a point log into its run), then start the jobs.
    _write_run_dirs(points, graph, folder, argv=data["command"])
    _tracking_env(points, graph, folder)
    sub.save()  # the graph is on disk before anything runs: `status` works at once
    hand_over(sub, graph.jobs, attempt=1)

    # 5. Optionally follow them to the end.
    if wait:
        follow(sub, quiet=quiet, view=view)
    return sub


def submit_jobs(jobs: Sequence[Job], folder: str | Path, *, scheduler: dict | None = None, name: str = "jobs",
                wait: bool = False, quiet: bool | None = None, view: FollowView | None = None) -> Submission:
    """Submit any job graph (command lines with dependencies) as a submission in ``folder``.

    The same machinery as :func:`submit` without a recipe: ``status``, ``cancel`` and
    ``retry_failed`` work on the folder afterwards. ``scheduler`` is a section such as
    ``{"name": "slurm", "partition": "gpu"}`` (default: a recipe's default ``scheduler`` section).
    """
    section = dict(scheduler or default_scheduler_section())
    sched = make_scheduler(section)
    section = {"name": section["name"], **options_dict(sched)}
    check_graph(jobs)
    sched.preflight()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = _submission_data(folder, name, section, list(sys.argv))
    sub = Submission(folder, data, list(jobs), {}, scheduler=sched)
    sub.save()
    hand_over(sub, list(jobs), attempt=1)
    if wait:
        follow(sub, quiet=quiet, view=view)
    return sub


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


def retry_failed(run: str | Path, *, wait: bool = False, quiet: bool | None = None,
                 view: FollowView | None = None) -> Submission:
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
    hand_over(sub, jobs, attempt)
    if wait:
        follow(sub, quiet=quiet, view=view)
    return sub


# -- steps of submit() ----------------------------------------------------------------------------------

def check_inputs(points: Sequence[Point]) -> None:
    """Check what every job will read before anything is submitted: each distinct dataset and encoder
    of the sweep is built and asked for its ``identity()`` (data files found and hashed, model found),
    which is the embed job's own first step. Recipe validity of every point was checked by
    :func:`expand_points`. Raises one :class:`UserError` listing every problem, each with its point."""
    registry = get_registry()
    problems: list[str] = []
    seen: set[str] = set()
    for p in points:
        for kind in ("dataset", "encoder"):
            section = getattr(p.recipe, kind)
            key = kind + _canonical_section(section)
            if key in seen:
                continue
            seen.add(key)
            try:
                registry.build(kind, section).identity()
            except UserError as exc:
                where = f" (sweep point {p.name})" if p.values else ""
                problems += [line + where for line in str(exc).splitlines()]
    if problems:
        raise UserError("\n".join(problems) + "\nnothing was submitted")


def _canonical_section(section) -> str:
    return json.dumps(section.model_dump(mode="json"), sort_keys=True, default=str)


def _submission_data(folder: Path, name: str, scheduler: dict, argv: list[str] | None, *, recipe: str | None = None,
                     overrides: Sequence[str] = (), sweeps: Sequence[str] = (), points: list | None = None) -> dict:
    """The contents of a new ``submission.json`` (jobs and handles are added by ``Submission.save``)."""
    return {
        "version": 1, "id": folder.name, "name": name, "created": time.time(),
        "recipe": recipe, "overrides": list(overrides), "sweeps": list(sweeps),
        "command": list(argv if argv is not None else sys.argv), "cwd": os.getcwd(),
        "scheduler": scheduler, "points": list(points or []), "attempts": [],
    }


def _planned_resources(points: Sequence[Point], graph: Graph, sched, quiet: bool | None) -> list[str]:
    """SLURM's --time / --mem from :func:`distillctl.planning.apply_plan` where the recipe does not set them (any
    scheduler whose options have ``time`` and ``mem``); the lines the dry run prints about it."""
    from distillctl.planning import apply_plan

    # the recipe's options (not the scheduler's, rebuilt from a full dump): they know which fields it sets
    options = points[0].recipe.scheduler.options
    if type(options) is not type(getattr(sched, "options", None)):
        return []
    try:
        return apply_plan(points, graph.jobs, options, quiet=quiet)
    except Exception as exc:  # a plan is a convenience: the scheduler's own defaults still work
        from distillctl.console import info

        line = (f"--time and --mem: the scheduler's defaults (no plan: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})")
        info(f"warning: {line}")
        return [line]


def _tracking_env(points: Sequence[Point], graph: Graph, folder: Path) -> None:
    """Give every job of a point the environment its trackers asked for (:func:`distillctl.tracking.submission_env`):
    jobs of a point run in its run directory; the sweep's comparison job (in ``folder``) gets the parent's."""
    from distillctl.tracking import submission_env

    env = submission_env(points, graph.run_dirs, points[0].recipe.name, f"submit {folder.name}")
    if not env:
        return
    by_dir = {str(graph.run_dirs[p.name]): env.get(p.name, {}) for p in points}
    by_dir.setdefault(str(folder), env.get("__parent__", {}))
    for job in graph.jobs:
        job.env.update(by_dir.get(job.cwd, {}))


def _write_run_dirs(points: Sequence[Point], graph: Graph, folder: Path, argv: list[str]) -> None:
    """The submission folder, one run directory per point (resolved recipe + manifest), shared-baseline links."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    for p in points:
        create_run_dir(p.recipe, stage="submit", run_dir=graph.run_dirs[p.name], argv=argv,
                       extra_manifest={"submission": str(folder), "sweep_point": p.values or None})
    for link, target in graph.links:
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to(os.path.relpath(target, link.parent))

"""The job graph of a submission: which ``distillctl`` command lines run, in which order.

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
Building the graph writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from distillctl.evaluation.baselines import PROTOCOL_SECTIONS
from distillctl.evaluation.subsets import SUBSET_KINDS
from distillctl.jobs.sweeps import Point
from distillctl.recipe import embed_key
from distillctl.scheduling import check_graph, Job


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def baseline_key(recipe, kind: str) -> str:
    """What a baseline arm's numbers depend on: one job per distinct key (points of a sweep share it)."""

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


# ~85 lines on purpose: steps 1-6 are the graph in the order its jobs run; split, a reader would jump between them
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
    # 6. a sweep: one comparison report of every point, after all of them (distillctl.reporting.compare)
    if not single:
        point_reports = [j.id for j in jobs if j.kind == "report"]
        jobs.append(Job(id="compare", argv=[*exe, "report", str(folder)], cwd=str(folder),
                        log=str(folder / "logs" / "compare.log"), name="compare", kind="report", group="compare",
                        depends_on=point_reports))
        reports["compare"] = folder / "comparison.md"
    check_graph(jobs)
    return Graph(jobs, run_dirs, links, reports)


def describe_graph(graph: Graph, folder: Path, scheduler: str, points: Sequence[Point]) -> str:
    """The jobs, their dependencies and command lines, as text (``submit --dry-run``)."""
    lines = [f"submission {folder} (dry run: nothing was written or started)",
             f"scheduler: {scheduler}; {len(graph.jobs)} jobs for {len(points)} point(s)"]
    for p in points:
        if p.values:
            lines.append(f"  point {p.name}: " + ", ".join(f"{k}={v}" for k, v in p.values.items()))
    lines.append("")
    for j in graph.jobs:
        after = f"   (after {', '.join(j.depends_on)})" if j.depends_on else ""
        lines.append(f"{j.id}{after}")
        lines.append(f"    $ {j.command_line()}")
    for link, target in graph.links:
        lines.append(f"link {link} -> {target}")
    return "\n".join(lines) + "\n"

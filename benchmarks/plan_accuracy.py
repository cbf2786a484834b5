"""Honest forecasts: `distillctl plan` each recipe, then run its jobs, and compare forecast with actual.

For every recipe given: (1) ``distillctl plan RECIPE --json`` (with the same ``--set`` overrides, in the jobs'
environment) forecasts every job of the graph ``submit`` would run (wall time and peak resident memory; the
wall time of the plan command itself is recorded); (2) the same jobs (the same
command lines, run directories and environment as a ``submit`` with the local scheduler: its ``threads``) run
one after another, each a child process whose wall time and peak resident set (``ru_maxrss`` of the job's command, read by a small launcher process)
are recorded; (3) a table of forecast vs actual per job, with the error in %.

Targets (issue 23): wall time within +-30 %, peak memory within +-20 % for every job; plan <= 30 s per recipe.

The jobs run one at a time, so their times are not disturbed by each other (they are by whatever else runs on
the machine: say so when reporting). Results are appended as JSON lines to ``--out`` as each job ends, so a run
that is stopped keeps what it measured.

    nice -n 5 python benchmarks/plan_accuracy.py recipes/quickstart.yaml --out benchmarks/results/plan_accuracy.jsonl
    python benchmarks/plan_accuracy.py --table benchmarks/results/plan_accuracy.jsonl     # the table again
    python benchmarks/plan_accuracy.py recipes/quickstart.yaml --replan benchmarks/results/plan_accuracy.jsonl

``--replan`` checks a change to the forecasts without running the jobs again: it plans each recipe now and
compares with the actual walls and peaks recorded earlier (the latest row per job with the same ``--set``).
Peaks do not depend on the load; walls do, so compare those only on a machine as loaded as the record's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

WALL_TARGET, MEM_TARGET = 0.30, 0.20


#: runs the job's command line and prints the peak resident set of that command (KiB): measured through this
#: small launcher because a child forked from the benchmark process itself starts with the benchmark's pages
#: (hundreds of MiB after plan), and ru_maxrss would count them
LAUNCH = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
          "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def run_job(job, env: dict) -> tuple[float, int, int]:
    """(wall seconds, peak resident bytes, exit code) of one job, its output appended to its log."""
    import subprocess

    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "ab") as log:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", LAUNCH, *job.argv], cwd=job.cwd, env={**env, **job.env},
                              stdout=log, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        log.write(proc.stderr)
    try:
        peak = int(proc.stderr.decode().strip().splitlines()[-1]) * 1024
    except (ValueError, IndexError):
        peak = 0
    return wall, peak, proc.returncode


def job_env(recipe) -> dict:
    """The environment of the recipe's jobs, as its local scheduler gives it (its ``threads``, else each job's
    share of the machine with ``workers`` at once), quiet."""
    from distillctl_plugins.schedulers.local import job_environment

    opts = recipe.scheduler.options
    env = job_environment(os.environ, getattr(opts, "threads", None), getattr(opts, "workers", None) or 1)
    env["DISTILLCTL_QUIET"] = "1"
    return env


def plan_env() -> dict:
    """The environment of `distillctl plan`: a user's shell (no thread count forced: plan must find the jobs'
    own, as the scheduler gives them), quiet, this interpreter's scripts first."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["DISTILLCTL_QUIET"] = "1"
    return env


def run_plan(recipe_path: str, sets: list[str], env: dict) -> tuple[dict | None, float, str]:
    """(the plan's JSON, wall seconds of the command, error text) of `distillctl plan RECIPE --set ... --json`."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "distillctl"), "plan", recipe_path, "--json"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        return None, seconds, f"exit {out.returncode}: {out.stderr.strip()[-400:]}"
    return json.loads(out.stdout), seconds, ""


def plan_only(recipes: list[str], sets: list[str], out: Path | None) -> str:
    """Time `distillctl plan` alone on each recipe (one after another); a markdown table."""
    lines = ["| recipe | `plan` wall s | load avg before → after | measurement phases (s) | result |",
             "|---|---:|---|---|---|"]
    for recipe in recipes:
        l0 = os.getloadavg()[0]
        forecast, seconds, err = run_plan(recipe, sets, plan_env())
        l1 = os.getloadavg()[0]
        phases = ", ".join(f"{k} {v:g}" for k, v in (forecast or {}).get("measurement_phases", {}).items())
        total = "" if forecast is None else f"{len(forecast['jobs'])} jobs, {forecast['total_seconds'] / 60:.1f} min forecast"
        lines.append(f"| {Path(recipe).name} | {seconds:.1f} | {l0:.1f} → {l1:.1f} | {phases} | {total or err} |")
        print(lines[-1], flush=True)
        if out is not None:
            with open(out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"recipe": recipe, "sets": sets, "kind": "plan-only", "plan_seconds": round(seconds, 2),
                                     "load_before": l0, "load_after": l1, "error": err, "plan": forecast,
                                     "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
    return "\n".join(lines)


def plan_recipe(recipe_path: str, sets: list[str], runs_dir: Path, only: list[str] | None = None) -> dict | None:
    """Plan one recipe as a user runs it and lay out its run folder; what `run_jobs` needs. None if plan failed
    or (``only``) the recipe has none of those jobs: each job id it lacks is named, with the ones it has."""
    from distillctl.jobs.jobgraph import build_graph
    from distillctl.jobs.submit import _write_run_dirs
    from distillctl.jobs.sweeps import expand_points
    from distillctl.runs import new_run_id

    overrides = [*sets, f"runs_dir={runs_dir}"]
    points = expand_points(recipe_path, overrides, [], None)
    recipe = points[0].recipe
    folder = (runs_dir / recipe.name / new_run_id()).resolve()
    graph = build_graph(points, folder)
    missing = [j for j in only or [] if j not in {job.id for job in graph.jobs}]
    if missing:
        print(f"# {recipe_path}: no job {', '.join(missing)} (its jobs: {', '.join(j.id for j in graph.jobs)})",
              flush=True)
        if len(missing) == len(only):
            return None
    # 1. The plan (before anything runs: the embedding cache is as the embed job will find it), as a user runs
    #    it: `distillctl plan RECIPE --set ... --json`, a fresh process with the jobs' environment.
    forecast, plan_seconds, err = run_plan(recipe_path, overrides, plan_env())
    if forecast is None:
        print(f"# {recipe_path}: plan failed: {err}", flush=True)
        return None
    print(f"# {recipe_path}: plan took {plan_seconds:.1f} s (measurement phases {forecast['measurement_phases']}, "
          f"load average {os.getloadavg()[0]:.1f})", flush=True)
    _write_run_dirs(points, graph, folder, argv=["benchmarks/plan_accuracy.py", recipe_path])
    return {"recipe_path": recipe_path, "sets": sets, "env": job_env(recipe), "graph": graph, "folder": folder,
            "forecast": forecast, "plan_seconds": plan_seconds}


def run_jobs(planned: dict, out: Path | None, lanes: int = 1, only: list[str] | None = None) -> list[dict]:
    """2. The planned recipe's jobs, one at a time, in the order of the graph (dependencies come first); with
    ``only``, just those job ids (what they need must be there already: a baseline needs the embedding cache)."""
    from distillctl.planning import format_bytes

    recipe_path, forecast = planned["recipe_path"], planned["forecast"]
    by_id = {j["id"]: j for j in forecast["jobs"]}
    prefix = f"{Path(recipe_path).stem}: " if lanes > 1 else ""
    rows = []
    for job in planned["graph"].jobs:
        if only and job.id not in only:
            continue
        f = by_id[job.id]
        load = os.getloadavg()[0]
        wall, peak, code = run_job(job, planned["env"])
        row = {"recipe": recipe_path, "sets": planned["sets"], "job": job.id, "kind": job.kind, "exit_code": code,
               "forecast_seconds": f["seconds"], "actual_seconds": round(wall, 2),
               "forecast_peak_bytes": f["peak_bytes"], "actual_peak_bytes": peak,
               "wall_error": round(f["seconds"] / wall - 1, 3), "mem_error": round(f["peak_bytes"] / peak - 1, 3),
               "dominant": f["dominant"], "plan_seconds": round(planned["plan_seconds"], 1),
               "machine": forecast["machine"], "lanes": lanes,
               "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": str(planned["folder"])}
        rows.append(row)
        print(f"{prefix}{job.id:<22} wall {f['seconds']:8.1f} vs {wall:8.1f} s ({100 * row['wall_error']:+5.0f} %)   "
              f"peak {format_bytes(f['peak_bytes']):>9} vs {format_bytes(peak):>9} ({100 * row['mem_error']:+5.0f} %)"
              f"{'' if code == 0 else f'   exit {code}'}", flush=True)
        if out is not None:
            with open(out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        if code != 0:
            print(f"# {prefix}{job.id} failed (exit {code}); see {job.log}; stopping this recipe", flush=True)
            break
    return rows


def bench(recipes: list[str], sets: list[str], out: Path | None, runs_dir: Path, lanes: int = 1,
          only: list[str] | None = None) -> list[dict]:
    """Plan and run each recipe. With ``lanes`` > 1 every recipe is planned first, one after another on cores
    nothing else uses, then up to ``lanes`` recipes run their jobs at once (each recipe's jobs still one at a
    time): two recipes whose scheduler gives each job one thread of a 2-core machine then take the time of the
    longer, and each job runs beside another, as in a `submit` with ``workers: 2``."""
    if lanes <= 1:
        rows = []
        for recipe in recipes:
            planned = plan_recipe(recipe, sets, runs_dir, only)
            rows += run_jobs(planned, out, only=only) if planned else []
        return rows
    from concurrent.futures import ThreadPoolExecutor

    planned = [p for p in (plan_recipe(r, sets, runs_dir, only) for r in recipes) if p]
    with ThreadPoolExecutor(lanes) as pool:
        return [row for rows in pool.map(lambda p: run_jobs(p, out, lanes, only), planned) for row in rows]


def replan(recipes: list[str], sets: list[str], record: Path) -> str:
    """Plan each recipe now; a markdown table of the new and recorded forecasts against the recorded actuals."""
    rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    lines = ["| recipe | job | wall new / recorded / actual s | error new (recorded) | "
             "peak new / recorded / actual MiB | error new (recorded) |", "|---|---|---:|---:|---:|---:|"]
    summary = []
    for recipe in recipes:
        actual = {r["job"]: r for r in rows if r["recipe"] == recipe and r.get("sets", []) == sets
                  and r.get("kind") != "plan-only" and r.get("exit_code") == 0}
        if not actual:
            summary.append(f"{Path(recipe).name}: no recorded jobs in {record} with these --set")
            continue
        forecast, seconds, err = run_plan(recipe, sets, plan_env())
        if forecast is None:
            summary.append(f"{Path(recipe).name}: plan failed: {err}")
            continue
        wall_ok = mem_ok = n = 0
        for f in forecast["jobs"]:
            a = actual.get(f["id"])
            if a is None:
                continue
            we, me = f["seconds"] / a["actual_seconds"] - 1, f["peak_bytes"] / a["actual_peak_bytes"] - 1
            n, wall_ok, mem_ok = n + 1, wall_ok + (abs(we) <= WALL_TARGET), mem_ok + (abs(me) <= MEM_TARGET)
            lines.append(f"| {Path(recipe).name} | {f['id']} | {f['seconds']:.1f} / {a['forecast_seconds']:.1f} / "
                         f"{a['actual_seconds']:.1f} | {100 * we:+.0f} % ({100 * a['wall_error']:+.0f} %) | "
                         f"{f['peak_bytes'] / 2**20:,.0f} / {a['forecast_peak_bytes'] / 2**20:,.0f} / "
                         f"{a['actual_peak_bytes'] / 2**20:,.0f} | {100 * me:+.0f} % ({100 * a['mem_error']:+.0f} %) |")
        summary.append(f"{Path(recipe).name}: replanned in {seconds:.1f} s; wall within +-30 % for {wall_ok}/{n} "
                       f"recorded jobs, peak memory within +-20 % for {mem_ok}/{n}")
        print(summary[-1], flush=True)
    return "\n".join(lines + [""] + summary)


def table(rows: list[dict]) -> str:
    """Markdown: one row per job, then per recipe how many jobs met each target."""
    def mib(n):
        return f"{n / 2**20:,.0f}"

    lines = ["| recipe | job | wall forecast s | wall actual s | error | peak forecast MiB | peak actual MiB | error |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {Path(r['recipe']).name} | {r['job']} | {r['forecast_seconds']:.1f} | {r['actual_seconds']:.1f} | "
                     f"{100 * r['wall_error']:+.0f} % | {mib(r['forecast_peak_bytes'])} | {mib(r['actual_peak_bytes'])} | "
                     f"{100 * r['mem_error']:+.0f} % |")
    lines.append("")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        wall_ok = sum(abs(r["wall_error"]) <= WALL_TARGET for r in mine)
        mem_ok = sum(abs(r["mem_error"]) <= MEM_TARGET for r in mine)
        total_f = sum(r["forecast_seconds"] for r in mine)
        total_a = sum(r["actual_seconds"] for r in mine)
        lines.append(f"{Path(recipe).name}: wall within +-30 % for {wall_ok}/{len(mine)} jobs, peak memory within "
                     f"+-20 % for {mem_ok}/{len(mine)}; all jobs {total_f:.0f} s forecast vs {total_a:.0f} s actual "
                     f"({100 * (total_f / total_a - 1):+.0f} %); plan took {mine[0]['plan_seconds']} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipes", nargs="*", help="recipe files to plan and run")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every recipe (as distillctl --set)")
    ap.add_argument("--out", type=Path, help="append one JSON line per job here")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs") / "plan-accuracy", help="where the runs go")
    ap.add_argument("--lanes", type=int, default=1,
                    help="plan every recipe first, then run this many recipes' jobs at once (default 1: one recipe "
                         "after another, planned just before its jobs)")
    ap.add_argument("--only", action="append", metavar="JOB_ID",
                    help="run only this job of each recipe (repeatable; e.g. baseline-herding): checks one job's "
                         "forecast without its recipe's hours, when what it needs (the embedding cache) is there")
    ap.add_argument("--plan-only", action="store_true", help="only time `distillctl plan` on each recipe")
    ap.add_argument("--table", type=Path, metavar="JSONL", help="print the table of an earlier --out file and exit")
    ap.add_argument("--replan", type=Path, metavar="JSONL",
                    help="plan the recipes now and compare with the actuals recorded in an earlier --out file")
    args = ap.parse_args()
    if args.replan:
        print(replan(args.recipes, args.sets, args.replan))
        return
    if args.plan_only:
        print(plan_only(args.recipes, args.sets, args.out))
        return
    if args.table:
        rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("kind") != "plan-only"]
        print(table(rows))
        return
    from distillctl.threads import configure_threads

    configure_threads(None)
    print(table(bench(args.recipes, args.sets, args.out, args.runs_dir.resolve(), args.lanes,
                      args.only)))


if __name__ == "__main__":
    main()

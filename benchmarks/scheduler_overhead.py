"""What the schedulers cost on top of the jobs themselves.

For each scheduler (``local`` always, ``slurm`` when a cluster answers ``scontrol ping``) this script
submits graphs of trivial jobs through the same library path as ``distillctl submit`` and measures:

- ``fan-out``: N independent jobs running ``distillctl --version`` (the CLI's start-up is part of
  every real job): wall time from submit to the last job done, and per job;
- ``chain``: N jobs each depending on the previous one (``python -c pass``): time per link, i.e.
  the latency from one job's end to the next one's start;
- ``submit``: seconds until ``submit`` returns (the jobs are detached);
- ``status``: seconds of one ``distillctl status`` refresh of the N-job submission while it runs.

    python benchmarks/scheduler_overhead.py --jobs 20 --json benchmarks/results/scheduler_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def _job(folder: Path, jid: str, argv: list[str], deps=(), group=""):
    from distillctl.scheduling import Job

    return Job(id=jid, argv=argv, cwd=str(folder / "work"), log=str(folder / "logs" / f"{jid}.log"),
               depends_on=list(deps), group=group, kind="bench")


def _run(name: str, section: dict, jobs, folder: Path) -> dict:
    from distillctl.jobs import follow, submit as sm

    t0 = time.perf_counter()
    sub = sm.submit_jobs(jobs, folder, scheduler=section)
    t_submit = time.perf_counter() - t0
    t1 = time.perf_counter()
    sm.status(folder)  # while the jobs are pending / running: what `distillctl status` costs
    t_status = time.perf_counter() - t1
    follow.follow(sub, quiet=True, poll=0.1 if name == "local" else 0.5, timeout=600)
    wall = time.perf_counter() - t0
    return {"submit_s": round(t_submit, 3), "wall_s": round(wall, 3), "status_s": round(t_status, 4),
            "states": sub.counts()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20, help="jobs per graph")
    ap.add_argument("--workers", type=int, default=2, help="local scheduler workers")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    exe = shutil.which("distillctl") or "distillctl"
    schedulers = {"local": {"name": "local", "workers": args.workers, "threads": 1}}
    if shutil.which("scontrol") and "UP" in subprocess.run(["scontrol", "ping"], capture_output=True,
                                                           text=True).stdout:
        schedulers["slurm"] = {"name": "slurm", "time": 10, "setup": []}
    rows = []
    root = Path(tempfile.mkdtemp(prefix="dctl-bench-"))
    for name, section in schedulers.items():
        n = args.jobs
        fan = [_job(root / name / "fan", f"v{i}", [exe, "--version"], group="fan") for i in range(n)]
        r = _run(name, section, fan, root / name / "fan")
        rows.append({"scheduler": name, "graph": f"fan-out of {n} x `distillctl --version`", **r,
                     "per_job_s": round(r["wall_s"] / n, 3)})
        chain = [_job(root / name / "chain", f"c{i}", [sys.executable, "-c", "pass"], [f"c{i - 1}"] if i else [])
                 for i in range(n)]
        r = _run(name, section, chain, root / name / "chain")
        rows.append({"scheduler": name, "graph": f"chain of {n} x `python -c pass`", **r,
                     "per_job_s": round(r["wall_s"] / n, 3)})
    shutil.rmtree(root, ignore_errors=True)

    print(f"{'scheduler':<9} {'graph':<38} {'submit s':>9} {'wall s':>8} {'per job s':>9} {'status s':>9}")
    for r in rows:
        print(f"{r['scheduler']:<9} {r['graph']:<38} {r['submit_s']:>9.3f} {r['wall_s']:>8.2f} "
              f"{r['per_job_s']:>9.3f} {r['status_s']:>9.4f}")
    out = {"benchmark": "scheduler_overhead", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU", "python": platform.python_version(),
           "workers": args.workers, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

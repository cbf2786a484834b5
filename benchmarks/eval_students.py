"""Cost of a transfer matrix: one `distillctl eval RUN --students A,B,C` against three single-student evals.

Issue 15's target: scoring every set of a run with K students of three architectures in one command costs at
most the sum of three single-student commands (the run, its recipe and the embeddings are loaded once, not
once per student). Each arm runs the real console script in a fresh process on a private copy of the run
directory (``eval`` rewrites ``RUN/eval/results.json``; the original run is never touched), so process start,
imports, loading the cache and writing the results all count, as they do for a user.

The arms are interleaved (combined, A, B, C, combined, A, ...) ``--repeats`` times; each arm's minimum is
kept (the machine is shared and the minimum is the least disturbed run). The check is also made on the
student-by-student accuracies: the combined command must give the same numbers as the single ones.

    python benchmarks/eval_students.py runs/agnews-mlp-transfer/<submission>/seed=0/<run>
    python benchmarks/eval_students.py RUN --students mlp,linear --seeds 3 --repeats 1
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


def timed_eval(run: Path, students: str, seeds: int | None) -> tuple[float, list[dict]]:
    """Wall seconds of one `distillctl eval` process, and its result rows."""
    exe = shutil.which("distillctl", path=str(Path(sys.executable).parent)) or "distillctl"
    cmd = [exe, "eval", str(run), "--students", students, "--json"]
    if seeds:
        cmd += ["--seeds", str(seeds)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"eval_students: {' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return seconds, json.loads(out.stdout)  # one record per (set, student, labels)


def accuracies(rows: list[dict]) -> dict[tuple, float]:
    """(ipc, student, labels) -> mean test accuracy, to compare the combined run with the single ones."""
    return {(r["ipc"], r["student"], r.get("labels", "hard")): round(r["accuracy"]["mean"], 6) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a run directory with distilled sets (any recipe)")
    ap.add_argument("--students", default="mlp,transformer,linear", help="comma-separated student names")
    ap.add_argument("--seeds", type=int, default=None, help="K per set (default: the recipe's eval.seeds)")
    ap.add_argument("--repeats", type=int, default=1, help="timings per arm; the minimum is kept")
    ap.add_argument("--json", default="benchmarks/results/eval_students.json", help="where to write results")
    args = ap.parse_args()
    if not (args.run / "distilled").is_dir():
        sys.exit(f"eval_students: {args.run} is not a run directory (no distilled/ folder)")
    names = [s.strip() for s in args.students.split(",") if s.strip()]

    load_before = os.getloadavg()
    best: dict[str, float] = {}
    train_s: dict[str, dict[str, float]] = {}  # arm -> student -> training + scoring s of its best run
    rows_of: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="eval-students-") as tmp:
        for repeat in range(args.repeats):
            for arm in ["combined", *names]:
                copy = Path(tmp) / f"{arm}-{repeat}"
                shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns("eval", ".locks"))
                students = ",".join(names) if arm == "combined" else arm
                seconds, rows = timed_eval(copy, students, args.seeds)
                if seconds < best.get(arm, float("inf")):
                    best[arm] = seconds
                    train_s[arm] = {}
                    for r in rows:  # train_and_score's own seconds: what is left of the wall time is overhead
                        train_s[arm][r["student"]] = train_s[arm].get(r["student"], 0.0) + float(r.get("seconds", 0))
                rows_of[arm] = rows
                print(f"  repeat {repeat + 1}: {arm:<12} {seconds:7.1f} s", flush=True)

    singles = {}
    for name in names:
        singles.update(accuracies(rows_of[name]))
    same = accuracies(rows_of["combined"]) == singles
    total = sum(best[n] for n in names)
    print(f"\nrun {args.run}, students {', '.join(names)}, load {load_before[0]:.2f} before")
    print("| command | wall s (min of %d) | training s, per student | rest (start, loading, writing) s |"
          % args.repeats)
    print("|---|---:|---|---:|")

    def line(label: str, arm_names: list[str], wall: float) -> None:
        per = {n: sum(train_s[a].get(n, 0.0) for a in arm_names) for n in names}
        trained = sum(per.values())
        print(f"| {label} | {wall:.1f} | " + ", ".join(f"{n} {per[n]:.1f}" for n in names if per[n])
              + f" | {wall - trained:.1f} |")

    for name in names:
        line(f"`eval --students {name}`", [name], best[name])
    line(f"sum of the {len(names)} single-student evals", names, total)
    line(f"`eval --students {','.join(names)}`", ["combined"], best["combined"])
    print(f"\ncombined / sum = {best['combined'] / total:.2f} (target <= 1.00); "
          f"same accuracies as the single evals: {same}")

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cores": os.cpu_count(), "load_before": load_before, "run": str(args.run), "students": names,
              "seeds": args.seeds, "repeats": args.repeats, "seconds": best, "training_seconds": train_s, "sum_single": total,
              "ratio": best["combined"] / total, "same_accuracies": same}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.json}")


if __name__ == "__main__":
    main()

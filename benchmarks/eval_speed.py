"""Vectorisation speed-up of student evaluation: K students at once versus one at a time.

``distillctl.evaluation.training.train_and_score`` trains K fresh students in one vmapped loop. This measures
its wall time (training with the eval budget + scoring the test split) for K = 1, 5, 10, 20 on an
ipc-10 set (4 classes x 10 rows, d = 384 as with all-MiniLM-L6-v2) and a 7,600-row test split
(AG News' test size), for the ``mlp`` student (hidden 256) and the ``transformer`` student, and
compares it with training the same K students one after the other (K x the K = 1 time).

Target (issue 5): for the MLP, K = 10 costs at most 2.5x the wall time of K = 1.

Each (student, K) is timed ``--repeats`` times, interleaved, and the minimum is reported: the CPU
is shared with other jobs, and the minimum is the least disturbed run.

    python benchmarks/eval_speed.py                              # both students, 1000 steps
    python benchmarks/eval_speed.py --students mlp --repeats 5
    python benchmarks/eval_speed.py --json benchmarks/results/eval_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

STUDENTS = {
    "mlp": {"hidden": [256]},
    "transformer": {"n_tokens": 8, "d_model": 64, "layers": 2, "heads": 4, "ff": 128},
}
C, IPC, D, N_TEST = 4, 10, 384, 7600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--students", default="mlp,transformer", help="comma-separated: mlp, transformer")
    ap.add_argument("--ks", default="1,5,10,20", help="population sizes K")
    ap.add_argument("--steps", type=int, default=1000, help="optimiser steps per student (eval budget)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per (student, K); the minimum is kept")
    ap.add_argument("--json", default="benchmarks/results/eval_speed.json", help="where to write the results")
    args = ap.parse_args()

    import torch

    from distillctl.plugins import get_registry
    from distillctl.evaluation.training import TrainBudget, train_and_score

    ks = [int(k) for k in args.ks.split(",")]
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(C, D, generator=g)
    y = torch.arange(C).repeat_interleave(IPC)  # (40,) an ipc-10 set, class-major
    x = torch.nn.functional.normalize(centers[y] + 0.5 * torch.randn(len(y), D, generator=g), dim=1)  # (40, 384)
    y_test = torch.randint(0, C, (N_TEST,), generator=g)
    x_test = torch.nn.functional.normalize(centers[y_test] + 0.5 * torch.randn(N_TEST, D, generator=g), dim=1)
    budget = TrainBudget(steps=args.steps)  # the recipe defaults: adam, lr 1e-3, batch 256 (> 40: whole set)

    load_before = os.getloadavg()
    rows = []
    for student in args.students.split(","):
        info = get_registry().get("student", student)
        options = info.options(**STUDENTS[student])
        build = lambda: info.factory(D, C, options)  # noqa: E731
        train_and_score(build, x, y, x_test, y_test, seeds=[0], budget=TrainBudget(steps=5), num_classes=C,
                        quiet=True)  # warm-up (allocator, kernels)
        times: dict[int, list[float]] = {k: [] for k in ks}
        accs: dict[int, float] = {}
        for _ in range(args.repeats):
            for k in ks:
                t0 = time.perf_counter()
                scores = train_and_score(build, x, y, x_test, y_test, seeds=range(k), budget=budget, num_classes=C,
                                         quiet=True)
                times[k].append(time.perf_counter() - t0)
                accs[k] = scores.mean()
        t1 = min(times[ks[0]]) if ks[0] == 1 else None
        for k in ks:
            t = min(times[k])
            row = {"student": student, "K": k, "seconds": round(t, 3), "all_seconds": [round(v, 3) for v in times[k]],
                   "per_student_s": round(t / k, 4), "mean_accuracy": round(accs[k], 4)}
            if t1:
                row["ratio_to_K1"] = round(t / t1, 2)
                row["speedup_vs_loop"] = round(k * t1 / t, 2)  # loop of K single students = K x t(K=1)
            rows.append(row)

    print(f"train_and_score on an ipc-{IPC} set ({C * IPC} x {D}), {args.steps} steps adam, test n = {N_TEST}; "
          f"min of {args.repeats} runs")
    print(f"{'student':<12} {'K':>3} {'seconds':>8} {'s/student':>10} {'x K=1':>7} {'vs loop':>8}")
    for r in rows:
        print(f"{r['student']:<12} {r['K']:>3} {r['seconds']:>8.2f} {r['per_student_s']:>10.3f} "
              f"{r.get('ratio_to_K1', float('nan')):>7.2f} {r.get('speedup_vs_loop', float('nan')):>7.2f}x")
    mlp10 = next((r for r in rows if r["student"] == "mlp" and r["K"] == 10 and "ratio_to_K1" in r), None)
    if mlp10:
        print(f"target: mlp K=10 <= 2.5 x K=1 -> {mlp10['ratio_to_K1']:.2f} x "
              f"({'met' if mlp10['ratio_to_K1'] <= 2.5 else 'NOT met'})")

    out = {
        "benchmark": "eval_speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "set": {"ipc": IPC, "classes": C, "dim": D, "n_test": N_TEST},
        "budget": budget.as_dict(),
        "repeats": args.repeats,
        "loadavg_before_after": [round(v, 2) for v in (*load_before[:1], *os.getloadavg()[:1])],
        "rows": rows,
        "target_mlp_k10_ratio": 2.5,
        "target_met": None if mlp10 is None else mlp10["ratio_to_K1"] <= 2.5,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

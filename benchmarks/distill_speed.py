"""Time per outer step and peak memory of the distill inner loop, against a straightforward reference.

Every (student, strategy, window, total, implementation) runs in a FRESH subprocess, so peak memory
(``ru_maxrss``) is comparable between configurations. Reported per configuration:

* ``s_per_step``: mean wall seconds per outer step (after one warm-up step), the same real batches
  and window starts for both implementations (one generator seed);
* ``peak_mb``: the process's peak RSS; ``work_mb``: peak RSS minus the RSS just before the first
  outer step (data, students and torch already loaded) — the memory the unroll itself needs.

The reference is what research code usually does: an ``nn.Module`` student whose parameters are a
python list, per-tensor optimiser math, ``torch.autograd.grad(create_graph=True)`` at EVERY inner step
(also the steps before the window; the graph is cut at the window start by detaching), K students in
a python loop. It computes the same meta-gradient as distillctl (checked on the first step).

    python benchmarks/distill_speed.py                # default grid (a few minutes on 2 cores)
    python benchmarks/distill_speed.py --full         # + d=768 MLP and every setting for the reference
    python benchmarks/distill_speed.py --steps 5 --json benchmarks/results/distill_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SETTINGS = [("ratbptt", 40, 40), ("ratbptt", 40, 100), ("ratbptt", 40, 200), ("full", 100, 100)]
STUDENTS = {
    "mlp-384": dict(kind="mlp", d=384, options={"hidden": [256]}),
    "mlp-768": dict(kind="mlp", d=768, options={"hidden": [256]}),
    "transformer-384": dict(kind="transformer", d=384,
                            options={"n_tokens": 8, "d_model": 64, "layers": 2, "heads": 4, "ff": 128}),
}
C, IPC, REAL_BATCH = 4, 10, 4096


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reference_meta_gradient(build, x, y_syn, real_x, real_y, seed, free, graph, lr, population):
    """The straightforward implementation (see the module docstring). Inner Adam, hard labels."""
    import torch
    import torch.nn.functional as F

    b1, b2, eps = 0.9, 0.999, 1e-8
    torch.manual_seed(seed)
    students = [build() for _ in range(population)]
    losses = []
    for model in students:  # one student after the other
        names = [n for n, _ in model.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        for t in range(1, free + graph + 1):
            if t == free + 1:  # the window starts: cut the graph of the steps before it
                params = [p.detach().requires_grad_() for p in params]
                m, v = [a.detach() for a in m], [a.detach() for a in v]
            out = torch.func.functional_call(model, dict(zip(names, params)), (x,))
            loss = F.cross_entropy(out, y_syn)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            new = []
            for i, (p, g) in enumerate(zip(params, grads)):
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                new.append(p - lr * (m[i] / (1 - b1 ** t)) / (v[i] / (1 - b2 ** t) + eps ** 2).sqrt())
            params = new
        out = torch.func.functional_call(model, dict(zip(names, params)), (real_x,))
        losses.append(F.cross_entropy(out, real_y))
    outer = torch.stack(losses).mean()
    (gx,) = torch.autograd.grad(outer, [x])
    return float(outer.detach()), gx


def worker(cfg: dict) -> dict:
    """One configuration in this (fresh) process."""
    import torch

    from distillctl.plugins import get_registry
    from distillctl.seeds import draw_seed
    from distillctl.toolbox import InnerProblem
    from distillctl.unrolling import FullUnroll, RandomTruncatedUnroll

    torch.set_num_threads(cfg["threads"])
    spec = STUDENTS[cfg["student"]]
    d = spec["d"]
    info = get_registry().get("student", spec["kind"])
    options = info.parse_options(spec["options"])
    build = lambda: info.factory(d, C, options)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    n_train = 12_000
    X = torch.randn(n_train, d, generator=g)
    y = torch.randint(0, C, (n_train,), generator=g)
    labels = torch.arange(C).repeat_interleave(IPC)
    x = X[:C * IPC].clone().requires_grad_()
    problem = InnerProblem(build, C, labels, optimizer="adam", lr=1e-3, population=cfg["population"])
    strategy = (FullUnroll(cfg["total"]) if cfg["strategy"] == "full"
                else RandomTruncatedUnroll(cfg["window"], cfg["total"]))
    gen = torch.Generator().manual_seed(1)

    def one_step():
        idx = torch.randperm(n_train, generator=gen)[:REAL_BATCH]
        if cfg["impl"] == "distillctl":
            ms = strategy.meta_gradient(problem, {"x": x}, X[idx], y[idx], gen)
            return ms.loss, ms.grads["x"], ms.free_steps
        seed = draw_seed(gen)  # the same draws as distillctl: seed, then window start
        free, graph = strategy.plan(gen)
        # distillctl seeds its K students with a forked RNG under `seed`; do the same here
        with torch.random.fork_rng(devices=[]):
            loss, gx = reference_meta_gradient(build, x, labels, X[idx], y[idx], seed, free, graph, 1e-3,
                                               cfg["population"])
        return loss, gx, free

    base_rss = rss_mb()
    times, frees = [], []
    first = None
    for i in range(cfg["steps"] + 1):
        t0 = time.perf_counter()
        loss, gx, free = one_step()
        dt = time.perf_counter() - t0
        if i == 0:
            first = (loss, float(gx.norm()))
        else:
            times.append(dt)
            frees.append(free)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**cfg, "s_per_step": sum(times) / len(times), "min_s": min(times), "mean_free_steps": sum(frees) / len(frees),
            "peak_mb": round(peak, 1), "work_mb": round(peak - base_rss, 1), "first_loss": first[0],
            "first_grad_norm": first[1]}


def run_config(cfg: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                         env=env, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"config {cfg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=8, help="timed outer steps per configuration (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    ap.add_argument("--population", type=int, default=1, help="students per outer step (K)")
    ap.add_argument("--students", default="mlp-384,transformer-384",
                    help=f"comma list of {', '.join(STUDENTS)}")
    ap.add_argument("--full", action="store_true", help="all students, reference at every setting")
    ap.add_argument("--json", default="benchmarks/results/distill_speed.json", help="where to write the results")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    students = list(STUDENTS) if args.full else args.students.split(",")
    rows = []
    for student in students:
        for strategy, window, total in SETTINGS:
            impls = ["distillctl", "reference"]
            if not args.full and (strategy, window, total) == ("ratbptt", 40, 200) and student != "mlp-384":
                impls = ["distillctl"]  # the slowest reference run; --full includes it
            for impl in impls:
                cfg = dict(student=student, strategy=strategy, window=window, total=total, impl=impl,
                           steps=args.steps, threads=args.threads, population=args.population)
                r = run_config(cfg)
                rows.append(r)
                print(f"{student:16s} {strategy:8s} ({window:3d},{total:3d}) {impl:10s} "
                      f"{r['s_per_step']:7.3f} s/step  peak {r['peak_mb']:7.1f} MiB  work {r['work_mb']:7.1f} MiB",
                      flush=True)

    def get(student, strategy, window, total, impl="distillctl"):
        for r in rows:
            if (r["student"], r["strategy"], r["window"], r["total"], r["impl"]) == (student, strategy, window, total, impl):
                return r
        return None

    summary = []
    for student in students:
        a, b = get(student, "ratbptt", 40, 200), get(student, "ratbptt", 40, 40)
        rat, full = get(student, "ratbptt", 40, 100), get(student, "full", 100, 100)
        item = {"student": student,
                "mem_ratio_40_200_vs_40_40": a["work_mb"] / max(b["work_mb"], 1e-9),
                "peak_ratio_40_200_vs_40_40": a["peak_mb"] / b["peak_mb"],
                "time_ratio_rat_40_100_vs_full_100": rat["s_per_step"] / full["s_per_step"]}
        speedups = {}
        for strategy, window, total in SETTINGS:
            ref = get(student, strategy, window, total, "reference")
            ours = get(student, strategy, window, total)
            if ref and ours:
                speedups[f"{strategy}({window},{total})"] = ref["s_per_step"] / ours["s_per_step"]
        item["speedup_vs_reference"] = speedups
        summary.append(item)

    lines = ["| student | strategy | (window, total) | impl | s / outer step | mean free steps | peak RSS MiB | work MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['student']} | {r['strategy']} | ({r['window']}, {r['total']}) | {r['impl']} | "
                     f"{r['s_per_step']:.3f} | {r['mean_free_steps']:.1f} | {r['peak_mb']:.0f} | {r['work_mb']:.0f} |")
    lines += ["", "| student | work mem (40,200)/(40,40) [target <= 1.3] | time rat(40,100)/full(100,100) [target <= 0.6] "
              "| speed-up vs reference [target >= 5] |", "|---|---|---|---|"]
    for s in summary:
        sp = ", ".join(f"{k} {v:.1f}x" for k, v in s["speedup_vs_reference"].items())
        lines.append(f"| {s['student']} | {s['mem_ratio_40_200_vs_40_40']:.2f} (peak RSS {s['peak_ratio_40_200_vs_40_40']:.2f}) "
                     f"| {s['time_ratio_rat_40_100_vs_full_100']:.2f} | {sp} |")
    table = "\n".join(lines)
    print()
    print(table)
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
           "cpus": os.cpu_count(), "args": vars(args), "rows": rows, "summary": summary, "table": table,
           "setup": {"classes": C, "ipc": IPC, "real_batch": REAL_BATCH, "inner": "adam lr 1e-3, hard labels"}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

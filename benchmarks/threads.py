"""Torch threads per job on a quiet and on a busy machine: what `distillctl.threads.machine_threads` rests on.

Two fixed workloads, each in a FRESH subprocess (torch starts its OpenMP pool at import, so the thread
count must be set before it), with ``OMP_NUM_THREADS`` = 1, 2, ..., unset ("default": torch's own
choice, one thread per core) or ``machine`` (distillctl's default: the worker calls
``distillctl.threads.configure_threads`` before importing torch, so it measures the machine, burners
included, as a distillctl command does):

* ``distill``: ``distillctl.distillation.distill.distill`` of the recipe defaults (MLP 384 -> 256 -> 4, full BPTT through
  100 inner steps, real batch 2,048, ipc 10) for 20 outer steps, with its validations at step 0 and at
  the end (3 students x 1,000 steps, scored on a 2,000-row val split), on synthetic Gaussian data of
  AG News' shape (12,000 x 384, 4 classes);
* ``eval``: ``distillctl.evaluation.training.train_and_score`` of K = 10 students x 1,000 Adam steps on an ipc-10 set,
  scored on 7,600 rows (what ``distillctl eval`` does per set).

Machines: ``quiet`` (nothing started by this script; run it when nothing else runs), ``python`` (N
background processes spinning a pure-Python loop, ``python -c "while True: pass"``) and ``torch`` (N
single-threaded background processes training a small MLP in a loop, like another distill job: the
case that made 2-thread jobs ~40x slower in BENCHMARKS.md). N = ``--burners`` (default: cores - 1, at
least 1, i.e. every core but one busy). Each run has a wall-clock cap (``--timeout``); a run that hits
it (counted from the end of its imports) is reported as "> cap". The seconds are the workload's own
(imports and process start left out).

The summary picks the thread count whose worst slowdown, over the machines measured, against the best
setting on that machine is smallest: the default that holds on a quiet and on a busy machine.

    python benchmarks/threads.py                  # ~3-4 min on 2 cores; run it on an otherwise QUIET machine
    python benchmarks/threads.py --quick          # tiny sizes: checks that the script works (1-2 min)
    python benchmarks/threads.py --threads 1,2,4,default --loads quiet,torch --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

C, D = 4, 384
SIZES = {  # rows of train / val / test, distill outer steps (and inner steps; None = the default 100),
    # eval students x steps, steps of each validation student
    "full": dict(n_train=12_000, n_val=2_000, n_test=7_600, distill_steps=20, inner_steps=None, eval_seeds=10,
                 eval_steps=1000, val_steps=1000),
    "quick": dict(n_train=1_000, n_val=200, n_test=400, distill_steps=2, inner_steps=10, eval_seeds=2,
                  eval_steps=30, val_steps=30),
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: a background process like another distill job: one torch thread, small matmuls and their gradients
TORCH_BURNER = """
import torch
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Linear(384, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
opt = torch.optim.Adam(net.parameters(), 1e-3)
x, y = torch.randn(40, 384), torch.randint(0, 4, (40,))
while True:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
"""
PYTHON_BURNER = "while True: pass"


# -- the workloads (run in a fresh subprocess: `threads.py --worker JSON`) --------------------------------

def _data(size: dict):
    import torch

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(C, D, generator=g)

    def split(n):
        y = torch.arange(C).repeat_interleave(n // C)
        X = torch.nn.functional.normalize(centers[y] + 0.5 * torch.randn(len(y), D, generator=g), dim=1)
        return X, y

    return split(size["n_train"]), split(size["n_val"]), split(size["n_test"])


def distill_workload(size: dict) -> dict:
    from types import SimpleNamespace

    from distillctl.distillation.distill import distill
    from distillctl.recipe import validate_recipe

    (Xtr, ytr), (Xva, yva), (Xte, yte) = _data(size)
    splits = {"train": SimpleNamespace(X=Xtr, y=ytr), "val": SimpleNamespace(X=Xva, y=yva),
              "test": SimpleNamespace(X=Xte, y=yte)}
    embeddings = SimpleNamespace(splits=splits, label_names=[f"c{i}" for i in range(C)], num_classes=C, dim=D,
                                 fingerprint="benchmarks/threads.py", notes=[])
    steps = size["distill_steps"]
    # the recipe defaults (the settings chosen on `val`) but for the number of outer steps and validations
    # bptt named: the MLP's default method is krr since issue 22; this workload stays the one measured before
    section = {"ipc": [10], "outer": {"iterations": steps, "val_every": steps, "ckpt_every": steps},
               "method": {"name": "bptt", "unroll": {"name": "full", "total": 100}}}
    if size["inner_steps"]:
        section["method"] = {"name": "bptt", "unroll": {"name": "full", "total": size["inner_steps"]}}
    recipe = validate_recipe({
        "name": "threads-bench", "dataset": {"name": "agnews", "source": "sample"},
        "student": {"name": "mlp", "hidden": [256]}, "distill": section, "eval": {"steps": size["val_steps"]},
    }, source="benchmarks/threads.py")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = distill(recipe, run_dir=Path(tmp) / "run", quiet=True, embeddings=embeddings, argv=[])
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "val_accuracy": result.sets[-1]["val_accuracy"]}


def eval_workload(size: dict) -> dict:
    import torch

    from distillctl.plugins import get_registry
    from distillctl.evaluation.training import TrainBudget, train_and_score

    (Xtr, ytr), _, (Xte, yte) = _data(size)
    idx = torch.cat([torch.nonzero(ytr == c).flatten()[:10] for c in range(C)])  # an ipc-10 set, class-major
    info = get_registry().get("student", "mlp")
    options = info.options(hidden=[256])
    build = lambda: info.factory(D, C, options)  # noqa: E731
    t0 = time.perf_counter()
    scores = train_and_score(build, Xtr[idx], ytr[idx], Xte, yte, seeds=range(size["eval_seeds"]),
                             budget=TrainBudget(steps=size["eval_steps"]), num_classes=C, quiet=True)
    return {"seconds": time.perf_counter() - t0, "accuracy": scores.mean()}


def _warm_imports() -> None:
    """Import what the workloads import lazily (torch.optim pulls in torch._dynamo: seconds on a busy
    machine), so the timed part is the work, not module loading, which no thread count changes."""
    import torch

    import distillctl.distillation.distill  # noqa: F401
    import distillctl.evaluation.training  # noqa: F401
    from distillctl.plugins import get_registry

    get_registry()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def worker(spec: dict) -> None:
    if spec.get("threads") == "machine":  # what a distillctl command does at start-up, before torch is imported
        from distillctl.threads import configure_threads

        configure_threads(None)
    import torch

    _warm_imports()
    print("READY", flush=True)  # the driver's cap on the workload starts now (imports take long under load)
    out = {"torch_threads": torch.get_num_threads()}
    out.update({"distill": distill_workload, "eval": eval_workload}[spec["workload"]](SIZES[spec["size"]]))
    print("RESULT " + json.dumps(out), flush=True)


# -- the driver --------------------------------------------------------------------------------------------

def thread_env(threads: str) -> dict:
    env = dict(os.environ)
    for name in THREAD_VARS:
        env.pop(name, None)
        if threads not in ("default", "machine"):
            env[name] = threads
    env.pop("DISTILLCTL_MACHINE_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)  # the OpenMP default (spinning), as users get it
    return env


def run_one(workload: str, threads: str, size: str, timeout: float) -> dict:
    """One workload in a fresh process; ``timeout`` caps the workload, counted from the worker's READY line."""
    spec = json.dumps({"workload": workload, "size": size, "threads": threads})
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty stderr cannot block the worker
        proc = subprocess.Popen([sys.executable, __file__, "--worker", spec], env=thread_env(threads),
                                stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            ready = proc.stdout.readline()
            if ready.startswith("READY"):
                proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {"seconds": None, "timed_out": True, "process_seconds": time.perf_counter() - t0}
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): do not leave the worker behind
                proc.kill()
                proc.wait()
        out = proc.stdout.read()
        proc.stdout.close()
        err.seek(0)
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"{workload} with threads={threads} failed (exit {proc.returncode}):\n"
                             f"{err.read()[-3000:]}")
    return {**json.loads(line[len("RESULT "):]), "timed_out": False, "process_seconds": time.perf_counter() - t0}


class Load:
    """N background CPU burners of one kind, started on enter and killed (by pid) on exit."""

    def __init__(self, kind: str, n: int):
        self.kind, self.n, self.procs = kind, n, []

    def __enter__(self):
        if self.kind == "quiet":
            return self
        code = {"python": PYTHON_BURNER, "torch": TORCH_BURNER}[self.kind]
        env = thread_env("1")
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(3.0 if self.kind == "torch" else 0.5)  # the burners import torch and start spinning
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def fmt(r: dict | None, cap: float) -> str:
    if r is None:
        return "-"
    return f"> {cap:.0f}" if r["timed_out"] else f"{r['seconds']:.2f}"


def summarise(rows: list[dict], loads: list[str], settings: list[str], workloads: list[str], cap: float) -> dict:
    """Per workload: for each thread setting, its worst ratio over the machines to the best setting there."""
    out = {}
    for w in workloads:
        worst = {}
        for t in settings:
            ratios = []
            for load in loads:
                cell = {r["threads"]: r for r in rows if r["workload"] == w and r["load"] == load}
                secs = {k: (cap if v["timed_out"] else v["seconds"]) for k, v in cell.items()}
                if t in secs and secs:
                    ratios.append(secs[t] / min(secs.values()))
            worst[t] = round(max(ratios), 2) if ratios else None
        choice = min((t for t in worst if worst[t] is not None), key=lambda t: worst[t], default=None)
        out[w] = {"worst_ratio_to_best": worst, "choice": choice}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script works")
    ap.add_argument("--threads", default="1,2,machine", help="comma-separated thread counts; `default` = unset "
                    "(torch's own choice), `machine` = distillctl's default (distillctl.threads.machine_threads, "
                    "measured in the worker when it starts: the busy cores of the loaded machine included)")
    ap.add_argument("--loads", default="quiet,python,torch", help="comma-separated: quiet, python, torch")
    ap.add_argument("--workloads", default="distill,eval", help="comma-separated: distill, eval")
    ap.add_argument("--burners", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="background processes of a busy machine (default: cores - 1, at least 1)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per cell, interleaved; the minimum is kept")
    ap.add_argument("--timeout", type=float, default=None, help="cap per run in seconds (default 45; --quick 20)")
    ap.add_argument("--json", default="benchmarks/results/threads.json", help="where to write the results")
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    size = "quick" if args.quick else "full"
    cap = args.timeout or (20.0 if args.quick else 45.0)
    loads, workloads = args.loads.split(","), args.workloads.split(",")
    settings = args.threads.split(",")
    for t in settings:
        if t not in ("default", "machine") and not (t.isdigit() and int(t) >= 1):
            raise SystemExit(f"--threads: {t!r} is not a positive integer, `default` or `machine`")
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           env=thread_env("default"), capture_output=True, text=True, check=True)
    default_threads = int(probe.stdout.strip())
    if "default" in settings and str(default_threads) in settings:
        # torch's default is one of the counts measured anyway: the same configuration, run once
        settings = [t for t in settings if t != "default"]
        note = f"torch's default on this machine is {default_threads} threads (measured as `{default_threads}`)"
    else:
        note = f"torch's default on this machine is {default_threads} threads"

    load_before = os.getloadavg()
    started = time.time()
    rows = []
    for load in loads:
        with Load(load, args.burners):
            for w in workloads:
                best: dict[str, dict] = {}
                for _ in range(args.repeats):
                    for t in settings:
                        r = run_one(w, t, size, cap)
                        print(f"  {load:<7} {w:<8} threads={t:<8} {fmt(r, cap):>8} s", flush=True)
                        if t not in best or (not r["timed_out"] and (best[t]["timed_out"]
                                                                     or r["seconds"] < best[t]["seconds"])):
                            best[t] = r
                rows += [{"load": load, "workload": w, "threads": t, **r} for t, r in best.items()]

    summary = summarise(rows, loads, settings, workloads, cap)
    print(f"\nworkload seconds (min of {args.repeats}; cap {cap:.0f} s); busy = {args.burners} background "
          f"process(es); {note}")
    header = f"{'workload':<9} {'threads':>8} " + " ".join(f"{load:>9}" for load in loads) + f" {'worst/best':>11}"
    print(header)
    for w in workloads:
        for t in settings:
            cells = [fmt(next((r for r in rows if (r["workload"], r["load"], r["threads"]) == (w, load, t)), None), cap)
                     for load in loads]
            print(f"{w:<9} {t:>8} " + " ".join(f"{c:>9}" for c in cells)
                  + f" {summary[w]['worst_ratio_to_best'][t] or float('nan'):>10.2f}x")
    for w in workloads:
        print(f"{w}: the setting with the smallest worst-case slowdown is threads={summary[w]['choice']}")

    import torch

    result = {
        "benchmark": "benchmarks/threads.py", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "size": size, "sizes": SIZES[size],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_default_threads": default_threads,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "burners": args.burners, "timeout_s": cap, "repeats": args.repeats, "wall_s": round(time.time() - started, 1),
        "rows": rows, "summary": summary,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

"""How much a Boost-DD stage's resident memory moves between processes, and what its tensors need.

`plan` measures a vector stage for a few outer steps and takes its peak resident set as the job's. On
mrpc-mlp (full BPTT through 100 inner Adam steps) that peak is 1.5-2.3 GiB above the loaded process from one
fresh process to the next, with the same code, data and seeds: glibc keeps every freed tensor in its heap and
how tightly it packs the next step's tensors there depends on the heap the process had. This script runs the
stage as `plan` does (the cached rows, torch warmed up, validation on 64 rows) in ``--runs`` fresh processes of
``--steps`` outer steps each, and prints, per process, its first and steady step, its peak above the loaded
process after the first step and at the end, and the memory it faulted in per step (pages touched for the
first time: with blocks mapped apart, what a step allocates). ``--mmap-threshold BYTES`` sets glibc's ``MALLOC_MMAP_THRESHOLD_``
for the children: every block at least that large is then its own mapping, handed back when freed, so the peak
is what the live tensors need (and every step pays the page faults of mapping them afresh). Needs the recipe's
embedding cache (`distillctl embed RECIPE` first).

    OMP_NUM_THREADS=1 python benchmarks/stage_memory.py recipes/mrpc-mlp.yaml --runs 4 --steps 8
    OMP_NUM_THREADS=1 python benchmarks/stage_memory.py recipes/mrpc-mlp.yaml --runs 3 --steps 6 --mmap-threshold 131072
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, threading, time
from pathlib import Path

from distillctl import plan_measure as pm
from distillctl.distillation.distill import distill
from distillctl.recipe import load_recipe
from distillctl.runs import read_jsonl

recipe_file, ipc, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
recipe = load_recipe(recipe_file)
emb = pm.embeddings(recipe)[0]
pm.warm_up(recipe)
rows = pm.few_rows(emb, "val")
r = pm.small(recipe, pm.stage_overrides(recipe, steps, 3600) + [f"distill.ipc=[{ipc}]"])  # as plan, uncapped
samples, done = [], threading.Event()

def sample():  # the resident set every 3 ms: which step reached which peak
    while not done.is_set():
        samples.append((time.perf_counter(), pm._status_kib("VmRSS") or 0))
        time.sleep(0.003)

run = Path(tempfile.mkdtemp(prefix="stage-memory-")) / "run"
with pm.PeakMemory() as mem:
    threading.Thread(target=sample, daemon=True).start()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    distill(r, run_dir=run, embeddings=rows, quiet=True)
    done.set()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
ends = [x["elapsed"] for x in sorted(read_jsonl(run / "metrics.jsonl"), key=lambda x: x.get("step", 0)) if "loss" in x]
peaks = []
for end in ends:  # the highest resident set up to the end of each step, above the start
    upto = [kib for t, kib in samples if t - t0 <= end + 0.05]
    peaks.append(max(upto) * 1024 - mem.start if upto else 0)
print(json.dumps({"extra": mem.extra, "step_seconds": [b - a for a, b in zip([0.0] + ends, ends)],
                  "peak_after_step": peaks, "fault_bytes": faults * 4096, "steps": len(ends)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("--ipc", type=int, default=None, help="the stage (default: the chain's first)")
    ap.add_argument("--runs", type=int, default=4, help="fresh processes")
    ap.add_argument("--steps", type=int, default=8, help="outer steps in each")
    ap.add_argument("--mmap-threshold", type=int, default=None,
                    help="MALLOC_MMAP_THRESHOLD_ for the children (bytes): blocks this large are mapped apart")
    args = ap.parse_args()

    from distillctl.recipe import load_recipe

    ipc = args.ipc or list(load_recipe(args.recipe).distill.ipc)[0]
    env = dict(os.environ)
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    MiB = 2**20
    print(f"{args.recipe}, stage ipc {ipc}, {args.steps} outer steps per process"
          + (f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold is not None else ""))
    print("| process | first step s | steady step s (median) | peak above the loaded process after step 1 | at the end "
          "| pages faulted in per step |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, args.recipe, str(ipc), str(args.steps)],
                             env=env, capture_output=True, text=True, check=True).stdout
        d = json.loads(out.strip().splitlines()[-1])
        s = d["step_seconds"]
        print(f"| {i + 1} | {s[0]:.2f} | {statistics.median(s[1:]) if len(s) > 1 else float('nan'):.2f} | "
              f"{d['peak_after_step'][0] / MiB:,.0f} MiB | {d['extra'] / MiB:,.0f} MiB | "
              f"{d['fault_bytes'] / d['steps'] / MiB:,.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()

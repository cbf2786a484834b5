"""Method comparison: every distillation method on one recipe's data and student, side by side, in one run.

    python benchmarks/methods.py recipes/agnews-mlp.yaml --ipc 1 10 --methods bptt krr dm mtt \\
        [--set distill.method.ridge=0.01 ...] [--method-set krr:features=identity ...] [--val-only] \\
        --out benchmarks/results/methods_agnews_mlp

For each method x ipc it runs ``distill`` with the recipe's settings (one Boost-DD stage of that ipc; the
method's own options from ``--method-set METHOD:KEY=VALUE``, else its defaults; bptt keeps the recipe's
unroll), then scores the best-on-val set on the test split with the recipe's eval protocol (K seeds),
unless ``--val-only`` (settings are chosen with ``--val-only``; test is scored once, at the end).
"Time to best" is the distill wall time at the validation step that found the best set, validation
included (it is part of what a user waits for); "method s to best" leaves validation out (every method
validates with the same protocol, so that column is the method's own cost). Prints a table, writes OUT.json, OUT.md and
OUT_time_to_quality.png (validation accuracy against distill seconds, one panel per ipc).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--methods", nargs="+", default=["bptt", "krr", "dm", "mtt"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for every run")
    ap.add_argument("--method-set", action="append", default=[], help="METHOD:KEY=VALUE, one method's option")
    ap.add_argument("--row-set", action="append", default=[],
                    help="LABEL:KEY.PATH=VALUE, a recipe override for one row only (e.g. distill.soft_labels=true)")
    ap.add_argument("--label", action="append", default=[],
                    help="LABEL=METHOD: a row named LABEL running METHOD (for two settings of one method)")
    ap.add_argument("--val-only", action="store_true", help="do not score test (for choosing settings)")
    ap.add_argument("--out", default="benchmarks/results/methods")
    args = ap.parse_args()

    import torch

    from distillctl.reporting.compare import plot_time_to_quality, point_rows
    from distillctl.distillation.distill import distill
    from distillctl.data.embed import load_embeddings
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.recipe import load_recipe

    torch.set_num_threads(1)
    rows_spec = [(m, m) for m in args.methods] + [tuple(x.split("=", 1)) for x in args.label]
    base = load_recipe(args.recipe, args.overrides)
    embeddings = load_embeddings(base, quiet=True)
    work = Path(tempfile.mkdtemp(prefix="methods-"))
    rows, curves = [], {}
    for label, method in rows_spec:
        own = [s.split(":", 1)[1] for s in args.method_set if s.split(":", 1)[0] == label]
        row_overrides = [s.split(":", 1)[1] for s in args.row_set if s.split(":", 1)[0] == label]
        for ipc in args.ipc:
            overrides = [*args.overrides, f"distill.ipc=[{ipc}]", f"distill.method.name={method}",
                         *[f"distill.method.{kv}" for kv in own], *row_overrides]
            recipe = load_recipe(args.recipe, overrides)
            t0 = time.perf_counter()
            res = distill(recipe, run_dir=work / f"{label}-ipc{ipc}", quiet=True, embeddings=embeddings)
            wall = time.perf_counter() - t0
            if not args.val_only:  # writes eval/results.json, which point_rows reads
                evaluate(res.run_dir, quiet=True, embeddings=embeddings)
            # the same row and curve a sweep's comparison report shows (distillctl.reporting.compare)
            [point], point_curves = point_rows(res.run_dir, label, {})
            row = {"method": label, "plugin": method, "ipc": ipc, "val_accuracy": point["val_accuracy"],
                   "seconds_to_best": round(point["seconds_to_best"], 2),
                   "method_seconds_to_best": round(point["method_seconds_to_best"], 2),
                   "distill_seconds": round(wall, 2),  # the whole call, the method's setup included
                   "outer_steps": recipe.distill.outer.iterations,
                   "method_options": recipe.distill.method.model_dump(mode="json"), "row_overrides": row_overrides,
                   **{k: point[k] for k in ("test_accuracy", "test_std", "test_macro_f1", "eval_seeds") if k in point}}
            rows.append(row)
            curves[(label, ipc)] = point_curves[ipc]
            print(json.dumps(row), file=sys.stderr, flush=True)

    header = "| method | ipc | val acc | s to best val | method s to best (no validation) | distill s | " + (
        "test acc (mean ± std) | test macro-F1 |" if not args.val_only else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        line = (f"| {r['method']} | {r['ipc']} | {100 * r['val_accuracy']:.2f} % | {r['seconds_to_best']:.1f} | "
                f"{r['method_seconds_to_best']:.1f} | {r['distill_seconds']:.1f} |")
        if "test_accuracy" in r:
            line += f" {100 * r['test_accuracy']:.2f} ± {100 * r['test_std']:.2f} % | {100 * r['test_macro_f1']:.2f} % |"
        lines.append(line)
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), no GPU",
            "recipe": str(args.recipe), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    out.with_suffix(".md").write_text(f"`{meta['command']}` ({meta['date']}, {meta['machine']})\n\n{table}\n")
    plot_time_to_quality(curves, args.ipc, out.parent / f"{out.name}_time_to_quality.png", base.name)


if __name__ == "__main__":
    main()

"""Quality and time to quality of `distill` against the full-data student, under the eval protocol.

For a recipe (default: AG News, bundled MiniLM, MLP student) this script

1. loads the cached embeddings (`distillctl.data.embed.load_embeddings`; embeds first if missing),
2. trains the full-data student with the recipe's `eval` budget and seeds (`train_and_score`) and
   scores it on `val` and on `test`,
3. runs `distill` for each requested ipc (one stage each, `--set` overrides applied to all),
   which selects its best set on `val` only,
4. scores each saved set on `test` with the same protocol (same student, budget, seeds),
5. reads `metrics.jsonl` for the validation-accuracy-vs-wall-time curve and the time at which
   validation accuracy first reached the full-data student's validation accuracy.

    python benchmarks/distill_quality.py recipes/agnews-mlp-ratbptt.yaml --ipc 1 --ipc 10 \\
        --set distill.outer.max_seconds=120 --json benchmarks/results/distill_quality_mlp.json

The test split is read only in steps 2 and 4 (final scores); nothing is selected on it.

``--tune`` is for choosing distill settings: the best set of each run and the full-data student are
scored on `val` with all the eval seeds (a 10-seed val score instead of distill's 3-seed one) and the
test split is never scored. This is how the settings of recipes/agnews-mlp.yaml were chosen:

    python benchmarks/distill_quality.py recipes/agnews-mlp.yaml --tune --ipc 1 \
        --set distill.unroll.name=ratbptt --set distill.unroll.window=40
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--ipc", type=int, action="append", help="ipc values to distill (one run each)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override (repeatable)")
    ap.add_argument("--runs-root", default="runs/quality", help="where the run directories go")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--tune", action="store_true", help="score on val only, never on test (choosing settings)")
    args = ap.parse_args()

    import torch

    from distillctl.distillation.distill import distill
    from distillctl.data.embed import load_embeddings
    from distillctl.recipe import load_recipe
    from distillctl.runs import read_jsonl
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    recipe = load_recipe(args.recipe, args.overrides)
    emb = load_embeddings(recipe, quiet=True)
    tr, va = emb.splits["train"], emb.splits["val"]
    te = va if args.tune else emb.splits["test"]  # --tune: the "final" score is a 10-seed val score
    final = "val10" if args.tune else "test"
    C, d = emb.num_classes, tr.X.shape[1]
    build = student_builder(recipe, d, C)
    budget = TrainBudget.from_eval(recipe.eval)
    seeds = list(range(recipe.eval.seeds))

    def score(x, y, split):
        s = train_and_score(build, x, y, split.X, split.y, seeds=seeds, budget=budget, num_classes=C, quiet=True)
        return sum(s.accuracy) / len(s.accuracy), (torch.tensor(s.accuracy).std().item() if len(seeds) > 1 else 0.0)

    t0 = time.perf_counter()
    full_val, full_val_std = score(tr.X, tr.y, va)
    full_test, full_test_std = (full_val, full_val_std) if args.tune else score(tr.X, tr.y, te)
    out = {"recipe": args.recipe, "overrides": args.overrides, "scored_on": final, "student": recipe.student.name,
           "budget": budget.as_dict(), "seeds": seeds, "train_rows": int(tr.X.shape[0]),
           "full": {"val": full_val, final: full_test, f"{final}_std": full_test_std,
                    "seconds": time.perf_counter() - t0}, "runs": []}
    print(f"full data ({tr.X.shape[0]} rows): val {full_val:.4f}  {final} {full_test:.4f} ± {full_test_std:.4f}")

    for ipc in args.ipc or [1]:
        r = load_recipe(args.recipe, [*args.overrides, f"distill.ipc=[{ipc}]"])
        run_dir = Path(args.runs_root) / f"{r.name}-ipc{ipc}-{datetime.now().strftime('%H%M%S')}"
        t1 = time.perf_counter()
        res = distill(r, run_dir=run_dir, quiet=True, embeddings=emb)
        wall = time.perf_counter() - t1
        syn = SyntheticSet.load(res.sets[0]["path"])
        test_acc, test_std = score(syn.x, syn.labels, te)
        curve = [(m["elapsed"], m["step"], m["val_accuracy"]) for m in read_jsonl(run_dir / "metrics.jsonl")
                 if "val_accuracy" in m]
        reach = next(((t, s) for t, s, a in curve if a >= full_val), None)
        item = {"ipc": ipc, "run_dir": str(run_dir), "wall_seconds": wall, "outer_steps": syn.meta["outer_steps_run"],
                "best_step": syn.meta["outer_step"], "val": syn.meta["val_accuracy"], final: test_acc,
                f"{final}_std": test_std, f"{final}_vs_full": test_acc - full_test,
                "seconds_to_full_val": reach[0] if reach else None, "curve": curve}
        out["runs"].append(item)
        print(f"ipc {ipc}: {wall:.0f} s, {item['outer_steps']} steps, best step {item['best_step']}, "
              f"val {item['val']:.4f}, {final} {test_acc:.4f} ± {test_std:.4f} (full {full_test:.4f}); "
              f"val >= full val after {item['seconds_to_full_val']} s")
        print("  curve (s, step, val acc): " + ", ".join(f"({t:.0f}, {s}, {a:.3f})" for t, s, a in curve))

    out.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=platform.platform())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

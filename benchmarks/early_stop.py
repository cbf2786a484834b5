"""Early stopping replayed on the validation curves of finished runs: what `distill.outer.patience` P would have
cost, without re-running anything.

A stage validates every `val_every` steps (and at step 0) and keeps the best set on `val` (a strictly higher
accuracy replaces it). With patience P it stops once P validations in a row did not improve the best. Since
the saved set is the best seen up to the stop, P costs nothing on a stage exactly when the stage's best
validation comes before that stop; then the saved set, and every later Boost-DD stage warm-started from it,
are identical. So the curves of a run made with patience off (``--set distill.outer.patience=null``) tell, for
every P, the stop step, the best val accuracy kept and the share of outer steps saved.

    python benchmarks/early_stop.py RUN_DIR [RUN_DIR ...] [--max-patience 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def curves(run_dir: Path) -> dict[tuple[int, int], list[tuple[int, float]]]:
    """``{(stage, ipc): [(step, val_accuracy), ...]}`` in step order, from RUN/metrics.jsonl."""
    out: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "val_accuracy" in r and "stage" in r and "ipc" in r:
            out.setdefault((int(r["stage"]), int(r["ipc"])), []).append((int(r["step"]), float(r["val_accuracy"])))
    return {k: sorted(v) for k, v in out.items()}


def replay(curve: list[tuple[int, float]], patience: int | None) -> dict:
    """The stop step and the best (step, val accuracy) kept with ``patience`` (None: never stop early)."""
    best_step, best, stale, stop = None, None, 0, curve[-1][0]
    for step, acc in curve:
        if best is None or acc > best:
            best_step, best, stale = step, acc, 0
        else:
            stale += 1
        if patience is not None and stale >= patience:
            stop = step
            break
    return {"stop_step": stop, "best_step": best_step, "best_val": best}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories distilled with patience off")
    ap.add_argument("--max-patience", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    for run in args.runs:
        for (stage, ipc), curve in sorted(curves(run).items()):
            full = replay(curve, None)
            for p in range(1, args.max_patience + 1):
                r = replay(curve, p)
                rows.append({"run": str(run), "stage": stage, "ipc": ipc, "patience": p, **r,
                             "full_best_step": full["best_step"], "full_best_val": full["best_val"],
                             "last_step": curve[-1][0], "cost_pp": round((full["best_val"] - r["best_val"]) * 100, 4),
                             "steps_saved": round(1 - r["stop_step"] / curve[-1][0], 4) if curve[-1][0] else 0.0})
    print(f"{'run':<40} {'ipc':>4} {'P':>2} {'stop':>5} {'best step':>9} {'best val':>9} {'no-stop best':>12} "
          f"{'cost pp':>8} {'saved':>6}")
    for r in rows:
        print(f"{Path(r['run']).name[-40:]:<40} {r['ipc']:>4} {r['patience']:>2} {r['stop_step']:>5} "
              f"{r['best_step']:>9} {r['best_val'] * 100:>8.2f}% {r['full_best_val'] * 100:>11.2f}% "
              f"{r['cost_pp']:>8.2f} {r['steps_saved'] * 100:>5.0f}%")
    print()
    for p in range(1, args.max_patience + 1):
        mine = [r for r in rows if r["patience"] == p]
        worst = max((r["cost_pp"] for r in mine), default=0.0)
        saved = sum(r["steps_saved"] for r in mine) / len(mine) if mine else 0.0
        print(f"patience {p}: worst cost {worst:.2f} pp over {len(mine)} stages, mean outer steps saved {saved * 100:.0f}%")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

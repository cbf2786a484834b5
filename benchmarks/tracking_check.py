"""Check what a tracked `submit` logged to MLflow against the run folders it wrote.

    distillctl submit recipes/agnews-mlp-methods.yaml --sweep distill.method.name=bptt,krr \
        --set 'tracking=[{name: mlflow}]' --wait
    python benchmarks/tracking_check.py runs/agnews-mlp-methods/<submission folder>

For the submission folder (its ``submission.json``) it finds the parent run (tag ``distillctl.stage=submit``
whose ``distillctl.run_dir`` is the folder) and its children, one per sweep point, and prints a table:

- metrics: every number of every point's ``metrics.jsonl`` record (``ipc<N>/<field>`` at its step) and every
  eval / baseline result mean (``eval/ipc<N>/<student>/<labels>/accuracy``) looked up in the child's metric
  history; ``matched`` counts equal values (float32 tolerance: MLflow stores doubles, records are rounded);
- artifacts: the sets (``distilled/*.safetensors`` and sidecars), ``eval/*.json``, ``report.md`` /
  ``report.json`` and plots of the run folder, against the child's artifact listing.

Exit status 1 when anything is missing or differs. ``--uri`` (default: ``sqlite:///<runs>/mlflow.db``, the
tracker's default for a recipe's ``runs_dir``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from distillctl.reporting.sections import collect_results
from distillctl.tracking import metrics_of_record, metrics_of_results


def expected_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """{key: {step: value}} from the run folder: metrics.jsonl records and the eval / baseline results."""
    want: dict[str, dict[int, float]] = defaultdict(dict)
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            values, step = metrics_of_record(json.loads(line))
            for k, v in values.items():
                want[k][step] = v
    for k, v in metrics_of_results(collect_results(run_dir)).items():
        want[k].setdefault(0, v)
    return want


def expected_artifacts(run_dir: Path) -> set[str]:
    files = [*run_dir.glob("distilled/*"), *run_dir.glob("eval/*.json"), *run_dir.glob("report.*"),
             *run_dir.glob("plots/*.png")]
    return {p.relative_to(run_dir).as_posix() for p in files if p.is_file()}


def logged_artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= logged_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)


def check_point(client, run_id: str, run_dir: Path) -> dict:
    want = expected_metrics(run_dir)
    keys = matched = 0
    problems = []
    for k, by_step in sorted(want.items()):
        keys += 1
        history = defaultdict(list)
        for m in client.get_metric_history(run_id, k):
            history[m.step].append(m.value)
        for step, v in by_step.items():
            if any(close(v, got) for got in history.get(step, [])):
                matched += 1
            elif len(problems) < 5:
                problems.append(f"{k}@{step}: folder {v!r}, mlflow {history.get(step) or 'absent'}")
    values = sum(len(s) for s in want.values())
    arts_want = expected_artifacts(run_dir)
    arts_got = logged_artifacts(client, run_id)
    missing = sorted(arts_want - arts_got)
    return {"keys": keys, "values": values, "matched": matched, "artifacts": len(arts_want),
            "artifacts_logged": len(arts_want & arts_got), "missing": missing, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("submission", type=Path, help="the submission folder (has submission.json)")
    ap.add_argument("--uri", help="MLflow tracking URI (default: sqlite:///<runs>/mlflow.db)")
    args = ap.parse_args(argv)
    from mlflow.tracking import MlflowClient

    folder = args.submission.resolve()
    submission = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
    points = submission.get("points") or []
    uri = args.uri or f"sqlite:///{folder.parent.parent / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.`distillctl.stage` = 'submit' and "
                                              f"tags.`distillctl.run_dir` = '{folder}'")
    if len(parents) != 1:
        print(f"{folder}: {len(parents)} parent runs in {uri} (want 1)")
        return 1
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_name = {c.info.run_name: c for c in children}
    print(f"experiment {parent.info.experiment_id}, parent run {parent.info.run_id} ({parent.info.run_name}), "
          f"{len(children)} children, {len(points)} points; store {uri}\n")
    print("| point | child run | status | metric keys | values matched | artifacts logged | missing |")
    print("|---|---|---|---:|---:|---:|---|")
    ok = len(children) == len(points)
    for p in points:
        child = by_name.get(p["name"])
        if child is None:
            print(f"| {p['name']} | – | – | – | – | – | no child run |")
            ok = False
            continue
        r = check_point(client, child.info.run_id, Path(p["run_dir"]))
        good = r["matched"] == r["values"] and not r["missing"]
        ok = ok and good
        print(f"| {p['name']} | {child.info.run_id[:8]} | {child.info.status} | {r['keys']} | "
              f"{r['matched']}/{r['values']} | {r['artifacts_logged']}/{r['artifacts']} | "
              f"{', '.join(r['missing'][:4]) or '–'} |")
        for line in r["problems"]:
            print(f"  {p['name']}: {line}")
    print(f"\n{'every value and artifact matches' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

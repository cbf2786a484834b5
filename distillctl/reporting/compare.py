"""The comparison report of a sweep: one row per sweep point and ipc, side by side.

``distillctl report SUBMISSION`` on a submission with several points (e.g. ``--sweep
distill.method.name=bptt,krr,dm,mtt``) writes ``comparison.md``, ``comparison.json`` and
``plots/time_to_quality.png`` in the submission folder: for each point and ipc the method, the student,
test accuracy and macro-F1 (mean ± std over the eval seeds, from the point's ``eval/results.json``), the
best validation accuracy, the distill seconds to that best set (validation included) and in all, and a
plot of validation accuracy against distill seconds per point (time to quality), and which set each
point kept (best-on-val or final, from its sidecar). Points that differ only in a seed key (``--sweep
seed=0,1,2``) are also aggregated (:func:`seed_groups`): mean ± std over the distillation seeds, beside the
eval-seed std within each. Every number comes from the points' own run directories; nothing is
retrained, and test is only read, never selected on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distillctl.errors import UserError
from distillctl.evaluation.protocol import read_results
from distillctl.reporting.report_plots import plot_transfer
from distillctl.reporting.scores import FULL_ARMS, best_reference, dd_scores, labels_of, newest, record_key
from distillctl.reporting.sections import (claims, claims_md, collect_results, scores_md, set_selection, transfer_matrix,
                                           transfer_md)
from distillctl.runs import atomic_write_json, atomic_write_text, open_run_dir, read_jsonl


def point_rows(run_dir: Path, name: str, values: dict) -> tuple[list[dict], dict[int, list[tuple[float, float, float]]]]:
    """The rows of one sweep point (one per distilled set) and its validation curves per ipc:
    (elapsed s, val accuracy, of which s validating) at each validation."""
    run = open_run_dir(run_dir)
    recipe = run.load_recipe()
    results: dict[int, dict] = {}
    if (run.eval / "results.json").exists():
        # the point's own student, its set's own labels first (a soft set may also be scored with hard labels)
        for r in read_results(run.eval / "results.json"):
            if r.get("arm") != "distilled" or r.get("student", recipe.student.name) != recipe.student.name:
                continue
            if r["ipc"] not in results or labels_of(r) == "soft":
                results[r["ipc"]] = r
    curves: dict[int, list[tuple[float, float]]] = {}
    if run.metrics.exists():
        for m in read_jsonl(run.metrics):
            if "val_accuracy" in m and "ipc" in m:
                curves.setdefault(int(m["ipc"]), []).append(
                    (float(m["elapsed"]), float(m["val_accuracy"]), float(m.get("val_seconds", 0.0))))
    rows = []
    for side in sorted(run.distilled.glob("ipc*.json"), key=lambda p: int(p.stem[3:])):
        meta = json.loads(side.read_text(encoding="utf-8"))
        ipc = int(meta["ipc"])
        curve = curves.get(ipc, [])
        best = meta.get("val_accuracy")
        at_best = min(((t, v) for t, a, v in curve if a == best), default=None) if best is not None else None
        row = {"point": name or recipe.name, "values": values, "method": meta.get("method", "bptt"),
               "student": recipe.student.name, "ipc": ipc, "val_accuracy": best,
               "seconds_to_best": at_best and at_best[0], "distill_seconds": meta.get("wall_seconds"),
               # the method's own time to its best set: validation (the same protocol for all) left out
               "method_seconds_to_best": at_best and round(at_best[0] - at_best[1], 3),
               "outer_step": meta.get("outer_step"), "outer_steps_run": meta.get("outer_steps_run"),
               "selection": set_selection(meta), "run_dir": str(run.path)}
        rec = results.get(ipc)
        if rec is not None:
            acc, f1 = rec["accuracy"], rec["macro_f1"]
            row.update(test_accuracy=acc["mean"], test_std=acc["std"], test_macro_f1=f1["mean"],
                       test_values=list(acc.get("values") or []), eval_seeds=len(rec["seeds"]), labels=labels_of(rec))
        rows.append(row)
    return rows, curves


def is_seed_key(key: str) -> bool:
    """A sweep key that varies the distillation seed (``seed``, ``distill.seed``, ...)."""
    return key.rsplit(".", 1)[-1] == "seed"


def _pstd(values: list[float]) -> float:
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5


def _config(values: dict) -> tuple:
    """A sweep point's configuration: its sweep values other than the distillation seed, sorted."""
    return tuple(sorted((k, str(v)) for k, v in values.items() if not is_seed_key(k)))


def _config_label(config: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in config) or "(recipe)"


def seed_groups(rows: list[dict]) -> list[dict]:
    """The points of a seed sweep, aggregated: one group per (the other sweep values, student, ipc) with
    several distillation seeds.

    Per group: test accuracy mean ± std over the distillation seeds (of each point's mean over its eval
    seeds; population std, as in every cell), the mean eval-seed std within a point, the pooled std over
    every (distillation seed, eval seed) student, the validation accuracy mean ± std, and which set each
    point used (best-on-val or final, from its sidecar).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if not any(is_seed_key(k) for k in r["values"]):
            continue
        groups.setdefault((_config(r["values"]), r["student"], r["ipc"]), []).append(r)
    out = []
    for (config, student, ipc), members in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        if len(members) < 2:
            continue
        scored = [m for m in members if m.get("test_accuracy") is not None]
        means = [m["test_accuracy"] for m in scored]
        vals = [m["val_accuracy"] for m in members if m.get("val_accuracy") is not None]
        all_values = [v for m in scored for v in (m.get("test_values") or [])]
        selections: dict[str, int] = {}
        for m in members:
            selections[m["selection"]] = selections.get(m["selection"], 0) + 1
        out.append({
            "config": _config_label(config), "student": student, "ipc": ipc,
            "seeds": [next(str(v) for k, v in m["values"].items() if is_seed_key(k)) for m in members],
            "scored": len(scored),
            "test_accuracy": sum(means) / len(means) if means else None,
            "test_std_over_distill_seeds": _pstd(means) if means else None,
            "test_std_within_mean": sum(m["test_std"] for m in scored) / len(scored) if scored else None,
            "test_std_pooled": _pstd(all_values) if all_values else None,
            "val_accuracy": sum(vals) / len(vals) if vals else None, "val_std": _pstd(vals) if vals else None,
            "selection": selections, "points": [m["point"] for m in members],
        })
    return out


def _seed_groups_md(groups: list[dict]) -> list[str]:
    if not groups:
        return []
    md = ["## Over distillation seeds", "",
          "Points that differ only in their distillation seed, together. Test: mean ± std over the distillation "
          "seeds of each point's mean over its eval seeds (population std); within: the mean eval-seed std of one "
          "point; pooled: the std over every student of every point. Set used: the set each point's sidecar "
          "says was kept (`best-on-val`: the outer step with the best validation accuracy).", "",
          "| config | student | ipc | distill seeds | test acc (%) | within (eval seeds) | pooled | val acc (%) | "
          "set used |",
          "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for g in groups:
        seeds = ", ".join(g["seeds"]) + ("" if g["scored"] == len(g["seeds"]) else f" ({g['scored']} scored)")
        used = "; ".join(f"{k} ({v} of {len(g['seeds'])})" if len(g["selection"]) > 1 else k
                         for k, v in g["selection"].items())
        md.append(f"| {g['config']} | {g['student']} | {g['ipc']} | {seeds} | "
                  f"{_pct(g['test_accuracy'], g['test_std_over_distill_seeds'])} | {_pct(g['test_std_within_mean'])} | "
                  f"{_pct(g['test_std_pooled'])} | {_pct(g['val_accuracy'], g['val_std'])} | {used} |")
    return md + [""]


def seed_sweep_configs(points: list[dict]) -> dict[str, list[dict]]:
    """The points of a seed sweep by configuration (their sweep values other than the seed); only
    configurations with at least two distillation seeds."""
    configs: dict[str, list[dict]] = {}
    for p in points:
        values = p.get("values") or {}
        if not any(is_seed_key(k) for k in values):
            continue
        configs.setdefault(_config_label(_config(values)), []).append(p)
    return {c: ps for c, ps in configs.items() if len(ps) >= 2}


def pool_records(per_point: list[list[dict]]) -> list[dict]:
    """The result records of several distillation seeds as one record per (arm, ipc, student, labels,
    distilled with): each metric's ``mean`` is the mean over the points of each point's mean over its eval
    seeds, ``std`` the (population) std over the points, ``values`` the point means and ``within`` the mean
    eval-seed std of one point. Other fields (budget, student options, the reference's chosen steps or C)
    come from the first point; chosen values that differ between points are listed (``250/1000/250``).
    The report's functions (strongest reference, transfer matrix, scores) then work on these as on one run's.
    """
    groups: dict[tuple, list[dict]] = {}
    for records in per_point:
        for r in newest(records):
            groups.setdefault(record_key(r), []).append(r)
    pooled = []
    for members in groups.values():
        rec = {k: v for k, v in members[0].items() if k not in ("time", "seconds", "set", "val_curve")}
        for metric in ("accuracy", "macro_f1", "positive_f1"):
            summaries = [m[metric] for m in members if m.get(metric)]
            if len(summaries) != len(members):
                rec.pop(metric, None)
                continue
            means = [float(x["mean"]) for x in summaries]
            rec[metric] = {"mean": sum(means) / len(means), "std": _pstd(means), "values": means,
                           "within": sum(float(x.get("std") or 0.0) for x in summaries) / len(summaries)}
        for key in ("chosen_steps", "chosen_C"):
            chosen = [m.get(key) for m in members]
            if any(c is not None for c in chosen) and len(set(chosen)) > 1:
                rec[key] = "/".join(f"{c:g}" if isinstance(c, float) else str(c) for c in chosen)
        rec["distill_seeds"] = len(members)
        pooled.append(rec)
    return pooled


def seed_sweep_report(folder: Path, config: str, points: list[dict], index: int) -> tuple[list[str], dict]:
    """comparison.md's part for one seed-swept configuration: the full-data references, the claims against
    the strongest, the transfer matrix (+ heatmap) and the standard scores, each over the distillation
    seeds (mean ± std over the points). Returns (markdown lines, its JSON)."""
    per_point = [collect_results(Path(p["run_dir"])) for p in points if (Path(p["run_dir"]) / "eval").is_dir()]
    if len(per_point) < 2:
        return [], {}
    records = pool_records(per_point)
    recipe = open_run_dir(points[0]["run_dir"]).load_recipe()
    student = recipe.student.name
    name = recipe.name if config == "(recipe)" else f"{recipe.name}, {config}"
    own = [r for r in records if r["arm"] == "distilled" and r.get("student") == student]
    ipcs = sorted({r["ipc"] for r in own})
    cells = {ipc: {"distilled": next((r for r in own if r["ipc"] == ipc and labels_of(r) == "soft"), None)
                   or next(r for r in own if r["ipc"] == ipc)} for ipc in ipcs}
    refs = {arm: best_reference(records, student=student if arm != "full-logreg" else None, arms=(arm,))
            for arm in FULL_ARMS}
    stated = claims(records, {"ipcs": ipcs, "cells": cells, "reference_records": refs})
    transfer = transfer_matrix(records, student)
    scores = dd_scores(records)
    rel = f"plots/transfer{'' if index == 0 else f'-{index}'}.png"
    plot = plot_transfer(transfer, folder / rel, f"{name}: test accuracy over {len(per_point)} distillation "
                         "seeds, distilled with × evaluated on") if transfer else None
    md = ["## Over distillation seeds: references, transfer and scores"
          + ("" if config == "(recipe)" else f" ({config})"), "",
          f"{len(per_point)} distillation seeds ({', '.join(p['name'] for p in points)}). Every number below is the "
          "mean over the seeds of each seed's mean over its eval seeds, ± the std over the distillation seeds; "
          "the scores are computed from those means. Each seed's own report has its eval-seed spreads.", ""]
    md += claims_md(stated, level=3) + transfer_md(transfer, plot and rel, level=3) + scores_md(scores, level=3)
    differ = [f"{r.get('student')}: {r['chosen_steps']}" for r in records
              if r["arm"] == "full-earlystop" and isinstance(r.get("chosen_steps"), str)]
    if differ:
        md += ["Steps chosen on val per seed (`full-earlystop`), where they differ: " + "; ".join(differ) + ".", ""]
    return md, {"config": config, "points": [p["name"] for p in points], "records": records, "claims": stated,
                "transfer": transfer, "scores": scores, "transfer_plot": str(plot) if plot else None}


def _pct(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def write_comparison(folder: str | Path, points: list[dict]) -> Path:
    """Write comparison.md / .json and plots/time_to_quality.png for a sweep's points; returns the .md path."""
    folder = Path(folder)
    rows, curves = [], {}
    for p in points:
        run_dir = Path(p["run_dir"])
        if not (run_dir / "recipe.resolved.yaml").exists():
            continue
        point_table, point_curves = point_rows(run_dir, p["name"], p.get("values", {}))
        rows += point_table
        for ipc, curve in point_curves.items():
            curves[(p["name"], ipc)] = curve
    if not rows:
        raise UserError(f"{folder}: no distilled sets in any sweep point yet (run or wait for the distill jobs)")
    rows.sort(key=lambda r: (r["ipc"], r["student"], r["point"]))
    plot = plot_time_to_quality(curves, sorted({r["ipc"] for r in rows}), folder / "plots" / "time_to_quality.png")
    md = ["# Sweep comparison", "",
          f"Submission: `{folder}`. One row per sweep point and ipc. Test: mean ± std over the eval seeds of "
          "each point's recipe (scored once; nothing was chosen on it). Val: the best validation accuracy, "
          "whose set is the one saved and scored. Seconds: distill wall time until that best set was found, "
          "with validation (what a user waits for) and without it (the method's own optimisation; every "
          "method validates with the same protocol), and the whole distill time.", "",
          "| point | method | student | ipc | test acc (%) | test macro-F1 (%) | val acc (%) | s to best | "
          "method s to best | distill s | set used |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['point']} | {r['method']} | {r['student']} | {r['ipc']} | "
                  f"{_pct(r.get('test_accuracy'), r.get('test_std'))} | {_pct(r.get('test_macro_f1'))} | "
                  f"{_pct(r['val_accuracy'])} | {_secs(r['seconds_to_best'])} | {_secs(r['method_seconds_to_best'])} | "
                  f"{_secs(r['distill_seconds'])} | {r['selection']} |")
    md += ["", f"![validation accuracy against distill seconds]({plot.relative_to(folder)})", ""]
    groups = seed_groups(rows)
    md += _seed_groups_md(groups)
    sweeps = []
    for index, (config, members) in enumerate(seed_sweep_configs(points).items()):
        part, blob = seed_sweep_report(folder, config, members, index)
        md += part
        if blob:
            sweeps.append(blob)
    path = atomic_write_text(folder / "comparison.md", "\n".join(md))
    plots = {"time_to_quality": str(plot), **{Path(b["transfer_plot"]).stem: b["transfer_plot"]
                                              for b in sweeps if b.get("transfer_plot")}}
    atomic_write_json(folder / "comparison.json", {"submission": str(folder), "rows": rows, "plot": str(plot),
                                                   "plots": plots, "seed_groups": groups, "seed_sweeps": sweeps})
    return path


def plot_time_to_quality(curves: dict[tuple[str, int], list], ipcs: list[int], path: Path, title: str = "") -> Path:
    """Validation accuracy against distill seconds: ``curves[(label, ipc)] = [(elapsed, val_acc, ...), ...]``,
    one panel per ipc, one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(ipcs), figsize=(5 * len(ipcs), 3.6), squeeze=False)
    for ax, ipc in zip(axes[0], ipcs):
        for (name, i), vals in sorted(curves.items()):
            if i == ipc and vals:
                ax.plot([v[0] for v in vals], [100 * v[1] for v in vals], marker="o", ms=3, label=name)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("distill seconds (validation included)")
        ax.set_ylabel("val accuracy (%)")
        ax.set_title(f"{title}: ipc {ipc}" if title else f"ipc {ipc}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a point without validations yet draws no line
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def submission_points(folder: Path) -> list[dict[str, Any]] | None:
    """The sweep points of a submission folder, or None when ``folder`` is not a multi-point submission."""
    file = Path(folder) / "submission.json"
    if not file.is_file():
        return None
    try:
        points = json.loads(file.read_text(encoding="utf-8")).get("points") or []
    except json.JSONDecodeError:
        return None
    return points if len(points) > 1 else None

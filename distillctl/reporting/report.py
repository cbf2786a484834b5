"""report: one readable page per run from its eval and baseline results.

Reads ``RUN_DIR/eval/results.json`` (distilled sets), ``RUN_DIR/eval/baseline-<kind>.json``, the sets'
sidecars and ``metrics.jsonl``, and writes::

    RUN_DIR/report.md               the protocol; claims against the strongest full-data reference (and a word
                                    wherever a set scores above a reference); tables (accuracy, macro-F1
                                    [, positive-class F1]) by ipc with only the arms that were run; the standard
                                    scores (HLR, IOR, LRS); the transfer matrix; the distillation (set used, val
                                    curve); the set in PCA; the nearest real texts of each synthetic vector
    RUN_DIR/report.json             the same numbers
    RUN_DIR/plots/accuracy_vs_ipc.png   accuracy against ipc (log axis), error bars, reference lines
    RUN_DIR/plots/transfer.png      distilled with x evaluated on, one heatmap per ipc
    RUN_DIR/plots/val_curve.png     validation accuracy against outer step per stage, set used and stop marked
    RUN_DIR/plots/pca.png           synthetic rows among the real training rows (PCA fitted on train)

Numbers are read from the stored records; nothing is retrained, and test is never selected on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distillctl.data import embed  # embed.load_embeddings: looked up per call (tests stand in for it)
from distillctl.distillation.synthetic import SyntheticSet, sidecar_path
from distillctl.errors import UserError
from distillctl.evaluation.protocol import collapse_notes, set_files, split_of
from distillctl.evaluation.training import TrainBudget
from distillctl.plugins import with_registry
from distillctl.reporting.compare import submission_points, write_comparison
from distillctl.reporting.frozen_path import frozen_path_md, frozen_vector_best
from distillctl.reporting.report_plots import plot_accuracy, plot_pca, plot_transfer, plot_val_curve
from distillctl.reporting.scores import dd_scores, labels_of, newest
from distillctl.reporting.summary import headline, headline_md
from distillctl.reporting.sections import (claims, claims_md, collect_results, pct, scores_md, set_selection,
                                           transfer_matrix, transfer_md)
from distillctl.runs import atomic_write_json, atomic_write_text, existing_run_of, holds_run_lock, open_run_dir, read_jsonl
from distillctl.tracking import track_report

#: per-ipc arms, in table order: (key in a row, header). `distilled-hard` is a soft-label set scored with
#: its labels' argmax instead; `distilled-init` (token level) is the set fine-tuning the initial model it was
#: distilled for, with its inner steps, where `distilled` starts from fresh heads (the eval budget) and
#: `distilled-heads` from fresh heads with the set's inner steps.
ARM_COLUMNS = (("distilled", "distilled"), ("distilled-hard", "distilled, hard labels"),
               ("distilled-init", "distilled, from its initial model"),
               ("distilled-heads", "distilled, fresh heads, its steps"), ("random", "random"),
               ("herding", "herding"), ("kcenter", "k-center"))
#: full-data references (one value per table: no ipc), in table order
REFERENCE_HEADERS = {"full": "full, same budget", "full-earlystop": "full, steps on val",
                     "full-logreg": "full, logreg"}
SUBSET_ARMS = ("distilled", "random", "herding", "kcenter")
METRICS = (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"), ("positive_f1", "Positive-class F1"))
#: nearest real training texts shown per synthetic vector, and their length in the report
NEIGHBOURS = 3
TEXT_CHARS = 200
#: heading of report.md's nearest-texts part; what comes before it is what the CLI prints
NEAREST_HEADING = "## What the synthetic vectors stand for"
#: the same part for token-level sets (sequences of input embeddings)
SEQUENCES_HEADING = "## What the synthetic sequences stand for"


def _protocol(rec: dict) -> tuple:
    # a token-level record's `device` says its number format (float32, bfloat16 scoring or autocast): arms
    # trained in different formats are not the same protocol
    return (rec.get("student"), json.dumps(rec.get("student_options"), sort_keys=True),
            json.dumps(rec.get("budget"), sort_keys=True), tuple(rec.get("seeds") or ()), rec.get("device"))


def _options(opts: dict | None) -> str:
    opts = {k: v for k, v in (opts or {}).items() if k != "name"}
    return "(" + ", ".join(f"{k}: {v}" for k, v in opts.items()) + ")" if opts else ""


# -- the numbers ------------------------------------------------------------------------------------

def _own_set_first(cands: list[dict], run_path: Path | None) -> list[dict]:
    """Distilled records of this run's own sets before any scored from elsewhere."""
    if run_path is None:
        return cands
    root = str(Path(run_path).resolve())
    return sorted(cands, key=lambda r: not str(r.get("set") or "").startswith(root))


def primary_student(records: list[dict], default: str | None = None) -> str | None:
    """The student of the run's own table: the recipe's, when it scored anything; else the most common."""
    trained = [r.get("student") for r in records if r.get("budget") and r.get("arm") in SUBSET_ARMS + ("full",)]
    if default in trained or not trained:
        return default
    return max(set(trained), key=trained.count)


def build_tables(records: list[dict], student: str | None = None, run_path: Path | None = None) -> dict:
    """Rows by ipc for each metric (the run's student), its full-data references, the common protocol and any
    deviation from it. Arms that were not run get no column."""
    records = newest(records)
    student = primary_student(records, student)
    mine = [r for r in records if r.get("student") == student]

    def cell(arm: str, ipc: int | None, labels: str | None = None) -> dict | None:
        cands = [r for r in mine if r["arm"] == arm and r.get("ipc") == ipc
                 and (labels is None or labels_of(r) == labels)]
        return (_own_set_first(cands, run_path) or [None])[0]

    ipcs = sorted({r["ipc"] for r in mine if r["arm"] in SUBSET_ARMS and r.get("ipc") is not None})
    by_ipc: dict[int, dict[str, dict | None]] = {}
    for ipc in ipcs:
        own = cell("distilled", ipc, "soft") or cell("distilled", ipc, "hard")  # the set's own labels first
        by_ipc[ipc] = {"distilled": own,
                       "distilled-hard": cell("distilled", ipc, "hard") if own and labels_of(own) == "soft" else None,
                       "distilled-init": cell("distilled-init", ipc),
                       "distilled-heads": cell("distilled-heads", ipc),
                       **{arm: cell(arm, ipc) for arm in SUBSET_ARMS[1:]}}
    refs = {arm: cell(arm, None) for arm in ("full", "full-earlystop")}
    refs["full-logreg"] = next((r for r in records if r["arm"] == "full-logreg"), None)  # student-free
    majority_rec = next((r for r in records if r["arm"] == "majority"), None)

    # the protocol most same-protocol arms share; every other one is flagged in the report (the chosen-steps
    # and logistic-regression references differ from it by design)
    trained = [r for r in mine if r.get("budget") and r["arm"] in SUBSET_ARMS + ("full",)]
    counts: dict[tuple, int] = {}
    for r in trained:
        counts[_protocol(r)] = counts.get(_protocol(r), 0) + 1
    common = max(counts, key=counts.get) if counts else None
    ref = next((r for r in trained if _protocol(r) == common), None)
    deviating = [r for r in trained if _protocol(r) != common]
    common_device = common[-1] if common else None
    # the chosen-steps reference differs from the common protocol by design, but not in its number format
    deviating += [r for r in (refs.get("full-earlystop"),) if r and r.get("device") != common_device]

    metrics = [m for m, _ in METRICS if any(m in r for r in records)]
    columns = [(arm, h) for arm, h in ARM_COLUMNS if any(by_ipc[i][arm] for i in ipcs)]
    ref_columns = [(arm, h) for arm, h in REFERENCE_HEADERS.items() if refs.get(arm)]
    tables = {}
    for m in metrics:
        rows = []
        for ipc in ipcs:
            row: dict[str, Any] = {"ipc": ipc}
            for arm, _ in ARM_COLUMNS:
                rec = by_ipc[ipc][arm]
                row[arm] = rec.get(m) if rec else None
            for arm in REFERENCE_HEADERS:
                row[arm] = refs[arm].get(m) if refs.get(arm) else None
            row["majority"] = majority_rec.get(m) if majority_rec else None
            d, r = row["distilled"], row["random"]
            row["gain_over_random"] = (d["mean"] - r["mean"]) if d and r else None
            rows.append(row)
        tables[m] = rows
    any_rec = records[0] if records else {}
    return {
        "student": student,
        "ipcs": ipcs,
        "metrics": metrics,
        "columns": columns,
        "reference_columns": ref_columns,
        "reference_headers": REFERENCE_HEADERS,
        "majority_column": majority_rec is not None,
        "tables": tables,
        "cells": {ipc: {arm: rec for arm, rec in arms.items() if rec} for ipc, arms in by_ipc.items()},
        # `full` stays the same-budget arm (what `status` summaries read); `references` holds all three
        "full": {m: refs["full"].get(m) for m in metrics} if refs["full"] else None,
        "references": {arm: ({m: rec.get(m) for m in metrics} if rec else None) for arm, rec in refs.items()},
        "reference_records": refs,
        "majority": any_rec.get("majority"),
        "chance": any_rec.get("chance"),
        "n_test": any_rec.get("n_test"),
        "protocol": None if ref is None else {
            "student": ref.get("student"), "student_options": ref.get("student_options"),
            "budget": ref.get("budget"), "seeds": ref.get("seeds"), "split": ref.get("split", "test"),
        },
        "deviations": [f"{r['arm']} ipc {r.get('ipc')}: student {r.get('student')}, "
                       f"{TrainBudget(**r['budget']).describe()}, K = {len(r.get('seeds') or [])}"
                       + (f", trained on {r.get('device') or 'a device not recorded'} (the others: "
                          f"{common_device or 'not recorded'})"
                          if r.get("device") != common_device else "")
                       for r in deviating],
        "deviating": {(r["arm"], r.get("ipc")) for r in deviating},
    }


def distillation(run: Any) -> list[dict]:
    """Per distilled set: which set was kept (best-on-val or final, from its sidecar), its validation curve
    from metrics.jsonl (outer step, val accuracy) and where and why its stage stopped, when recorded."""
    metrics = read_jsonl(run.metrics) if run.metrics.exists() else []
    out = []
    for f in set_files(run.path):
        try:
            meta = json.loads(sidecar_path(f).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        ipc = int(meta["ipc"])
        mine = [m for m in metrics if m.get("ipc") == ipc]
        points = [(int(m["step"]), float(m["val_accuracy"])) for m in mine
                  if m.get("val_accuracy") is not None and m.get("step") is not None]
        stop = next((m for m in reversed(mine) if m.get("event") == "stopped"), None)
        stop = stop or (meta.get("stopped") if isinstance(meta.get("stopped"), dict) else None)
        if stop is not None:
            stop = {"step": stop.get("step"), "reason": stop.get("reason") or stop.get("why") or ""}
        step, run_steps = meta.get("outer_step"), meta.get("outer_steps_run")
        out.append({"ipc": ipc, "stage": meta.get("stage"), "method": meta.get("method"),
                    "distilled_with": meta.get("distilled_with"), "selection": set_selection(meta), "chosen_step": step,
                    "steps_run": run_steps, "chosen_val": meta.get("val_accuracy"), "points": points, "stop": stop,
                    "soft_labels": meta.get("soft_labels"), "wall_seconds": meta.get("wall_seconds")})
    return out


def nearest_texts(run_path: Path, embeddings: Any, k: int = NEIGHBOURS, files: Any = None) -> list[dict]:
    """For each synthetic vector of each distilled set (``files``: these sets only): the k most
    cosine-similar real training texts."""
    import torch

    train = split_of(embeddings, "train")
    if not callable(getattr(embeddings, "texts", None)):  # embeddings built in Python may carry no texts
        raise UserError("the embeddings carry no texts (no `texts(split)` method)")
    texts = embeddings.texts("train")
    X = torch.nn.functional.normalize(train.X.float(), dim=1)  # (n, d) unit rows
    if len(texts) != X.shape[0]:
        raise UserError(f"embeddings: {len(texts)} train texts for {X.shape[0]} train vectors")
    names = list(embeddings.label_names)
    out = []
    for f in set_files(run_path) if files is None else files:
        s = SyntheticSet.load(f)
        if s.dim != X.shape[1]:
            continue  # reported by eval; nothing to compare against here
        sims = torch.nn.functional.normalize(s.x.float(), dim=1) @ X.T  # (ipc*C, n) cosine similarities
        top = sims.topk(min(k, X.shape[0]), dim=1)
        classes = s.hard_labels().tolist()
        vectors = []
        for row in range(s.x.shape[0]):
            vectors.append({
                "row": row, "class": names[classes[row]],
                "neighbours": [{"train_row": int(j), "similarity": round(float(v), 4),
                                "label": names[int(train.y[j])], "text": texts[int(j)]}
                               for v, j in zip(top.values[row], top.indices[row])],
            })
        out.append({"ipc": s.ipc, "set": str(f), "vectors": vectors})
    return out


def pca_picture(run: Any, embeddings: Any, title: str) -> tuple[Path | None, dict | None]:
    """plots/pca.png: every distilled set in the PCA plane of the real training vectors."""
    train = split_of(embeddings, "train")
    sets = []
    for f in set_files(run.path):
        s = SyntheticSet.load(f)
        if s.dim == train.X.shape[1]:
            sets.append({"ipc": s.ipc, "x": s.x.float(), "classes": s.hard_labels().tolist()})
    if not sets:
        return None, None
    names = list(getattr(embeddings, "label_names", None) or [str(c) for c in range(int(embeddings.num_classes))])
    return plot_pca(train.X.float(), train.y, sets, names, run.plots / "pca.png", title)


def report_tables(report_md: Path) -> str:
    """report.md without its nearest-texts part: everything a terminal shows."""
    text = Path(report_md).read_text(encoding="utf-8")
    return text.split(NEAREST_HEADING)[0].split(SEQUENCES_HEADING)[0].rstrip()


def _short(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


# -- report.md ----------------------------------------------------------------------------------------

def _markdown_table(rows: list[dict], summary: dict) -> list[str]:
    arms, refs = summary["columns"], summary["reference_columns"]
    head = (["IPC"] + [h for _, h in arms] + [h for _, h in refs] + (["majority"] if summary["majority_column"] else [])
            + (["gain over random"] if any(a == "random" for a, _ in arms) else []))
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for row in rows:
        cells = [str(row["ipc"])]
        for arm, _ in arms:
            cell = pct(row[arm])
            if row[arm] and (arm, row["ipc"]) in summary["deviating"]:
                cell += " †"
            cells.append(cell)
        for arm, _ in refs:
            cells.append(pct(row[arm]) + (" †" if row[arm] and (arm, None) in summary["deviating"] else ""))
        if summary["majority_column"]:
            cells.append(pct(row["majority"]))
        if any(a == "random" for a, _ in arms):
            g = row["gain_over_random"]
            cells.append("–" if g is None else f"{g * 100:+.2f} pp")
        out.append("| " + " | ".join(cells) + " |")
    return out


def _distillation_md(stages: list[dict], plot: Path | None) -> list[str]:
    if not stages:
        return []
    md = ["## Distillation", "",
          "The set each stage kept (from its sidecar): `best-on-val` = the outer step with the best validation "
          "accuracy (test was never looked at); `final` = the last step.", "",
          "| IPC | method | set used | outer step | steps run | val acc (%) | stopped |",
          "|---:|---|---|---:|---:|---:|---|"]
    for s in stages:
        stop = s["stop"]
        stop_text = "–" if not stop else f"step {stop['step']}" + (f": {stop['reason']}" if stop["reason"] else "")
        val = "–" if s["chosen_val"] is None else f"{s['chosen_val'] * 100:.2f}"
        md.append(f"| {s['ipc']} | {s['method'] or '–'} | {s['selection']} | {s['chosen_step']} | {s['steps_run']} | "
                  f"{val} | {stop_text} |")
    md.append("")
    if plot is not None:
        md += ["![validation curve](plots/val_curve.png)", ""]
    return md


@with_registry  # registry=: run with that plugin registry (default: get_registry())
@holds_run_lock("report", lambda args, kw: existing_run_of(args[0] if args else kw.get("run_dir")))
@track_report  # the recipe's `tracking` list: report, report.json and plots as artifacts
def report(run_dir: str | Path, *, quiet: bool | None = None, embeddings: Any = None) -> Path:
    """Write report.md, report.json and plots/*.png for a run; returns report.md's path.

    On a submission folder with several sweep points, write its comparison report instead
    (:mod:`distillctl.reporting.compare`: comparison.md / .json, plots/time_to_quality.png) and return that path.
    """
    points = submission_points(Path(run_dir))
    if points:  # a sweep: decided here, once
        return write_comparison(run_dir, points)

    # 1. The results of the run.
    run = open_run_dir(run_dir)
    recipe = run.load_recipe()
    records = newest(collect_results(run.path))
    if not records:
        from distillctl.runs import not_ready

        raise not_ready(run_dir, f"no results in {run.eval}", f"run `distillctl eval {run_dir}` and "
                        f"`distillctl baseline RECIPE --kind random --run-dir {run_dir}` first")
    summary = build_tables(records, recipe.student.name, run.path)
    parts = {"claims": claims(records, summary), "scores": dd_scores(records),
             "transfer": transfer_matrix(records, summary["student"]), "distillation": distillation(run),
             "single_class": collapse_notes(records), "headline": headline(records)}

    # 2. The plots.
    plots = {"accuracy_vs_ipc": plot_accuracy(summary, run.plots / "accuracy_vs_ipc.png",
                                              f"{recipe.name}: test accuracy vs IPC")}
    if parts["transfer"]:
        plots["transfer"] = plot_transfer(parts["transfer"], run.plots / "transfer.png",
                                          f"{recipe.name}: test accuracy, distilled with × evaluated on")
    curves = [s for s in parts["distillation"] if s["points"]]
    if curves:
        plots["val_curve"] = plot_val_curve(curves, run.plots / "val_curve.png",
                                            f"{recipe.name}: validation accuracy while distilling")

    # 3. What the sets stand for (both need the embedding cache): vectors among the real rows and their nearest
    #    real texts; token-level sequences as their nearest vocabulary tokens and nearest real texts.
    parts.update(nearest=[], nearest_note=None, pca=None, pca_note=None, readout=[], readout_note=None)
    if getattr(recipe.embed, "level", "vectors") == "tokens":
        parts.update(_sequences_readout(run, recipe, embeddings, quiet=quiet))
        parts["frozen_path"] = frozen_vector_best(run.path, recipe)  # vector-level runs on the same splits
    else:
        parts.update(_sets_among_real_rows(run, recipe, embeddings, plots, quiet=quiet))

    # 4. report.md
    md_path = atomic_write_text(run.path / "report.md", "\n".join(_report_md(run, recipe, summary, parts, plots)))

    # 5. report.json
    out = {k: v for k, v in summary.items() if k not in ("deviating", "cells", "reference_records")}
    out.update({"run_dir": str(run.path), "recipe": recipe.name, "report": str(md_path),
                "plot": str(plots["accuracy_vs_ipc"]), "plots": {k: str(v) for k, v in plots.items()},
                **{k: parts[k] for k in ("claims", "scores", "transfer", "distillation", "pca", "nearest",
                                         "nearest_note", "pca_note", "readout", "readout_note", "single_class")},
                "frozen_path": parts.get("frozen_path"),
                "results": records})
    atomic_write_json(run.path / "report.json", out)
    return md_path


def _cached_embeddings(recipe: Any, embeddings: Any, quiet: bool | None) -> tuple[Any, Exception | None]:
    """(the run's embeddings, None): ``embeddings`` or the recipe's cache loaded; (None, why) when the cache
    cannot give them (the report then says why instead of the parts that need them)."""
    if embeddings is not None:
        return embeddings, None
    try:
        return embed.load_embeddings(recipe, quiet=quiet), None
    except (UserError, NotImplementedError) as exc:
        return None, exc


def _sets_among_real_rows(run: Any, recipe: Any, embeddings: Any, plots: dict, *, quiet: bool | None) -> dict:
    """The PCA picture of the sets among the real training rows (added to ``plots``) and each synthetic
    vector's nearest real texts; a note instead of either when the embedding cache cannot give it."""
    out = {"nearest": [], "nearest_note": None, "pca": None, "pca_note": None}
    if not set_files(run.path):
        return out
    embeddings, why = _cached_embeddings(recipe, embeddings, quiet)
    if embeddings is None:
        out["nearest_note"] = out["pca_note"] = f"embeddings unavailable: {why}"
        return out
    try:
        path, out["pca"] = pca_picture(run, embeddings, f"{recipe.name}: distilled rows in the PCA plane of train")
        if path is not None:
            plots["pca"] = path
    except (UserError, NotImplementedError) as exc:
        out["pca_note"] = f"PCA picture unavailable: {exc}"
    try:
        out["nearest"] = nearest_texts(run.path, embeddings)
    except (UserError, NotImplementedError) as exc:
        out["nearest_note"] = f"nearest texts unavailable: {exc}"
    return out


def _sequences_readout(run: Any, recipe: Any, embeddings: Any, *, quiet: bool | None) -> dict:
    """Token level: each synthetic sequence's nearest vocabulary tokens per position and its nearest real
    training texts (:mod:`distillctl.reporting.readable`); without the token cache, the tokens alone."""
    from distillctl.reporting.readable import token_readout

    out = {"readout": [], "readout_note": None}
    if not set_files(run.path):
        return out
    embeddings, why = _cached_embeddings(recipe, embeddings, quiet)
    if embeddings is None:
        out["readout_note"] = f"token cache unavailable ({why}): no nearest real texts"
    try:
        out["readout"] = token_readout(set_files(run.path), embeddings)
    except (UserError, NotImplementedError) as exc:
        out["readout_note"] = f"readout unavailable: {exc}"
    return out


def _report_md(run: Any, recipe: Any, summary: dict, parts: dict, plots: dict) -> list[str]:
    """report.md's lines, top to bottom: title, protocol, claims, tables by ipc, scores, transfer,
    distillation, the sets among the real rows, their nearest texts (token level: the readable sequences)."""
    md = [f"# {recipe.name}: distilled sets against baselines", ""]
    if recipe.description:
        md += [recipe.description, ""]
    md += [f"Run directory: `{run.path}`", ""]
    md += _protocol_md(summary, parts["single_class"])
    if parts["headline"]["rows"]:  # every student that scored the sets (eval --students mlp,linear: both)
        md += ["## Headline: distilled sets on every evaluating student", "",
               "Test accuracy (%), mean ± std over the eval seeds, and the share of the strongest full-data "
               "reference.", ""] + headline_md(parts["headline"]) + [""]
    md += claims_md(parts["claims"])
    if parts.get("frozen_path"):
        md += frozen_path_md(parts["frozen_path"])
    for metric, title in METRICS:
        if metric not in summary["tables"]:
            continue
        md += [f"## {title} (%) by instances per class", ""]
        rows = summary["tables"][metric]
        if rows:
            md += _markdown_table(rows, summary) + [""]
        else:
            refs = [f"{summary['reference_headers'][a]} {pct(r.get(metric))}"
                    for a, r in (summary["references"] or {}).items() if r and r.get(metric)]
            md += [("Full training data: " + "; ".join(refs)) if refs else "No per-ipc results yet.", ""]
    md += ["![accuracy vs ipc](plots/accuracy_vs_ipc.png)", ""]
    md += scores_md(parts["scores"])
    md += transfer_md(parts["transfer"], "plots/transfer.png" if "transfer" in plots else None)
    md += _distillation_md(parts["distillation"], plots.get("val_curve"))
    md += _pca_md(parts["pca"], parts["pca_note"]) + _nearest_md(parts["nearest"], parts["nearest_note"])
    return md + _readout_md(parts["readout"], parts["readout_note"])


def _protocol_md(summary: dict, single_class: list[str]) -> list[str]:
    """The protocol every same-protocol arm shares, the majority class, deviations, single-class students."""
    md, p = [], summary["protocol"]
    if p:
        seeds = p["seeds"] or []
        replays = [h for a, h in summary["columns"] if a in ("distilled-init", "distilled-heads")]
        run_arms = [h for _, h in summary["columns"] if h not in replays]
        md += ["## Protocol", "",
               f"- Student: `{p['student']}` {_options(p.get('student_options'))}",
               f"- Budget (every same-protocol arm: {', '.join(run_arms + ['full, same budget'])}): "
               f"{TrainBudget(**p['budget']).describe()}",
               *([f"- {' and '.join(replays)}: the inner steps each set was distilled with instead (its optimiser, "
                  "steps and learned lr; `inner_replay` in report.json)"] if replays else []),
               f"- K = {len(seeds)} seeds per cell ({seeds[0]}..{seeds[-1]}); cells are mean ± std over seeds "
               f"(population std), in %",
               f"- Scored once on the `{p['split']}` split (n = {summary['n_test']}); nothing was selected on it",
               "- Only the arms that were run have a column. `random` draws new real rows per seed; `herding` / "
               "`k-center` are deterministic coresets chosen in embedding space per class; `full, same budget` "
               "trains on every training row with the same budget; `full, steps on val` with its step count "
               "chosen on val; `full, logreg` is a logistic regression with its regularisation chosen on val", ""]
    if summary["majority"]:
        m = summary["majority"]
        md += [f"Majority class `{m['class']}`: accuracy {m['accuracy'] * 100:.2f} %, macro-F1 "
               f"{m['macro_f1'] * 100:.2f} %" + (f", positive-class F1 {m['positive_f1'] * 100:.2f} %"
                                                  if "positive_f1" in m else "")
               + f". Chance: {summary['chance'] * 100:.2f} %.", ""]
    if summary["deviations"]:
        md += ["**† Different protocol** (not comparable with the other cells):", ""]
        md += [f"- {d}" for d in summary["deviations"]] + [""]
    if single_class:
        md += ["**Single-class students** (such a student scores the share of its one class in test):", ""]
        md += [f"- {n}" for n in single_class] + [""]
    return md


def _pca_md(pca: dict | None, note: str | None) -> list[str]:
    if not (pca or note):
        return []
    md = ["## The sets among the real rows", ""]
    if not pca:
        return md + [f"_{note}_", ""]
    return md + [f"Real training rows (faint dots, {pca['real_rows_drawn']} drawn) and the synthetic rows (stars, "
                 "numbered by their row in the set, as in the nearest-texts table), projected on the first two "
                 "principal components of the real training vectors "
                 f"({sum(pca['explained_variance_ratio']) * 100:.1f} % of their variance).", "",
                 "![PCA of the sets](plots/pca.png)", ""]


def _nearest_md(nearest: list[dict], note: str | None) -> list[str]:
    if not (nearest or note):
        return []
    md = [NEAREST_HEADING, "",
          f"For each synthetic vector, the {NEIGHBOURS} real training texts nearest by cosine similarity "
          "(similarity, the text's true label).", ""]
    if note:
        md += [f"_{note}_", ""]
    for s in nearest:
        md += [f"<details><summary>ipc {s['ipc']} ({len(s['vectors'])} vectors)</summary>", "",
               "| vector | class | # | cos | label | text |", "|---:|---|---:|---:|---|---|"]
        for v in s["vectors"]:
            for rank, nb in enumerate(v["neighbours"], 1):
                md.append(f"| {v['row'] if rank == 1 else ''} | {v['class'] if rank == 1 else ''} | {rank} | "
                          f"{nb['similarity']:.3f} | {nb['label']} | {_short(nb['text'])} |")
        md += ["", "</details>", ""]
    return md


def _readout_md(readout: list[dict], note: str | None) -> list[str]:
    """The token-level sets, readable: per sequence the nearest vocabulary token of each attended position
    (and the next two), and the real training texts nearest in the initial model's pooled features."""
    from distillctl.reporting.readable import TOKENS_PER_POSITION

    if not (readout or note):
        return []
    md = [SEQUENCES_HEADING, "",
          "Each synthetic sequence is a row of input embeddings, not text. *Reads as*: the vocabulary token whose word "
          "embedding is nearest by cosine at each attended position (`##` pieces glued); *top "
          f"{TOKENS_PER_POSITION} per position*: position:token/token/token (mean cosine of the nearest in brackets); "
          "then the real training texts nearest in the pooled features of the model the set was distilled for "
          "(cosine, their true label).", ""]
    if note:
        md += [f"_{note}_", ""]
    for s in readout:
        searched = f", nearest texts among {s['real_rows_searched']} training texts" if s["real_rows_searched"] else ""
        md += [f"<details><summary>ipc {s['ipc']} ({len(s['sequences'])} sequences{searched})</summary>", ""]
        for q in s["sequences"]:
            firsts = [c[0] for c in q["cosines"] if c]
            mean = sum(firsts) / len(firsts) if firsts else float("nan")
            md += [f"**sequence {q['row']}** (class `{q['class']}`, mean nearest-token cosine {mean:.3f}) reads as: "
                   f"{_short(q['text'])}", "",
                   "<sub>" + " ".join(f"{i}:{'/'.join(t)}" for i, t in enumerate(q["tokens"]) if t) + "</sub>", ""]
            if q["neighbours"]:
                md += ["| # | cos | label | nearest real text |", "|---:|---:|---|---|"]
                md += [f"| {i} | {nb['similarity']:.3f} | {nb['label']} | {_short(nb['text'])} |"
                       for i, nb in enumerate(q["neighbours"], 1)]
                md.append("")
        md += ["</details>", ""]
    return md

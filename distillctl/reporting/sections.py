"""What a run's report and a sweep's comparison share: the numbers and the Markdown sections built on them.

The numbers: a run's result records (:func:`collect_results`), the claims against the strongest
full-data reference (:func:`claims`), the transfer matrix (:func:`transfer_matrix`), which set a stage
kept (:func:`set_selection`). The sections (:func:`claims_md`, :func:`scores_md`, :func:`transfer_md`) take
their heading level: ``##`` in ``report.md`` (:mod:`distillctl.reporting.report`), ``###`` inside a seed
sweep's part of ``comparison.md`` (:mod:`distillctl.reporting.compare`), whose records are pooled over
distillation seeds but have the same fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillctl.evaluation.protocol import read_results
from distillctl.reporting.scores import FULL_ARMS, best_reference, distilled_with, gap_in_std, labels_of, mean, newest, reference_label

#: a gap under this many std (of the two cells together) is called seed noise in the report
NOISE_STD = 2.0


def collect_results(run_path: Path) -> list[dict]:
    """Every result record of a run: distilled sets, then each baseline file."""
    records = list(read_results(run_path / "eval" / "results.json"))
    for f in sorted((run_path / "eval").glob("baseline-*.json")):
        records += read_results(f)
    return records


def resolved_runs(root: Path, depth: int) -> list[tuple[Path, dict]]:
    """``(folder, resolved recipe)`` of every run ``depth`` folders below ``root`` and of every sweep point of
    one (a folder deeper), the recipe as written (not validated: another run's plugins need not be installed
    to read its numbers); a folder whose ``recipe.resolved.yaml`` cannot be read is left out."""
    from distillctl.errors import UserError
    from distillctl.recipe import read_recipe_file

    pattern = "*/" * depth + "recipe.resolved.yaml"
    out = []
    for f in sorted({*root.glob(pattern), *root.glob("*/" + pattern)}):
        try:
            data = read_recipe_file(f)
        except (OSError, UserError):
            continue
        if isinstance(data, dict):
            out.append((f.parent, data))
    return out


def set_selection(meta: dict) -> str:
    """Which set of a stage was kept, from its sidecar: distill saves the best-on-val set (a sidecar may say
    otherwise in ``selection``); ``best-on-val (= final)`` when the best was the last step run."""
    selection = meta.get("selection") or "best-on-val"
    step, run_steps = meta.get("outer_step"), meta.get("outer_steps_run")
    if selection == "best-on-val" and step is not None and step == run_steps:
        selection = "best-on-val (= final)"
    return selection


def claims(records: list[dict], summary: dict) -> dict:
    """Each distilled cell of the run's table as a share of the strongest full-data reference (every
    reference of every student), and a note wherever a set scores above a reference."""
    records = newest(records)
    best = best_reference(records)
    out: dict[str, Any] = {"best_reference": None, "references": [], "claims": [], "above": []}
    out["references"] = [{"arm": r["arm"], "student": r.get("student"), "label": reference_label(r),
                          "accuracy": r.get("accuracy")}
                         for r in sorted((r for r in records if r["arm"] in FULL_ARMS),
                                         key=lambda r: -(mean(r) or 0.0))]
    if best is not None:
        out["best_reference"] = {"arm": best["arm"], "student": best.get("student"), "label": reference_label(best),
                                 "accuracy": best["accuracy"]}
    for ipc in summary["ipcs"]:
        d = summary["cells"][ipc].get("distilled")
        if not d:
            continue
        if best is not None:
            out["claims"].append({"ipc": ipc, "student": d.get("student"), "labels": labels_of(d),
                                  "accuracy": mean(d), "reference": reference_label(best),
                                  "reference_accuracy": mean(best),
                                  # a reference at 0 % (a test split of one row) has no share to state
                                  "fraction": mean(d) / mean(best) if mean(best) else None})
        exceeded = [r for r in list(summary["reference_records"].values()) + ([best] if best else [])
                    if r is not None and mean(r) is not None and mean(d) > mean(r)]
        seen = set()
        for r in exceeded:
            if id(r) in seen:
                continue
            seen.add(id(r))
            z = gap_in_std(d, r)
            out["above"].append({"ipc": ipc, "reference": reference_label(r), "arm": r["arm"],
                                 "accuracy": mean(d), "reference_accuracy": mean(r),
                                 "gap": mean(d) - mean(r), "gap_std": z, "why": why_below(r, records),
                                 "is_best": r is best})
    return out


def why_below(ref: dict, records: list[dict]) -> str:
    """Why a full-data reference can sit below a distilled set (said next to every such cell)."""
    if ref["arm"] == "full":
        b, n = ref.get("budget") or {}, ref.get("n_train")
        text = "the same-budget arm gets the step budget sized for sets of a few rows"
        if b and n:
            text = (f"the same-budget arm trains on all {n} training rows for the eval budget of {b['steps']} steps "
                    f"of batch {b['batch_size']} ({b['steps'] * b['batch_size'] / n:.2g} epochs), a budget sized for "
                    f"sets of a few rows")
        longer = best_reference(records, student=ref.get("student"), arms=("full-earlystop",))
        if longer is not None and mean(longer) > mean(ref):
            chosen, steps = longer.get("chosen_steps"), b.get("steps")
            # pooled over distillation seeds, chosen is one count per seed ("250/1000/1250"): no single verdict
            known = isinstance(chosen, int) and bool(steps)
            verdict = ("undertrained" if known and chosen > steps else
                       "trained past its best (it overfits)" if known and chosen < steps else
                       "below what this student can do")
            return (f"{text}; with its steps chosen on val ({chosen} steps) the same student reaches "
                    f"{mean(longer) * 100:.2f} %, so the same-budget arm is {verdict}")
        return text + ": it may be under- or overtrained (the `full-earlystop` reference would tell)"
    if ref["arm"] == "full-earlystop":
        return "its step count was chosen on val from a fixed grid, so it may still stop short of its best"
    if ref["arm"] == "full-logreg":
        return "a linear model: a nonlinear student trained on a few well-placed rows can beat it"
    return ""


def transfer_matrix(records: list[dict], order: str | None = None) -> list[dict]:
    """Per ipc: the distilled sets' test accuracy by (student(s) distilled with, evaluating student), each cell
    also as a share of that evaluating student's full-data accuracy (its better of `full` and
    `full-earlystop`: the strongest honest reference of the same architecture)."""
    records = newest(records)
    dist = [r for r in records if r["arm"] == "distilled"]
    students = sorted({r.get("student") for r in dist}, key=lambda s: (s != order, str(s)))
    makers = sorted({distilled_with(r) for r in dist}, key=lambda s: (s != order, str(s)))
    refs = {s: best_reference(records, student=s, arms=("full", "full-earlystop")) for s in students}
    out = []
    for ipc in sorted({r["ipc"] for r in dist}):
        cells = []
        for m in makers:
            row = []
            for s in students:
                cands = [r for r in dist if r["ipc"] == ipc and r.get("student") == s and distilled_with(r) == m]
                rec = next((r for r in cands if labels_of(r) == "soft"), None) or (cands or [None])[0]
                if rec is None:
                    row.append(None)
                    continue
                ref = refs.get(s)
                row.append({"accuracy": rec["accuracy"], "labels": labels_of(rec),
                            "of_full": mean(rec) / mean(ref) if ref and mean(ref) else None,
                            "reference": reference_label(ref) if ref else None})
            cells.append(row)
        out.append({"ipc": ipc, "distilled_with": makers, "students": students, "cells": cells})
    return out


# -- Markdown sections -----------------------------------------------------------------------------

def pct(summary: dict | None) -> str:
    """A result summary as `mean ± std` in % (a deterministic one, e.g. majority: the mean only)."""
    if not summary:
        return "–"
    if len(summary.get("values") or []) == 1 and not summary["std"]:  # deterministic (majority)
        return f"{summary['mean'] * 100:.2f}"
    return f"{summary['mean'] * 100:.2f} ± {summary['std'] * 100:.2f}"


def claims_md(c: dict, level: int = 2) -> list[str]:
    """The claims against the strongest full-data reference (:func:`claims`) as Markdown, under a heading
    of ``level`` (2 in a run's report, 3 inside a sweep comparison's section)."""
    if not c["references"]:
        return []
    md = ["#" * level + " Against full data", ""]
    best = c["best_reference"]
    md += [f"Claims are made against the strongest full-data reference run, **{best['label']}**: "
           f"{pct(best['accuracy'])} %. All references (best first):", ""]
    md += [f"- {r['label']}: {pct(r['accuracy'])} %" for r in c["references"]] + [""]
    for cl in c["claims"]:
        if cl["fraction"] is None:
            md.append(f"- ipc {cl['ipc']}: distilled ({cl['labels']} labels, evaluated on {cl['student']}) scores "
                      f"{cl['accuracy'] * 100:.2f} %; the reference scores 0 %, so no share of it can be stated")
            continue
        md.append(f"- ipc {cl['ipc']}: distilled ({cl['labels']} labels, evaluated on {cl['student']}) reaches "
                  f"**{cl['fraction'] * 100:.1f} %** of full data ({cl['accuracy'] * 100:.2f} % vs "
                  f"{cl['reference_accuracy'] * 100:.2f} %, {cl['reference']})")
    if c["claims"]:
        md.append("")
    if c["above"]:
        md += ["**Above a full-data reference.** A few distilled rows scoring above students trained on every real "
               "row needs a word:", ""]
        for a in c["above"]:
            z = a["gap_std"]
            size = ("no spread over seeds" if z is None else
                    f"{z:.1f} std of the two cells together (√(std₁² + std₂²))"
                    + (": within seed noise" if abs(z) < NOISE_STD else ": more than seed noise"))
            md.append(f"- ipc {a['ipc']}: distilled {a['accuracy'] * 100:.2f} % is above {a['reference']} "
                      f"{a['reference_accuracy'] * 100:.2f} % by {a['gap'] * 100:+.2f} pp, {size}. {a['why'][:1].upper()}{a['why'][1:]}."
                      + (" It is the strongest reference run: check the full-data students (more steps, the "
                         "chosen-steps and logistic-regression references) before claiming the set beats full "
                         "data." if a["is_best"] else ""))
        md.append("")
    return md


SCORE_DEFINITIONS = [
    "Standard scores of a distilled set (DD-Ranking, Li et al. 2025), accuracies as fractions in [0, 1], "
    "shown in percentage points (pp):",
    "",
    "- **HLR**, hard-label recovery = full-data accuracy − the set's accuracy, both with hard labels; lower is "
    "better. The full-data accuracy is the evaluating student's **same-budget** `full` arm (DD-Ranking's "
    "convention: the same model trained the same way on all real rows), so HLR says what the rows themselves "
    "lose under one protocol; the stronger references are in *Against full data*.",
    "- **IOR**, improvement over random = the set's accuracy − the accuracy of random real subsets of the same "
    "size, same evaluating student; higher is better.",
    "- **LRS**, label-robust score: α = w·IOR − (1 − w)·HLR with w = 0.5, LRS = (e^α − e^−1) / (e − e^−1) ∈ [0, 1]; "
    "higher is better.",
    "",
    "A soft-label set is scored with its soft labels and without them (its labels' argmax): HLR is the same in "
    "both rows (hard labels by definition), IOR and LRS change.",
]


def scores_md(rows: list[dict], level: int = 2) -> list[str]:
    """The standard scores (:func:`distillctl.reporting.scores.dd_scores`) as Markdown, under a heading of ``level``."""
    if not rows:
        return []
    pp = lambda v: "–" if v is None else f"{v * 100:+.2f}"  # noqa: E731
    acc = lambda v: "–" if v is None else f"{v * 100:.2f}"  # noqa: E731
    md = ["#" * level + " Standard scores", "", *SCORE_DEFINITIONS, "",
          "| IPC | distilled with | evaluated on | labels | accuracy (%) | random (%) | full, same budget (%) | "
          "set, hard labels (%) | IOR (pp) | HLR (pp) | LRS |",
          "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['ipc']} | {r['distilled_with']} | {r['student']} | {r['labels']} | {acc(r['accuracy'])} | "
                  f"{acc(r['random'])} | {acc(r['full_hard'])} | {acc(r['set_hard'])} | {pp(r['ior'])} | "
                  f"{pp(r['hlr'])} | {'–' if r['lrs'] is None else format(r['lrs'], '.4f')} |")
    missing = sorted({(r["ipc"], r["student"]) for r in rows if r["hlr"] is None})
    if missing:
        md += ["", "– : a record the score needs was not run (HLR: the same-budget `full` arm and the set scored "
               "with hard labels; IOR: the `random` arm at that ipc)."]
    return md + [""]


def transfer_md(transfer: list[dict], plot: str | None, level: int = 2) -> list[str]:
    """The transfer matrix (:func:`transfer_matrix`) as Markdown, under a heading of ``level``; ``plot``: the
    heatmap's path relative to the Markdown file (None: no plot)."""
    if not transfer:
        return []
    md = ["#" * level + " Transfer: distilled with × evaluated on", "",
          "Test accuracy (%) of each set scored by each student (the set's own labels), and as a share of that "
          "student's full-data accuracy (its better of `full` and `full-earlystop`).", ""]
    for t in transfer:
        md += [f"ipc {t['ipc']}:", "", "| distilled with \\ evaluated on | " + " | ".join(map(str, t["students"])) + " |",
               "|---|" + "---:|" * len(t["students"])]
        for maker, row in zip(t["distilled_with"], t["cells"]):
            cells = ["–" if c is None else pct(c["accuracy"])
                     + ("" if c["of_full"] is None else f" ({c['of_full'] * 100:.0f} % of full)") for c in row]
            md.append(f"| {maker} | " + " | ".join(cells) + " |")
        md.append("")
    if plot is not None:
        md += [f"![transfer matrix]({plot})", ""]
    return md

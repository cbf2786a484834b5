"""What `distillctl report` prints: a short summary instead of the whole report.md.

The headline table has one row per student that scored a distilled set (``eval --students mlp,linear``
shows both), with test accuracy per ipc (the set's own labels), the strongest full-data reference of any
student, and each set's share of it; then where the files are. ``report --full`` prints report.md (without its
nearest-texts part) as before. On a sweep: one line per (point, ipc) and the points without a result.
"""

from __future__ import annotations

from pathlib import Path

from distillctl.reporting.scores import best_reference, labels_of, mean, newest, reference_label, std


#: token-level arms that replay a set's own inner steps, and how the headline labels their rows
REPLAY_ARMS = {"distilled-init": "its steps, initial model", "distilled-heads": "its steps, fresh heads"}


def headline(records: list[dict]) -> dict:
    """``{"ipcs", "rows": [{"student", "labels", "cells": {ipc: (mean, std)}}], "best": reference record}``:
    distilled test accuracy of every evaluating student, the set's own labels first (a soft-label set scored
    with hard labels too gets its own row); a token-level set's replays of its own inner steps (from its
    initial model, from fresh heads) get a row each after them."""
    records = newest(records)
    arms = ("distilled",) + tuple(REPLAY_ARMS)
    distilled = [r for r in records if r.get("arm") in arms and r.get("ipc") is not None]
    ipcs = sorted({int(r["ipc"]) for r in distilled})

    def key(r: dict) -> tuple[str, str, str]:
        suffix = REPLAY_ARMS.get(r["arm"])
        return (r.get("student") or "?", labels_of(r) + (f", {suffix}" if suffix else ""), r["arm"])

    keys: list[tuple[str, str, str]] = []
    for r in distilled:
        if key(r) not in keys:
            keys.append(key(r))
    students = list(dict.fromkeys(k[0] for k in keys))  # first-seen order, the set's own (soft) labels first
    keys.sort(key=lambda k: (students.index(k[0]), arms.index(k[2]), not k[1].startswith("soft")))
    rows = []
    for student, labels, _ in keys:
        cells = {}
        for r in distilled:
            if key(r)[:2] == (student, labels) and mean(r) is not None:
                cells.setdefault(int(r["ipc"]), (mean(r), std(r)))
        rows.append({"student": student, "labels": labels, "cells": cells})
    return {"ipcs": ipcs, "rows": rows, "best": best_reference(records)}


def headline_md(h: dict) -> list[str]:
    """The headline as a markdown table (report.md and the terminal share it)."""
    if not h["rows"]:
        return []
    best = h["best"]
    head = ["student", "labels"] + [f"ipc {i}" for i in h["ipcs"]]
    out = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(h["ipcs"])]
    for row in h["rows"]:
        cells = []
        for i in h["ipcs"]:
            c = row["cells"].get(i)
            if c is None:
                cells.append("–")
                continue
            share = f" ({c[0] / mean(best) * 100:.1f} % of full)" if best is not None and mean(best) else ""
            cells.append(f"{c[0] * 100:.2f} ± {c[1] * 100:.2f}{share}")
        out.append(f"| {row['student']} | {row['labels']} | " + " | ".join(cells) + " |")
    if best is not None:
        out += ["", f"Strongest full-data reference: {reference_label(best)}, {mean(best) * 100:.2f} %."]
    return out


def run_summary(data: dict) -> str:
    """The terminal summary of a run's report.json."""
    lines = [f"{data.get('recipe')}: test accuracy (%) of the distilled sets, mean ± std over the eval seeds", ""]
    table = headline_md(headline(data.get("results") or []))
    lines += table or ["No distilled set has been evaluated yet (`distillctl eval RUN`)."]
    lines += ["", f"report: {data['report']} (the whole text: `distillctl report --full {data['run_dir']}`)",
              f"numbers: {Path(data['report']).with_suffix('.json')}"]
    plots = list((data.get("plots") or {}).values())
    if plots:
        lines.append(f"plots: {Path(plots[0]).parent}/ ({', '.join(Path(p).name for p in plots)})")
    return "\n".join(lines)


def comparison_summary(data: dict, md_path: Path) -> str:
    """The terminal summary of a sweep's comparison.json: one line per (point, ipc), then what is missing."""
    lines = ["sweep: test accuracy (%) per point and ipc, mean ± std over the eval seeds", ""]
    width = max((len(r["point"]) for r in data.get("rows", [])), default=5)
    for r in data.get("rows", []):
        acc = r.get("test_accuracy")
        shown = "not evaluated" if acc is None else f"{acc * 100:.2f} ± {(r.get('test_std') or 0) * 100:.2f}"
        val = r.get("val_accuracy")
        lines.append(f"  {r['point']:<{width}}  ipc {r['ipc']:>3}  test {shown}"
                     + (f"  (val {val * 100:.2f})" if val is not None else ""))
    missing = data.get("missing") or []
    if missing:
        lines += ["", f"INCOMPLETE: {len(missing)} sweep point{'s' if len(missing) != 1 else ''} without a result "
                  "(do not pick a winner from this table):"]
        lines += [f"  {m['line']}" for m in missing]
    lines += ["", f"comparison: {md_path} (the whole text: `distillctl report --full {md_path.parent}`)",
              f"numbers: {md_path.with_suffix('.json')}"]
    if data.get("plot"):
        lines.append(f"plot: {data['plot']}")
    return "\n".join(lines)

"""The frozen-vector path beside a token-level run: the best set and the strongest full-data reference of every
vector-level run on the same data, found in the same runs folder.

A token-level report answers "is fine-tuning the language model worth it here?" only next to what a head on the
frozen encoder's vectors reaches on the same splits. Runs are comparable when their resolved recipes have the
same ``dataset`` section (name, files, splits: so the same test rows); they are looked up in the runs folder of
the token-level run (``runs/<recipe>/<id>/`` and sweep points ``runs/<recipe>/<id>/<point>/``), and their
``eval/`` results read as they are (nothing is rerun). The report shows, per ipc, the best ``distilled`` cell
(mean test accuracy over its seeds, any student and labels) and the strongest of their ``full`` /
``full-earlystop`` / ``full-logreg`` references, each naming its run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillctl.reporting.scores import best_reference, mean, newest, std


def _encoder_of(data: dict) -> str:
    encoder = data.get("encoder") or {}
    return str(encoder.get("model") or encoder.get("name") or "?")


def _cell(r: dict) -> dict:
    return {"accuracy": mean(r), "std": std(r), "seeds": len(r.get("seeds") or []), "student": r.get("student"),
            "run": r["_run"], "encoder": r["_encoder"]}


def frozen_vector_best(run_path: Path, recipe: Any) -> dict:
    """``{"rows": [{ipc, accuracy, std, seeds, student, labels, run, encoder}], "reference": {arm, ...} | None,
    "runs": [...]}`` over the vector-level runs with ``recipe``'s dataset in ``run_path``'s runs folder (empty
    when none); the reference is :func:`best_reference` over all their full-data records."""
    from distillctl.errors import UserError
    from distillctl.reporting.sections import collect_results, resolved_runs

    want = recipe.dataset.model_dump(mode="json")
    empty = {"rows": [], "reference": None, "runs": []}
    here = Path(run_path).resolve()
    # the runs folder: runs/<recipe>/<id> or a sweep point runs/<recipe>/<id>/<point>; a run elsewhere (a
    # --run-dir of the user's) has no runs folder to look in, and nothing above it is scanned
    names = [p.name for p in here.parents[:2]]
    if getattr(recipe, "name", None) not in names:
        return empty
    root = here.parents[names.index(recipe.name) + 1]
    pool, runs = [], []  # the comparable runs' records, each tagged with its run and encoder
    for folder, data in resolved_runs(root, 2):  # runs/<recipe>/<id>[/<point>]
        if folder == here:
            continue
        level = str((data.get("embed") or {}).get("level") or "vectors")
        if level != "vectors" or data.get("dataset") != want:
            continue
        encoder = _encoder_of(data)
        try:
            records = newest(collect_results(folder))
        except (OSError, UserError):
            continue
        if records:
            runs.append(folder.relative_to(root).as_posix())
            pool += [{**r, "_run": runs[-1], "_encoder": encoder} for r in records if mean(r) is not None]
    best: dict[int, dict] = {}
    for r in pool:
        if r.get("arm") == "distilled" and r.get("ipc") is not None:
            ipc = int(r["ipc"])
            if ipc not in best or mean(r) > mean(best[ipc]):
                best[ipc] = r
    reference = best_reference(pool)
    return {"rows": [{"ipc": i, "labels": best[i].get("labels"), **_cell(best[i])} for i in sorted(best)],
            "reference": {"arm": reference["arm"], **_cell(reference)} if reference else None, "runs": runs}


def frozen_path_md(frozen: dict) -> list[str]:
    """report.md's section (nothing when no comparable vector-level run exists)."""
    if not frozen.get("rows") and not frozen.get("reference"):
        return []
    md = ["## Beside the frozen-vector path", "",
          f"The same splits (the same test rows) in vector-level runs of this runs folder: a student trained on a "
          f"frozen encoder's vectors. Best distilled cell per ipc (mean test accuracy over its seeds, any "
          f"student and labels) and the strongest full-data reference among those runs; read from their `eval/` "
          f"results, not rerun ({len(frozen['runs'])} runs).", "",
          "| frozen vectors | accuracy (%) | encoder | student | labels | seeds | run |",
          "|---|---:|---|---|---|---:|---|"]
    def row(what: str, cell: dict, labels: str) -> str:
        return (f"| {what} | {100 * cell['accuracy']:.2f} ± {100 * cell['std']:.2f} | {cell['encoder']} | "
                f"{cell['student']} | {labels} | {cell['seeds']} | `{cell['run']}` |")

    md += [row(f"best set, ipc {r['ipc']}", r, r.get("labels") or "–") for r in frozen["rows"]]
    if frozen.get("reference"):
        md.append(row(f"full data, `{frozen['reference']['arm']}`", frozen["reference"], "–"))
    return md + [""]


__all__ = ["frozen_vector_best", "frozen_path_md"]

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

#: the vector path's full-data reference arms
REFERENCE_ARMS = ("full", "full-earlystop", "full-logreg")


def _dataset_of(resolved: Path) -> tuple[dict | None, str, str]:
    """(dataset section, level, encoder) of a resolved recipe file, read as YAML without validating it (another
    run's plugins need not be installed to read its numbers)."""
    import yaml

    try:
        data = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None, "", ""
    encoder = data.get("encoder") or {}
    return (data.get("dataset"), str((data.get("embed") or {}).get("level") or "vectors"),
            str(encoder.get("model") or encoder.get("name") or "?"))


def frozen_vector_best(run_path: Path, recipe: Any) -> dict:
    """``{"rows": [{ipc, accuracy, std, seeds, student, labels, run}], "reference": {...} | None, "runs": [...]}``
    over the vector-level runs with ``recipe``'s dataset in ``run_path``'s runs folder (empty when none)."""
    from distillctl.reporting.scores import newest
    from distillctl.reporting.sections import collect_results

    want = recipe.dataset.model_dump(mode="json")
    empty = {"rows": [], "reference": None, "runs": []}
    here = Path(run_path).resolve()
    # the runs folder: runs/<recipe>/<id> or a sweep point runs/<recipe>/<id>/<point>; a run elsewhere (a
    # --run-dir of the user's) has no runs folder to look in, and nothing above it is scanned
    names = [p.name for p in here.parents[:2]]
    if getattr(recipe, "name", None) not in names:
        return empty
    root = here.parents[names.index(recipe.name) + 1]
    resolved = sorted({*root.glob("*/*/recipe.resolved.yaml"), *root.glob("*/*/*/recipe.resolved.yaml")})
    best: dict[int, dict] = {}
    reference, runs = None, []
    for f in resolved:
        folder = f.parent
        if folder == here:
            continue
        dataset, level, encoder = _dataset_of(f)
        if level != "vectors" or dataset != want:
            continue
        try:
            records = newest(collect_results(folder))
        except (OSError, ValueError):
            continue
        if not records:
            continue
        name = folder.relative_to(root).as_posix()
        runs.append(name)
        for r in records:
            acc = (r.get("accuracy") or {}).get("mean")
            if acc is None:
                continue
            cell = {"accuracy": float(acc), "std": (r.get("accuracy") or {}).get("std"),
                    "seeds": len(r.get("seeds") or []), "student": r.get("student"), "run": name,
                    "encoder": encoder}
            if r.get("arm") == "distilled" and r.get("ipc") is not None:
                ipc = int(r["ipc"])
                if ipc not in best or cell["accuracy"] > best[ipc]["accuracy"]:
                    best[ipc] = {"ipc": ipc, "labels": r.get("labels"), **cell}
            elif r.get("arm") in REFERENCE_ARMS and (reference is None or cell["accuracy"] > reference["accuracy"]):
                reference = {"arm": r["arm"], **cell}
    return {"rows": [best[i] for i in sorted(best)], "reference": reference, "runs": runs}


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
    for r in frozen["rows"]:
        std = f" ± {100 * r['std']:.2f}" if r.get("std") is not None else ""
        md.append(f"| best set, ipc {r['ipc']} | {100 * r['accuracy']:.2f}{std} | {r['encoder']} | {r['student']} | "
                  f"{r.get('labels') or '–'} | {r['seeds']} | `{r['run']}` |")
    ref = frozen.get("reference")
    if ref:
        std = f" ± {100 * ref['std']:.2f}" if ref.get("std") is not None else ""
        md.append(f"| full data, `{ref['arm']}` | {100 * ref['accuracy']:.2f}{std} | {ref['encoder']} | {ref['student']} | – | "
                  f"{ref['seeds']} | `{ref['run']}` |")
    return md + [""]


__all__ = ["frozen_vector_best", "frozen_path_md"]

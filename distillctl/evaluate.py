"""eval: score distilled sets on the test split with the recipe's eval protocol.

One protocol for every arm (see :mod:`distillctl.baselines` for the others): K fresh students per
set, the same student, budget and seeds; the test split is scored once, at the end, and nothing is
selected on it. Each set gives one result record (:func:`result_record`)::

    {"arm", "ipc", "student", "seeds", "budget", "accuracy": {"mean", "std", "values"},
     "macro_f1": {...}, ["positive_f1": {...}], "majority", "chance", ...}

``RUN_DIR/eval/results.json`` holds the newest record per (arm, ipc); every record is also appended
to ``RUN_DIR/eval/history.jsonl``.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from distillctl import seeds as seeding
from distillctl.errors import UserError
from distillctl.seeds import EVAL_SEED_STRIDE

#: the split every final score is computed on
TEST_SPLIT = "test"
#: eval seeds are recipe.seed * SEED_STRIDE + k, k = 0..K-1 (see distillctl.seeds)
SEED_STRIDE = EVAL_SEED_STRIDE
_SET_NAME = re.compile(r"^ipc(\d+)\.safetensors$")


def eval_seeds(recipe: Any, k: int | None = None) -> list[int]:
    """The K seeds of every arm: ``recipe.seed * 100000 + [0, K)`` (K defaults to ``eval.seeds``)."""
    k = recipe.eval.seeds if k is None else int(k)
    if k < 1:
        raise UserError(f"--seeds must be >= 1, got {k}")
    return seeding.eval_seeds(recipe.seed, k)


def split_of(embeddings: Any, name: str):
    """``embeddings.splits[name]``, or a :class:`UserError` naming the splits there are."""
    splits = getattr(embeddings, "splits", {}) or {}
    if name not in splits:
        raise UserError(f"the embeddings have no {name!r} split (splits: {', '.join(splits) or 'none'})")
    return splits[name]


def check_ipc_fits(embeddings: Any, ipc: int, field: str) -> None:
    """A :class:`UserError` when ``ipc`` rows per class exceed the training rows of the smallest class.

    ``field`` names where the ipc came from (``distill.ipc``, ``baseline.ipc``, ``--ipc``).
    """
    import torch

    C = int(embeddings.num_classes)
    counts = torch.bincount(split_of(embeddings, "train").y.long().cpu(), minlength=C)  # (C,)
    c = int(counts.argmin())
    if ipc > int(counts[c]):
        names = list(getattr(embeddings, "label_names", None) or [str(k) for k in range(C)])
        raise UserError(f"{field}: ipc {ipc} exceeds the training rows of the smallest class ({names[c]!r}: "
                        f"{int(counts[c])} rows); use at most {int(counts[c])}")


def majority_line(embeddings: Any) -> dict:
    """Majority class of train (by counts) scored on test, and the chance level 1/C."""
    from distillctl.training import majority_scores

    train, test = split_of(embeddings, "train"), split_of(embeddings, TEST_SPLIT)
    C = int(embeddings.num_classes)
    cls, scores = majority_scores(train.y, test.y, C)
    names = list(getattr(embeddings, "label_names", None) or [str(c) for c in range(C)])
    return {"class": names[cls], "class_index": cls, **scores, "chance": 1.0 / C}


def result_record(arm: str, ipc: int | None, recipe: Any, budget: Any, scores: Any, *, majority: dict,
                  n_test: int, **extra: Any) -> dict:
    """One result record (the JSON shape of `eval`, `baseline` and `report`).

    ``budget`` None marks an arm that trains no student (``majority``): its record has ``student`` and
    ``budget`` None and no ``student_options`` or ``time``.
    """
    trained = budget is not None
    rec = {
        "arm": arm,
        "ipc": ipc,
        "student": recipe.student.name if trained else None,
        "seeds": list(scores.seeds),
        "budget": budget.as_dict() if trained else None,
        **scores.metrics(),  # accuracy, macro_f1 (+ positive_f1)
        **({"classes_predicted": scores.classes_predicted} if trained and scores.classes_predicted else {}),
        **({"student_options": recipe.student.model_dump(mode="json")} if trained else {}),
        "split": TEST_SPLIT,
        "n_test": int(n_test),
        "majority": majority,
        "chance": majority["chance"],
        "seconds": round(scores.seconds, 3),
        **({"time": datetime.now(timezone.utc).isoformat(timespec="seconds")} if trained else {}),
        **extra,
    }
    return rec


def _set_files(run_dir: Path) -> list[Path]:
    """``distilled/ipc{N}.safetensors`` of a run, by increasing N (the Boost-DD stages in order)."""
    found = []
    for p in (run_dir / "distilled").glob("ipc*.safetensors"):
        m = _SET_NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _run_dir_of(set_file: Path) -> Path | None:
    """The run directory holding ``RUN/distilled/ipcN.safetensors``, if the file sits in one."""
    run = set_file.resolve().parent.parent
    if set_file.resolve().parent.name == "distilled" and (run / "recipe.resolved.yaml").exists():
        return run
    return None


def resolve_target(target: str | Path, recipe: Any = None, overrides: Sequence[str] | None = None):
    """(recipe, set files, run dir or None) of an eval target: a run directory or one set file."""
    from distillctl.recipe import Recipe, load_recipe
    from distillctl.runs import open_run_dir

    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such run directory or set file")
    if target.is_dir():
        run = open_run_dir(target)
        files = _set_files(run.path)
        if not files:
            raise UserError(f"{target}: no distilled sets in {run.distilled} (run `distillctl distill` first)")
        run_path = run.path
    else:
        if target.suffix != ".safetensors":
            raise UserError(f"{target}: not a set file (expected RUN_DIR or RUN_DIR/distilled/ipcN.safetensors)")
        files, run_path = [target], _run_dir_of(target)
    if recipe is None:
        if run_path is None:
            raise UserError(f"{target}: the set is not inside a run directory; give its recipe (--recipe FILE)")
        recipe = load_recipe(run_path / "recipe.resolved.yaml", list(overrides or []))
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, list(overrides or []))
    return recipe, files, run_path


def evaluate(target: str | Path, recipe: Any = None, *, seeds: int | None = None, quiet: bool | None = None,
             overrides: Sequence[str] | None = None, embeddings: Any = None) -> list[dict]:
    """Score every distilled set of a run directory (each Boost-DD stage), or one set file, on test.

    ``recipe``: a :class:`~distillctl.recipe.Recipe` or recipe path; default the run's
    ``recipe.resolved.yaml`` (with ``overrides``). ``seeds``: K (default ``eval.seeds``).
    ``embeddings`` skips loading the cache (library callers, tests). Returns one record per set and,
    for a run directory, writes ``eval/results.json`` and appends ``eval/history.jsonl``.
    """
    from distillctl.console import info, is_quiet
    from distillctl.embed import load_embeddings
    from distillctl.synthetic import SyntheticSet
    from distillctl.training import TrainBudget, student_builder, train_and_score

    quiet = is_quiet() if quiet is None else quiet
    # 1. What to score, with which recipe; the sets must fit the embeddings they will be scored on.
    recipe, files, run_path = resolve_target(target, recipe, overrides)
    sets = [(f, SyntheticSet.load(f)) for f in files]
    if embeddings is None:
        embeddings = load_embeddings(recipe, quiet=quiet)
    test = split_of(embeddings, TEST_SPLIT)
    X_test, y_test = test.X.float(), test.y.long()  # (m, d), (m,)
    C, d = int(embeddings.num_classes), int(X_test.shape[1])
    fp = getattr(embeddings, "fingerprint", None)
    for f, s in sets:
        if s.num_classes != C or s.dim != d:
            raise UserError(f"{f}: set has {s.num_classes} classes x {s.dim} dims; the recipe's embeddings have "
                            f"{C} x {d}")
        set_fp = s.meta.get("embedding_fingerprint")
        if fp and set_fp and set_fp != fp:
            raise UserError(f"{f}: distilled from other embeddings (fingerprint {set_fp[:12]}, the recipe's "
                            f"cache is {fp[:12]}); evaluate it with the recipe it was distilled with")

    # 2. One protocol for every set: the recipe's student, eval budget and seeds.
    budget = TrainBudget.from_eval(recipe.eval)
    seed_list = eval_seeds(recipe, seeds)
    build = student_builder(recipe, d, C)
    majority = majority_line(embeddings)

    # 3. Train K students per set, score them on test.
    records = []
    for stage, (f, s) in enumerate(sets):
        labels = s.labels.float() if s.soft else s.labels.long()  # (n, C) probabilities or (n,)
        scores = train_and_score(build, s.x.float(), labels, X_test, y_test, seeds=seed_list, budget=budget,
                                 num_classes=C, description=f"eval ipc {s.ipc}", quiet=quiet)
        records.append(result_record(
            "distilled", s.ipc, recipe, budget, scores, majority=majority, n_test=len(y_test),
            set=str(f.resolve()), stage=s.meta.get("stage", stage), soft_labels=s.soft, n_train=int(s.x.shape[0]),
            val_accuracy=s.meta.get("val_accuracy")))
        if not quiet:
            info(f"ipc {s.ipc}: accuracy {scores.mean():.4f} ± {scores.std():.4f} ({len(seed_list)} seeds, "
                 f"{scores.seconds:.1f} s)")

    # 4. Store them in the run directory (newest per (arm, ipc) in results.json; all in history).
    if run_path is not None:
        store_results(run_path / "eval" / "results.json", records, history=run_path / "eval" / "history.jsonl")
    return records


def _key(rec: dict) -> tuple:
    return (rec.get("arm"), rec.get("ipc"))


def read_results(path: str | Path) -> list[dict]:
    """Records of a results file (``results.json`` or ``baseline-<kind>.json``); [] when absent."""
    import json

    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    records = data.get("results") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise UserError(f"{path}: expected {{\"results\": [...]}}")
    return records


def store_results(path: str | Path, records: list[dict], *, history: str | Path | None = None) -> Path:
    """Merge ``records`` into ``path`` (a newer record replaces one with the same arm and ipc), atomically."""
    from distillctl.runs import append_jsonl, atomic_write_json

    merged = {_key(r): r for r in read_results(path)}
    for r in records:
        merged[_key(r)] = r
    ordered = sorted(merged.values(), key=lambda r: (str(r.get("arm")), r.get("ipc") is None, r.get("ipc") or 0))
    atomic_write_json(path, {"results": ordered, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if history is not None:
        for r in records:
            append_jsonl(history, r)
    return Path(path)


# -- human output (used by the CLI) -------------------------------------------------------------

def _pm(summary: dict | None, pct: bool = True) -> str:
    if not summary:
        return "–"
    f = 100.0 if pct else 1.0
    return f"{summary['mean'] * f:.2f} ± {summary['std'] * f:.2f}"


def results_table(records: list[dict], title: str):
    """A rich table of result records plus the budget line(s) under it."""
    from rich.table import Table

    two = any("positive_f1" in r for r in records)
    table = Table(title=title, title_justify="left")
    for col in ("arm", "ipc", "accuracy %", "macro-F1 %") + (("positive F1 %",) if two else ()) + ("K", "seconds"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in records:
        row = [r["arm"], "–" if r.get("ipc") is None else str(r["ipc"]), _pm(r.get("accuracy")),
               _pm(r.get("macro_f1"))]
        if two:
            row.append(_pm(r.get("positive_f1")))
        row += [str(len(r.get("seeds") or [])) if r.get("budget") else "–", f"{r.get('seconds', 0):.1f}"]
        table.add_row(*row)
    lines = []
    budgets = {budget_line(r) for r in records if r.get("budget")}
    for b in sorted(budgets):
        lines.append(f"budget: {b}")
    if records and records[0].get("majority"):
        m = records[0]["majority"]
        lines.append(f"majority class {m['class']!r}: accuracy {m['accuracy'] * 100:.2f} %, macro-F1 "
                     f"{m['macro_f1'] * 100:.2f} %; chance {m['chance'] * 100:.2f} %; "
                     f"test split n = {records[0].get('n_test')}")
    lines += [f"note: {n}" for n in collapse_notes(records)]
    return table, lines


def collapse_notes(records: list[dict]) -> list[str]:
    """One line per result whose students (some or all) give every test row the same class.

    Such a cell can sit exactly on the majority line with no spread over seeds; the accuracy alone does not
    say that the students learned nothing but the class prior.
    """
    notes = []
    for r in records:
        counts = r.get("classes_predicted") or []
        single = sum(1 for c in counts if c == 1)
        if single:
            where = r["arm"] if r.get("ipc") is None else f"{r['arm']} ipc {r['ipc']}"
            notes.append(f"{where}: {single} of {len(counts)} students predict a single class for every test row")
    return notes


def budget_line(rec: dict) -> str:
    """``student mlp, adam lr=0.001, 1000 steps, batch 256, K = 10 seeds``."""
    from distillctl.training import TrainBudget

    b = TrainBudget(**rec["budget"])
    return f"student {rec['student']}, {b.describe()}, K = {len(rec['seeds'])} seeds"

"""eval: score distilled sets on the test split with the recipe's eval protocol.

One protocol for every arm (see :mod:`distillctl.evaluation.baselines` for the others): K fresh students per
set, the same budget and seeds; the test split is scored once, at the end, and nothing is selected on
it. Transfer: every student of ``--students`` / ``eval.students`` (default: the recipe's ``student``) is
trained on every set. Each (set, student) gives one result record (:func:`result_record`), and a set
with soft labels a second one with its labels made hard (argmax)::

    {"arm", "ipc", "student", "student_options", "distilled_with", "labels", "seeds", "budget",
     "accuracy": {"mean", "std", "values"}, "macro_f1": {...}, ["positive_f1": {...}], "majority", "chance", ...}

``RUN_DIR/eval/results.json`` holds the newest record per (arm, ipc, student, labels); every record is
also appended to ``RUN_DIR/eval/history.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from distillctl.console import info, is_quiet
from distillctl.data import embed  # embed.load_embeddings: looked up per call (tests stand in for it)
from distillctl.distillation.synthetic import SyntheticSet
from distillctl.errors import UserError
from distillctl.evaluation import training  # training.train_and_score: looked up per call (tests script it)
from distillctl.evaluation.protocol import (TEST_SPLIT, check_sets_fit, check_split_sizes, collapse_notes,
                                            distilled_with, eval_seeds, label_variants, majority_line, record_labels,
                                            result_record, set_files, split_of, store_results, student_sections)
from distillctl.evaluation.training import TrainBudget, student_builder
from distillctl.plugins import with_registry
from distillctl.recipe import Recipe, load_recipe
from distillctl.runs import existing_run_of, holds_run_lock, open_run_dir
from distillctl.tracking import tracked


def _run_dir_of(set_file: Path) -> Path | None:
    """The run directory holding ``RUN/distilled/ipcN.safetensors``, if the file sits in one."""
    run = set_file.resolve().parent.parent
    if set_file.resolve().parent.name == "distilled" and (run / "recipe.resolved.yaml").exists():
        return run
    return None


def resolve_target(target: str | Path, recipe: Any = None, overrides: Sequence[str] | None = None):
    """(recipe, set files, run dir or None) of an eval target: a run directory or one set file."""
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such run directory or set file")
    if target.is_dir():
        run = open_run_dir(target)
        files = set_files(run.path)
        if not files:
            from distillctl.runs import not_ready

            raise not_ready(target, f"no distilled sets in {run.distilled}", "run `distillctl distill` first")
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


def _tracked_run(args: tuple, kwargs: dict) -> tuple[Any, Path | None]:
    """The recipe and run folder of an ``evaluate(target, recipe, ...)`` call, for the recipe's trackers."""
    target = args[0] if args else kwargs.get("target")
    recipe = args[1] if len(args) > 1 else kwargs.get("recipe")
    recipe, _, run_path = resolve_target(target, recipe, kwargs.get("overrides"))
    found = run_path or existing_run_of(target)
    return recipe, (Path(found).resolve() if found is not None else None)


def _tracked_outputs(result: Any, run_dir: Path | None, args: tuple, kwargs: dict) -> tuple[list, list]:
    """What the trackers log of an eval: its records (result means as metrics) and results.json."""
    return list(result), ([run_dir / "eval" / "results.json"] if run_dir is not None else [])


@with_registry  # registry=: run with that plugin registry (default: get_registry())
@holds_run_lock("eval", lambda args, kw: existing_run_of(args[0] if args else kw.get("target")))  # one eval per run
@tracked("eval", _tracked_run, _tracked_outputs)  # the recipe's `tracking` list: result means, results.json
def evaluate(target: str | Path, recipe: Any = None, *, seeds: int | None = None, quiet: bool | None = None,
             overrides: Sequence[str] | None = None, embeddings: Any = None, students: Any = None) -> list[dict]:
    """Score every distilled set of a run directory (each Boost-DD stage), or one set file, on test.

    ``recipe``: a :class:`~distillctl.recipe.Recipe` or recipe path; default the run's
    ``recipe.resolved.yaml`` (with ``overrides``). ``seeds``: K (default ``eval.seeds``). ``students``:
    a ``--students`` string (``mlp,{name: transformer, layers: 1}``) or a list of student names / sections
    (default ``eval.students``, else the recipe's ``student``). The embeddings are loaded once for all;
    ``embeddings`` skips loading them (library callers, tests). Returns one record per student and set
    (two for a soft-label set: ``labels`` soft and hard) and, for a run directory, writes
    ``eval/results.json`` and appends ``eval/history.jsonl``.
    """
    quiet = is_quiet() if quiet is None else quiet
    # 1. What to score, with which recipe; the sets must fit the embeddings they will be scored on.
    recipe, files, run_path = resolve_target(target, recipe, overrides)
    sections = student_sections(recipe, students)  # validated before any data is loaded
    sets = [(f, SyntheticSet.load(f)) for f in files]
    if embeddings is None:
        embeddings = embed.load_embeddings(recipe, quiet=quiet)
    check_split_sizes(embeddings)
    if getattr(embeddings, "level", "vectors") == "tokens":  # fine-tuned students (evaluation/token_arms.py)
        from distillctl.evaluation.token_arms import evaluate_token_sets

        records = evaluate_token_sets(recipe, sets, embeddings, sections, eval_seeds(recipe, seeds), quiet=quiet)
        if run_path is not None:
            store_results(run_path / "eval" / "results.json", records, history=run_path / "eval" / "history.jsonl")
        return records
    test = split_of(embeddings, TEST_SPLIT)
    X_test, y_test = test.X.float(), test.y.long()  # (m, d), (m,)
    C, d = int(embeddings.num_classes), int(X_test.shape[1])
    check_sets_fit(sets, embeddings, level="vectors", width=d)

    # 2. One protocol for every set and student: the eval budget and seeds.
    budget = TrainBudget.from_eval(recipe.eval)
    seed_list = eval_seeds(recipe, seeds)
    majority = majority_line(embeddings)
    made_with = distilled_with(recipe)

    # 3. Train K students of each kind per set (soft-label sets: with their labels, then made hard),
    #    score them on test.
    records = []
    for section in sections:
        build = student_builder(recipe, d, C, section)
        for stage, (f, s) in enumerate(sets):
            for kind, labels in label_variants(s):
                scores = training.train_and_score(build, s.x.float(), labels, X_test, y_test, seeds=seed_list, budget=budget,
                                         num_classes=C, description=f"eval ipc {s.ipc} {section.name} {kind}",
                                         quiet=quiet)
                records.append(result_record(
                    "distilled", s.ipc, recipe, budget, scores, majority=majority, n_test=len(y_test),
                    student=section, labels=kind, distilled_with=made_with, set=str(f.resolve()),
                    stage=s.meta.get("stage", stage), soft_labels=s.soft, n_train=int(s.x.shape[0]),
                    val_accuracy=s.meta.get("val_accuracy")))
                if not quiet:
                    info(f"ipc {s.ipc}, {section.name}, {kind} labels: accuracy {scores.mean():.4f} ± "
                         f"{scores.std():.4f} ({len(seed_list)} seeds, {scores.seconds:.1f} s)")

    # 4. Store them in the run directory (newest per (arm, ipc, student, labels) in results.json; all in
    #    history).
    if run_path is not None:
        store_results(run_path / "eval" / "results.json", records, history=run_path / "eval" / "history.jsonl")
    return records


# -- human output (used by the CLI) -------------------------------------------------------------

def _pm(summary: dict | None, pct: bool = True) -> str:
    if not summary:
        return "–"
    f = 100.0 if pct else 1.0
    return f"{summary['mean'] * f:.2f} ± {summary['std'] * f:.2f}"


def results_table(records: list[dict], title: str):
    """A rich table of result records plus the budget line(s) under it."""
    two = any("positive_f1" in r for r in records)
    table = Table(title=title, title_justify="left")
    for col in ("arm", "ipc", "student", "labels", "accuracy %", "macro-F1 %") + (("positive F1 %",) if two else ()) \
            + ("K", "seconds"):
        table.add_column(col, justify="left" if col in ("arm", "student", "labels") else "right", no_wrap=True)
    for r in records:
        row = [r["arm"], "–" if r.get("ipc") is None else str(r["ipc"]), r.get("student") or "–",
               record_labels(r) if r.get("student") else "–", _pm(r.get("accuracy")), _pm(r.get("macro_f1"))]
        if two:
            row.append(_pm(r.get("positive_f1")))
        row += [str(len(r.get("seeds") or [])) if r.get("budget") else "–", f"{r.get('seconds', 0):.1f}"]
        table.add_row(*row)
    lines = []
    budgets = {budget_line(r) for r in records if r.get("budget") and r.get("arm") != "full-earlystop"}
    for b in sorted(budgets):
        lines.append(f"budget: {b}")
    for r in records:  # the full-data references chosen on val
        where = f"{r['arm']} ({r.get('student')})"
        if r.get("chosen_steps") is not None:
            cap = " (the cap)" if r["chosen_steps"] == r.get("max_steps") else ""
            lines.append(f"{where}: {r['chosen_steps']} steps chosen on val{cap}, checked every "
                         f"{r.get('select_every_steps')} up to {r.get('max_steps')}")
        if r.get("chosen_C") is not None:
            grid = ", ".join(f"{c:g}" for c in r.get("C_grid") or [])
            lines.append(f"{where}: C = {r['chosen_C']:g} chosen on val from {grid}")
    if records and records[0].get("majority"):
        m = records[0]["majority"]
        lines.append(f"majority class {m['class']!r}: accuracy {m['accuracy'] * 100:.2f} %, macro-F1 "
                     f"{m['macro_f1'] * 100:.2f} %; chance {m['chance'] * 100:.2f} %; "
                     f"test split n = {records[0].get('n_test')}")
    lines += [f"note: {n}" for n in collapse_notes(records)]
    return table, lines


def budget_line(rec: dict) -> str:
    """``student mlp, adam lr=0.001, 1000 steps, batch 256, K = 10 seeds``."""
    b = TrainBudget(**rec["budget"])
    return f"student {rec['student']}, {b.describe()}, K = {len(rec['seeds'])} seeds"

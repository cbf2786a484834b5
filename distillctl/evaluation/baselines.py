"""baseline: the reference arms of every comparison, under the eval protocol of the distilled sets.

Arms (``kind``):

- ``random``: ``ipc`` real training rows per class, a new stratified draw per seed (the draws of one
  seed are nested: its ipc-1 rows are the first of its ipc-5 rows).
- ``herding``: per class, greedy mean matching in embedding space (Welling 2009; Chen, Welling &
  Smola 2010; the coreset form of Rebuffi et al. 2017): the t-th pick makes the mean of the picks
  closest to the class mean. Deterministic, nested.
- ``kcenter``: per class, k-center greedy (Sener & Savarese 2018): start at the row nearest the
  class mean, then repeatedly add the row farthest from its nearest pick. Deterministic, nested.
- ``full``: every training row, three references (field ``reference``), each scored on test once:
  ``full`` (``"same-budget"``): the eval budget, like every other arm;
  ``full-earlystop`` (``"val-steps"``): the same student, optimiser and batch, its number of steps chosen
  on ``val``: the K students are scored on val about every ``eval.steps / EARLYSTOP_CHECKS`` steps (exactly:
  :func:`earlystop_every`) up to
  ``EARLYSTOP_MAX_FACTOR x eval.steps``, stopping after ``EARLYSTOP_PATIENCE`` checks in a row without a
  better mean; the step with the best mean val accuracy over the K seeds wins (``chosen_steps``,
  ``val_curve``, ``steps_run``);
  ``full-logreg`` (``"val-logreg"``, ``student`` ``"logreg"``): multinomial logistic regression on the
  vectors (scikit-learn, lbfgs), its L2 strength C chosen on ``val`` from :data:`LOGREG_C_GRID`
  (``chosen_C``, ``val_by_C``); one deterministic fit.
- ``majority``: predict the most frequent training class; no training.

Coresets are chosen on the train split only; every trained arm uses the recipe's student(s) (``eval.students``
or ``--students``; default ``student``), its eval budget and the same K seeds as ``eval`` (same-size sets
therefore get the same budget), and is scored on the test split. Nothing is selected on test.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from distillctl.console import info, is_quiet
from distillctl.data import embed  # embed.load_embeddings: looked up per call (tests stand in for it)
from distillctl.devices import release_freed_memory
from distillctl.errors import UserError
from distillctl.evaluation import training  # training.train_and_score: looked up per call (tests script it)
from distillctl.evaluation.protocol import (TEST_SPLIT, check_ipc_fits, check_split_sizes, eval_seeds, majority_line, result_record,
                                            split_of, store_results, student_sections)
from distillctl.evaluation.training import Scores, TrainBudget, classification_scores, student_builder
from distillctl.plugins import with_registry
from distillctl.recipe import Recipe, load_recipe
from distillctl.runs import create_run_dir, holds_run_lock, open_run_dir
from distillctl.evaluation.subsets import (EARLYSTOP_MAX_FACTOR, EARLYSTOP_PATIENCE, SUBSET_KINDS, coreset,
                                           earlystop_every, random_subsets)
from distillctl.tracking import track_baseline

if TYPE_CHECKING:  # pragma: no cover
    import torch

KINDS = ("random", "herding", "kcenter", "full", "majority")
#: recipe sections that must match between a run directory and a baseline stored in it
PROTOCOL_SECTIONS = ("seed", "dataset", "encoder", "embed", "student", "eval")
#: full-logreg: the inverse L2 strengths C tried on val (scikit-learn's C: larger = weaker penalty)
LOGREG_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
#: full-logreg: lbfgs iterations per fit (a fit that stops there is flagged in ``val_by_C``)
LOGREG_MAX_ITER = 1000


# -- the full-data references ----------------------------------------------------------------------

def logreg_reference(X: "torch.Tensor", y: "torch.Tensor", X_val: "torch.Tensor", y_val: "torch.Tensor",
                     X_test: "torch.Tensor", y_test: "torch.Tensor", num_classes: int,
                     grid: Sequence[float] = LOGREG_C_GRID, max_iter: int = LOGREG_MAX_ITER) -> dict:
    """Multinomial logistic regression on the vectors, its C chosen on val, scored on test once.

    One fit per C on train (float64, lbfgs, L2; deterministic), each scored on val; the C with the best
    val accuracy (the smallest of equal ones: the most regularised) is the model scored on test. Returns
    ``{"chosen_C", "val_by_C": [{"C", "accuracy", "converged", "iterations"}], "scores": Scores, "model"}`` (the fitted
    scikit-learn model); test plays no part in the choice.
    """
    import numpy as np
    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    # 1. the data as float64 numpy: train (n, d), val (n_val, d), test (m, d)
    Xn, Xv, Xt = (a.detach().double().cpu().numpy() for a in (X, X_val, X_test))
    yn, yv = y.long().cpu().numpy(), y_val.long().cpu().numpy()
    if len(np.unique(yn)) < 2:
        raise UserError("full-logreg: the training split has a single class; logistic regression needs two")
    # 2. one fit per C on train, scored on val. BLAS on one thread: lbfgs's products are small, and a second
    #    OpenBLAS thread beside torch's pool made the fits 6x slower (AG News 12k, 2 threads: 15 s vs 2.5 s
    #    for a quarter of the rows; BENCHMARKS.md, "The jobs' threads ...")
    val_by_C, best, best_model = [], -1.0, None
    with threadpool_limits(limits=1, user_api="blas"):
        for C in sorted(float(c) for c in grid):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = LogisticRegression(C=C, max_iter=max_iter, tol=1e-6).fit(Xn, yn)
            acc = float((model.predict(Xv) == yv).mean())
            iterations = int(np.max(model.n_iter_))  # lbfgs's: what the fit's time grows with
            val_by_C.append({"C": C, "accuracy": acc, "converged": iterations < max_iter, "iterations": iterations})
            if acc > best:  # strictly better: ties keep the smaller C
                best, best_model = acc, model
        # 3. the chosen model scored on test, once
        pred = torch.as_tensor(best_model.predict(Xt)).long()[None]  # (1, m)
    metrics = classification_scores(pred, y_test, num_classes)
    scores = Scores(seeds=[], accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"],
                    positive_f1=metrics.get("positive_f1"), seconds=time.perf_counter() - t0,
                    classes_predicted=metrics["classes_predicted"])
    return {"chosen_C": float(best_model.C), "val_by_C": val_by_C, "scores": scores, "model": best_model}


# -- the command ----------------------------------------------------------------------------------

def parse_ipc(text: str | Sequence[int] | None) -> list[int] | None:
    """``"1,5,10"`` -> [1, 5, 10]; a :class:`UserError` for anything else."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            values = [int(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise UserError(f"--ipc {text!r}: expected comma-separated integers, e.g. 1,5,10") from None
    else:
        values = [int(v) for v in text]
    if not values or any(v < 1 for v in values):
        raise UserError(f"--ipc {text!r}: expected integers >= 1, e.g. 1,5,10")
    return sorted(set(values))


def _baseline_run_dir(recipe: Any, run_dir: str | Path, argv: list[str] | None):
    """The run directory to store baselines in: an existing run of a compatible recipe, or a new one."""
    path = Path(run_dir)
    if (path / "recipe.resolved.yaml").exists():
        run = open_run_dir(path)
        stored = run.load_recipe().to_dict()
        mine = recipe.to_dict()
        differ = [k for k in PROTOCOL_SECTIONS if stored.get(k) != mine.get(k)]
        if differ:
            raise UserError(f"{path}: the run's recipe differs in {', '.join(differ)}; baselines stored there must "
                            f"use the same data, encoder, student, eval budget and seed")
        return run
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path}: not a run directory (no recipe.resolved.yaml) and not empty")
    return create_run_dir(recipe, stage="baseline", run_dir=path, argv=argv)


@with_registry  # registry=: run with that plugin registry (default: get_registry())
@holds_run_lock(lambda args, kw: f"baseline-{args[1] if len(args) > 1 else kw.get('kind')}",  # one per kind and run
                lambda args, kw: Path(kw["run_dir"]) if kw.get("run_dir") and Path(kw["run_dir"]).is_dir() else None)
@track_baseline  # the recipe's `tracking` list: result means as metrics, the results file as an artifact
def baseline(recipe: Any, kind: str, *, ipc: Sequence[int] | str | None = None, seeds: int | None = None,
             quiet: bool | None = None, run_dir: str | Path | None = None, embeddings: Any = None,
             argv: list[str] | None = None, students: Any = None) -> list[dict]:
    """Score one baseline arm under the recipe's eval protocol: one record per student and ipc (subset
    kinds), per student and reference (``full``: ``full``, ``full-earlystop``, plus one ``full-logreg``), or
    one (``majority``).

    ``ipc`` (subset kinds): default ``baseline.ipc``, else ``distill.ipc``. ``seeds``: K (default
    ``eval.seeds``). ``students``: a ``--students`` string or a list of student sections (default
    ``eval.students``, else ``student``). With ``run_dir`` the records are merged into
    ``RUN_DIR/eval/baseline-<kind>.json``.
    """
    quiet = is_quiet() if quiet is None else quiet
    # 1. What to run.
    if kind not in KINDS:
        raise UserError(f"--kind {kind!r}: unknown baseline (choose from {', '.join(KINDS)})")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    ipcs, ipc_field = parse_ipc(ipc), "--ipc"
    if not ipcs:
        ipcs, ipc_field = ((list(recipe.baseline.ipc), "baseline.ipc") if recipe.baseline.ipc
                           else (list(recipe.distill.ipc), "distill.ipc"))
    sections = student_sections(recipe, students) if kind != "majority" else []
    # 2. Data: coresets come from train only; every score is on test. Checked before the run folder is written.
    if embeddings is None:
        embeddings = embed.load_embeddings(recipe, quiet=quiet)
    check_split_sizes(embeddings)
    if kind in SUBSET_KINDS:
        check_ipc_fits(embeddings, max(ipcs), ipc_field)
    run = _baseline_run_dir(recipe, run_dir, argv) if run_dir is not None else None
    if getattr(embeddings, "level", "vectors") == "tokens":  # fine-tuned students (evaluation/token_arms.py)
        from distillctl.evaluation.token_arms import baseline_tokens

        keep = None if run is None else (lambda rec: store_results(run.eval / f"baseline-{kind}.json", [rec]))
        records = baseline_tokens(recipe, kind, ipcs, ipc_field, eval_seeds(recipe, seeds), sections, embeddings,
                                  quiet=quiet, on_record=keep)
        if run is not None:
            store_results(run.eval / f"baseline-{kind}.json", records, history=run.eval / "history.jsonl")
        return records
    arms = _Arms.of(recipe, embeddings, eval_seeds(recipe, seeds), quiet=quiet)

    # 3. The arm, for every student.
    if kind == "majority":  # no student, no seeds: one deterministic value per metric
        records = [arms.majority_record()]
    elif kind == "full":
        records = _full_references(arms, embeddings, sections)
    elif kind == "random":
        records = []
        for section in sections:
            for k in ipcs:
                idx = random_subsets(arms.y, arms.C, k, arms.seeds)  # (K, k*C), a new draw per seed
                records.append(arms.score(section, kind, k, arms.X[idx], arms.y[idx], n_train=k * arms.C))
    else:
        records = []
        for k in ipcs:
            idx = coreset(arms.X, arms.y, arms.C, k, kind)  # (k*C,), the same rows for every seed
            for section in sections:
                records.append(arms.score(section, kind, k, arms.X[idx], arms.y[idx], n_train=k * arms.C,
                                          rows=idx.tolist()))

    # 4. Store them next to the run's eval results.
    if run is not None:
        store_results(run.eval / f"baseline-{kind}.json", records, history=run.eval / "history.jsonl")
    return records


@dataclass
class _Arms:
    """What every arm of one baseline call shares: the recipe's protocol, the train and test data."""

    recipe: Any
    X: "torch.Tensor"  # (n, d) training vectors
    y: "torch.Tensor"  # (n,)
    X_test: "torch.Tensor"  # (m, d)
    y_test: "torch.Tensor"  # (m,)
    C: int
    seeds: list[int]  # the K eval seeds
    budget: TrainBudget  # the eval budget
    majority: dict  # the majority-class line every record carries
    quiet: bool

    @classmethod
    def of(cls, recipe: Any, embeddings: Any, seeds: list[int], *, quiet: bool) -> "_Arms":
        train, test = split_of(embeddings, "train"), split_of(embeddings, TEST_SPLIT)
        return cls(recipe=recipe, X=train.X.float(), y=train.y.long(), X_test=test.X.float(), y_test=test.y.long(),
                   C=int(embeddings.num_classes), seeds=seeds, budget=TrainBudget.from_eval(recipe.eval),
                   majority=majority_line(embeddings), quiet=quiet)

    def score(self, section, arm: str, arm_ipc: int | None, x, labels, arm_budget: TrainBudget | None = None,
              select_on=None, select_every=None, select_patience=None, **extra) -> dict:
        """K students of ``section`` trained on (x, labels), scored on test: the arm's result record."""
        arm_budget = arm_budget or self.budget
        build = student_builder(self.recipe, int(self.X.shape[1]), self.C, section)
        where = "all rows" if arm_ipc is None else f"ipc {arm_ipc}"
        scores = training.train_and_score(
            build, x, labels, self.X_test, self.y_test, seeds=self.seeds, budget=arm_budget, num_classes=self.C,
            description=f"{arm} {where}, {section.name}", quiet=self.quiet, select_on=select_on,
            select_every=select_every, select_patience=select_patience)
        if scores.chosen_steps is not None:  # full-earlystop: the students scored are those of the chosen step
            arm_budget = TrainBudget(**{**arm_budget.as_dict(), "steps": scores.chosen_steps})
            extra.update(chosen_steps=scores.chosen_steps, val_curve=scores.val_curve, steps_run=scores.steps_run)
        rec = result_record(arm, arm_ipc, self.recipe, arm_budget, scores, majority=self.majority,
                            n_test=len(self.y_test), student=section, **extra)
        if not self.quiet:
            info(f"{arm} {where}, {section.name}: accuracy {scores.mean():.4f} ± {scores.std():.4f} "
                 f"({len(self.seeds)} seeds, {scores.seconds:.1f} s)")
        return rec

    def majority_record(self) -> dict:
        m = self.majority
        fixed = Scores(seeds=[], accuracy=[m["accuracy"]], macro_f1=[m["macro_f1"]],
                       positive_f1=[m["positive_f1"]] if "positive_f1" in m else None)
        return result_record("majority", None, self.recipe, None, fixed, majority=m, n_test=len(self.y_test),
                             **{"class": m["class"]})


def _full_references(arms: _Arms, embeddings: Any, sections: list) -> list[dict]:
    """The three full-data references: per student (a) the eval budget and (b) its steps chosen on val;
    then (c) one logistic regression with its L2 strength chosen on val (no student, one deterministic fit)."""
    val = split_of(embeddings, "val")
    X_val, y_val = val.X.float(), val.y.long()  # (n_val, d), (n_val,)
    X, y, n, budget = arms.X, arms.y, int(arms.X.shape[0]), arms.budget
    long_budget = TrainBudget(**{**budget.as_dict(), "steps": EARLYSTOP_MAX_FACTOR * budget.steps})
    every = earlystop_every(budget.steps)
    records = []
    for section in sections:
        # (a) the same budget as every other arm
        records.append(arms.score(section, "full", None, X, y, n_train=n, reference="same-budget"))
        # (b) the same student with its number of steps chosen on val
        records.append(arms.score(section, "full-earlystop", None, X, y, long_budget, n_train=n,
                                  reference="val-steps", select_on=(X_val, y_val), select_every=every,
                                  select_patience=EARLYSTOP_PATIENCE, patience_checks=EARLYSTOP_PATIENCE,
                                  max_steps=long_budget.steps, select_every_steps=every, select_split="val"))
    # (c) the logistic regression, on a trimmed heap: glibc keeps the pages the students freed (MRPC, 5
    #     Transformer students: 291 MiB before them, 588 MiB after), and the regression's float64 copies then
    #     peaked on top of them (794 MiB) instead of reusing them
    release_freed_memory()
    fit = logreg_reference(X, y, X_val, y_val, arms.X_test, arms.y_test, arms.C)
    options = {"name": "logreg", "C": fit["chosen_C"], "penalty": "l2", "solver": "lbfgs",
               "max_iter": LOGREG_MAX_ITER}
    records.append(result_record("full-logreg", None, arms.recipe, None, fit["scores"], majority=arms.majority,
                                 n_test=len(arms.y_test), student=options, n_train=n,
                                 reference="val-logreg", chosen_C=fit["chosen_C"], val_by_C=fit["val_by_C"],
                                 C_grid=list(LOGREG_C_GRID), select_split="val"))
    if not arms.quiet:
        info(f"full-logreg all rows (C = {fit['chosen_C']:g} chosen on val): accuracy "
             f"{fit['scores'].mean():.4f} ({fit['scores'].seconds:.1f} s)")
    return records

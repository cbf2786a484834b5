"""The arms of ``eval`` and ``baseline`` at the token level (``embed.level: tokens``).

Same protocol and records as the vector arms (:mod:`distillctl.evaluation.evaluate`,
:mod:`distillctl.evaluation.baselines`), each record with ``level: "tokens"``, the device and the peak
memory; the students fine-tune a pretrained transformer (:mod:`distillctl.evaluation.finetuning`).

``eval`` on a token-level set (x (n, T, d) input embeddings, mask (n, T), labels):

- ``distilled``: K seeds, each the pretrained model with a fresh head (seed k), trained on the set with the
  recipe's ``eval`` budget (a soft-label set also with its labels made hard, as for vectors);
- ``distilled-init``: the initial model the set was distilled for (the set's ``init_seed``: pretrained body
  + that seed's head) trained with the inner steps it was distilled with (:func:`inner_replay`: the
  learned inner lr when there is one), one run (it is deterministic up to the inner batches), labels as
  distilled. This is the number the set was optimised for;
- ``distilled-heads``: the same inner steps, labels as distilled, from K fresh heads (the pretrained body +
  eval seed k's head): does the set hold across initialisations, the thing a user fine-tuning their own copy
  of the model needs. A head the set was distilled on (its ``head_seeds``) is named in the record
  (``heads_seen``) and in the output: it is not fresh.

``distilled`` and ``distilled-heads`` both start from fresh heads; the first trains with the recipe's eval
budget (the set as a small training set), the second with the steps it was made for.

``baseline`` at the token level: ``random`` (a stratified draw per seed), ``herding`` / ``kcenter`` (chosen on
the pretrained student's pooled features of the training texts: the representation that is fine-tuned,
not the frozen encoder's), ``full`` (same budget) and ``full-earlystop`` (steps chosen on val, the K
students in lockstep), ``majority``. Real texts enter as token ids looked up in the student's word table.
There is no ``full-logreg`` at this level (it is the vector path's reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from distillctl.console import info
from distillctl.evaluation.subsets import (EARLYSTOP_MAX_FACTOR, EARLYSTOP_PATIENCE, SUBSET_KINDS, coreset,
                                           earlystop_every, random_subsets)
from distillctl.evaluation.finetuning import (DevicePlan, InnerReplay, TokenData, copy_budget, finetune_and_score,
                                              pooled_features)
from distillctl.evaluation.protocol import (TEST_SPLIT, check_ipc_fits, check_sets_fit, distilled_with,
                                            fixed_val_rows, label_variants, majority_line, result_record, split_of)
from distillctl.evaluation.training import Scores, TrainBudget, student_builder
from distillctl.recipe import validate_plugin_section
from distillctl.seeds import token_init_seed


def _record_extra(scores: Any) -> dict:
    return {"level": "tokens", "device": getattr(scores, "device", None),
            "peak_memory_mb": getattr(scores, "peak_memory_mb", None),
            "models_scored": getattr(scores, "models_scored", None)}


def _plan(recipe: Any):

    return DevicePlan.resolve(getattr(recipe.eval, "device", "auto"), field="eval.device",
                              precision=getattr(recipe.eval, "precision", "auto"))


def _info(quiet: bool, text: str) -> None:
    if not quiet:

        info(text)


# -- eval ---------------------------------------------------------------------------------------------

def distilled_for(recipe: Any, syn: Any):
    """The student section a token-level set was distilled for: the set's recorded ``distill_students[0]``
    (with its options), else the recipe's first ``distill.students``, else ``student``."""

    recorded = (syn.meta.get("distill_students") or [None])[0]
    if isinstance(recorded, dict) and recorded.get("name"):
        return validate_plugin_section("student", dict(recorded), "the set's distill_students[0]")
    several = getattr(recipe.distill, "students", None)
    return several[0] if several else recipe.student


def inner_replay(recipe: Any, syn: Any):
    """The inner steps a set was distilled with, from its metadata, else the recipe it was distilled with:
    steps ``meta["inner_steps"]`` (else the bptt unroll's ``total``), optimiser ``meta["inner"]`` (else
    ``distill.inner``), lr the set's learned ``inner_lr`` (else ``meta["inner"]["lr"]``, else
    ``distill.inner.lr``). None when the steps cannot be known (a method without an unroll)."""

    inner = dict(syn.meta.get("inner") or {})
    settings = recipe.distill.inner
    steps = syn.meta.get("inner_steps")
    if steps is None:
        method = recipe.distill.method.options
        unroll = getattr(method, "unroll", None)
        steps = getattr(getattr(unroll, "options", None), "total", None)
    if steps is None:
        return None
    lr = syn.inner_lr if syn.inner_lr is not None else inner.get("lr", settings.lr)
    return InnerReplay(steps=int(steps), lr=float(lr), optimizer=inner.get("optimizer", settings.optimizer),
                       momentum=float(inner.get("momentum", settings.momentum)),
                       betas=tuple(inner.get("betas", settings.betas)),
                       batch_per_class=inner.get("batch_per_class", settings.batch_per_class),
                       head_first=_head_first(syn.meta.get("head_first")))


def _head_first(recorded) -> str:
    """A set's ``head_first``: none | sgd | ridge (absent: none)."""
    return str(recorded or "none")


def init_seed_of(recipe: Any, syn: Any) -> int:
    """The seed of the initial model a set was distilled for: the set's ``init_seed``, else the recipe's
    ``distill.tokens.init_seed``, else the distillation default (:func:`distillctl.seeds.token_init_seed`)."""
    if syn.meta.get("init_seed") is not None:
        return int(syn.meta["init_seed"])
    configured = getattr(getattr(recipe.distill, "tokens", None), "init_seed", None)
    return int(token_init_seed(recipe.seed) if configured is None else configured)


def evaluate_token_sets(recipe: Any, sets: list, embeddings: Any, sections: list, seed_list: list[int], *,
                        quiet: bool) -> list[dict]:
    """Records of ``distilled`` (every student section x set x labels), ``distilled-init`` and
    ``distilled-heads`` (every set)."""

    # 1. the test rows (token ids) and the checks that each set fits them
    test_split = split_of(embeddings, TEST_SPLIT)
    test, y_test = TokenData.of_split(test_split), test_split.y.long()  # (m, T) ids, (m,)
    C, d = int(embeddings.num_classes), int(embeddings.dim)
    check_sets_fit(sets, embeddings, level="tokens", width=d)
    budget = TrainBudget.from_eval(recipe.eval)
    plan = _plan(recipe)
    majority = majority_line(embeddings)
    made_with = distilled_with(recipe)
    records = []

    # 2. distilled: K fresh heads per (student, set, labels)
    for section in sections:
        build = student_builder(recipe, d, C, section)
        for stage, (f, s) in enumerate(sets):
            data = TokenData(mask=s.mask.float(), x=s.x.float())  # (n, T, d), (n, T)
            for kind, labels in label_variants(s):
                scores = finetune_and_score(build, data, labels, test, y_test, seeds=seed_list, budget=budget,
                                            num_classes=C, plan=plan, quiet=quiet,
                                            description=f"eval ipc {s.ipc} {section.name} {kind}")
                records.append(result_record(
                    "distilled", s.ipc, recipe, budget, scores, majority=majority, n_test=len(y_test),
                    student=section, labels=kind, distilled_with=made_with, set=str(Path(f).resolve()),
                    stage=s.meta.get("stage", stage), soft_labels=s.soft, n_train=len(data),
                    val_accuracy=s.meta.get("val_accuracy"), **_record_extra(scores)))
                _info(quiet, f"ipc {s.ipc}, {section.name}, {kind} labels: accuracy {scores.mean():.4f} ± "
                      f"{scores.std():.4f} ({len(seed_list)} seeds, {scores.seconds:.1f} s)")

    # 3. distilled-init (the initial model the set was made for) and distilled-heads (K fresh heads), both
    #    with the inner steps it was made with
    for stage, (f, s) in enumerate(sets):
        init_seed = init_seed_of(recipe, s)
        replay = inner_replay(recipe, s)
        if replay is None:
            _info(quiet, f"{Path(f).name}: no distilled-init or distilled-heads arm (neither the set nor its method "
                  "records how many inner steps it was distilled for)")
            continue
        attention = None
        if getattr(s, "attention_labels", None) is not None:  # the inner loss had the attention-label term
            weight = s.meta.get("attention_weight",
                                getattr(getattr(recipe.distill, "tokens", None), "attention_weight", 1.0))
            attention = (s.attention_labels.float(), float(weight))
        section = distilled_for(recipe, s)
        build = student_builder(recipe, d, C, section)
        data = TokenData(mask=s.mask.float(), x=s.x.float())  # (n, T, d), (n, T)
        labels = s.labels.float() if s.soft else s.labels.long()
        rows = len(data) if replay.batch_per_class is None else min(len(data), replay.batch_per_class * C)
        replay_budget = TrainBudget(steps=replay.steps, optimizer=replay.optimizer, lr=replay.lr,
                                    momentum=replay.momentum, batch_size=max(rows, 1), betas=replay.betas)
        common = dict(recipe=recipe, majority=majority, n_test=len(y_test), student=section,
                      labels="soft" if s.soft else "hard", distilled_with=made_with, set=str(Path(f).resolve()),
                      stage=s.meta.get("stage", stage), soft_labels=s.soft, n_train=len(data),
                      init_seed=int(init_seed), inner_replay=replay.as_dict(), learned_lr=s.inner_lr is not None,
                      attention_labels=attention is not None, val_accuracy=s.meta.get("val_accuracy"))
        arms = (("distilled-init", [int(init_seed)], "from the initial model"),
                ("distilled-heads", seed_list, "from fresh heads, its inner steps"))
        scored: dict = {}  # a ridge-first set replays to one model from every head: score it on test once
        for arm, arm_seeds, words in arms:
            scores = finetune_and_score(build, data, labels, test, y_test, seeds=arm_seeds, budget=budget,
                                        num_classes=C, plan=plan, quiet=quiet, replay=replay, attention=attention,
                                        description=f"eval ipc {s.ipc} {words}", scored=scored)
            seen = sorted(set(arm_seeds) & {int(h) for h in (s.meta.get("head_seeds") or [init_seed])})
            extra = {} if arm == "distilled-init" else {"heads_seen": seen}
            records.append(result_record(arm, s.ipc, budget=replay_budget, scores=scores, **common, **extra,
                                         **_record_extra(scores)))
            if arm == "distilled-init":
                _info(quiet, f"ipc {s.ipc}, from the initial model (seed {init_seed}, {replay.steps} inner steps, "
                      f"lr {replay.lr:.3g}): accuracy {scores.mean():.4f} ({scores.seconds:.1f} s)")
                continue
            same = "" if scores.models_scored == len(arm_seeds) else (
                f"; {len(arm_seeds) - scores.models_scored} of {len(arm_seeds)} ended bit-identical to a model "
                "already scored, whose test predictions they reuse")
            _info(quiet, f"ipc {s.ipc}, from {len(arm_seeds)} fresh heads, the same steps: accuracy "
                  f"{scores.mean():.4f} ± {scores.std():.4f} ({scores.seconds:.1f} s{same})")
            if seen:  # said even under --json (stderr): the arm's name claims fresh heads
                info(f"note: eval seeds {seen} are heads the set was distilled on (its head_seeds), not "
                      "fresh ones; distill with another distill.tokens.init_seed or recipe seed")
    return records


# -- baseline -----------------------------------------------------------------------------------------

def baseline_tokens(recipe: Any, kind: str, ipcs: Sequence[int], ipc_field: str, seed_list: list[int],
                    sections: list, embeddings: Any, *, quiet: bool, on_record: Any = None) -> list[dict]:
    """Records of one baseline arm at the token level (see the module docstring). ``on_record(record)`` is
    called as each record is finished (``baseline`` stores it at once: a fine-tuned arm can take an hour on a
    CPU, and what finished is kept if a later arm is interrupted)."""

    # 1. data: token ids of train (coresets are chosen there) and test (every score)
    train_split, test_split = split_of(embeddings, "train"), split_of(embeddings, TEST_SPLIT)
    train, y = TokenData.of_split(train_split), train_split.y.long()  # (n, T), (n,)
    test, y_test = TokenData.of_split(test_split), test_split.y.long()  # (m, T), (m,)
    C, d = int(embeddings.num_classes), int(embeddings.dim)
    if kind in SUBSET_KINDS:
        check_ipc_fits(embeddings, max(ipcs), ipc_field)
    majority = majority_line(embeddings)
    budget = TrainBudget.from_eval(recipe.eval)
    plan = _plan(recipe)

    def score(section, arm, arm_ipc, data, labels, arm_budget=budget, **kw):
        build = student_builder(recipe, d, C, section)
        where = "all rows" if arm_ipc is None else f"ipc {arm_ipc}"
        extra = {k: kw.pop(k) for k in list(kw) if k not in ("select_on", "select_every", "select_patience",
                                                                  "per_seed_rows")}
        scores = finetune_and_score(build, data, labels, test, y_test, seeds=seed_list, budget=arm_budget,
                                    num_classes=C, plan=plan, quiet=quiet, description=f"{arm} {where}, {section.name}",
                                    **kw)
        if scores.chosen_steps is not None:  # full-earlystop: the students scored are those of the chosen step
            arm_budget = copy_budget(arm_budget, steps=scores.chosen_steps)
            extra.update(chosen_steps=scores.chosen_steps, val_curve=scores.val_curve, steps_run=scores.steps_run)
        _info(quiet, f"{arm} {where}, {section.name}: accuracy {scores.mean():.4f} ± {scores.std():.4f} "
              f"({len(seed_list)} seeds, {scores.seconds:.1f} s)")
        rec = result_record(arm, arm_ipc, recipe, arm_budget, scores, majority=majority, n_test=len(y_test),
                            student=section, **extra, **_record_extra(scores))
        if on_record is not None:
            on_record(rec)
        return rec

    # 2. the arm, for every student
    records = []
    if kind == "majority":
        fixed = Scores(seeds=[], accuracy=[majority["accuracy"]], macro_f1=[majority["macro_f1"]],
                       positive_f1=[majority["positive_f1"]] if "positive_f1" in majority else None)
        records.append(result_record("majority", None, recipe, None, fixed, majority=majority, n_test=len(y_test),
                                     level="tokens", **{"class": majority["class"]}))
    elif kind == "full":
        val_split = split_of(embeddings, "val")
        val, y_val = TokenData.of_split(val_split), val_split.y.long()  # (m, T), (m,)
        keep = fixed_val_rows(len(val), recipe.distill.tokens.val_rows, recipe.seed)  # the rows distill checks on
        if keep is not None:
            val, y_val = val.take(keep), y_val[keep]
        long_budget = copy_budget(budget, steps=EARLYSTOP_MAX_FACTOR * budget.steps)
        every = earlystop_every(budget.steps)
        for section in sections:
            records.append(score(section, "full", None, train, y, n_train=len(train), reference="same-budget"))
            records.append(score(section, "full-earlystop", None, train, y, long_budget, n_train=len(train),
                                 reference="val-steps", select_on=(val, y_val), select_every=every,
                                 select_patience=EARLYSTOP_PATIENCE, patience_checks=EARLYSTOP_PATIENCE,
                                 max_steps=long_budget.steps, select_every_steps=every, select_split="val",
                                 select_rows=len(val)))
    elif kind == "random":
        for section in sections:
            for k in ipcs:
                idx = random_subsets(y, C, k, seed_list)  # (K, k*C), a new draw per seed
                records.append(score(section, kind, k, train, y, per_seed_rows=idx, n_train=k * C))
    else:  # herding / kcenter on the pretrained student's pooled features of the training texts
        for section in sections:
            build = student_builder(recipe, d, C, section)
            feats = pooled_features(build, train, plan)  # (n, d)
            for k in ipcs:
                idx = coreset(feats, y, C, k, kind)  # (k*C,), the same rows for every seed
                records.append(score(section, kind, k, train.take(idx), y[idx], n_train=k * C, rows=idx.tolist(),
                                     chosen_by="pretrained student's pooled features"))
    return records

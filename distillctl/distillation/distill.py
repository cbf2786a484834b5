"""``distill``: learn a few synthetic embedding vectors per class with any distillation method.

:func:`distill` is the chain and reads top to bottom: the run folder (decided once, locked), embeddings,
students and method, then each Boost-DD stage (``distill.ipc: [1, 5, 10]``), reused when a resumed run or
an earlier ``--stage`` call finished it, else distilled by :func:`_distill_stage`, the one outer loop
every method shares::

    real batch -> Method.step (bptt: unroll K fresh students; krr: closed-form ridge; dm; mtt; ...)
    -> outer loss and meta-gradient -> clip at clip x EMA(norms) -> outer Adam/SGD (lr schedule)
    -> damp inherited rows by beta -> every val_every: fresh students trained on the set, scored on
    `val`, keep the best -> every ckpt_every: atomic checkpoint (learnables, optimiser, EMA, generator,
    best set, the method's state)

The test split is never touched here. Everything random in a stage flows from one ``torch.Generator``
seeded by (recipe.seed, stage), saved in every checkpoint, so ``--resume`` continues exactly.

At the token level (``embed.level: tokens``, a fine-tuned student such as ``finetune``) the same loop runs
on sequences of input embeddings: the real rows are :class:`distillctl.distillation.tokens.TokenRows`, the
set starts from real texts' input embeddings (``x (ipc*C, T, d)``, their masks, optional attention labels),
the method gets a :class:`distillctl.distillation.tokens.TokenSpace` (``MethodContext.tokens``) and
validation fine-tunes the initial model (``distill.tokens.init_seed``; with a head pool, the first
``outer.val_seeds`` heads) on the set for the method's inner steps and scores `val`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillctl.console import info, is_quiet, progress
from distillctl.data import embed  # embed.load_embeddings: looked up per call (tests stand in for it)
from distillctl.data.cache import methods_dir
from distillctl.devices import resolve_device
from distillctl.distillation import checkpoints
from distillctl.distillation.synthetic import SyntheticSet
from distillctl.distillation.tokens import (InnerSteps, TokenRows, TokenSpace, attention_targets, finetune_and_score,
                                            initial_attention, initial_rows)
from distillctl.errors import Interrupted, RunError, UserError
from distillctl.interrupts import interrupt_signal
from distillctl.evaluation.protocol import check_ipc_fits, check_split_sizes, fixed_val_rows, split_of
from distillctl.evaluation import training  # training.train_and_score: looked up per call (tests script it)
from distillctl.evaluation.training import TrainBudget, student_builder
from distillctl.methods import Learnables, Method, MethodContext, PerStudent, student_labels
from distillctl.plugins import get_registry, with_registry
from distillctl.runs import (RunDir, atomic_write_text, create_run_dir, new_run_path, open_run_dir, read_jsonl,
                             record_set, refuse_existing_run, run_lock)
from distillctl.seeds import stage_seed, token_init_seed, val_seeds as derive_val_seeds
from distillctl.verified import sha256_of
from distillctl.tracking import track_distill

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: soft labels start as probabilities with this mass on the row's own class (rest spread evenly)
SOFT_LABEL_INIT_CONFIDENCE = 0.9


@dataclass
class DistillResult:
    """The run directory and one entry per Boost-DD stage: ``{"ipc", "path", "val_accuracy"}``."""

    run_dir: Path
    sets: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"run_dir": str(self.run_dir), "sets": [dict(s, path=str(s["path"])) for s in self.sets]}


@with_registry  # registry=: run with that plugin registry (default: get_registry())
@track_distill  # the recipe's `tracking` list: metrics by step, the sets as artifacts (distillctl.tracking)
def distill(recipe, *, run_dir: str | Path | None = None, resume: str | Path | None = None,
            quiet: bool | None = None, argv: list[str] | None = None, embeddings=None,
            stage: int | None = None) -> DistillResult:
    """Run every Boost-DD stage of ``recipe``; return the run directory and the saved sets.

    ``resume`` is an existing run directory of the same recipe: finished stages are reused, the
    stage in progress continues from its newest checkpoint. ``embeddings`` (an
    :class:`distillctl.data.embed.Embeddings`-like object) skips loading the cache, for library callers.
    ``stage`` (an ipc of the chain) runs that Boost-DD stage only: the stages before it must be finished
    in the run directory (``resume``), the ones after it are left for later calls. This is how
    ``submit`` runs a chain as one job per stage. ``registry=`` (see :func:`distillctl.plugins.with_registry`)
    runs it with another plugin registry than the installed one. A ``run_dir`` that already holds a run
    is refused (resume it instead); the run directory is locked while distill runs.
    """
    quiet = is_quiet() if quiet is None else quiet
    ds = recipe.distill
    if stage is not None and stage not in ds.ipc:
        raise UserError(f"--stage {stage}: not a stage of distill.ipc {list(ds.ipc)}")

    # 0. Everything the run needs is checked before its folder exists (a refusal writes nothing): the folder
    #    (a resumed run holds this recipe; a new one no other run), the data (ipc vs class sizes, val and
    #    test sizes per class) and method x students x labels at every stage to run.
    _check_folder(recipe, run_dir, resume)
    if embeddings is None:
        embeddings = embed.load_embeddings(recipe, quiet=quiet)
    preflight(recipe, embeddings, stages=[i for i in ds.ipc if stage is None or i <= stage], quiet=quiet)

    # 1. The run folder, decided here only: the run resumed, the folder given, or a new one; locked for the
    #    whole call (one distill per run folder: a second is refused with the holder's PID).
    folder = _run_folder(recipe, run_dir, resume)
    with run_lock(folder, "distill", argv=argv):
        run = _open_run(recipe, folder, resume, argv)
        # 2.-3. Students and method: what every stage of the chain shares (train for batches, val for selection).
        chain = _Chain.build(recipe, run, embeddings, quiet=quiet)
        # 4. Each Boost-DD stage: reused when finished (resume / earlier `--stage` calls), else distilled,
        #    warm-started from the stage before it. An interrupt (Ctrl-C, SIGTERM) says where the run stopped
        #    and the command that continues it.
        result, previous, current = DistillResult(run_dir=run.path), None, {}
        try:
            for si, ipc in enumerate(ds.ipc):
                if stage is not None and ipc > stage:
                    break  # later stages: left to later `--stage` calls
                current.update(ipc=ipc, stage=None)
                syn = _finished_stage(chain, ipc, stage=stage, resume=resume)
                if syn is None:
                    syn = _distill_stage(chain, si, ipc, previous, resume=resume is not None, current=current)
                result.sets.append({"ipc": ipc, "path": chain.set_path(ipc),
                                    "val_accuracy": syn.meta.get("val_accuracy")})
                previous = syn
        except BaseException as exc:  # an interrupt, or one that a library caught and re-raised as its own error
            sig = interrupt_signal(exc)
            if sig is None:
                raise
            raise Interrupted(_where_stopped(chain, current, stage, sig), signal_name=sig) from None
        return result


def _where_stopped(chain: "_Chain", current: dict, stage: int | None, signal_name: str | None) -> str:
    """``interrupted (SIGINT) at stage ipc=5, outer step 37 of 400; ... resume: distillctl distill --resume RUN``."""
    ipc, st = current.get("ipc"), current.get("stage")
    if st is not None:
        ckpt = checkpoints.newest(chain.run.checkpoints, ipc)
        done = st.loop.step
        where = (f"stage ipc={ipc}, after outer step {done} of {chain.recipe.distill.outer.iterations}; "
                 + (f"the newest checkpoint is step {_ckpt_step(ckpt)} ({ckpt.name}), where the resume continues"
                    if ckpt is not None else "no checkpoint yet, so the resume restarts this stage"))
    elif ipc is not None:
        where = f"stage ipc={ipc}, before its first outer step"
    else:
        where = "before the first stage"
    saved = sorted(int(p.stem[3:]) for p in chain.run.distilled.glob("ipc*.safetensors")) if chain.run.distilled.is_dir() else []
    kept = f"; finished sets kept: {', '.join(f'ipc {i}' for i in saved)}" if saved else ""
    command = f"distillctl distill --resume {chain.run.path}" + (f" --stage {stage}" if stage is not None else "")
    return f"interrupted{f' ({signal_name})' if signal_name else ''} at {where}{kept}; continue with: {command}"


def _ckpt_step(path: Path) -> str:
    """The outer step of a checkpoint file (``ipc5-step000030.pt`` -> ``30``), as its name says."""
    import re

    found = re.findall(r"(\d+)", path.stem)
    return str(int(found[-1])) if found else "?"


def preflight(recipe, embeddings, *, stages: list[int] | None = None, quiet: bool = True) -> None:
    """Every refusal a distill of ``recipe`` on ``embeddings`` can meet, raised before anything is written: ipc
    vs the smallest class, val and test sizes per class (:func:`check_split_sizes`), and method x students x
    labels (each stage's ``Method.setup`` on fresh instances, with nothing saved: a method that trains
    experts keeps them in its verified cache, so the run itself reuses them)."""
    import torch

    ds, registry = recipe.distill, get_registry()
    stages = list(ds.ipc if stages is None else stages)
    if not stages:
        return
    check_ipc_fits(embeddings, max(stages), "distill.ipc")
    check_split_sizes(embeddings, recorded_only=("test",))  # test: from the recorded counts (never read here)
    sections = list(ds.students or [recipe.student])
    if getattr(embeddings, "level", "vectors") == "tokens":
        # A method without the token level was refused when the recipe was validated; the one method setup
        # left needs the student's pretrained model, which the run itself builds.
        if len(sections) > 1:
            raise UserError(f"distill.students: at the token level a set is distilled for one fine-tuned model; "
                            f"got {len(sections)} students ({', '.join(sec.name for sec in sections)})")
        return
    device = resolve_device(ds.device, field="distill.device")
    train = split_of(embeddings, "train")
    X, y = train.X.to(device, torch.float32), train.y.to(device)  # (n, d), (n,)
    C, d = int(embeddings.num_classes), int(X.shape[1])
    students = [(sec.name, student_builder(recipe, d, C, sec), sec.model_dump(mode="json")) for sec in sections]
    labels = student_labels([sec.name for sec in sections])
    budget = TrainBudget.from_eval(recipe.eval)
    cache = _method_cache(embeddings, X, y, quiet=quiet)
    for ipc in sorted(set(stages)):
        for label, (name, build, options) in zip(labels, students):
            method = registry.build("method", ds.method)
            method.name = ds.method.name
            method.setup(MethodContext(
                build_student=build, student_name=name, students=list(labels), num_classes=C, ipc=ipc,
                hard_labels=torch.arange(C, device=device).repeat_interleave(ipc), x_train=X, y_train=y,
                inner=ds.inner, eval_budget=budget, device=device, seed=recipe.seed, soft_labels=ds.soft_labels,
                cache=cache.keyed(student=options), say=(lambda message: None) if quiet else info))
            method.learned_inner_lr(ds.inner)


def _check_folder(recipe, run_dir: str | Path | None, resume: str | Path | None) -> None:
    """The folder refusals, before anything is written: a resumed run must hold this recipe (each differing
    field named with both values); a new run never goes into a folder that holds another one."""
    if resume is not None:
        stored = open_run_dir(resume).load_recipe()  # a UserError when it is no run directory
        if stored.fingerprint() != recipe.fingerprint():
            raise UserError(f"{resume}: cannot resume: the recipe differs from the run's recipe.resolved.yaml: "
                            f"{recipe_differences(stored, recipe)}; resume with the same recipe and --set values "
                            f"(or leave RECIPE out: `distillctl distill --resume {resume}` uses the run's own)")
    elif run_dir is not None:
        refuse_existing_run(run_dir)


def recipe_differences(stored, given, limit: int = 8) -> str:
    """``distill.outer.lr: 0.01 in the run, 0.02 given; seed: 0 in the run, 1 given`` (every differing leaf)."""
    a, b = _leaves(stored.model_dump(mode="json")), _leaves(given.model_dump(mode="json"))
    missing = object()
    diffs = [f"{k}: {_show(a.get(k, missing))} in the run, {_show(b.get(k, missing))} given"
             for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]
    if not diffs:
        return "(no field differs in value; the run was written by another version)"
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict flattened to dotted keys (lists are leaves: ``distill.ipc: [1, 5]``)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _show(value: Any) -> str:
    if value.__class__ is object:
        return "(absent)"
    return json.dumps(value, default=str)


def _run_folder(recipe, run_dir: str | Path | None, resume: str | Path | None) -> Path:
    """The folder a distill call writes into (created): the run it resumes, the ``run_dir`` given, or a
    new ``<runs_dir>/<name>/<id>``."""
    if resume is not None:
        return open_run_dir(resume).path  # a UserError when it is no run directory
    folder = new_run_path(recipe) if run_dir is None else Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--run-dir {folder}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open_run(recipe, folder: Path, resume: str | Path | None, argv: list[str] | None) -> RunDir:
    """The run in ``folder`` with this recipe and a fresh manifest, checked again under the run's lock: a
    resumed run must hold the same recipe; a new run never goes into a folder that holds another one (its
    old sets would mix with the new)."""
    _check_folder(recipe, folder if resume is None else None, folder if resume is not None else None)
    return create_run_dir(recipe, stage="distill", run_dir=folder, argv=argv,
                          extra_manifest={"resumed": resume is not None})


@dataclass
class _Chain:
    """What every Boost-DD stage of one distill call shares: the run, the data, the students and method."""

    recipe: Any
    run: RunDir
    X_train: Any  # (n, d) on device; at the token level TokenRows: ids, masks (n, T)
    y_train: "torch.Tensor"  # (n,)
    X_val: Any  # (m, d), or TokenRows (m, T)
    y_val: "torch.Tensor"  # (m,)
    num_classes: int
    students: list  # (plugin name, build_student, options as JSON) per architecture of `distill.students`
    labels: list[str]  # their unique labels (`mlp`, `mlp#2`)
    method: Method  # one instance per student wrapped in PerStudent when there are several
    val_budget: Any  # TrainBudget of the eval protocol: each validation student's training
    val_seeds: list[int]
    meta_common: dict  # what every saved set of this run records
    cache: Any  # VerifiedCache of the methods, keyed by the training data (each stage adds its student)
    device: Any
    quiet: bool
    tokens: Any = None  # token level: the TokenSpace of the student (its initial model, head pool, attention labels)

    @property
    def level(self) -> str:
        return "vectors" if self.tokens is None else "tokens"

    @classmethod
    def build(cls, recipe, run: RunDir, embeddings, *, quiet: bool) -> "_Chain":
        """Students (`distill.students`, default the recipe's student), the method (one instance per student
        when there are several: PerStudent averages their outer steps), the validation budget (the eval
        protocol, scored on val)."""
        ds, registry = recipe.distill, get_registry()
        device = resolve_device(ds.device, field="distill.device")
        tokens = getattr(embeddings, "level", "vectors") == "tokens"
        X_train, y_train, X_val, y_val, d = _real_rows(recipe, embeddings, device)
        C = int(embeddings.num_classes)
        check_ipc_fits(embeddings, max(ds.ipc), "distill.ipc")

        sections = list(ds.students or [recipe.student])
        students = [(sec.name, student_builder(recipe, d, C, sec), sec.model_dump(mode="json")) for sec in sections]
        method = registry.build("method", ds.method)
        if len(students) > 1:
            method = PerStudent([method] + [registry.build("method", ds.method) for _ in students[1:]], students)
        method.name = ds.method.name
        fingerprint = getattr(embeddings, "fingerprint", None)
        meta_common = {
            "recipe_name": recipe.name, "recipe_fingerprint": recipe.fingerprint(),
            "embedding_fingerprint": fingerprint,
            "label_names": list(embeddings.label_names), "student": recipe.student.name,
            "distilled_with": "+".join(sec.name for sec in sections),  # `mlp+transformer`; one student: its name
            "distill_students": [options for _, _, options in students],
            "method": ds.method.name, **_method_meta(ds.method), "run_dir": str(run.path),
        }
        space = None
        if tokens:
            space, token_meta = _token_space(recipe, students[0][1], method, device, embeddings,
                                             seq_len=int(X_train.shape[1]))
            meta_common.update(token_meta)
        return cls(recipe=recipe, run=run, X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val, tokens=space,
                   num_classes=C, students=students, labels=student_labels([sec.name for sec in sections]),
                   method=method, val_budget=TrainBudget.from_eval(recipe.eval),
                   val_seeds=derive_val_seeds(recipe.seed, ds.outer.val_seeds), meta_common=meta_common,
                   cache=_method_cache(embeddings, X_train, y_train, quiet=quiet), device=device, quiet=quiet)

    def say(self, message: str) -> None:
        """A status line on stderr (silent with quiet)."""
        if not self.quiet:
            info(message)

    def set_path(self, ipc: int) -> Path:
        return self.run.distilled / f"ipc{ipc}.safetensors"


def _finished_stage(chain: _Chain, ipc: int, *, stage: int | None, resume) -> SyntheticSet | None:
    """The stage's set when a resumed run finished it already (it is reused as it is); None when it is to
    be distilled. With ``--stage``, a stage before the one asked for must be finished (a UserError)."""
    set_path, run = chain.set_path(ipc), chain.run
    if resume is not None and set_path.exists():
        done = SyntheticSet.load(set_path)
        if done.meta.get("recipe_fingerprint") == chain.recipe.fingerprint() and done.meta.get("complete"):
            chain.say(f"stage ipc={ipc}: already finished in {run.path}, reusing {set_path.name}")
            return done
    if stage is not None and ipc < stage:
        if set_path.exists():
            raise UserError(f"--stage {stage}: {set_path} was made from another recipe (its recipe_fingerprint "
                            f"differs), so stage ipc={stage} cannot start from it; rerun the chain from ipc={ipc} "
                            f"in a new run directory")
        raise UserError(f"--stage {stage}: the earlier stage ipc={ipc} is not finished in {run.path}; run it "
                        f"first (`distillctl distill RECIPE --resume {run.path} --stage {ipc}`)")
    return None


@dataclass
class _Stage:
    """One Boost-DD stage in progress: its set, its outer optimiser and where its loop is."""

    index: int  # 0-based position in distill.ipc
    ipc: int
    hard: "torch.Tensor"  # (ipc*C,) class of each row, class-major
    gen: "torch.Generator"  # every random draw of the stage (saved in each checkpoint)
    learn: Learnables  # leaves: x (ipc*C, d), label_logits (ipc*C, C) or None, log_lr () or None
    inherited: "torch.Tensor"  # (ipc*C,) bool: rows warm-started from the previous stage (damped by beta)
    opt: Any  # torch.optim.Optimizer over learn, one param group per tensor
    base_lrs: list[float]  # each group's lr before the schedule
    loop: checkpoints.LoopState
    t0: float = 0.0  # perf_counter at the stage's start (moved back by the time of earlier runs on resume)
    mask: "torch.Tensor | None" = None  # token level: (ipc*C, T) the synthetic sequences' attention mask
    last_ckpt: Path | None = None  # the newest checkpoint written or resumed from

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, chain: _Chain, **record) -> None:
        chain.run.log(stage=self.index, ipc=self.ipc, **record)


def _distill_stage(chain: _Chain, si: int, ipc: int, previous: SyntheticSet | None, *, resume: bool,
                   current: dict | None = None) -> SyntheticSet:
    """One Boost-DD stage: set up (or resume) its set, run the shared outer loop, save its best set on `val`.

    The outer loop (steps 7a-7g), for every method::

        real batch (B, d) -> method.step -> outer loss, meta-gradient -> clip at clip x EMA(norms)
        -> outer Adam/SGD at the scheduled lr -> damp inherited rows by beta -> validate / keep best
        -> checkpoint
    """
    import torch

    ds, method, run = chain.recipe.distill, chain.method, chain.run
    st = _start_stage(chain, si, ipc, previous, resume=resume)  # 5.-6. set, optimiser, checkpoint, first val
    if current is not None:
        current["stage"] = st  # where an interrupt stopped the run (distill's message)
    loop, learn, gen, iters = st.loop, st.learn, st.gen, ds.outer.iterations
    last_loss, stopped = float("nan"), None
    damp = bool(st.inherited.any()) and ds.boost.beta < 1
    # 7. The outer loop.
    with progress(f"distill ipc={ipc}", iters, unit="step", quiet=chain.quiet) as bar:
        bar.advance(loop.step)
        for step in range(loop.step + 1, iters + 1):
            # 7a. Stop early: out of time, or `patience` validations in a row without a better set.
            stopped = _stop_reason(ds.outer, loop, st.elapsed())
            if stopped:
                st.log(chain, step=step - 1, event="stopped", reason=stopped)
                chain.say(f"stage ipc={ipc}: stopping after {step - 1} steps ({stopped})")
                break
            # 7b. A real batch from train (without replacement within the step).
            n = chain.X_train.shape[0]
            idx = torch.randperm(n, generator=gen)[: min(ds.outer.real_batch, n)].to(chain.device)  # (B,)
            # 7c. The method's outer loss and its gradient w.r.t. every learnable tensor.
            out = method.step(learn, chain.X_train[idx], chain.y_train[idx], gen)  # grads: like learn
            out.check(learn, ds.method.name)
            norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in out.grads.values()))
            if not (math.isfinite(out.loss) and math.isfinite(norm)):
                st.log(chain, step=step, event="non-finite", loss=out.loss, grad_norm=norm)
                raise _non_finite(chain, st, step, out.loss, norm)
            # 7d. Clip at clip x EMA of past norms (the EMA follows the clipped norms, so one
            #     spike cannot raise the threshold for the steps after it).
            scale = _clip_scale(ds.outer, loop, norm)
            # 7e. Outer step (lr from the schedule: a function of the step only, so resume needs no
            #     scheduler state), then Boost-DD: inherited rows move by beta x their update.
            factor = _schedule_factor(ds.outer.schedule, step, iters)
            for group, base in zip(st.opt.param_groups, st.base_lrs):
                group["lr"] = base * factor
            before = {k: v.detach().clone() for k, v in learn.items() if damp and k != "log_lr"}
            for k, p in learn.items():
                p.grad = out.grads[k] * scale
            st.opt.step()
            st.opt.zero_grad(set_to_none=True)
            if damp:
                rows = st.inherited  # (ipc*C,)
                with torch.no_grad():
                    for k, old in before.items():
                        p = getattr(learn, k)
                        p[rows] = old[rows] + ds.boost.beta * (p[rows] - old[rows])
            last_loss = out.loss
            record = {"step": step, "loss": round(out.loss, 6), "real_accuracy": round(out.accuracy, 4),
                      "grad_norm": norm, "clip_scale": scale, **out.metrics, "elapsed": round(st.elapsed(), 3)}
            if learn.log_lr is not None:
                record["inner_lr"] = float(learn.log_lr.detach().exp())
            # 7f. Every val_every steps: validate on `val` and keep the best set (the test split is never
            #     looked at); the step's record is logged with the result.
            if step % ds.outer.val_every == 0 or step == iters:
                _validate(chain, st, step, record)
            else:
                st.log(chain, **record)
            bar.advance(1, loss=out.loss, val=loop.best_acc)
            # 7g. Checkpoint (atomic; newest keep_checkpoints kept).
            loop.step, loop.elapsed = step, st.elapsed()
            if step % ds.outer.ckpt_every == 0:
                st.last_ckpt = checkpoints.save(
                    run.checkpoints, ipc=ipc, stage=si, loop=loop, learn=learn, optimizer=st.opt, generator=gen,
                    method_state=method.state_dict(), fingerprint=chain.recipe.fingerprint(),
                    keep=ds.outer.keep_checkpoints)
    # 8. A stage stopped between validations (max_seconds) is validated once more; then its best set is saved.
    if loop.last_val_step != loop.step:
        _validate(chain, st, loop.step, {"step": loop.step})
    return _save_best(chain, st, last_loss, stopped)


def _start_stage(chain: _Chain, si: int, ipc: int, previous: SyntheticSet | None, *, resume: bool) -> _Stage:
    """Steps 5-6 of a stage: the method told about the stage; the stage's set (the previous stage's best
    rows first in each class block (Boost-DD), then new rows drawn from real vectors of that class, or
    random); its optimiser; then either this stage's newest checkpoint (exactly where it stopped) or the
    initial set's validation (the start of the accuracy-vs-time curve)."""
    import torch

    recipe, ds, run, method, C = chain.recipe, chain.recipe.distill, chain.run, chain.method, chain.num_classes
    # 5. The method, told about the stage; the stage's set and optimiser.
    gen = torch.Generator().manual_seed(stage_seed(recipe.seed, si))
    hard = torch.arange(C, device=chain.device).repeat_interleave(ipc)  # (ipc*C,) class-major
    name, build, options = chain.students[0]
    context = MethodContext(
        build_student=build, student_name=name, students=list(chain.labels), num_classes=C, ipc=ipc,
        hard_labels=hard, x_train=chain.X_train, y_train=chain.y_train, inner=ds.inner,
        eval_budget=chain.val_budget, device=chain.device, seed=recipe.seed, soft_labels=ds.soft_labels,
        cache=chain.cache.keyed(student=options), say=chain.say)
    mask = None
    if chain.tokens is None:
        method.setup(context)
        learn, inherited = _initial_learnables(ds, chain.X_train, chain.y_train, C, ipc, previous, gen,
                                               lr0=method.learned_inner_lr(ds.inner))  # inherited: (ipc*C,)
    else:  # token level: the set first (its mask is part of what the method is told about)
        learn, inherited, mask = _initial_token_learnables(chain, ipc, previous, gen,
                                                           lr0=method.learned_inner_lr(ds.inner))
        context.level, context.tokens = "tokens", chain.tokens.for_stage(mask)
        method.setup(context)
    opt, base_lrs = _outer_optimizer(learn, ds.outer)
    st = _Stage(index=si, ipc=ipc, hard=hard, gen=gen, learn=learn, inherited=inherited, opt=opt,
                base_lrs=base_lrs, loop=checkpoints.LoopState(), mask=mask)

    # 6. Fresh stage, or continue from this stage's newest checkpoint (exactly where it stopped).
    st.last_ckpt = checkpoints.newest(run.checkpoints, ipc) if resume else None
    if st.last_ckpt is not None:
        ckpt = checkpoints.load(st.last_ckpt, chain.device)
        st.loop = checkpoints.restore(ckpt, learn, opt, gen)
        method.load_state_dict(ckpt.method)
        chain.say(f"stage ipc={ipc}: resuming at outer step {st.loop.step} from {st.last_ckpt.name}")
    _truncate_metrics(run, si, st.loop.step if st.last_ckpt is not None else -1)
    st.t0 = time.perf_counter() - st.loop.elapsed
    if st.last_ckpt is None:  # the initial set's validation: the start of the accuracy-vs-time curve
        _validate(chain, st, 0, {"step": 0})
    return st


def _validate(chain: _Chain, st: _Stage, step: int, record: dict) -> None:
    """Validate the stage's current set, keep it when it is the best so far, and log ``record`` with the result.

    Validation: fresh students trained on the set with the eval budget, scored on `val`; the score is the
    mean over the seeds of each student architecture, then over the architectures (per architecture in
    ``val_by_student`` when there are several). Counts the validations since the last improvement (for
    `patience`). Its wall time is added to ``loop.val_seconds``, so the metrics can tell the method's own
    time from the time spent validating (the same for every method).
    """
    loop, learn = st.loop, st.learn
    t0 = time.perf_counter()
    x, y = learn.x.detach(), learn.labels(st.hard).detach()  # (ipc*C, d), (ipc*C,) or (ipc*C, C)
    if chain.tokens is not None:  # token level: the initial model fine-tuned on the set, scored on val rows
        by_student = {chain.labels[0]: _validate_tokens(chain, st)}
    else:
        by_student = {}
        for label, (_, build, _) in zip(chain.labels, chain.students):
            scores = training.train_and_score(build, x, y, chain.X_val, chain.y_val, seeds=chain.val_seeds,
                                              budget=chain.val_budget, num_classes=chain.num_classes, quiet=True)
            by_student[label] = float(sum(scores.accuracy) / len(scores.accuracy))
    loop.val_seconds += time.perf_counter() - t0
    acc = sum(by_student.values()) / len(by_student)
    if loop.best is None or acc > loop.best_acc:  # the stage's first validation always sets the best
        loop.best_acc, loop.best_step, loop.best = acc, step, learn.detached()
        loop.stale_validations = 0
    else:
        loop.stale_validations += 1
    loop.last_val_step = step
    record.update(val_accuracy=acc, best_val_accuracy=loop.best_acc)
    if len(by_student) > 1:
        record["val_by_student"] = by_student
    record.update(elapsed=round(st.elapsed(), 3), val_seconds=round(loop.val_seconds, 3))
    st.log(chain, **record)


def _real_rows(recipe, embeddings, device) -> tuple:
    """(X_train, y_train, X_val, y_val, d) on ``device``: vectors ``(n, d)`` float32, or at the token level
    :class:`~distillctl.distillation.tokens.TokenRows` (ids and masks ``(n, T)``; the student embeds them, its
    hidden size d is the input width) with a fixed draw of ``distill.tokens.val_rows`` rows of val."""
    import torch

    train, val = split_of(embeddings, "train"), split_of(embeddings, "val")
    y_train, y_val = train.y.to(device), val.y.to(device)  # (n,), (m,)
    if getattr(embeddings, "level", "vectors") != "tokens":
        X_train = train.X.to(device, torch.float32)  # (n, d)
        X_val = val.X.to(device, torch.float32)  # (m, d)
        return X_train, y_train, X_val, y_val, int(X_train.shape[1])
    X_train, X_val = TokenRows.of(train).to(device), TokenRows.of(val).to(device)
    keep = fixed_val_rows(len(X_val), recipe.distill.tokens.val_rows, recipe.seed)  # (val_rows,) or None
    if keep is not None:
        keep = keep.to(device)
        X_val, y_val = X_val[keep], y_val[keep]
    return X_train, y_train, X_val, y_val, int(embeddings.dim)


def _row_tensors(X) -> tuple:
    """The tensors behind the real rows: ``(X,)``, or a TokenRows' ids, mask (and token types)."""
    if hasattr(X, "ids"):
        return tuple(t for t in (X.ids, X.mask, X.types) if t is not None)
    return (X,)


def _token_space(recipe, build, method, device, embeddings, *, seq_len: int) -> tuple[Any, dict]:
    """Token level: the :class:`~distillctl.distillation.tokens.TokenSpace` (the student built once under
    ``init_seed``: the initial model every stage fine-tunes, and its head pool) and what every saved set
    records about it."""
    ds, tk = recipe.distill, recipe.distill.tokens
    init_seed = token_init_seed(recipe.seed) if tk.init_seed is None else tk.init_seed
    space = TokenSpace.build(build, init_seed=init_seed, head_pool=tk.head_pool, attention=tk.attention_labels,
                             attention_weight=tk.attention_weight, device=device, head_first=tk.head_first)
    meta = dict(level="tokens", init_seed=init_seed, head_seeds=space.head_seeds, head_first=tk.head_first,
                seq_len=seq_len,
                student_source=getattr(space.module, "source", None), inner_steps=_inner_steps(method),
                inner=ds.inner.model_dump(mode="json"), attention_labels=tk.attention_labels,
                attention_weight=tk.attention_weight, token_mask=tk.mask,
                tokenizer=dict(getattr(embeddings, "tokens", None) or {}))
    return space, meta


def _validate_tokens(chain: _Chain, st: _Stage) -> float:
    """Token level: the val accuracy of the initial model fine-tuned on the set for the method's inner steps
    (the mean over the first ``outer.val_seeds`` heads of the pool when ``distill.tokens.head_pool`` > 1)."""
    ds, space = chain.recipe.distill, chain.tokens.for_stage(st.mask)
    heads = space.head_seeds[: ds.outer.val_seeds] if len(space.head_seeds) > 1 else space.head_seeds[:1]
    accs = finetune_and_score(space, st.learn.detached().as_dict(), st.hard.cpu(), chain.num_classes,
                              InnerSteps.from_settings(ds.inner), _inner_steps(chain.method), chain.X_val,
                              chain.y_val, seeds=heads)
    return float(sum(accs) / len(accs))


def _save_best(chain: _Chain, st: _Stage, last_loss: float, stopped: str | None) -> SyntheticSet:
    """Save the stage's best set on `val` (with where and why it stopped early; None: it ran all its
    iterations) and record its digest in the run's manifest."""
    ds, loop, best = chain.recipe.distill, st.loop, st.loop.best
    wall = st.elapsed()
    attention = None
    if best.attention_logits is not None:  # saved as target probabilities (masked keys 0)
        attention = attention_targets(best.attention_logits, st.mask).cpu()
    syn = SyntheticSet(
        x=best.x.cpu(), labels=best.labels(st.hard).cpu(), ipc=st.ipc, num_classes=chain.num_classes,
        inner_lr=float(best.log_lr.exp()) if best.log_lr is not None else None,
        mask=None if st.mask is None else st.mask.cpu(), attention_labels=attention,
        meta={**chain.meta_common, "stage": st.index, "ipc_chain": list(ds.ipc), "outer_step": loop.best_step,
              "outer_steps_run": loop.step, "val_accuracy": loop.best_acc,
              "val_seeds": chain.val_seeds, "val_budget": chain.val_budget.as_dict(), "boost_beta": ds.boost.beta,
              "wall_seconds": round(wall, 3), "val_seconds": round(loop.val_seconds, 3),
              "last_loss": last_loss, "stopped": stopped and {"step": loop.step, "reason": stopped},
              "complete": True},
    )
    set_path = chain.set_path(st.ipc)
    syn.save(set_path)
    record_set(chain.run, set_path, syn.sha256)  # manifest.json: the digest SyntheticSet.load checks
    chain.say(f"stage ipc={st.ipc}: best val accuracy {loop.best_acc:.4f} at outer step {loop.best_step} "
              f"of {loop.step} ({wall:.1f} s) -> {set_path}")
    return syn


def _stop_reason(outer, loop: checkpoints.LoopState, elapsed: float) -> str | None:
    """Why the stage stops before its next step (out of time, or out of patience), or None."""
    if outer.max_seconds and elapsed > outer.max_seconds:
        return f"max_seconds: {outer.max_seconds:g} s reached"
    if outer.patience and loop.stale_validations >= outer.patience:
        return f"patience: {loop.stale_validations} validations without improvement since step {loop.best_step}"
    return None


def _clip_scale(outer, loop: checkpoints.LoopState, norm: float) -> float:
    """The factor on this step's meta-gradient (clip at clip x EMA of past norms); updates the EMA with the
    clipped norm."""
    scale = 1.0
    if outer.clip > 0 and loop.ema is not None and norm > outer.clip * loop.ema:
        scale = outer.clip * loop.ema / norm
    clipped = norm * scale
    loop.ema = clipped if loop.ema is None else outer.clip_ema * loop.ema + (1 - outer.clip_ema) * clipped
    return scale


def _non_finite(chain: _Chain, st: _Stage, step: int, loss: float, norm: float) -> RunError:
    """The error of an outer step whose loss or meta-gradient is not finite: where to resume from."""
    where = f"last good checkpoint: {st.last_ckpt}" if st.last_ckpt else "no checkpoint was written yet"
    return RunError(
        f"stage ipc={st.ipc}, outer step {step}: the outer loss is {loss} and the meta-gradient norm "
        f"{norm} (not finite); {where}. Lower distill.outer.lr or distill.inner.lr, then "
        f"`distillctl distill RECIPE --resume {chain.run.path}`")


# -- helpers (each used once above; kept apart so the loop reads top to bottom) --------------------

def _schedule_factor(schedule: str, step: int, iterations: int) -> float:
    """Multiplier of the outer lr at outer step ``step`` (1-based) of ``iterations``."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - 1) / iterations))
    return 1.0


def _method_meta(section) -> dict:
    """The method's options as recorded with each saved set (bptt's unroll among them)."""
    options = section.model_dump(mode="json")
    return {"method_options": {k: v for k, v in options.items() if k != "name"}}


def _method_cache(embeddings, X_train: "torch.Tensor", y_train: "torch.Tensor", *, quiet: bool):
    """The methods' VerifiedCache, keyed by what their cached files derive from: the embedding cache entry, or
    a library caller's tensors (each stage adds its student)."""
    from distillctl.toolbox import VerifiedCache  # imports torch

    data = getattr(embeddings, "fingerprint", None) or "tensors:" + sha256_of(
        b"".join(t.detach().cpu().numpy().tobytes() for t in (*_row_tensors(X_train), y_train)))
    return VerifiedCache(_method_cache_dir(), {"data": data}, say=(lambda m: None) if quiet else info)


def _method_cache_dir() -> Path:
    """Where methods keep verified derived files (MTT experts), beside the embedding cache."""
    return methods_dir()


def _initial_learnables(ds, X: "torch.Tensor", y: "torch.Tensor", C: int, ipc: int, previous,
                        gen: "torch.Generator", lr0: float | None) -> tuple[Learnables, "torch.Tensor"]:
    """The stage's starting learnables (leaves) and the (ipc*C,) mask of rows inherited from ``previous``.

    ``lr0``: the start of a learned inner lr (None: not learned); a previous stage's learned lr wins.
    """
    import torch

    device, d = X.device, X.shape[1]
    old_ipc = previous.ipc if previous is not None else 0
    x0 = _initial_rows(X, y, C, ipc, old_ipc, ds.init, gen)  # (C, ipc, d)
    inherited = torch.zeros(C, ipc, dtype=torch.bool, device=device)  # rows damped by beta
    if previous is not None:
        x0[:, :old_ipc] = previous.x.to(device).view(C, old_ipc, d)
        inherited[:, :old_ipc] = True
    label_logits, log_lr = _initial_labels_and_lr(ds, C, ipc, previous, device, lr0)
    learn = Learnables(x=x0.reshape(C * ipc, d), label_logits=label_logits, log_lr=log_lr).as_leaves()
    return learn, inherited.reshape(-1)


def _initial_labels_and_lr(ds, C: int, ipc: int, previous, device, lr0: float | None):
    """(ipc*C, C) soft-label logits (or None) and the () log inner lr (or None) a stage starts from: labels
    with SOFT_LABEL_INIT_CONFIDENCE on the row's class, the previous stage's for inherited rows; a previous
    stage's learned lr wins over ``lr0``."""
    import torch

    old_ipc = previous.ipc if previous is not None else 0
    label_logits = log_lr = None
    if ds.soft_labels:
        off = (1 - SOFT_LABEL_INIT_CONFIDENCE) / max(C - 1, 1)
        probs = torch.full((C, ipc, C), off, device=device)
        probs.scatter_(2, torch.arange(C, device=device).view(C, 1, 1).expand(C, ipc, 1),
                       SOFT_LABEL_INIT_CONFIDENCE if C > 1 else 1.0)
        if previous is not None:  # carry learned (or hard) labels of the inherited rows
            prev = previous.labels.to(device)
            prev = prev.float() if previous.soft else torch.nn.functional.one_hot(prev, C).float()
            probs[:, :old_ipc] = prev.view(C, old_ipc, C).clamp_min(1e-12)
        label_logits = probs.log().reshape(C * ipc, C)  # softmax(log p) = p
    if lr0 is not None:
        lr0 = previous.inner_lr if previous is not None and previous.inner_lr else lr0
        log_lr = torch.tensor(math.log(lr0), device=device)
    return label_logits, log_lr


def _initial_token_learnables(chain: _Chain, ipc: int, previous, gen: "torch.Generator", lr0: float | None):
    """Token level: the stage's starting learnables (leaves), the (ipc*C,) inherited-row mask and the
    (ipc*C, T) attention mask of the sequences.

    New rows are the input embeddings of distinct random real texts of their class (with their masks, or
    all-ones with ``distill.tokens.mask: full``); a previous stage's rows come first in each class block.
    Attention labels start at the initial model's own attention on the rows (the previous stage's for
    inherited rows).
    """
    import torch

    ds, C, space = chain.recipe.distill, chain.num_classes, chain.tokens
    old_ipc = previous.ipc if previous is not None else 0
    x0, mask, _ = initial_rows(space, chain.X_train, chain.y_train, C, ipc, gen,
                               full_mask=ds.tokens.mask == "full")  # (ipc*C, T, d), (ipc*C, T)
    T, d = x0.shape[1], x0.shape[2]
    x0, mask = x0.view(C, ipc, T, d), mask.view(C, ipc, T)
    inherited = torch.zeros(C, ipc, dtype=torch.bool, device=chain.device)
    if previous is not None:
        x0[:, :old_ipc] = previous.x.to(x0).view(C, old_ipc, T, d)
        mask[:, :old_ipc] = previous.mask.to(mask).view(C, old_ipc, T)
        inherited[:, :old_ipc] = True
    x0, mask = x0.reshape(C * ipc, T, d), mask.reshape(C * ipc, T)
    label_logits, log_lr = _initial_labels_and_lr(ds, C, ipc, previous, chain.device, lr0)
    attention = None
    if space.attention != "none":
        attention = initial_attention(space.for_stage(mask), x0, mask)  # (ipc*C, L, H, Q, T)
        if previous is not None and previous.attention_labels is not None:
            shape = attention.shape[1:]
            old = previous.attention_labels.to(attention).clamp_min(1e-6).log().view(C, old_ipc, *shape)
            attention = attention.view(C, ipc, *shape)
            attention[:, :old_ipc] = old
            attention = attention.reshape(C * ipc, *shape)
    learn = Learnables(x=x0, label_logits=label_logits, log_lr=log_lr, attention_logits=attention).as_leaves()
    return learn, inherited.reshape(-1), mask


def _inner_steps(method) -> int:
    """Inner fine-tuning steps of the method (validation fine-tunes for as many): its ``inner_steps``, else 1."""
    return int(getattr(method, "inner_steps", None) or 1)


def _outer_optimizer(learn: Learnables, outer) -> tuple["torch.optim.Optimizer", list[float]]:
    """Adam / SGD over the learnables, one param group each (labels and inner lr may have their own lr)."""
    import torch

    lrs = {"x": outer.lr, "label_logits": outer.label_lr or outer.lr, "log_lr": outer.lr_lr or outer.lr,
           "attention_logits": outer.lr}
    groups = [{"params": [p], "lr": lrs[k]} for k, p in learn.items()]
    if outer.optimizer == "adam":
        opt = torch.optim.Adam(groups, betas=tuple(outer.betas))
    else:
        opt = torch.optim.SGD(groups, momentum=outer.momentum)
    return opt, [g["lr"] for g in groups]


def _initial_rows(X: "torch.Tensor", y: "torch.Tensor", C: int, ipc: int, skip: int, init: str,
                  gen: "torch.Generator") -> "torch.Tensor":
    """(C, ipc, d) starting rows; rows ``[:, :skip]`` are overwritten by the inherited set afterwards.

    ``real``: distinct random training vectors of each class; ``mean``: each row the mean of one of ipc
    random equal parts of the class (the class mean at ipc 1); ``random``: Gaussian with the training
    set's per-dimension mean and std.
    """
    import torch

    d = X.shape[1]
    out = torch.empty(C, ipc, d, device=X.device)
    if init == "random":
        mean, std = X.mean(0), X.std(0)
        return mean + std * torch.randn(C, ipc, d, generator=gen).to(X.device)
    for c in range(C):
        rows = (y == c).nonzero().squeeze(1).cpu()  # (n_c,)
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        if init == "mean":  # row j = mean of the j-th of ipc random equal parts of the class
            out[c] = torch.stack([X[part.to(X.device)].mean(0) for part in rows.tensor_split(ipc)])
        else:
            out[c] = X[rows[:ipc].to(X.device)]
    return out


def _truncate_metrics(run, stage: int, keep_through_step: int) -> None:
    """Drop metrics of this stage after the step being resumed from (and of later stages).

    Records of the step resumed from that came after its checkpoint (an early-stop event, the final
    validation of a stopped stage: they carry no ``loss``) are dropped too: the resumed stage logs them
    again.
    """
    if not run.metrics.exists():
        return
    records = read_jsonl(run.metrics)
    kept = [r for r in records if not ("stage" in r and (r["stage"] > stage or (r["stage"] == stage and (
        r.get("step", 0) > keep_through_step or (r.get("step", 0) == keep_through_step and "loss" not in r)))))]
    if len(kept) != len(records):
        atomic_write_text(run.metrics, "".join(json.dumps(r, default=str) + "\n" for r in kept))

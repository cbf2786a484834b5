"""``distill``: learn a few synthetic embedding vectors per class with any distillation method.

:func:`distill` reads top to bottom: run directory, embeddings, student and method, then for each
Boost-DD stage (``distill.ipc: [1, 5, 10]``) the one outer loop every method shares::

    real batch -> Method.step (bptt: unroll K fresh students; krr: closed-form ridge; dm; mtt; ...)
    -> outer loss and meta-gradient -> clip at clip x EMA(norms) -> outer Adam/SGD (lr schedule)
    -> damp inherited rows by beta -> every val_every: fresh students trained on the set, scored on
    `val`, keep the best -> every ckpt_every: atomic checkpoint (learnables, optimiser, EMA, generator,
    best set, the method's state)

The test split is never touched here. Everything random in a stage flows from one ``torch.Generator``
seeded by (recipe.seed, stage), saved in every checkpoint, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from distillctl.errors import RunError, UserError
from distillctl.methods import Learnables
from distillctl.plugins import with_registry
from distillctl.runs import holds_run_lock
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


def _distill_run_dir(args: tuple, kwargs: dict) -> Path:
    """The folder a distill call writes into (locked for the whole call): the run it resumes, the
    ``run_dir`` given, or a new ``<runs_dir>/<name>/<id>`` (then passed on as ``run_dir``)."""
    from distillctl.runs import new_run_path, open_run_dir

    if kwargs.get("resume") is not None:
        return open_run_dir(kwargs["resume"]).path  # a UserError when it is no run directory
    if kwargs.get("run_dir") is None:
        kwargs["run_dir"] = new_run_path(args[0] if args else kwargs["recipe"])
    elif Path(kwargs["run_dir"]).exists() and not Path(kwargs["run_dir"]).is_dir():
        raise UserError(f"--run-dir {kwargs['run_dir']}: not a folder")
    Path(kwargs["run_dir"]).mkdir(parents=True, exist_ok=True)
    return Path(kwargs["run_dir"])


@with_registry  # registry=: run with that plugin registry (default: get_registry())
@holds_run_lock("distill", _distill_run_dir)  # one distill per run directory; refused with the holder's PID
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
    import torch

    from distillctl.distillation import checkpoints
    from distillctl.console import info, is_quiet, progress
    from distillctl.devices import resolve_device
    from distillctl.methods import MethodContext, PerStudent, student_labels
    from distillctl.plugins import get_registry
    from distillctl.runs import create_run_dir, open_run_dir, record_set, refuse_existing_run
    from distillctl.seeds import stage_seed, val_seeds as derive_val_seeds
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    quiet = is_quiet() if quiet is None else quiet
    say = (lambda message: None) if quiet else info  # status lines on stderr
    registry = get_registry()
    ds = recipe.distill
    fingerprint = recipe.fingerprint()
    if stage is not None and stage not in ds.ipc:
        raise UserError(f"--stage {stage}: not a stage of distill.ipc {list(ds.ipc)}")

    # 1. The run directory: a new one, the one given, or the one being resumed (same recipe only).
    if resume is not None:
        old = open_run_dir(resume)
        stored = old.load_recipe()
        if stored.fingerprint() != fingerprint:
            diff = sorted(k for k in stored.to_dict() if stored.to_dict()[k] != recipe.to_dict().get(k))
            raise UserError(f"{resume}: cannot resume: the recipe differs from the run's recipe.resolved.yaml "
                            f"(sections: {', '.join(diff) or '?'}); resume with the same recipe and --set values")
        run_dir = old.path
    else:  # a new run: never into a folder that holds another one (its old sets would mix with the new)
        refuse_existing_run(run_dir)
    run = create_run_dir(recipe, stage="distill", run_dir=run_dir, argv=argv,
                         extra_manifest={"resumed": resume is not None})

    # 2. Embeddings (embedded first when the cache is missing); train for batches, val for selection.
    if embeddings is None:
        from distillctl.data.embed import load_embeddings

        embeddings = load_embeddings(recipe, quiet=quiet)
    from distillctl.evaluation.evaluate import check_ipc_fits, split_of

    device = resolve_device(ds.device, field="distill.device")
    train, val = split_of(embeddings, "train"), split_of(embeddings, "val")
    X_train, y_train = train.X.to(device, torch.float32), train.y.to(device)  # (n, d), (n,)
    X_val, y_val = val.X.to(device, torch.float32), val.y.to(device)  # (m, d), (m,)
    C, d = int(embeddings.num_classes), int(X_train.shape[1])
    check_ipc_fits(embeddings, max(ds.ipc), "distill.ipc")

    # 3. Students (`distill.students`, default the recipe's student), method (one instance per student
    #    when there are several: PerStudent averages their outer steps), validation budget (the eval
    #    protocol, scored on val).
    sections = list(ds.students or [recipe.student])
    labels = student_labels([sec.name for sec in sections])
    students = [(sec.name, student_builder(recipe, d, C, sec), sec.model_dump(mode="json")) for sec in sections]
    method = registry.build("method", ds.method)
    if len(students) > 1:
        method = PerStudent([method] + [registry.build("method", ds.method) for _ in students[1:]], students)
    method.name = ds.method.name
    val_budget = TrainBudget.from_eval(recipe.eval)
    val_seeds = derive_val_seeds(recipe.seed, ds.outer.val_seeds)
    meta_common = {
        "recipe_name": recipe.name, "recipe_fingerprint": fingerprint,
        "embedding_fingerprint": getattr(embeddings, "fingerprint", None),
        "label_names": list(embeddings.label_names), "student": recipe.student.name,
        "distilled_with": "+".join(sec.name for sec in sections),  # `mlp+transformer`; one student: its name
        "distill_students": [options for _, _, options in students],
        "method": ds.method.name, **_method_meta(ds.method), "run_dir": str(run.path),
    }

    def validate(learn: Learnables, loop) -> tuple[float, dict[str, float]]:
        """Accuracy on `val` of fresh students trained on the current set with the eval budget: the mean
        over the seeds of each student architecture, then over the architectures; and per architecture.

        Its wall time is added to ``loop.val_seconds``: the metrics can then tell the method's own time
        from the time spent validating (the same for every method).
        """
        t0 = time.perf_counter()
        x, y = learn.x.detach(), learn.labels(hard).detach()
        by_student = {}
        for label, (_, build, _) in zip(labels, students):
            scores = train_and_score(build, x, y, X_val, y_val, seeds=val_seeds, budget=val_budget,
                                     num_classes=C, quiet=True)
            by_student[label] = float(sum(scores.accuracy) / len(scores.accuracy))
        loop.val_seconds += time.perf_counter() - t0
        return sum(by_student.values()) / len(by_student), by_student

    def val_record(acc: float, best: float, by_student: dict[str, float]) -> dict:
        """The metrics of one validation (per architecture only when there are several)."""
        out = {"val_accuracy": acc, "best_val_accuracy": best}
        return {**out, "val_by_student": by_student} if len(by_student) > 1 else out

    result = DistillResult(run_dir=run.path)
    previous: SyntheticSet | None = None
    for si, ipc in enumerate(ds.ipc):
        if stage is not None and ipc > stage:
            break  # later stages: left to later `--stage` calls
        # 4. A finished stage of a resumed run is reused as it is.
        set_path = run.distilled / f"ipc{ipc}.safetensors"
        if resume is not None and set_path.exists():
            done = SyntheticSet.load(set_path)
            if done.meta.get("recipe_fingerprint") == fingerprint and done.meta.get("complete"):
                say(f"stage ipc={ipc}: already finished in {run.path}, reusing {set_path.name}")
                result.sets.append({"ipc": ipc, "path": set_path, "val_accuracy": done.meta.get("val_accuracy")})
                previous = done
                continue
        if stage is not None and ipc < stage:
            if set_path.exists():
                raise UserError(f"--stage {stage}: {set_path} was made from another recipe (its recipe_fingerprint "
                                f"differs), so stage ipc={stage} cannot start from it; rerun the chain from ipc={ipc} "
                                f"in a new run directory")
            raise UserError(f"--stage {stage}: the earlier stage ipc={ipc} is not finished in {run.path}; run it "
                            f"first (`distillctl distill RECIPE --resume {run.path} --stage {ipc}`)")

        # 5. The method, told about the stage; then the stage's set: the previous stage's best rows first
        #    in each class block (Boost-DD), then new rows drawn from real vectors of that class (or random).
        gen = torch.Generator().manual_seed(stage_seed(recipe.seed, si))
        hard = torch.arange(C, device=device).repeat_interleave(ipc)  # (ipc*C,) class-major
        method.setup(MethodContext(
            build_student=students[0][1], student_name=students[0][0], student_options=students[0][2],
            students=list(labels), num_classes=C, ipc=ipc, hard_labels=hard,
            x_train=X_train, y_train=y_train, inner=ds.inner, eval_budget=val_budget, device=device,
            seed=recipe.seed, soft_labels=ds.soft_labels, embedding_fingerprint=getattr(embeddings, "fingerprint", None),
            cache_dir=_method_cache_dir(), say=say))
        learn, inherited = _initial_learnables(ds, X_train, y_train, C, ipc, previous, gen,
                                               lr0=method.learned_inner_lr(ds.inner))  # inherited: (ipc*C,)
        opt, base_lrs = _outer_optimizer(learn, ds.outer)

        # 6. Fresh stage, or continue from this stage's newest checkpoint (exactly where it stopped).
        loop = checkpoints.LoopState()
        ckpt_path = checkpoints.newest(run.checkpoints, ipc) if resume is not None else None
        if ckpt_path is not None:
            ckpt = checkpoints.load(ckpt_path, device)
            loop = checkpoints.restore(ckpt, learn, opt, gen)
            method.load_state_dict(ckpt.method)
            say(f"stage ipc={ipc}: resuming at outer step {loop.step} from {ckpt_path.name}")
        _truncate_metrics(run, si, loop.step if ckpt_path is not None else -1)
        t_stage = time.perf_counter() - loop.elapsed
        if ckpt_path is None:  # the initial set's validation: the start of the accuracy-vs-time curve
            acc, by_student = validate(learn, loop)
            loop.best_acc, loop.best_step, loop.best, loop.last_val_step = acc, 0, learn.detached(), 0
            run.log(stage=si, ipc=ipc, step=0, **val_record(acc, loop.best_acc, by_student),
                    elapsed=round(time.perf_counter() - t_stage, 3), val_seconds=round(loop.val_seconds, 3))

        # 7. The outer loop.
        iters = ds.outer.iterations
        last_loss, last_ckpt, stopped = float("nan"), ckpt_path, None
        damp = bool(inherited.any()) and ds.boost.beta < 1
        with progress(f"distill ipc={ipc}", iters, unit="step", quiet=quiet) as bar:
            bar.advance(loop.step)
            for step in range(loop.step + 1, iters + 1):
                # 7a. Stop early: out of time, or `patience` validations in a row without a better set.
                if ds.outer.max_seconds and time.perf_counter() - t_stage > ds.outer.max_seconds:
                    stopped = f"max_seconds: {ds.outer.max_seconds:g} s reached"
                elif ds.outer.patience and loop.stale_validations >= ds.outer.patience:
                    stopped = (f"patience: {loop.stale_validations} validations without improvement since "
                               f"step {loop.best_step}")
                if stopped:
                    run.log(stage=si, ipc=ipc, step=step - 1, event="stopped", reason=stopped)
                    say(f"stage ipc={ipc}: stopping after {step - 1} steps ({stopped})")
                    break
                # 7b. A real batch from train (without replacement within the step).
                n = X_train.shape[0]
                idx = torch.randperm(n, generator=gen)[: min(ds.outer.real_batch, n)].to(device)  # (B,)
                # 7c. The method's outer loss and its gradient w.r.t. every learnable tensor.
                out = method.step(learn, X_train[idx], y_train[idx], gen)
                out.check(learn, ds.method.name)
                norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in out.grads.values()))
                if not (math.isfinite(out.loss) and math.isfinite(norm)):
                    run.log(stage=si, ipc=ipc, step=step, event="non-finite", loss=out.loss, grad_norm=norm)
                    where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise RunError(
                        f"stage ipc={ipc}, outer step {step}: the outer loss is {out.loss} and the meta-gradient norm "
                        f"{norm} (not finite); {where}. Lower distill.outer.lr or distill.inner.lr, then "
                        f"`distillctl distill RECIPE --resume {run.path}`")
                # 7d. Clip at clip x EMA of past norms (the EMA follows the clipped norms, so one
                #     spike cannot raise the threshold for the steps after it).
                scale = 1.0
                if ds.outer.clip > 0 and loop.ema is not None and norm > ds.outer.clip * loop.ema:
                    scale = ds.outer.clip * loop.ema / norm
                clipped = norm * scale
                loop.ema = clipped if loop.ema is None else ds.outer.clip_ema * loop.ema + (1 - ds.outer.clip_ema) * clipped
                # 7e. Outer step (lr from the schedule: a function of the step only, so resume needs no
                #     scheduler state), then Boost-DD: inherited rows move by beta x their update.
                factor = _schedule_factor(ds.outer.schedule, step, iters)
                for group, base in zip(opt.param_groups, base_lrs):
                    group["lr"] = base * factor
                before = {k: v.detach().clone() for k, v in learn.items() if damp and k != "log_lr"}
                for k, p in learn.items():
                    p.grad = out.grads[k] * scale
                opt.step()
                opt.zero_grad(set_to_none=True)
                if damp:
                    with torch.no_grad():
                        for k, old in before.items():
                            p = getattr(learn, k)
                            p[inherited] = old[inherited] + ds.boost.beta * (p[inherited] - old[inherited])
                last_loss = out.loss
                elapsed = time.perf_counter() - t_stage
                record = {"stage": si, "ipc": ipc, "step": step, "loss": round(out.loss, 6),
                          "real_accuracy": round(out.accuracy, 4), "grad_norm": norm, "clip_scale": scale,
                          **out.metrics, "elapsed": round(elapsed, 3)}
                if learn.log_lr is not None:
                    record["inner_lr"] = float(learn.log_lr.detach().exp())
                # 7f. Validation on `val`: keep the best set (the test split is never looked at); count
                #     the validations since the last improvement (for `patience`).
                if step % ds.outer.val_every == 0 or step == iters:
                    acc, by_student = validate(learn, loop)
                    if acc > loop.best_acc:
                        loop.best_acc, loop.best_step, loop.best = acc, step, learn.detached()
                        loop.stale_validations = 0
                    else:
                        loop.stale_validations += 1
                    loop.last_val_step = step
                    record.update(**val_record(acc, loop.best_acc, by_student),
                                  elapsed=round(time.perf_counter() - t_stage, 3),
                                  val_seconds=round(loop.val_seconds, 3))
                run.log(**record)
                bar.advance(1, loss=out.loss, val=loop.best_acc)
                # 7g. Checkpoint (atomic; newest keep_checkpoints kept).
                loop.step, loop.elapsed = step, time.perf_counter() - t_stage
                if step % ds.outer.ckpt_every == 0:
                    last_ckpt = checkpoints.save(
                        run.checkpoints, ipc=ipc, stage=si, loop=loop, learn=learn, optimizer=opt, generator=gen,
                        method_state=method.state_dict(), fingerprint=fingerprint, keep=ds.outer.keep_checkpoints)

        # 8. A stage stopped between validations (max_seconds) is validated once more; then save its best
        #    set, with where and why it stopped early (None: it ran all its iterations).
        if loop.last_val_step != loop.step:
            acc, by_student = validate(learn, loop)
            if acc > loop.best_acc:
                loop.best_acc, loop.best_step, loop.best = acc, loop.step, learn.detached()
            run.log(stage=si, ipc=ipc, step=loop.step, **val_record(acc, loop.best_acc, by_student),
                    elapsed=round(time.perf_counter() - t_stage, 3), val_seconds=round(loop.val_seconds, 3))
        best = loop.best
        wall = time.perf_counter() - t_stage
        syn = SyntheticSet(
            x=best.x.cpu(), labels=best.labels(hard).cpu(), ipc=ipc, num_classes=C,
            inner_lr=float(best.log_lr.exp()) if best.log_lr is not None else None,
            meta={**meta_common, "stage": si, "ipc_chain": list(ds.ipc), "outer_step": loop.best_step,
                  "outer_steps_run": loop.step, "val_accuracy": loop.best_acc,
                  "val_seeds": val_seeds, "val_budget": val_budget.as_dict(), "boost_beta": ds.boost.beta,
                  "wall_seconds": round(wall, 3), "val_seconds": round(loop.val_seconds, 3),
                  "last_loss": last_loss, "stopped": stopped and {"step": loop.step, "reason": stopped},
                  "complete": True},
        )
        syn.save(set_path)
        record_set(run, set_path, syn.sha256)  # manifest.json: the digest SyntheticSet.load checks
        say(f"stage ipc={ipc}: best val accuracy {loop.best_acc:.4f} at outer step {loop.best_step} "
             f"of {loop.step} ({wall:.1f} s) -> {set_path}")
        result.sets.append({"ipc": ipc, "path": set_path, "val_accuracy": loop.best_acc})
        previous = syn
    return result


# -- helpers (each used once above; kept apart so the loop reads top to bottom) --------------------

def _schedule_factor(schedule: str, step: int, iterations: int) -> float:
    """Multiplier of the outer lr at outer step ``step`` (1-based) of ``iterations``."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - 1) / iterations))
    return 1.0


def _method_meta(section) -> dict:
    """The method's options as recorded with each saved set (``unroll`` kept for older readers)."""
    options = section.model_dump(mode="json")
    out = {"method_options": {k: v for k, v in options.items() if k != "name"}}
    if isinstance(options.get("unroll"), dict):
        out["unroll"] = options["unroll"].get("name")
    return out


def _method_cache_dir() -> Path:
    """Where methods keep verified derived files (MTT experts), beside the embedding cache."""
    from distillctl.data.cache import methods_dir

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
    learn = Learnables(x=x0.reshape(C * ipc, d), label_logits=label_logits, log_lr=log_lr).as_leaves()
    return learn, inherited.reshape(-1)


def _outer_optimizer(learn: Learnables, outer) -> tuple["torch.optim.Optimizer", list[float]]:
    """Adam / SGD over the learnables, one param group each (labels and inner lr may have their own lr)."""
    import torch

    lrs = {"x": outer.lr, "label_logits": outer.label_lr or outer.lr, "log_lr": outer.lr_lr or outer.lr}
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
    from distillctl.runs import atomic_write_text, read_jsonl

    if not run.metrics.exists():
        return
    records = read_jsonl(run.metrics)
    kept = [r for r in records if not ("stage" in r and (r["stage"] > stage or (r["stage"] == stage and (
        r.get("step", 0) > keep_through_step or (r.get("step", 0) == keep_through_step and "loss" not in r)))))]
    if len(kept) != len(records):
        atomic_write_text(run.metrics, "".join(json.dumps(r, default=str) + "\n" for r in kept))

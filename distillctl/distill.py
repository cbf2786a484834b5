"""``distill``: learn a few synthetic embedding vectors per class (bilevel, RaT-BPTT, Boost-DD).

:func:`distill` reads top to bottom: run directory, embeddings, student and unroll strategy, then for
each Boost-DD stage (``distill.ipc: [1, 5, 10]``) the outer loop::

    real batch -> UnrollStrategy (inner loop over K fresh students) -> meta-gradient
    -> clip at clip x EMA(norms) -> outer Adam/SGD -> damp inherited rows by beta
    -> every val_every: fresh students trained on the set, scored on `val`, keep the best
    -> every ckpt_every: atomic checkpoint (learnables, optimiser, EMA, generator, best set)

The test split is never touched here. Everything random in a stage flows from one ``torch.Generator``
seeded by (recipe.seed, stage), saved in every checkpoint, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillctl.errors import RunError, UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: soft labels start as probabilities with this mass on the row's own class (rest spread evenly)
SOFT_LABEL_INIT_CONFIDENCE = 0.9
#: seeds of the fresh validation students (kept apart from the small seeds `eval` uses by default)
VAL_SEED_BASE = 1_000_003


@dataclass
class DistillResult:
    """The run directory and one entry per Boost-DD stage: ``{"ipc", "path", "val_accuracy"}``."""

    run_dir: Path
    sets: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"run_dir": str(self.run_dir), "sets": [dict(s, path=str(s["path"])) for s in self.sets]}


def stage_seed(seed: int, stage: int) -> int:
    """The generator seed of Boost-DD stage ``stage`` (0-based) of a recipe with ``seed``."""
    return (seed * 1_000_003 + (stage + 1) * 7_919) % (2**63)


def distill(recipe, *, run_dir: str | Path | None = None, resume: str | Path | None = None,
            quiet: bool | None = None, argv: list[str] | None = None, embeddings=None,
            stage: int | None = None) -> DistillResult:
    """Run every Boost-DD stage of ``recipe``; return the run directory and the saved sets.

    ``resume`` is an existing run directory of the same recipe: finished stages are reused, the
    stage in progress continues from its newest checkpoint. ``embeddings`` (an
    :class:`distillctl.embed.Embeddings`-like object) skips loading the cache, for library callers.
    ``stage`` (an ipc of the chain) runs that Boost-DD stage only: the stages before it must be finished
    in the run directory (``resume``), the ones after it are left for later calls. This is how
    ``submit`` runs a chain as one job per stage.
    """
    import torch

    from distillctl.console import info, is_quiet, progress
    from distillctl.plugins import get_registry
    from distillctl.runs import create_run_dir, open_run_dir
    from distillctl.synthetic import SyntheticSet
    from distillctl.training import TrainBudget, student_builder, train_and_score
    from distillctl.unrolling import InnerProblem

    quiet = is_quiet() if quiet is None else quiet
    say = (lambda message: None) if quiet else info  # status lines on stderr
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
    run = create_run_dir(recipe, stage="distill", run_dir=run_dir, argv=argv,
                         extra_manifest={"resumed": resume is not None})

    # 2. Embeddings (embedded first when the cache is missing); train for batches, val for selection.
    if embeddings is None:
        from distillctl.embed import load_embeddings

        embeddings = load_embeddings(recipe, quiet=quiet)
    from distillctl.evaluate import check_ipc_fits, split_of

    device = torch.device(ds.device)
    train, val = split_of(embeddings, "train"), split_of(embeddings, "val")
    X_train, y_train = train.X.to(device, torch.float32), train.y.to(device)  # (n, d), (n,)
    X_val, y_val = val.X.to(device, torch.float32), val.y.to(device)  # (m, d), (m,)
    C, d = int(embeddings.num_classes), int(X_train.shape[1])
    check_ipc_fits(embeddings, max(ds.ipc), "distill.ipc")

    # 3. Student, unroll strategy, validation budget (the eval protocol, scored on val).
    registry = get_registry()
    build_student = student_builder(recipe, d, C)
    strategy = registry.build("unroll", ds.unroll)
    val_budget = TrainBudget.from_eval(recipe.eval)
    val_seeds = [VAL_SEED_BASE + recipe.seed * 1000 + k for k in range(ds.outer.val_seeds)]
    meta_common = {
        "recipe_name": recipe.name, "recipe_fingerprint": fingerprint,
        "embedding_fingerprint": getattr(embeddings, "fingerprint", None),
        "label_names": list(embeddings.label_names), "student": recipe.student.name,
        "unroll": ds.unroll.name, "run_dir": str(run.path),
    }

    def validate(learn: dict) -> float:
        """Mean accuracy on `val` of fresh students trained on the current set with the eval budget."""
        x, y = learn["x"].detach(), _labels(learn, hard).detach()
        scores = train_and_score(build_student, x, y, X_val, y_val, seeds=val_seeds, budget=val_budget,
                                 num_classes=C, quiet=True)
        return float(sum(scores.accuracy) / len(scores.accuracy))

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

        # 5. The stage's set: the previous stage's best rows first in each class block (Boost-DD), then
        #    new rows drawn from real vectors of that class (or random ones).
        gen = torch.Generator().manual_seed(stage_seed(recipe.seed, si))
        old_ipc = previous.ipc if previous is not None else 0
        hard = torch.arange(C, device=device).repeat_interleave(ipc)  # (ipc*C,) class-major
        x0 = _initial_rows(X_train, y_train, C, ipc, old_ipc, ds.init, gen)  # (C, ipc, d)
        inherited = torch.zeros(C, ipc, dtype=torch.bool, device=device)  # rows damped by beta
        if previous is not None:
            x0[:, :old_ipc] = previous.x.to(device).view(C, old_ipc, d)
            inherited[:, :old_ipc] = True
        learn = {"x": x0.reshape(C * ipc, d)}
        if ds.soft_labels:
            off = (1 - SOFT_LABEL_INIT_CONFIDENCE) / max(C - 1, 1)
            probs = torch.full((C, ipc, C), off, device=device)
            probs.scatter_(2, torch.arange(C, device=device).view(C, 1, 1).expand(C, ipc, 1),
                           SOFT_LABEL_INIT_CONFIDENCE if C > 1 else 1.0)
            if previous is not None:  # carry learned (or hard) labels of the inherited rows
                prev = previous.labels.to(device)
                prev = prev.float() if previous.soft else torch.nn.functional.one_hot(prev, C).float()
                probs[:, :old_ipc] = prev.view(C, old_ipc, C).clamp_min(1e-12)
            learn["label_logits"] = probs.log().reshape(C * ipc, C)  # softmax(log p) = p
        if ds.inner.learn_lr:
            lr0 = previous.inner_lr if previous is not None and previous.inner_lr else ds.inner.lr
            learn["log_lr"] = torch.tensor(math.log(lr0), device=device)
        learn = {k: v.detach().clone().requires_grad_() for k, v in learn.items()}
        inherited = inherited.reshape(-1)  # (ipc*C,)

        problem = InnerProblem(build_student, C, hard, optimizer=ds.inner.optimizer, lr=ds.inner.lr,
                               momentum=ds.inner.momentum, betas=tuple(ds.inner.betas),
                               batch_per_class=ds.inner.batch_per_class, population=ds.inner.population,
                               device=device)
        groups = [{"params": [learn["x"]], "lr": ds.outer.lr}]
        if "label_logits" in learn:
            groups.append({"params": [learn["label_logits"]], "lr": ds.outer.label_lr or ds.outer.lr})
        if "log_lr" in learn:
            groups.append({"params": [learn["log_lr"]], "lr": ds.outer.lr_lr or ds.outer.lr})
        opt = (torch.optim.Adam(groups) if ds.outer.optimizer == "adam"
               else torch.optim.SGD(groups, momentum=0.9))
        base_lrs = [g["lr"] for g in groups]

        # 6. Fresh stage, or continue from this stage's newest checkpoint (exactly where it stopped).
        state = {"step": 0, "ema": None, "elapsed": 0.0, "best_acc": -1.0, "best_step": 0,
                 "best": None, "last_val_step": -1}
        ckpt = _newest_checkpoint(run.checkpoints, ipc) if resume is not None else None
        if ckpt is not None:
            state = _load_checkpoint(ckpt, learn, opt, gen, device)
            say(f"stage ipc={ipc}: resuming at outer step {state['step']} from {ckpt.name}")
        _truncate_metrics(run, si, state["step"] if ckpt is not None else -1)
        t_stage = time.perf_counter() - state["elapsed"]
        if ckpt is None:  # the initial set's validation: the start of the accuracy-vs-time curve
            acc = validate(learn)
            state.update(best_acc=acc, best_step=0, best=_snapshot(learn), last_val_step=0)
            run.log(stage=si, ipc=ipc, step=0, val_accuracy=acc, best_val_accuracy=acc,
                    elapsed=round(time.perf_counter() - t_stage, 3))

        # 7. The outer loop.
        iters = ds.outer.iterations
        last_loss, last_ckpt = float("nan"), ckpt
        damp = bool(inherited.any()) and ds.boost.beta < 1
        with progress(f"distill ipc={ipc}", iters, unit="step", quiet=quiet) as bar:
            bar.advance(state["step"])
            for step in range(state["step"] + 1, iters + 1):
                if ds.outer.max_seconds and time.perf_counter() - t_stage > ds.outer.max_seconds:
                    say(f"stage ipc={ipc}: stopping after {step - 1} steps (max_seconds={ds.outer.max_seconds:g})")
                    break
                # 7a. A real batch from train (without replacement within the step).
                n = X_train.shape[0]
                idx = torch.randperm(n, generator=gen)[: min(ds.outer.real_batch, n)].to(device)  # (B,)
                # 7b. The meta-gradient through the inner loop.
                ms = strategy.meta_gradient(problem, learn, X_train[idx], y_train[idx], gen)
                norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in ms.grads.values()))
                if not (math.isfinite(ms.loss) and math.isfinite(norm)):
                    run.log(stage=si, ipc=ipc, step=step, event="non-finite", loss=ms.loss, grad_norm=norm)
                    where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise RunError(
                        f"stage ipc={ipc}, outer step {step}: the outer loss is {ms.loss} and the meta-gradient norm "
                        f"{norm} (not finite); {where}. Lower distill.outer.lr or distill.inner.lr, then "
                        f"`distillctl distill RECIPE --resume {run.path}`")
                # 7c. Clip at clip x EMA of past norms (the EMA follows the clipped norms, so one
                #     spike cannot raise the threshold for the steps after it).
                scale, ema = 1.0, state["ema"]
                if ds.outer.clip > 0 and ema is not None and norm > ds.outer.clip * ema:
                    scale = ds.outer.clip * ema / norm
                clipped = norm * scale
                state["ema"] = clipped if ema is None else ds.outer.clip_ema * ema + (1 - ds.outer.clip_ema) * clipped
                # 7d. Outer step (lr from the schedule: a function of the step only, so resume needs no
                #     scheduler state), then Boost-DD: inherited rows move by beta x their update.
                factor = _schedule_factor(ds.outer.schedule, step, iters)
                for group, base in zip(opt.param_groups, base_lrs):
                    group["lr"] = base * factor
                before = {k: learn[k].detach().clone() for k in ("x", "label_logits") if k in learn and damp}
                for k, p in learn.items():
                    p.grad = ms.grads[k] * scale
                opt.step()
                opt.zero_grad(set_to_none=True)
                if damp:
                    with torch.no_grad():
                        for k, old in before.items():
                            p = learn[k]
                            p[inherited] = old[inherited] + ds.boost.beta * (p[inherited] - old[inherited])
                last_loss = ms.loss
                elapsed = time.perf_counter() - t_stage
                record = {"stage": si, "ipc": ipc, "step": step, "loss": round(ms.loss, 6),
                          "real_accuracy": round(ms.accuracy, 4), "grad_norm": norm, "clip_scale": scale,
                          "free_steps": ms.free_steps, "graph_steps": ms.graph_steps,
                          "elapsed": round(elapsed, 3)}
                if "log_lr" in learn:
                    record["inner_lr"] = float(learn["log_lr"].detach().exp())
                # 7e. Validation on `val`: keep the best set (the test split is never looked at).
                if step % ds.outer.val_every == 0 or step == iters:
                    acc = validate(learn)
                    if acc > state["best_acc"]:
                        state.update(best_acc=acc, best_step=step, best=_snapshot(learn))
                    state["last_val_step"] = step
                    record.update(val_accuracy=acc, best_val_accuracy=state["best_acc"],
                                  elapsed=round(time.perf_counter() - t_stage, 3))
                run.log(**record)
                bar.advance(1, loss=ms.loss, val=state["best_acc"])
                # 7f. Checkpoint (atomic; newest keep_checkpoints kept).
                state["step"], state["elapsed"] = step, time.perf_counter() - t_stage
                if step % ds.outer.ckpt_every == 0:
                    last_ckpt = _save_checkpoint(run.checkpoints, ipc, si, state, learn, opt, gen, fingerprint,
                                                 ds.outer.keep_checkpoints)

        # 8. A stage stopped early by max_seconds is validated once more; then save its best set.
        if state["last_val_step"] != state["step"]:
            acc = validate(learn)
            if acc > state["best_acc"]:
                state.update(best_acc=acc, best_step=state["step"], best=_snapshot(learn))
            run.log(stage=si, ipc=ipc, step=state["step"], val_accuracy=acc, best_val_accuracy=state["best_acc"],
                    elapsed=round(time.perf_counter() - t_stage, 3))
        best = state["best"]
        wall = time.perf_counter() - t_stage
        syn = SyntheticSet(
            x=best["x"].cpu(), labels=_labels(best, hard).cpu(), ipc=ipc, num_classes=C,
            inner_lr=float(best["log_lr"].exp()) if "log_lr" in best else None,
            meta={**meta_common, "stage": si, "ipc_chain": list(ds.ipc), "outer_step": state["best_step"],
                  "outer_steps_run": state["step"], "val_accuracy": state["best_acc"],
                  "val_seeds": val_seeds, "val_budget": val_budget.as_dict(), "boost_beta": ds.boost.beta,
                  "wall_seconds": round(wall, 3), "last_loss": last_loss, "complete": True},
        )
        syn.save(set_path)
        say(f"stage ipc={ipc}: best val accuracy {state['best_acc']:.4f} at outer step {state['best_step']} "
             f"of {state['step']} ({wall:.1f} s) -> {set_path}")
        result.sets.append({"ipc": ipc, "path": set_path, "val_accuracy": state["best_acc"]})
        previous = syn
    return result


# -- helpers (each used once above; kept apart so the loop reads top to bottom) --------------------

def _schedule_factor(schedule: str, step: int, iterations: int) -> float:
    """Multiplier of the outer lr at outer step ``step`` (1-based) of ``iterations``."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - 1) / iterations))
    return 1.0


def _labels(learn: dict, hard: "torch.Tensor") -> "torch.Tensor":
    """(n,) int64 hard labels, or (n, C) probabilities from the learnable logits."""
    return learn["label_logits"].softmax(-1) if "label_logits" in learn else hard


def _snapshot(learn: dict) -> dict:
    return {k: v.detach().clone() for k, v in learn.items()}


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


def _checkpoint_name(ipc: int, step: int) -> str:
    return f"ipc{ipc}-step{step:07d}.safetensors"


def _newest_checkpoint(folder: Path, ipc: int) -> Path | None:
    found = sorted(folder.glob(f"ipc{ipc}-step*.safetensors")) if folder.exists() else []
    return found[-1] if found else None


def _save_checkpoint(folder: Path, ipc: int, stage: int, state: dict, learn: dict, opt, gen, fingerprint: str,
                     keep: int) -> Path:
    """One safetensors file: learnables, best set, optimiser tensors, generator; the rest as JSON metadata."""
    import torch

    from distillctl.runs import atomic_save_tensors

    tensors = {f"learn.{k}": v.detach() for k, v in learn.items()}
    tensors.update({f"best.{k}": v for k, v in state["best"].items()})
    sd = opt.state_dict()
    opt_meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        opt_meta["state"][str(pid)] = {}
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{key}"] = val
            else:
                opt_meta["state"][str(pid)][key] = val
    tensors["rng.generator"] = gen.get_state()
    meta = {"stage": stage, "ipc": ipc, "step": state["step"], "ema": state["ema"], "elapsed": state["elapsed"],
            "best_acc": state["best_acc"], "best_step": state["best_step"],
            "last_val_step": state["last_val_step"], "recipe_fingerprint": fingerprint, "optimizer": opt_meta}
    path = folder / _checkpoint_name(ipc, state["step"])
    atomic_save_tensors(path, tensors, metadata={"distillctl_checkpoint": json.dumps(meta)})
    for stale in sorted(folder.glob(f"ipc{ipc}-step*.safetensors"))[:-keep]:
        stale.unlink(missing_ok=True)
    return path


def _load_checkpoint(path: Path, learn: dict, opt, gen, device) -> dict:
    """Restore learnables, optimiser and generator in place; return the loop state."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()["distillctl_checkpoint"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # a damaged file: say which one
        raise RunError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc}); delete it to resume "
                       f"from the one before") from None
    with torch.no_grad():
        for k, p in learn.items():
            p.copy_(tensors[f"learn.{k}"])
    state = {int(pid): {**vals} for pid, vals in meta["optimizer"]["state"].items()}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val.to(device) if name != "step" else val
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    gen.set_state(tensors["rng.generator"])
    best = {k.split(".", 1)[1]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    return {"step": meta["step"], "ema": meta["ema"], "elapsed": meta["elapsed"], "best_acc": meta["best_acc"],
            "best_step": meta["best_step"], "best": best, "last_val_step": meta["last_val_step"]}


def _truncate_metrics(run, stage: int, keep_through_step: int) -> None:
    """Drop metrics of this stage after the step being resumed from (and of later stages)."""
    from distillctl.runs import atomic_write_text, read_jsonl

    if not run.metrics.exists():
        return
    records = read_jsonl(run.metrics)
    kept = [r for r in records if not ("stage" in r and (r["stage"] > stage or
                                                         (r["stage"] == stage and r.get("step", 0) > keep_through_step)))]
    if len(kept) != len(records):
        atomic_write_text(run.metrics, "".join(json.dumps(r, default=str) + "\n" for r in kept))

"""Built-in distillation methods: ``bptt``, ``krr``, ``dm`` and ``mtt``.

Each is an ordinary plugin: an options model validated against the recipe's ``distill.method`` section
and a factory returning a :class:`distillctl.methods.Method`. The implementations live in this package's
modules and import torch lazily, so loading the registry stays cheap.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from distillctl import hookimpl
from distillctl.options import PluginOptions
from distillctl.recipe import PluginSection


class BPTTOptions(PluginOptions):
    #: levels this method serves: sentence vectors, and input-embedding sequences of a fine-tuned transformer
    levels: ClassVar[tuple[str, ...]] = ("vectors", "tokens")
    unroll: PluginSection = Field(
        default_factory=lambda: PluginSection(name="full"),
        description="How the inner loop is differentiated: `full`, `truncated` or `ratbptt` with its options "
        "(see `distillctl plugins show ratbptt`). Default `full` (100 inner steps): chosen on `val` for the "
        "shipped MLP recipes (BENCHMARKS.md, \"How the settings were chosen\": AG News ipc 1 87.82 % against "
        "87.53 % for RaT-BPTT 40/100 with the same cosine lr; ipc 10 88.23 vs 87.99 %). It costs ~1.7x the time "
        "and ~2x the working memory of RaT-BPTT 40/100 per outer step (MLP: 0.21 vs 0.12 s, 465 vs 212 MiB; "
        "Transformer with 12 students: 19.4 vs 10.0 s, 13.5 vs 7.5 GB). The Transformer recipes use `ratbptt` "
        "40/100: for that student full BPTT did not help on `val` (74.9 vs 74.6 % at ipc 10).",
        json_schema_extra={"plugin_kind": "unroll"},
    )


class KRROptions(PluginOptions):
    features: Literal["student", "identity"] = Field(
        "student", description="Kernel features: `student` = the penultimate representation of a pool of "
        "students trained online on the set (FRePo); `identity` = the raw vectors (closed-form linear probe)."
    )
    pool: int = Field(8, ge=1, description="Students in the online pool (`features: student`); all are used "
                      "every outer step (vectorised).")
    online_steps: int = Field(
        100, ge=1, description="Inner steps a pool student trains on the current set before it is replaced by a "
        "fresh one (the first students are replaced at staggered times)."
    )
    ridge: float = Field(
        1e-3, gt=0, description="Ridge regularisation λ, relative to the kernel's scale: the solve uses "
        "K_ss + ridge · trace(K_ss) / n · I."
    )
    loss: Literal["mse", "ce"] = Field(
        "mse", description="Loss of the kernel-ridge prediction of the real batch: squared error against one-hot "
        "labels (as FRePo) or cross-entropy with the prediction as logits."
    )


class DMOptions(PluginOptions):
    students: int = Field(4, ge=1, description="Freshly initialised students per outer step (vectorised); the "
                          "loss is their mean.")


class MTTOptions(PluginOptions):
    experts: int = Field(5, ge=1, description="Expert students trained on the real training split (cached, "
                         "reused by every run with the same data, student and eval settings).")
    spacing: int = Field(50, ge=1, description="Expert optimiser steps between two stored checkpoints (one "
                         "'epoch' of the trajectory).")
    expert_steps: int | None = Field(
        None, ge=1, description="Optimiser steps each expert trains for; null = `eval.steps` (the eval budget).")
    syn_steps: int = Field(20, ge=1, description="Steps of the student on the synthetic set per outer step "
                           "(with `syn_optimizer`).")
    expert_epochs: int = Field(2, ge=1, description="Stored checkpoints ahead the synthetic steps must reach.")
    max_start_epoch: int | None = Field(
        None, ge=0, description="Latest stored checkpoint a matched segment may start from; null = half of the "
        "stored epochs (at most epochs - expert_epochs), e.g. 10 of 20 for 1000 steps at spacing 50.")
    trajectories: int = Field(1, ge=1, description="Expert segments matched per outer step (vectorised); the loss "
                              "is their mean.")
    syn_optimizer: Literal["expert", "sgd", "adam"] = Field(
        "expert", description="Optimiser of the synthetic steps: the experts' own (the eval optimiser), or `sgd` "
        "(plain, as in the paper) / `adam` (differentiable, state from zero at the segment's start)."
    )
    syn_lr: float | None = Field(
        None, gt=0, description="Learning rate of the synthetic steps (the start value when `learn_lr`); null = "
        "the experts' lr (the eval lr), as the paper starts from the teacher's lr."
    )
    learn_lr: bool = Field(True, description="Learn the synthetic lr with the set (log-parametrised, outer lr "
                           "`distill.outer.lr_lr`), as in the paper; it is saved as the set's inner_lr.")


def _bptt(options):
    from distillctl_plugins.methods.bptt import BPTT

    return BPTT(options)


def _krr(options):
    from distillctl_plugins.methods.krr import KRR

    return KRR(options)


def _dm(options):
    from distillctl_plugins.methods.dm import DM

    return DM(options)


def _mtt(options):
    from distillctl_plugins.methods.mtt import MTT

    return MTT(options)


@hookimpl
def register_methods(register):
    register("bptt", _bptt, options=BPTTOptions,
             description="Backpropagation through the inner training (full, truncated or RaT-BPTT unroll).")
    register("krr", _krr, options=KRROptions,
             description="Kernel ridge regression on student features (FRePo) or raw vectors: no unroll.")
    register("dm", _dm, options=DMOptions,
             description="Distribution matching: per-class feature means of fresh random students.")
    register("mtt", _mtt, options=MTTOptions,
             description="Matching training trajectories of cached expert students (learned synthetic lr).")

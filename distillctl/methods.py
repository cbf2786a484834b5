"""The method contract: what a distillation method supplies to the one shared outer loop.

:func:`distillctl.distillation.distill.distill` owns everything that is the same for every method: the real batch,
clipping, the outer optimiser and its schedule, Boost-DD damping, validation on ``val`` keeping the best
set, checkpoints and ``--resume``, metrics. A method answers one question per outer step: *what is the
outer loss of the current synthetic set, and its gradient with respect to each learnable tensor?*

A method plugin registers a factory ``factory(options) -> Method`` through ``register_methods``.
The loop calls, for every Boost-DD stage::

    method.setup(context)                   # once per stage, before the first step (and before a resume)
    method.load_state_dict(state)           # only when resuming: what state_dict() returned at the checkpoint
    method.step(learnables, real_x, real_y, generator) -> OuterStep     # once per outer step
    method.state_dict()                     # at every checkpoint

Everything random in ``step`` must come from ``generator`` (saved in every checkpoint) or from the
method's own state, so a resumed stage ends with the same set as an uninterrupted one.

With several students (``distill.students``) the loop wraps one instance per architecture in
:class:`PerStudent`: each is set up for its own student, and an outer step is the mean of theirs. A
method that cannot serve several architectures refuses in ``setup`` (``len(context.students) > 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator

from distillctl.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from distillctl.evaluation.training import TrainBudget
    from distillctl.toolbox import VerifiedCache


@dataclass
class Learnables:
    """The tensors the outer optimiser moves (each a leaf with ``requires_grad`` while distilling).

    Rows are class-major: rows ``c*ipc .. c*ipc+ipc-1`` of ``x`` are class c (for soft labels: were
    initialised as class c).
    """

    x: "torch.Tensor"  # (ipc*C, d) synthetic vectors; at the token level (ipc*C, T, d) input embeddings
    label_logits: "torch.Tensor | None" = None  # (ipc*C, C) soft-label logits (`distill.soft_labels`)
    log_lr: "torch.Tensor | None" = None  # () log of the learned inner lr (`distill.inner.learn_lr`)
    attention_logits: "torch.Tensor | None" = None  # (ipc*C, L, H, Q, T) attention labels (token level, Q = 1 or T)

    def items(self) -> Iterator[tuple[str, "torch.Tensor"]]:
        """(name, tensor) of the tensors present, in a fixed order (x, label_logits, log_lr, attention_logits)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value

    def names(self) -> list[str]:
        return [name for name, _ in self.items()]

    def as_dict(self) -> dict[str, "torch.Tensor"]:
        return dict(self.items())

    @classmethod
    def from_dict(cls, tensors: dict[str, "torch.Tensor"]) -> "Learnables":
        unknown = set(tensors) - {f.name for f in fields(cls)}
        if unknown:
            raise KeyError(f"unknown learnable tensors: {sorted(unknown)}")
        return cls(**tensors)

    def detached(self) -> "Learnables":
        """A copy of the values, detached from any graph (a snapshot, e.g. the best set so far)."""
        return Learnables.from_dict({k: v.detach().clone() for k, v in self.items()})

    def as_leaves(self) -> "Learnables":
        """Copies that are fresh leaves with ``requires_grad`` (what the outer optimiser moves)."""
        return Learnables.from_dict({k: v.detach().clone().requires_grad_() for k, v in self.items()})

    def targets(self, hard_labels: "torch.Tensor", num_classes: int) -> "torch.Tensor":
        """(n, C) target probabilities: softmax of the label logits, or one-hot hard labels."""
        from torch.nn import functional as F

        if self.label_logits is not None:
            return self.label_logits.softmax(dim=-1)
        return F.one_hot(hard_labels, num_classes).to(self.x.dtype)

    def labels(self, hard_labels: "torch.Tensor") -> "torch.Tensor":
        """What a saved set stores: (n,) hard classes, or (n, C) probabilities from the label logits."""
        return self.label_logits.softmax(-1) if self.label_logits is not None else hard_labels

    def inner_lr(self, default: float) -> "torch.Tensor":
        """() the inner learning rate: exp(log_lr) when it is learned, else ``default``."""
        import torch

        if self.log_lr is not None:
            return self.log_lr.exp()
        return torch.tensor(default, dtype=self.x.dtype, device=self.x.device)


@dataclass
class OuterStep:
    """What a method returns for one outer step."""

    loss: float  # the outer loss (the method's own objective) at the current set
    grads: dict[str, "torch.Tensor"]  # d loss / d tensor, for every name in Learnables.names(); same shapes
    accuracy: float = float("nan")  # accuracy on the real batch where the method has one (a cheap signal)
    metrics: dict[str, Any] = field(default_factory=dict)  # extra JSON-able numbers for metrics.jsonl

    def check(self, learn: Learnables, method: str) -> None:
        """A method bug (a missing or misshapen gradient) is reported before it reaches the optimiser."""
        for name, tensor in learn.items():
            grad = self.grads.get(name)
            if grad is None or tuple(grad.shape) != tuple(tensor.shape):
                got = None if grad is None else tuple(grad.shape)
                raise RuntimeError(f"method {method!r} returned a gradient for {name!r} of shape {got}; "
                                   f"expected {tuple(tensor.shape)}")


@dataclass
class MethodContext:
    """What a method knows about the stage it is asked to distil (given to :meth:`Method.setup`)."""

    build_student: Callable[[], Any]  # a fresh, randomly initialised student nn.Module per call
    student_name: str  # the recipe's student plugin name (for messages)
    num_classes: int
    ipc: int
    hard_labels: "torch.Tensor"  # (ipc*C,) int64, class-major
    x_train: Any  # (n, d) real training vectors on `device`; at the token level a TokenRows (ids, masks (n, T))
    y_train: "torch.Tensor"  # (n,) int64
    inner: Any  # distillctl.recipe.InnerSettings: the inner optimiser, population, batch per class
    eval_budget: "TrainBudget"  # the eval protocol's training budget (optimiser, lr, steps, batch)
    device: Any  # torch.device
    seed: int  # the recipe's seed
    soft_labels: bool = False  # the set learns soft labels (`distill.soft_labels`)
    cache: "VerifiedCache | None" = None  # derived tensors reused across runs, already keyed by the training
    #                                        data and this student (distillctl.toolbox); None: nothing is cached
    say: Callable[[str], None] = lambda message: None  # one status line on stderr (silent with --quiet)
    students: list[str] = field(default_factory=list)  # labels of every student of `distill.students`, this one
    #                                                     among them (`mlp#2` for a repeated name); [] = this one only
    level: str = "vectors"  # "tokens": the set is input embeddings for a fine-tuned transformer (embed.level)
    tokens: Any = None  # at the token level: distillctl.distillation.tokens.TokenSpace (the student, used
    #                     functionally; its initial model, head pool, the stage's synthetic mask, attention labels)


class Method:
    """Base class of distillation methods. Override :meth:`step`; the rest has working defaults.

    A method raises :class:`distillctl.errors.UserError` (exit 2, one line) when it cannot work with
    the recipe's student or options, naming the method, the student and what would work.
    """

    #: the name recipes use (set by the plugin; used in messages)
    name = "method"

    def setup(self, context: MethodContext) -> None:
        """Once per Boost-DD stage, before the first :meth:`step` (and before a resumed stage's state)."""
        self.context = context

    def step(self, learn: Learnables, real_x: "torch.Tensor", real_y: "torch.Tensor",
             generator: "torch.Generator") -> OuterStep:
        """The outer loss at ``learn`` and its gradient for every learnable tensor.

        real_x: (B, d) real training vectors drawn for this step (at the token level a
        :class:`distillctl.distillation.tokens.TokenRows` of B texts), real_y: (B,) their classes.
        ``generator`` is the stage's generator: draw every random number from it.
        """
        raise NotImplementedError(f"method {self.name!r} does not implement step()")

    def learned_inner_lr(self, inner: Any) -> float | None:
        """The starting value of a learned inner learning rate (``Learnables.log_lr``), or None for none.

        ``inner`` is the recipe's ``distill.inner``; the default follows ``inner.learn_lr`` / ``inner.lr``.
        A method whose paper learns its own step size (mtt) returns its option here.
        """
        return inner.lr if inner.learn_lr else None

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`load_state_dict` needs to continue exactly: tensors, or JSON-able numbers/strings."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called after :meth:`setup` on ``--resume``)."""
        if state:
            raise RuntimeError(f"method {self.name!r} has no state to restore, got {sorted(state)}")


class PerStudent(Method):
    """Distilling for several student architectures (``distill.students``) with any method.

    One instance of the method per architecture, each set up with a context for its own student (its
    own population, pool or experts; ``context.students`` lists them all, so a method that cannot serve
    several architectures refuses in ``setup``). An outer step asks each in turn, with the same learnables,
    real batch and generator (drawn from in that order, so ``--resume`` stays exact), and returns the mean
    of their outer losses and of their gradients: the gradient of the mean objective over architectures.
    """

    def __init__(self, methods: list[Method], students: list[tuple[str, Callable[[], Any], dict]]):
        if len(methods) != len(students) or len(methods) < 2:
            raise ValueError("PerStudent needs one method per student, for two or more students")
        self.methods, self.students = methods, students
        self.labels = student_labels([name for name, _, _ in students])
        self.name = methods[0].name

    def setup(self, context: MethodContext) -> None:
        self.context = context
        for method, (name, build, options) in zip(self.methods, self.students):
            cache = context.cache.keyed(student=options) if context.cache is not None else None
            method.setup(replace(context, build_student=build, student_name=name, cache=cache,
                                 students=list(self.labels)))

    def learned_inner_lr(self, inner: Any) -> float | None:
        return self.methods[0].learned_inner_lr(inner)  # one shared inner lr; every instance has the same options

    def step(self, learn: Learnables, real_x: "torch.Tensor", real_y: "torch.Tensor",
             generator: "torch.Generator") -> OuterStep:
        outs = [method.step(learn, real_x, real_y, generator) for method in self.methods]  # one per student
        for out, label in zip(outs, self.labels):
            out.check(learn, f"{self.name} ({label})")
        A = len(outs)
        grads = {k: sum(out.grads[k] for out in outs) / A for k in learn.names()}  # mean over architectures
        metrics = {"loss_by_student": {label: out.loss for label, out in zip(self.labels, outs)}}
        for label, out in zip(self.labels, outs):
            metrics.update({f"{label}.{k}": v for k, v in out.metrics.items()})
        accs = [out.accuracy for out in outs]
        return OuterStep(loss=sum(out.loss for out in outs) / A, grads=grads,
                         accuracy=float("nan") if any(math.isnan(a) for a in accs) else sum(accs) / A,
                         metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        """Each instance's state under ``<index>.<key>``."""
        return {f"{i}.{k}": v for i, method in enumerate(self.methods) for k, v in method.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, method in enumerate(self.methods):
            method.load_state_dict({k[len(f"{i}."):]: v for k, v in state.items() if k.startswith(f"{i}.")})


def student_labels(names: list[str]) -> list[str]:
    """Names of several students, unique: a repeated name gets ``#2``, ``#3``... (``[mlp, mlp#2]``)."""
    out = []
    for i, name in enumerate(names):
        n = names[:i].count(name)
        out.append(name if n == 0 else f"{name}#{n + 1}")
    return out


def gradients(loss: "torch.Tensor", learn: Learnables) -> dict[str, "torch.Tensor"]:
    """d loss / d every learnable tensor (zeros for a tensor the loss does not depend on)."""
    import torch

    names = learn.names()
    tensors = [getattr(learn, n) for n in names]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g for n, t, g in zip(names, tensors, grads)}


def refuse(method: str, context: MethodContext, *, soft_labels: bool = False, learn_lr: bool = False) -> None:
    """One clear line when a recipe asks a method for learnables it does not use."""
    if learn_lr and context.inner.learn_lr:
        raise UserError(f"method {method!r} does not use an inner learning rate, so distill.inner.learn_lr "
                        f"cannot be learned with it; set it to false (bptt and mtt learn one)")
    if soft_labels and context.soft_labels:
        raise UserError(f"method {method!r} matches the classes' feature distributions and does not use labels, "
                        f"so distill.soft_labels cannot be learned with it; set it to false (bptt, krr, mtt learn them)")


def require_features(module: Any, method: str, student: str) -> None:
    """A method that needs a student's penultimate representation fails clearly when it has none."""
    if not callable(getattr(module, "features", None)):
        raise UserError(f"method {method!r}: student {student!r} exposes no features(x) (its penultimate "
                        f"representation), which `features: student` needs; use `features: identity`, or a "
                        f"student that defines features(x) and a final linear layer (built-ins: mlp, transformer)")

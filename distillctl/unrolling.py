"""The inner loop of the bilevel problem and the unroll strategies that differentiate through it.

Bilevel problem, per outer step::

    theta_0 ~ fresh student initialisation (K students at once: the population)
    theta_{t+1} = InnerOpt(theta_t, grad_theta CE(student(theta_t, x_syn[batch_t]), targets[batch_t]), lr)
    outer loss  = mean_k CE(student(theta_T^k, x_real), y_real)
    meta-gradient = d outer loss / d (x_syn, label logits, log inner lr)

One function, :func:`unroll`, runs it: ``free_steps`` inner steps whose results are detached (no
graph is kept, so memory does not grow with them), then ``graph_steps`` differentiable steps, then the
outer loss on the real batch right after the last step. An :class:`UnrollStrategy` only chooses the
two numbers: ``full`` (0, total), ``truncated`` (total - window, window) and ``ratbptt`` (a start drawn
uniformly from [min_start, total - window], window).

The students, inner batches and the differentiable optimiser step come from the method author's
toolbox (:mod:`distillctl.toolbox`: ``InnerProblem``, ``sample_rows``, ``optimizer_step``).

Why the code looks the way it does:

* Students are plain ``nn.Module``s called with ``torch.func.functional_call``. The K students'
  parameters live in ONE flat tensor ``theta`` of shape (K, P) (P = parameters per student); each
  student's named parameters are views into its row. The inner optimiser is then a handful of
  elementwise ops on (K, P) tensors, whatever the number of parameter tensors of the student.
* The population is vectorised with ``torch.func.vmap`` over the inner steps' forward pass (small
  synthetic batches); the large real batch is scored student by student, which is faster on a CPU
  than one vmapped call. The per-student gradients come from ONE ``torch.autograd.grad`` of the
  *sum* of the K losses (students share no parameters, so d(sum)/d theta_k = d loss_k / d theta_k).
* The inner optimisers (SGD with momentum, Adam) are written with plain tensor ops, so autograd can
  differentiate through them (``create_graph=True`` inside the window only).
* All randomness comes from the ``torch.Generator`` passed in (batches, window start) plus one seed
  drawn from it for the students' initialisation and dropout, used inside ``torch.random.fork_rng``:
  an outer step is a pure function of the generator state, which is what makes resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch.nn import functional as F

from distillctl.methods import Learnables
from distillctl.seeds import draw_seed
from distillctl.toolbox import InnerProblem, optimizer_step, sample_rows


@dataclass
class MetaStep:
    """What one outer step's unroll returns."""

    loss: float  # outer loss (mean over the population) on the real batch
    grads: dict[str, torch.Tensor]  # meta-gradient per learnable tensor (same keys and shapes)
    free_steps: int  # inner steps run without a graph
    graph_steps: int  # inner steps differentiated
    accuracy: float = float("nan")  # population-mean accuracy on the real batch (a cheap signal)


# -- the inner loop ------------------------------------------------------------------------------

def inner_lr(problem: InnerProblem, learnables: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The inner learning rate: exp(log_lr) when it is learned, else the recipe's constant."""
    return Learnables(**learnables).inner_lr(problem.lr)


def synthetic_targets(problem: InnerProblem, learnables: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(n, C) target probabilities: softmax of learnable label logits, or one-hot hard labels."""
    return Learnables(**learnables).targets(problem.labels, problem.num_classes)


def unroll(problem: InnerProblem, learnables: Mapping[str, torch.Tensor], real_x: torch.Tensor,
           real_y: torch.Tensor, generator: torch.Generator, free_steps: int, graph_steps: int,
           seed: int | None = None) -> MetaStep:
    """Train K fresh students for ``free_steps + graph_steps`` inner steps; return the meta-gradient.

    learnables: ``x`` (n, d) and optionally ``label_logits`` (n, C) and ``log_lr`` () — tensors with
    ``requires_grad=True``. real_x: (B, d), real_y: (B,) int64. ``seed`` (students' initialisation
    and dropout) is drawn from ``generator`` when not given; per-class batches always are.
    """
    if graph_steps < 1:
        raise ValueError("graph_steps must be >= 1: the meta-gradient needs at least one differentiated step")
    names = list(learnables)
    x = learnables["x"]  # (n, d)
    targets = synthetic_targets(problem, learnables)  # (n, C)
    lr = inner_lr(problem, learnables)  # ()

    # 1. A fresh population: every outer step starts from new random students, so the set must
    #    teach students in general, not one initialisation.
    seed = draw_seed(generator) if seed is None else seed
    theta = problem.init_population(seed)  # (K, P)
    state = (torch.zeros_like(theta), torch.zeros_like(theta))  # optimiser state: (m, v) or (buf, unused)

    def step(theta, state, t, x, targets, lr, rows, graph: bool):
        """Inner step t (1-based). graph=False: nothing it returns keeps a graph to the learnables."""
        if rows is not None:
            x, targets = x[rows], targets[rows]  # (C*b, d), (C*b, C)
        if not graph or not theta.requires_grad:  # a leaf: the start of the prefix or of the window
            theta = theta.detach().requires_grad_()
        with torch.enable_grad():
            logits = problem.population_logits(theta, x)  # (K, b, C)
            # Sum over students: d(sum)/d theta_k is student k's own gradient (no shared parameters).
            loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(theta.shape[0], 1),
                                   reduction="sum") / x.shape[0]
            (g,) = torch.autograd.grad(loss, theta, create_graph=graph)  # (K, P)
        a, b = state
        if not graph:  # the same update in place: no graph, no temporaries (prefix steps are cheap)
            theta = theta.detach()
            with torch.no_grad():
                if problem.optimizer == "sgd":
                    a.mul_(problem.momentum).add_(g)
                    theta.sub_(a, alpha=float(lr))
                else:
                    b1, b2 = problem.betas
                    a.mul_(b1).add_(g, alpha=1 - b1)
                    b.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = (b / (1 - b2 ** t)).add_(problem.eps ** 2).sqrt_()
                    theta.addcdiv_(a, denom, value=-float(lr) / (1 - b1 ** t))
        else:
            theta, (a, b) = optimizer_step(theta, (a, b), g, t, lr, optimizer=problem.optimizer,
                                           momentum=problem.momentum, betas=problem.betas, eps=problem.eps)
        return theta, (a, b)

    # 2. Steps before the window: detached learnables, no graph kept, memory independent of their number.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout inside the vmapped students draws from here
        x_free, targets_free, lr_free = x.detach(), targets.detach(), lr.detach()
        for t in range(1, free_steps + 1):
            theta, state = step(theta, state, t, x_free, targets_free, lr_free,
                                sample_rows(problem, generator), graph=False)

        # 3. The window: differentiable through the optimiser, the student and the synthetic batch.
        for t in range(free_steps + 1, free_steps + graph_steps + 1):
            theta, state = step(theta, state, t, x, targets, lr, sample_rows(problem, generator), graph=True)

        # 4. Score the trained students on the real batch right after the window.
        with torch.enable_grad():
            logits = problem.population_logits(theta, real_x, vectorized=False)  # (K, B, C)
            outer = F.cross_entropy(logits.flatten(0, 1), real_y.repeat(theta.shape[0]))
            acc = (logits.argmax(-1) == real_y).float().mean()

            # 5. The meta-gradient of the outer loss w.r.t. every learnable tensor.
            grads = torch.autograd.grad(outer, [learnables[k] for k in names], allow_unused=True)
    return MetaStep(
        loss=float(outer.detach()),
        grads={k: (torch.zeros_like(learnables[k]) if g is None else g) for k, g in zip(names, grads)},
        free_steps=free_steps, graph_steps=graph_steps, accuracy=float(acc),
    )


# -- strategies ----------------------------------------------------------------------------------

class UnrollStrategy:
    """Chooses how many inner steps run without a graph and how many are differentiated.

    Plugins may override :meth:`meta_gradient` entirely (e.g. implicit differentiation); the
    built-ins only implement :meth:`plan`.
    """

    name = "unroll"

    def plan(self, generator: torch.Generator) -> tuple[int, int]:
        """(free_steps, graph_steps) for one outer step."""
        raise NotImplementedError

    def meta_gradient(self, problem: InnerProblem, learnables: Mapping[str, torch.Tensor],
                      real_x: torch.Tensor, real_y: torch.Tensor, generator: torch.Generator) -> MetaStep:
        seed = draw_seed(generator)  # first, so every strategy starts from the same students
        free, graph = self.plan(generator)
        return unroll(problem, learnables, real_x, real_y, generator, free, graph, seed=seed)


class FullUnroll(UnrollStrategy):
    """Differentiate through all ``total`` inner steps (memory grows with ``total``)."""

    name = "full"

    def __init__(self, total: int):
        self.total = total

    def plan(self, generator):
        return 0, self.total


class TruncatedUnroll(UnrollStrategy):
    """Run ``total - window`` steps without a graph, differentiate the last ``window``."""

    name = "truncated"

    def __init__(self, window: int, total: int):
        self.window, self.total = window, total

    def plan(self, generator):
        return self.total - self.window, self.window


class RandomTruncatedUnroll(UnrollStrategy):
    """RaT-BPTT: a window of ``window`` steps starting uniformly in [min_start, total - window].

    The steps before the window run without a graph; the students are scored right after the window,
    so an outer step runs ``start + window`` inner steps (at most ``total``).
    """

    name = "ratbptt"

    def __init__(self, window: int, total: int, min_start: int = 0):
        self.window, self.total, self.min_start = window, total, min_start

    def plan(self, generator):
        start = int(torch.randint(self.min_start, self.total - self.window + 1, (1,), generator=generator))
        return start, self.window

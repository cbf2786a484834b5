"""``krr``: kernel ridge regression of a real batch from the synthetic rows (FRePo / KIP style).

Per outer step, no unroll::

    phi_s = features(x_syn)       (K, n, h)   differentiable in x_syn
    phi_t = features(x_real)      (K, B, h)   constants
    K_ss = phi_s phi_s^T, K_ts = phi_t phi_s^T
    pred = K_ts (K_ss + ridge * tr(K_ss) / n * I)^-1 Y_syn      (K, B, C)
    loss = mean over the pool of 1/2 |pred - onehot(y_real)|^2  (or cross-entropy of pred)

``features: student`` takes the penultimate representation of a pool of K students that are trained
online on the current set (one inner step each per outer step, with the recipe's inner optimiser) and
replaced by fresh ones after ``online_steps``, as FRePo's model pool; ``features: identity`` uses the
raw vectors (the closed-form linear probe), with no pool.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from distillctl.methods import Learnables, Method, MethodContext, OuterStep, gradients, refuse, require_features
from distillctl.seeds import draw_seed
from distillctl.toolbox import InnerProblem, sample_rows


def krr_predict(phi_s: torch.Tensor, phi_t: torch.Tensor, y_s: torch.Tensor, ridge: float) -> torch.Tensor:
    """Kernel-ridge predictions of the target rows from the support rows, per kernel in the batch.

    phi_s: (K, n, h) support features, phi_t: (K, B, h) target features, y_s: (n, C) support targets.
    Returns (K, B, C) = K_ts (K_ss + lambda I)^-1 y_s with lambda = ridge * trace(K_ss) / n (the ridge
    scaled to the kernel, so one value works whatever the features' magnitude). The solve runs in
    float64: K_ss of a few hundred rows is badly conditioned in float32.
    """
    k_ss = phi_s @ phi_s.transpose(-1, -2)  # (K, n, n)
    k_ts = phi_t @ phi_s.transpose(-1, -2)  # (K, B, n)
    n = k_ss.shape[-1]
    lam = ridge * k_ss.diagonal(dim1=-2, dim2=-1).sum(-1) / n  # (K,)
    eye = torch.eye(n, dtype=torch.float64, device=k_ss.device)
    a = k_ss.double() + lam.double()[:, None, None] * eye  # (K, n, n)
    alpha = torch.linalg.solve(a, y_s.double().expand(k_ss.shape[0], *y_s.shape))  # (K, n, C)
    return (k_ts.double() @ alpha).to(phi_s.dtype)  # (K, B, C)


class KRR(Method):
    name = "krr"

    def __init__(self, options):
        self.options = options
        self.pool: dict[str, torch.Tensor] | None = None

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        refuse(self.name, context, learn_lr=True)
        self.problem = InnerProblem.from_context(context, population=self.options.pool)
        if self.options.features == "student":
            require_features(self.problem.template()[0], self.name, context.student_name)
        self.pool = None  # built at the first step, from the stage's generator

    # -- the outer loss ------------------------------------------------------------------------
    def step(self, learn: Learnables, real_x, real_y, generator) -> OuterStep:
        C = self.context.num_classes
        student = self.options.features == "student"
        if student and self.pool is None:
            self.pool = self._fresh_pool(generator)
        # 1. features of the set (differentiable in x) and of the real batch (constants)
        if student:
            theta = self.pool["theta"]  # (K, P)
            phi_s = self.problem.population_features(theta, learn.x)  # (K, n, h)
            with torch.no_grad():
                phi_t = self.problem.population_features(theta, real_x, vectorized=False)  # (K, B, h)
        else:
            phi_s, phi_t = learn.x.unsqueeze(0), real_x.unsqueeze(0)  # (1, n, d), (1, B, d)
        # 2. the closed-form ridge prediction of the real batch
        y_s = learn.targets(self.context.hard_labels, C)  # (n, C)
        pred = krr_predict(phi_s, phi_t, y_s, self.options.ridge)  # (K, B, C)
        # 3. its loss, and the gradient w.r.t. the set (and its labels)
        if self.options.loss == "mse":
            onehot = F.one_hot(real_y, C).to(pred.dtype)  # (B, C)
            loss = 0.5 * (pred - onehot).pow(2).sum(-1).mean()
        else:
            loss = F.cross_entropy(pred.flatten(0, 1), real_y.repeat(pred.shape[0]))
        grads = gradients(loss, learn)
        accuracy = float((pred.argmax(-1) == real_y).float().mean())
        # 4. the pool learns one step on the current set; students past online_steps are replaced
        replaced = self._train_pool(learn.x.detach(), y_s.detach(), generator) if student else 0
        return OuterStep(loss=float(loss.detach()), grads=grads, accuracy=accuracy,
                         metrics={"pool_replaced": replaced} if student else {})

    # -- the online pool -----------------------------------------------------------------------
    def _new_students(self, count: int, generator) -> torch.Tensor:
        """(count, P) freshly initialised students, seeded from the generator."""
        return self.problem.init_population(draw_seed(generator), count=count)

    def _fresh_pool(self, generator) -> dict[str, torch.Tensor]:
        K, life = self.options.pool, self.options.online_steps
        theta = self._new_students(K, generator)  # (K, P)
        # staggered first lifetimes, so the pool never holds only fresh (or only old) students
        limit = torch.tensor([max(1, math.ceil(life * (k + 1) / K)) for k in range(K)], device=theta.device)
        return {"theta": theta, "m": torch.zeros_like(theta), "v": torch.zeros_like(theta),
                "t": torch.zeros(K, dtype=torch.long, device=theta.device), "limit": limit}

    def _train_pool(self, x: torch.Tensor, targets: torch.Tensor, generator) -> int:
        """One inner-optimiser step of every pool student on the set; returns how many were replaced."""
        inner, pool = self.context.inner, self.pool
        rows = sample_rows(self.problem, generator)
        if rows is not None:
            x, targets = x[rows], targets[rows]  # (C*b, d), (C*b, C)
        theta = pool["theta"].detach().requires_grad_()
        with torch.enable_grad():
            logits = self.problem.population_logits(theta, x)  # (K, b, C)
            loss = -(targets * logits.log_softmax(-1)).sum(-1).mean(-1).sum()  # sum over students of their means
            (g,) = torch.autograd.grad(loss, theta)  # (K, P): each student's own gradient
        with torch.no_grad():
            t = pool["t"] + 1  # (K,) steps of each student, for Adam's bias correction
            theta = theta.detach()
            if inner.optimizer == "sgd":
                pool["m"] = inner.momentum * pool["m"] + g
                theta = theta - inner.lr * pool["m"]
            else:
                b1, b2 = inner.betas
                pool["m"] = b1 * pool["m"] + (1 - b1) * g
                pool["v"] = b2 * pool["v"] + (1 - b2) * g * g
                m_hat = pool["m"] / (1 - b1 ** t.double()).float()[:, None]
                v_hat = pool["v"] / (1 - b2 ** t.double()).float()[:, None]
                theta = theta - inner.lr * m_hat / (v_hat.sqrt() + 1e-8)
            pool["theta"], pool["t"] = theta, t
            old = (t >= pool["limit"]).nonzero().squeeze(1)  # (r,)
            if old.numel():
                pool["theta"][old] = self._new_students(old.numel(), generator)
                pool["m"][old], pool["v"][old], pool["t"][old] = 0.0, 0.0, 0
                pool["limit"][old] = self.options.online_steps
        return int(old.numel())

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {} if self.pool is None else {k: v.clone() for k, v in self.pool.items()}

    def load_state_dict(self, state: dict) -> None:
        self.pool = {k: state[k] for k in ("theta", "m", "v", "t", "limit")} if state else None

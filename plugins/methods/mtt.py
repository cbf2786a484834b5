"""``mtt``: matching training trajectories (Cazenavette et al.) of expert students.

Once per data, student and eval settings, ``experts`` students are trained on the real training split
with the eval protocol's optimiser; their parameters every ``spacing`` steps form the trajectories
(E, T+1, P), kept in the stage's verified cache (:class:`distillctl.toolbox.VerifiedCache`: safetensors
beside the embedding cache, checked by sha256 before reuse).

Per outer step, for each of ``trajectories`` segments: an expert e and a start epoch s <= max_start_epoch
are drawn; a student starts at theta_e[s] and takes ``syn_steps`` SGD steps on the synthetic set at the
synthetic lr (``syn_lr``, learned with the set when ``learn_lr``, as in the paper), and

    loss = |theta_student - theta_e[s + expert_epochs]|^2 / |theta_e[s] - theta_e[s + expert_epochs]|^2

is differentiated through those steps w.r.t. the set, its labels and the lr.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from distillctl.errors import UserError
from distillctl.methods import Learnables, Method, MethodContext, OuterStep, gradients
from distillctl.evaluation.training import ADAM_EPS, BatchStream, build_seeded, stacked_optimizer
from distillctl.seeds import DROPOUT_STREAM, derive_seed, draw_seed, expert_seeds
from distillctl.toolbox import InnerProblem, optimizer_step, sample_rows

FORMAT = "distillctl.mtt-experts/1"


class MTT(Method):
    name = "mtt"

    def __init__(self, options):
        self.options = options

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        o = self.options
        self.total = o.expert_steps or context.eval_budget.steps
        epochs = self.total // o.spacing
        self.max_start = max(0, min(epochs // 2, epochs - o.expert_epochs)) if o.max_start_epoch is None else o.max_start_epoch
        if self.max_start + o.expert_epochs > epochs:
            raise UserError(f"method 'mtt': max_start_epoch + expert_epochs ({self.max_start} + {o.expert_epochs}) "
                            f"must be <= the {epochs} stored epochs of an expert ({self.total} steps / spacing "
                            f"{o.spacing}); lower them, or raise distill.method.expert_steps or lower spacing")
        self.problem = InnerProblem.from_context(context, population=o.trajectories)
        self.optimizer = context.eval_budget.optimizer if o.syn_optimizer == "expert" else o.syn_optimizer
        self.betas = tuple(context.eval_budget.betas)
        self.trajectories = expert_trajectories(self.problem, context, o.experts, self.total, o.spacing)  # (E, T+1, P)

    def syn_lr(self, budget) -> float:
        """The synthetic steps' (starting) lr: the option, else the experts' own lr."""
        return self.options.syn_lr or budget.lr

    def learned_inner_lr(self, inner) -> float | None:
        return self.syn_lr(self.context.eval_budget) if self.options.learn_lr else None

    def step(self, learn: Learnables, real_x, real_y, generator) -> OuterStep:
        o, ctx = self.options, self.context
        # 1. the segments to match: expert, start epoch (from the stage's generator: resume is exact)
        seed = draw_seed(generator)
        experts = torch.randint(0, self.trajectories.shape[0], (o.trajectories,), generator=generator)
        starts = torch.randint(0, self.max_start + 1, (o.trajectories,), generator=generator)
        start = self.trajectories[experts, starts].to(ctx.device)  # (K, P)
        target = self.trajectories[experts, starts + o.expert_epochs].to(ctx.device)  # (K, P)
        # 2. syn_steps differentiable SGD steps on the synthetic set from the expert's start
        targets = learn.targets(ctx.hard_labels, ctx.num_classes)  # (n, C)
        lr = learn.inner_lr(self.syn_lr(ctx.eval_budget))  # ()
        theta = start.detach().requires_grad_()
        state = (torch.zeros_like(theta), torch.zeros_like(theta))  # (m, v): from zero at the segment's start
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout inside the students draws from here
            for t in range(1, o.syn_steps + 1):
                rows = sample_rows(self.problem, generator)
                xb, tb = (learn.x, targets) if rows is None else (learn.x[rows], targets[rows])
                logits = self.problem.population_logits(theta, xb)  # (K, b, C)
                # sum over students of their mean loss: d(sum)/d theta_k is student k's own gradient
                ce = -(tb * logits.log_softmax(-1)).sum(-1).mean(-1).sum()
                (g,) = torch.autograd.grad(ce, theta, create_graph=True)  # (K, P)
                # plain SGD (no momentum, as in the paper) or the experts' Adam, its state from zero
                theta, state = optimizer_step(theta, state, g, t, lr, optimizer=self.optimizer, momentum=0.0,
                                              betas=self.betas, eps=ADAM_EPS)
        # 3. how far the student landed from the expert's later checkpoint, relative to the expert's move
        num = (theta - target).pow(2).sum(-1)  # (K,)
        den = (start - target).pow(2).sum(-1).clamp_min(1e-12)  # (K,)
        loss = (num / den).mean()
        return OuterStep(loss=float(loss.detach()), grads=gradients(loss, learn),
                         metrics={"start_epoch": int(starts[0])})


# -- experts -----------------------------------------------------------------------------------

def expert_key(context: MethodContext, experts: int, total: int, spacing: int) -> dict:
    """What the trajectories depend on besides the training data and the student (which key
    ``context.cache`` already)."""
    budget = {**context.eval_budget.as_dict(), "steps": total}
    return {"format": FORMAT, "budget": budget, "experts": experts, "spacing": spacing, "seed": context.seed,
            "shape": [int(context.x_train.shape[0]), int(context.x_train.shape[1]), context.num_classes]}


def expert_trajectories(problem: InnerProblem, context: MethodContext, experts: int, total: int,
                        spacing: int) -> torch.Tensor:
    """(E, T+1, P) expert parameters every ``spacing`` steps: from the stage's verified cache when it holds
    them, else trained (and cached)."""
    key = expert_key(context, experts, total, spacing)
    cache = context.cache
    found = cache.load("mtt", key) if cache is not None else None
    if found is not None:
        context.say(f"mtt: reusing {experts} cached expert trajectories ({cache.entry('mtt', key)[0]})")
        return found["trajectories"].to(context.device)
    where = f" (cached in {cache.folder / 'mtt'})" if cache is not None else ""
    context.say(f"mtt: training {experts} experts for {total} steps on {context.x_train.shape[0]} real rows{where}")
    traj = train_experts(problem, context, experts, total, spacing)
    if cache is not None:
        cache.save("mtt", key, {"trajectories": traj.cpu().contiguous()}, metadata={"format": FORMAT})
    return traj


def train_experts(problem: InnerProblem, context: MethodContext, experts: int, total: int,
                  spacing: int) -> torch.Tensor:
    """Train ``experts`` students at once (vmapped) on the real training split with the eval budget."""
    budget = context.eval_budget
    X, y = context.x_train, context.y_train  # (n, d), (n,)
    n = X.shape[0]
    seeds = expert_seeds(context.seed, experts)
    rows = [torch.cat([p.detach().reshape(-1) for p in build_seeded(problem.build_student, s).parameters()])
            for s in seeds]
    theta = torch.stack(rows).to(context.device, problem.dtype).requires_grad_()  # (E, P)
    opt = stacked_optimizer([theta], budget)  # elementwise: E independent optimisers
    streams = [BatchStream(n, min(budget.batch_size, n), s) for s in seeds]
    problem.template()  # built (and randomly initialised) once, outside vmap
    logits_of = torch.func.vmap(problem.logits, in_dims=(0, 0), randomness="different")
    saved = [theta.detach().clone()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seeds[0], DROPOUT_STREAM))
        for step in range(1, total + 1):
            idx = torch.stack([s.next() for s in streams]).to(X.device)  # (E, B)
            logits = logits_of(theta, X[idx])  # (E, B, C)
            loss = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="none")
            opt.zero_grad(set_to_none=True)
            loss.view(experts, -1).mean(1).sum().backward()  # each expert's own mean loss
            opt.step()
            if step % spacing == 0:
                saved.append(theta.detach().clone())
    return torch.stack(saved, 1)  # (E, T+1, P)

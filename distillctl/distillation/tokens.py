"""The token level of distillation: a few sequences of input embeddings that fine-tune a pretrained transformer.

At the token level (``embed.level: tokens``, a student such as ``finetune``) a synthetic set is
``x (ipc*C, T, d)`` input embeddings with a fixed ``mask (ipc*C, T)``, plus soft labels, a learned
inner step size and optionally *attention labels* (Maekawa et al., ACL 2023): learned target attention
maps that the inner loss pulls the model's own attention towards. The bilevel problem per outer step::

    theta_0   = the pretrained model with one head: the initial model (init_seed), or a head drawn
                from a pool of seeds (``distill.tokens.head_pool``: sets that hold across heads)
    theta_t+1 = theta_t - lr * grad CE(f(theta_t; x, mask), targets) + w * KL(attn targets || attn(theta_t))
    outer     = CE(f(theta_T; embed(real ids), real mask), real y)
    meta-gradient = d outer / d (x, label logits, log lr, attention logits)

The student is used only through ``torch.func.functional_call`` with a dict of its *trainable*
parameters (``module.trainable_names()``), the rest passed as constants, so one inner step of a 22M
parameter MiniLM is one double backward, without copying the model. What a token-level method
receives (``MethodContext.level == "tokens"``) is :class:`TokenSpace` (``context.tokens``) and, for
each outer step, ``real_x`` as :class:`TokenRows` (ids and masks of the real batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

from distillctl.errors import UserError
from distillctl.evaluation.training import build_seeded
from distillctl.methods import Learnables
from distillctl.plugins import get_registry
from distillctl.seeds import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    import torch

@dataclass
class TokenRows:
    """Token ids and attention masks of real rows (and token types for sentence pairs): indexable like a
    tensor (``rows[idx]``, ``rows.shape``, ``len(rows)``)."""

    ids: "torch.Tensor"  # (n, T) int64
    mask: "torch.Tensor"  # (n, T) int64 / float, 1 = attend
    types: "torch.Tensor | None" = None  # (n, T) int64 token types (pairs: 1 = the second text), or None

    @classmethod
    def of(cls, split) -> "TokenRows":
        """The rows of a token-level cache split (``ids``, ``mask``, optional ``type_ids``)."""
        return cls(split.ids, split.mask, getattr(split, "type_ids", None))

    @property
    def shape(self):
        return self.ids.shape

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index) -> "TokenRows":
        return TokenRows(self.ids[index], self.mask[index], None if self.types is None else self.types[index])

    def to(self, device) -> "TokenRows":
        return TokenRows(self.ids.to(device), self.mask.to(device),
                         None if self.types is None else self.types.to(device))


@dataclass
class TokenSpace:
    """The student a token-level set is distilled for, used functionally.

    ``module`` is built once under ``init_seed`` (the initial model: pretrained body + that seed's head)
    and kept in eval mode (no dropout in the inner steps, as the paper). ``trainable`` are the parameter
    names that the inner steps update; every other parameter and buffer is a constant. ``mask`` is the
    synthetic set's fixed attention mask for the current stage (set with :meth:`for_stage`).
    """

    module: Any  # torch.nn.Module with forward(inputs_embeds, attention_mask), embed_tokens, features, ...
    build_student: Callable[[], Any]  # a fresh student per call (the head depends on the RNG)
    init_seed: int
    head_seeds: list[int]  # [init_seed] or a pool (init_seed first)
    trainable: list[str]
    constants: dict[str, "torch.Tensor"]  # frozen parameters and buffers, by name
    init_params: dict[str, "torch.Tensor"]  # trainable parameters of the initial model, by name
    attention: str = "none"  # none | cls | all
    attention_weight: float = 1.0
    mask: "torch.Tensor | None" = None  # (n, T) float, 1 = attend (the stage's synthetic mask)
    head_first: str = "none"  # none | sgd | ridge: fit the head before the inner steps (see head_first_step)
    head_names: list[str] = field(default_factory=list)  # the trainable parameters a seed draws: the head
    _heads: dict = field(default_factory=dict, repr=False)  # seed -> {name: tensor} that differ from the init

    @classmethod
    def build(cls, build_student: Callable[[], Any], *, init_seed: int, head_pool: int = 1,
              attention: str = "none", attention_weight: float = 1.0, device="cpu",
              dtype=None, head_first: str = "none") -> "TokenSpace":
        import torch


        module = build_seeded(build_student, init_seed).to(device=device, dtype=dtype or torch.float32).eval()
        for name in ("embed_tokens", "word_embeddings", "features", "trainable_names"):
            if not callable(getattr(module, name, None)):
                raise UserError(f"student {type(module).__name__}: has no {name}(), which the token level needs "
                                f"(see docs/plugins.md, 'A student for the token level')")
        trainable = list(module.trainable_names())
        named = dict(module.named_parameters())
        unknown = [n for n in trainable if n not in named]
        if unknown or not trainable:
            raise UserError(f"student {type(module).__name__}: trainable_names() must name parameters of the "
                            f"module; got {unknown or 'none'}")
        constants = {k: v.detach() for k, v in named.items() if k not in trainable}
        constants.update({k: b.detach() for k, b in module.named_buffers()})
        seeds = [init_seed] + [derive_seed(init_seed, 7000 + i) for i in range(1, max(head_pool, 1))]
        if head_first not in ("none", "sgd", "ridge"):
            raise UserError(f"distill.tokens.head_first: {head_first!r} is not one of none, sgd, ridge")
        heads = head_names(build_student, trainable, init_seed) if head_first != "none" else []
        if head_first == "ridge":
            linear_head(module, heads)  # refuses a head that is not one linear layer
        return cls(module=module, build_student=build_student, init_seed=init_seed, head_seeds=seeds,
                   trainable=trainable, constants=constants,
                   init_params={k: named[k].detach() for k in trainable}, attention=attention,
                   attention_weight=attention_weight, head_first=head_first, head_names=heads)

    def for_stage(self, mask: "torch.Tensor") -> "TokenSpace":
        """The same space (module shared) with a stage's synthetic mask (n, T)."""
        return replace(self, mask=mask)

    @property
    def device(self):
        return next(iter(self.init_params.values())).device

    @property
    def dtype(self):
        return next(iter(self.init_params.values())).dtype

    # -- parameters ---------------------------------------------------------------------------------

    def initial(self, seed: int | None = None) -> dict[str, "torch.Tensor"]:
        """The trainable parameters of the model with head ``seed`` (default: the initial model).

        The pretrained body is the same for every seed: only the tensors that differ from the initial
        model's are kept per seed (the head), built once.
        """
        import torch


        if seed is None or seed == self.init_seed:
            return dict(self.init_params)
        if seed not in self._heads:
            other = dict(build_seeded(self.build_student, seed).named_parameters())
            self._heads[seed] = {k: other[k].detach().to(self.device, self.dtype) for k in self.trainable
                                 if not torch.equal(other[k].detach().to(self.device, self.dtype), self.init_params[k])}
        return {**self.init_params, **self._heads[seed]}

    # -- forward passes -------------------------------------------------------------------------------

    def logits(self, params: Mapping[str, "torch.Tensor"], x: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
        """(B, T, d) input embeddings, (B, T) mask -> (B, C) logits of the model with ``params``."""
        import torch

        return torch.func.functional_call(self.module, ({**self.constants, **params},), (x, mask))

    def logits_and_attentions(self, params, x, mask) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(B, C) logits and (B, L, H, T, T) attention probabilities (``forward(..., output_attentions=True)``)."""
        import torch

        out = torch.func.functional_call(self.module, ({**self.constants, **params},), (x, mask),
                                         {"output_attentions": True})
        if not (isinstance(out, tuple) and len(out) == 2):
            raise UserError(f"student {type(self.module).__name__}: forward(..., output_attentions=True) must "
                            f"return (logits, attentions (B, L, H, T, T)) for attention labels; set "
                            f"distill.tokens.attention_labels: none")
        return out

    def embed(self, rows: "TokenRows") -> "torch.Tensor":
        """(B, T) token ids (and types, for pairs) -> (B, T, d) input embeddings (the lookup only), no graph."""
        import torch

        with torch.no_grad():
            if rows.types is None:
                return self.module.embed_tokens(rows.ids.to(self.device)).to(self.dtype)
            return self.module.embed_tokens(rows.ids.to(self.device), rows.types.to(self.device)).to(self.dtype)

    def features(self, x: "torch.Tensor", mask: "torch.Tensor", *, batch: int = 256) -> "torch.Tensor":
        """(B, T, d), (B, T) -> (B, h) pooled features of the initial model, no graph, in chunks."""
        import torch

        with torch.no_grad():
            return torch.cat([self.module.features(x[i:i + batch].to(self.device, self.dtype),
                                                   mask[i:i + batch].to(self.device))
                              for i in range(0, x.shape[0], batch)])


def head_names(build_student: Callable[[], Any], trainable: list[str], seed: int) -> list[str]:
    """The trainable parameters that a student's seed draws (its head): those that differ between the student
    built under ``seed`` and under another seed. The pretrained body is the same for every seed."""
    import torch

    a = dict(build_seeded(build_student, seed).named_parameters())
    b = dict(build_seeded(build_student, derive_seed(seed, 6998)).named_parameters())
    names = [k for k in trainable if not torch.equal(a[k].detach(), b[k].detach())]
    if not names:
        raise UserError("distill.tokens.head_first: the student's seed changes none of its trainable parameters, "
                        "so it has no fresh head to fit first; set head_first: none")
    return names


def linear_head(module: Any, heads: list[str]) -> tuple[str, str, str]:
    """(submodule, weight name, bias name) of a head that is one linear layer ``weight (C, h)``, ``bias (C,)``;
    a :class:`UserError` for any other head (``head_first: ridge`` solves for exactly these two tensors)."""
    owners = {n.rsplit(".", 1)[0] for n in heads}
    named = dict(module.named_parameters())
    if len(owners) == 1:
        owner = owners.pop()
        weight, bias = f"{owner}.weight", f"{owner}.bias"
        if sorted(heads) == sorted([weight, bias]) and named[weight].ndim == 2 and named[bias].ndim == 1:
            return owner, weight, bias
    raise UserError(f"distill.tokens.head_first: ridge needs a head that is one linear layer (weight and bias); "
                    f"this student's seed draws {sorted(heads)}. Use head_first: sgd or none")


def ridge_head(features: "torch.Tensor", targets: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """The linear head that fits the set in closed form: ridge regression of the centred targets on the head's
    input features, solved in the dual (n x n: a set has few rows), differentiable.

    features (n, h), targets (n, C) probabilities -> weight (C, h), bias (C,). The ridge is RIDGE x the mean
    squared norm of the (bias-augmented) features, so it does not depend on their scale.
    """
    import torch

    n = features.shape[0]
    F1 = torch.cat([features, torch.ones(n, 1, dtype=features.dtype, device=features.device)], 1)  # (n, h+1)
    K = F1 @ F1.T  # (n, n)
    ridge = RIDGE * K.diagonal().mean()
    A = torch.linalg.solve(K + ridge * torch.eye(n, dtype=K.dtype, device=K.device),
                           targets - 1.0 / targets.shape[1])  # (n, C)
    W = F1.T @ A  # (h+1, C)
    return W[:-1].T, W[-1]


#: ridge of :func:`ridge_head`, relative to the features' mean squared norm
RIDGE = 1e-2


def head_inputs(module: Any, owner: str, run: Callable[[], Any]) -> "torch.Tensor":
    """(n, h) what the head submodule ``owner`` receives while ``run()`` does a forward pass (a pre-hook:
    the student's own forward, functional or not, and its graph)."""
    seen = []
    handle = module.get_submodule(owner).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


# -- the inner problem -------------------------------------------------------------------------------

def attention_targets(logits: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """(n, L, H, Q, T) attention-label logits, (n, T) mask -> target probabilities over unmasked keys."""
    import torch

    keep = mask.to(torch.bool).view(mask.shape[0], 1, 1, 1, mask.shape[1])
    return logits.masked_fill(~keep, float("-inf")).softmax(-1)


def attention_loss(attn: "torch.Tensor", targets: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """KL(targets || attn) summed over keys, mean over (rows, layers, heads, attended query rows).

    attn: (B, L, H, T, T) the model's attention; targets: (B, L, H, Q, T) with Q = 1 (the [CLS] row) or T.
    """
    import torch

    Q = targets.shape[-2]
    attn = attn[..., :Q, :]  # (B, L, H, Q, T)
    kl = torch.xlogy(targets, targets) - targets * (attn + 1e-12).log()  # 0 where the target is 0
    per_row = kl.sum(-1)  # (B, L, H, Q)
    q_mask = mask[:, :Q].to(per_row.dtype).view(mask.shape[0], 1, 1, Q)  # padded query rows do not count
    return (per_row * q_mask).sum() / (q_mask.sum() * per_row.shape[1] * per_row.shape[2]).clamp_min(1)


def inner_loss(space: TokenSpace, params, x, mask, targets, attn_logits=None) -> "torch.Tensor":
    """Soft cross-entropy of the model on synthetic rows (+ weight x attention-label KL)."""
    from torch.nn import functional as F

    if attn_logits is None or space.attention == "none":
        return F.cross_entropy(space.logits(params, x, mask), targets)
    logits, attn = space.logits_and_attentions(params, x, mask)
    return (F.cross_entropy(logits, targets)
            + space.attention_weight * attention_loss(attn, attention_targets(attn_logits, mask), mask))


@dataclass
class InnerSteps:
    """How the model trains on a synthetic set: optimiser, lr (when not learned), rows per class per step."""

    optimizer: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_per_class: int | None = None

    @classmethod
    def from_settings(cls, inner) -> "InnerSteps":
        """From a recipe's ``distill.inner``."""
        return cls(optimizer=inner.optimizer, lr=inner.lr, momentum=inner.momentum, betas=tuple(inner.betas),
                   batch_per_class=inner.batch_per_class)


def batch_rows(n: int, num_classes: int, per_class: int | None, generator) -> "torch.Tensor | None":
    """Rows of one inner batch: ``per_class`` random rows of each class block (class-major set); None = all."""
    import torch

    ipc = n // num_classes
    if per_class is None or per_class >= ipc:
        return None
    order = torch.rand(num_classes, ipc, generator=generator).argsort(dim=1)[:, :per_class]
    return (order + torch.arange(num_classes).unsqueeze(1) * ipc).reshape(-1)


def train_steps(space: TokenSpace, params: dict, learnables: Mapping[str, "torch.Tensor"], hard: "torch.Tensor",
                num_classes: int, inner: InnerSteps, steps: int, generator, *, graph_from: int = 1
                ) -> dict[str, "torch.Tensor"]:
    """Train ``params`` for ``steps`` inner steps on the set; steps >= ``graph_from`` keep a graph.

    learnables: ``x`` (n, T, d) and optionally ``label_logits``, ``log_lr``, ``attention_logits``.
    Steps before ``graph_from`` run detached (no memory grows with them); a parameter the loss does not
    reach (the word-embedding table, unused with input embeddings) keeps its value. With
    ``space.head_first`` the head is fitted alone on the whole set first (:func:`head_first_step`).
    """
    import torch

    from distillctl.toolbox import optimizer_step

    learn = Learnables.from_dict(dict(learnables))
    x, mask = learnables["x"], space.mask.to(learnables["x"].device)
    targets = learn.targets(hard, num_classes)  # (n, C)
    lr = learn.inner_lr(inner.lr)
    attn = learnables.get("attention_logits")
    names = list(params)
    state = {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in params.items()}
    if space.head_first != "none":  # 0. fit the fresh head first (a linear probe): see head_first_step
        params = head_first_step(space, params, x, mask, targets, lr, graph=graph_from <= 1)
    for t in range(1, steps + 1):
        graph = t >= graph_from
        rows = batch_rows(x.shape[0], num_classes, inner.batch_per_class, generator)
        xb, mb, tb = (x, mask, targets) if rows is None else (x[rows], mask[rows], targets[rows])
        ab = attn if attn is None or rows is None else attn[rows]
        if not graph:
            xb, tb, ab = xb.detach(), tb.detach(), None if ab is None else ab.detach()
            params = {k: p.detach().requires_grad_() for k, p in params.items()}
        else:
            params = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
        with torch.enable_grad():
            loss = inner_loss(space, params, xb, mb, tb, ab)
            grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=graph, allow_unused=True)
        step_lr = lr if graph else lr.detach()
        new = {}
        for k, g in zip(names, grads):
            if g is None:  # not reached by the loss: unchanged
                new[k] = params[k]
                continue
            p, st = optimizer_step(params[k], state[k], g, t, step_lr, optimizer=inner.optimizer,
                                   momentum=inner.momentum, betas=inner.betas, eps=inner.eps)
            new[k], state[k] = p, st if graph else tuple(s.detach() for s in st)
            if not graph:
                new[k] = new[k].detach()
        params = new
    return params


def head_first_step(space: TokenSpace, params: dict, x: "torch.Tensor", mask: "torch.Tensor",
                    targets: "torch.Tensor", lr: "torch.Tensor", *, graph: bool) -> dict:
    """Fit the head (``space.head_names``) alone on the whole set before the inner steps
    (``distill.tokens.head_first``; linear probing, then fine-tuning: Kumar et al., ICLR 2022).

    Why: the body's gradient in a fine-tuning step passes through the head, ``dL/dh = W^T (p - y)``, so from a
    random head the body moves in a direction that head chose, and a set distilled for one initial model
    steers a fresh head's body the wrong way (AG News ipc 1, BENCHMARKS.md).

    - ``sgd``: one plain SGD step of the head at the inner lr: the head becomes W0 + lr x (set features
      weighted by label errors); the set's part dominates more as lr grows, W0 never leaves;
    - ``ridge``: the head is replaced by :func:`ridge_head` on the initial body's features of the set: the
      model after it, and so every inner step, no longer depends on the head it started from at all.

    x (n, T, d), mask (n, T), targets (n, C).
    """
    import torch
    from torch.nn import functional as F

    heads = space.head_names
    if not graph:
        x, targets, lr = x.detach(), targets.detach(), lr.detach()
    out = dict(params)
    if space.head_first == "ridge":
        owner, weight, bias = linear_head(space.module, heads)
        with torch.enable_grad() if graph else torch.no_grad():
            feats = head_inputs(space.module, owner, lambda: space.logits(params, x, mask))  # (n, h)
            out[weight], out[bias] = ridge_head(feats, targets)
        return out
    with torch.enable_grad():
        p = {k: (v if (graph and v.requires_grad) else v.detach().requires_grad_()) if k in heads else v
             for k, v in params.items()}
        loss = F.cross_entropy(space.logits(p, x, mask), targets)
        grads = torch.autograd.grad(loss, [p[k] for k in heads], create_graph=graph)
    for k, g in zip(heads, grads):
        out[k] = p[k] - lr * g if graph else (p[k] - lr * g).detach()
    return out


def meta_step(space: TokenSpace, learnables: Mapping[str, "torch.Tensor"], hard: "torch.Tensor",
              num_classes: int, inner: InnerSteps, real: TokenRows, real_y: "torch.Tensor", generator, *,
              free_steps: int, graph_steps: int, head_seed: int | None = None):
    """One outer step: fine-tune from a head for ``free_steps + graph_steps`` inner steps, score the real
    batch, return :class:`distillctl.unrolling.MetaStep` with the meta-gradient of every learnable."""
    import torch
    from torch.nn import functional as F

    from distillctl.unrolling import MetaStep

    if graph_steps < 1:
        raise ValueError("graph_steps must be >= 1: the meta-gradient needs at least one differentiated step")
    names = list(learnables)
    # 1. The starting model: the initial model, or a head drawn from the pool (from the generator).
    if head_seed is None:
        pick = int(torch.randint(len(space.head_seeds), (1,), generator=generator)) if len(space.head_seeds) > 1 else 0
        head_seed = space.head_seeds[pick]
    params = space.initial(head_seed)
    # 2. The inner steps (the last graph_steps differentiated), then 3. the real batch: (B, T, d).
    params = train_steps(space, params, learnables, hard, num_classes, inner, free_steps + graph_steps, generator,
                         graph_from=free_steps + 1)
    real_x = space.embed(real)  # (B, T, d): the lookup only, the table never changes (unused inside)
    with torch.enable_grad():
        logits = space.logits(params, real_x, real.mask.to(space.device))  # (B, C)
        outer = F.cross_entropy(logits, real_y)
        # 4. The meta-gradient w.r.t. every learnable tensor.
        grads = torch.autograd.grad(outer, [learnables[k] for k in names], allow_unused=True)
    acc = float((logits.argmax(-1) == real_y).float().mean())
    return MetaStep(loss=float(outer.detach()),
                    grads={k: torch.zeros_like(learnables[k]) if g is None else g for k, g in zip(names, grads)},
                    free_steps=free_steps, graph_steps=graph_steps, accuracy=acc)


def finetune_and_score(space: TokenSpace, learnables: Mapping[str, "torch.Tensor"], hard: "torch.Tensor",
                       num_classes: int, inner: InnerSteps, steps: int, rows: TokenRows, y: "torch.Tensor", *,
                       seeds: list[int], batch: int = 256) -> list[float]:
    """Accuracy on ``rows`` of the model fine-tuned on the set from each head seed (no graph)."""
    import torch


    tensors = {k: v.detach() for k, v in learnables.items()}
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(derive_seed(seed, 11))  # the inner batches, if sampled
        params = train_steps(space, space.initial(seed), tensors, hard, num_classes, inner, steps, gen,
                             graph_from=steps + 1)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(rows), batch):
                part = rows[i:i + batch]
                logits = space.logits(params, space.embed(part), part.mask.to(space.device))
                correct += int((logits.argmax(-1).cpu() == y[i:i + batch].cpu()).sum())
        out.append(correct / max(len(rows), 1))
    return out


# -- the starting set --------------------------------------------------------------------------------

def initial_rows(space: TokenSpace, train: TokenRows, y: "torch.Tensor", C: int, ipc: int, gen, *,
                 full_mask: bool = False) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(ipc*C, T, d) input embeddings of distinct random real texts of each class, their (ipc*C, T) masks
    (all ones with ``full_mask``: every position of the sequence is learned) and their (ipc*C,) row indices."""
    import torch

    picked = []
    for c in range(C):
        rows = (y.cpu() == c).nonzero().squeeze(1)  # (n_c,)
        picked.append(rows[torch.randperm(rows.numel(), generator=gen)[:ipc]])
    index = torch.cat(picked)  # (ipc*C,) class-major
    chosen = train[index]
    x = space.embed(chosen)  # (ipc*C, T, d)
    mask = torch.ones_like(chosen.mask, dtype=x.dtype) if full_mask else chosen.mask.to(x.dtype)
    return x, mask.to(x.device), index


def initial_attention(space: TokenSpace, x: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """(n, L, H, Q, T) attention-label logits that start at the initial model's own attention on the rows."""
    import torch

    with torch.no_grad():
        _, attn = space.logits_and_attentions(space.initial(), x, mask)  # (n, L, H, T, T)
    Q = 1 if space.attention == "cls" else attn.shape[-1]
    return attn[..., :Q, :].clamp_min(1e-6).log().contiguous()


# -- readable sets -----------------------------------------------------------------------------------

def nearest_tokens(x: "torch.Tensor", mask: "torch.Tensor", table: "torch.Tensor", k: int = 3
                   ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """For each position of each synthetic sequence, the k vocabulary entries nearest by cosine.

    x: (n, T, d), table: (V, d) -> ids (n, T, k) int64 and cosines (n, T, k); masked positions get -1.
    """
    import torch
    from torch.nn import functional as F

    t = F.normalize(table.float(), dim=-1)  # (V, d)
    ids, sims = [], []
    for row in x.float():  # (T, d): one row at a time keeps the (T, V) matrix small
        s = F.normalize(row, dim=-1) @ t.T  # (T, V)
        top = s.topk(k, dim=-1)
        ids.append(top.indices)
        sims.append(top.values)
    ids, sims = torch.stack(ids), torch.stack(sims)  # (n, T, k)
    off = mask.to(torch.bool).logical_not().cpu()
    ids[off.to(ids.device)] = -1
    return ids.cpu(), sims.cpu()


def nearest_texts(syn_features: "torch.Tensor", real_features: "torch.Tensor", k: int = 3
                  ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(n, h) synthetic and (m, h) real pooled features -> the k nearest real rows by cosine: (n, k) ids, sims."""
    from torch.nn import functional as F

    s = F.normalize(syn_features.float(), dim=-1) @ F.normalize(real_features.float(), dim=-1).T  # (n, m)
    top = s.topk(min(k, s.shape[1]), dim=-1)
    return top.indices.cpu(), top.values.cpu()


def decode_positions(tokenizer, ids: "torch.Tensor") -> list[list[str]]:
    """(T, k) nearest-token ids of one sequence -> per attended position its k tokens (``[]`` when masked)."""
    out = []
    for row in ids.tolist():
        out.append([] if row[0] < 0 else tokenizer.convert_ids_to_tokens(row))
    return out


def readable_line(tokens: list[list[str]]) -> str:
    """The nearest token of each attended position, joined as text (WordPiece ``##`` pieces glued)."""
    words: list[str] = []
    for choices in tokens:
        if not choices:
            continue
        tok = choices[0]
        if tok.startswith("##") and words:
            words[-1] += tok[2:]
        else:
            words.append(tok)
    return " ".join(words)



def initial_model(syn, registry=None):
    """The model a token-level set was distilled for: its student plugin with the options recorded in the set,
    built under the set's ``init_seed`` (the pretrained body with that seed's head), in eval mode."""

    if syn.level != "tokens":
        raise UserError("initial_model: this set is sentence vectors; only a token-level set has an initial model")
    registry = registry or get_registry()
    section = dict((syn.meta.get("distill_students") or [{}])[0] or {})
    name = section.pop("name", None) or syn.meta.get("student")
    if name is None or "init_seed" not in syn.meta:
        raise UserError("initial_model: the set's metadata names no student or init_seed (not saved by distill?)")
    info = registry.get("student", name)
    options = info.options.model_validate(section)
    module = build_seeded(lambda: info.factory(syn.dim, syn.num_classes, options), int(syn.meta["init_seed"]))
    return module.eval()


def tokenizer_for(module, syn):
    """The tokenizer of the model a set was distilled for: ``module.tokenizer()`` when the student has one,
    else the ``transformers`` tokenizer of the folder its ``model`` option names (the ``finetune`` student);
    None when neither is available (readouts then show token ids)."""
    if callable(getattr(module, "tokenizer", None)):
        return module.tokenizer()
    section = dict((syn.meta.get("distill_students") or [{}])[0] or {})
    if "model" not in section:
        return None
    try:
        from transformers import AutoTokenizer

        from distillctl_plugins.students.finetune import resolve_model

        folder, _ = resolve_model(section["model"], section.get("revision"))
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception:  # a readout without words is still a readout; the report says so
        return None

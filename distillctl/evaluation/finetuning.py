"""Evaluation at the token level: fine-tune a pretrained transformer student on a set, K seeds, score on test.

The vector protocol (:mod:`distillctl.evaluation.training`) trains K small students at once through
``vmap``; a 22M-parameter transformer does not vmap, so here the K seeds train one after the other
(or, when steps are chosen on ``val``, in lockstep, so the K students are taken at the same step, as in
the vector protocol). Everything else is the same protocol: one :class:`TrainBudget` for every arm,
seed k's head from ``build_seeded(build, k)`` (the pretrained body is identical for every seed), its
minibatches from its own :class:`BatchStream`, the test split scored once at the end, :class:`Scores`
back.

What a student trains on is :class:`TokenData`: either input embeddings ``x (n, T, d)`` (a synthetic
set) or token ids ``(n, T)`` of real texts, looked up per batch with the student's own (frozen)
word-embedding table (``embed_tokens``), so the 12k x 64 x 384 floats of a full training split are
never held at once. Batches are cut after their last attended position (exact: a position no row
attends to changes nothing), and scoring runs in length-sorted batches.

Device: ``eval.device`` (``auto``: CUDA when torch sees it). The forward passes run under bfloat16 autocast
where the hardware multiplies bfloat16 natively (a GPU that supports it, a CPU with AVX512-BF16 / AMX; float32
weights and optimiser; :meth:`DevicePlan.resolve`); peak memory is
``torch.cuda.max_memory_allocated`` there, else the process's peak resident set (``getrusage``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from distillctl.console import info, is_quiet, progress
from distillctl.devices import release_freed_memory, resolve_device
from distillctl.distillation.tokens import attention_loss
from distillctl.errors import UserError
from distillctl.evaluation.training import ADAM_EPS, BatchStream, Scores, build_seeded, classification_scores

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: rows per forward pass when scoring, on a CPU and on a GPU
SCORE_ROWS_CPU = 64
SCORE_ROWS_GPU = 512


@dataclass
class TokenData:
    """Rows a fine-tuned student trains on or is scored on: ``x`` (n, T, d) input embeddings, or ``ids``
    (n, T) token ids (+ ``type_ids`` for pairs) looked up by the student; ``mask`` (n, T), 1 = attend."""

    mask: "torch.Tensor"
    x: "torch.Tensor | None" = None
    ids: "torch.Tensor | None" = None
    type_ids: "torch.Tensor | None" = None

    def __post_init__(self) -> None:
        if (self.x is None) == (self.ids is None):
            raise UserError("token data: give exactly one of x (n, T, d) and ids (n, T)")
        lead = tuple(self.x.shape[:2]) if self.x is not None else tuple(self.ids.shape)
        if tuple(self.mask.shape) != lead or (self.x is not None and self.x.ndim != 3):
            raise UserError(f"token data: x must be (n, T, d) or ids (n, T) with mask (n, T); got "
                            f"{tuple((self.x if self.x is not None else self.ids).shape)} and mask "
                            f"{tuple(self.mask.shape)}")

    @classmethod
    def of_split(cls, split: Any) -> "TokenData":
        """The rows of a token-level cache split (:class:`distillctl.data.embed.EmbeddingSplit`)."""
        if getattr(split, "ids", None) is None:
            raise UserError("the embeddings are sentence vectors; token-level evaluation needs embed.level: tokens")
        return cls(mask=split.mask, ids=split.ids, type_ids=split.type_ids)

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def take(self, index: "torch.Tensor") -> "TokenData":
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return TokenData(mask=self.mask[index], x=pick(self.x), ids=pick(self.ids), type_ids=pick(self.type_ids))

    def lengths(self) -> "torch.Tensor":
        """(n,) the last attended position + 1 of each row."""
        import torch

        T = self.mask.shape[1]
        on = self.mask.ne(0)
        last = torch.where(on.any(1), T - on.flip(1).int().argmax(1), torch.ones_like(on[:, 0], dtype=torch.long))
        return last.long()

    def batch(self, module: Any, index: "torch.Tensor", device, dtype, *, trim: bool = True
              ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(B, T', d) input embeddings and (B, T') mask of rows ``index``, cut after the last attended position
        (``trim``; else T' = T)."""
        import torch

        mask = self.mask[index]  # (B, T)
        keep = mask.shape[1]
        if trim:
            keep = int(mask.ne(0).any(0).nonzero().max()) + 1 if bool(mask.ne(0).any()) else 1
        mask = mask[:, :keep].to(device=device, dtype=dtype)
        if self.x is not None:
            return self.x[index][:, :keep].to(device=device, dtype=dtype), mask
        ids = self.ids[index][:, :keep].to(device)
        types = None if self.type_ids is None else self.type_ids[index][:, :keep].to(device)
        with torch.no_grad():  # the word table never trains: a plain lookup
            x = module.embed_tokens(ids, types) if types is not None else module.embed_tokens(ids)
        return x.to(dtype), mask


@dataclass
class DevicePlan:
    """Where and how students train: device, autocast dtype of the training passes (None: plain float32), of
    the scoring passes, and rows per scoring pass."""

    device: "torch.device"
    autocast: "torch.dtype | None"
    score_rows: int
    score_autocast: "torch.dtype | None" = None
    replay_autocast: "torch.dtype | None" = None  # a set's own inner steps replayed (as the distill ran them)

    @classmethod
    def resolve(cls, name: str = "auto", *, field: str = "eval.device", precision: str = "auto") -> "DevicePlan":
        """``precision`` (``eval.precision``): ``auto`` = bfloat16 autocast where the hardware multiplies
        bfloat16 natively: a GPU that supports it, or a CPU with AVX512-BF16 / AMX (there a fine-tuning step of
        4 MiniLM layers on 32 texts takes 0.23-0.26 s against 0.43-0.44 s in float32, and scoring ~2x less,
        predictions as float32's but for a few rows in thousands), else float32; ``float32`` = never;
        ``bfloat16`` = always (on a CPU without native support: scoring only, emulated and so slower). Weights
        and optimiser stay float32. On a CPU the replays of a set's own inner steps (``distilled-init``,
        ``distilled-heads``) stay float32: they repeat the step the distill took there."""
        import torch

        device = resolve_device(name, field=field)
        if precision not in ("auto", "float32", "bfloat16"):
            raise UserError(f"eval.precision: {precision!r} is not one of auto, float32, bfloat16")
        if device.type == "cuda":
            bf16 = precision == "bfloat16" or (precision == "auto" and torch.cuda.is_bf16_supported())
            dtype = torch.bfloat16 if bf16 else None
            return cls(device, dtype, SCORE_ROWS_GPU, dtype, dtype)
        native = cpu_has_native_bf16()
        score = precision == "bfloat16" or (precision == "auto" and native)
        train = precision != "float32" and native
        return cls(device, torch.bfloat16 if train else None, SCORE_ROWS_CPU, torch.bfloat16 if score else None)

    def context(self, *, scoring: bool = False, replay: bool = False):
        """Autocast for a training pass, with ``replay`` for a replay of a set's own inner step, or with
        ``scoring`` for a scoring (inference) pass."""
        import contextlib

        import torch

        dtype = self.score_autocast if scoring else self.replay_autocast if replay else self.autocast
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def describe(self) -> str:
        if self.autocast is not None and self.replay_autocast is None and self.device.type == "cpu":
            return f"{self.device} ({str(self.autocast).removeprefix('torch.')} autocast; replays float32)"
        if self.autocast is not None:
            return f"{self.device} ({str(self.autocast).removeprefix('torch.')} autocast)"
        if self.score_autocast is not None:
            return f"{self.device} ({str(self.score_autocast).removeprefix('torch.')} scoring)"
        return f"{self.device}"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the check: assume not
        return False


def reset_peak(plan: DevicePlan) -> None:
    import torch

    if plan.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(plan.device)


def peak_memory_mb(plan: DevicePlan) -> float:
    """Peak GPU memory allocated since :func:`reset_peak` (CUDA), else the process's peak resident set so far
    (MiB; ``getrusage`` cannot be reset: it covers everything the process did before, e.g. loading data)."""
    if plan.device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(plan.device) / 2 ** 20
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


# -- one student --------------------------------------------------------------------------------------

@dataclass
class InnerReplay:
    """The inner steps a token-level set was distilled with (the ``distilled-init`` arm replays them):
    a functional SGD/Adam (:func:`distillctl.unrolling.optimizer_step`, exactly as distillation steps) for
    ``steps`` steps at ``lr`` on ``batch_per_class`` rows per class (None: the whole set)."""

    steps: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_per_class: int | None = None
    head_first: str = "none"  # none | sgd | ridge: fit the head on the whole set first (distill.tokens.head_first)

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "betas": list(self.betas)}


class _Student:
    """One seed's fine-tuning run: the module, its trainable parameters, optimiser and minibatch stream."""

    def __init__(self, build: Callable[[], Any], seed: int, plan: DevicePlan, budget: Any, n: int,
                 replay: InnerReplay | None = None, num_classes: int | None = None, attention: tuple | None = None):
        import torch


        self.seed, self.plan, self.replay, self.attention = seed, plan, replay, attention
        self.module = build_seeded(build, seed).to(plan.device)
        names = getattr(self.module, "trainable_names", None)
        trainable = set(names()) if callable(names) else {k for k, p in self.module.named_parameters()
                                                          if p.requires_grad}
        self.params = [p for k, p in self.module.named_parameters() if k in trainable]
        for k, p in self.module.named_parameters():
            p.requires_grad_(k in trainable)
        self.t = 0
        if replay is not None:  # the distilled-for inner steps: functional optimiser state
            self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
            self.heads = []
            if replay.head_first != "none":  # the head, fitted alone before the first step (as distill did)
                from distillctl.distillation.tokens import head_names

                self.head_names = head_names(build, [k for k, _ in self.module.named_parameters() if k in trainable],
                                             seed)
                self.heads = [p for k, p in self.module.named_parameters() if k in set(self.head_names)]
            self.gen = torch.Generator().manual_seed(seed)
            self.n, self.C = n, int(num_classes or 1)
            self.module.eval()  # as distillation's inner steps: no dropout
            return
        if budget.optimizer == "adam":
            self.opt = torch.optim.Adam(self.params, lr=budget.lr, betas=budget.betas, eps=ADAM_EPS,
                                        weight_decay=budget.weight_decay)
        else:
            self.opt = torch.optim.SGD(self.params, lr=budget.lr, momentum=budget.momentum,
                                       weight_decay=budget.weight_decay)
        self.whole = n <= budget.batch_size
        self.stream = None if self.whole else BatchStream(n, budget.batch_size, seed)
        self.n = n
        self.module.train()

    def _rows(self) -> "torch.Tensor":
        import torch

        if self.replay is not None:
            ipc, per = self.n // self.C, self.replay.batch_per_class
            if per is None or per >= ipc:
                return torch.arange(self.n)
            order = torch.rand(self.C, ipc, generator=self.gen).argsort(dim=1)[:, :per]  # class-major set
            return (order + torch.arange(self.C).unsqueeze(1) * ipc).reshape(-1)
        return torch.arange(self.n) if self.whole else self.stream.next()

    def step(self, data: TokenData, targets: "torch.Tensor", soft: bool) -> float:
        """One optimiser step on the next minibatch; the loss (float)."""
        import torch
        from torch.nn import functional as F

        self.t += 1
        if self.replay is not None and self.replay.head_first != "none" and self.t == 1:
            self._head_first(data, targets, soft)
        rows = self._rows()  # (B,)
        attn_targets = None if self.attention is None else self.attention[0][rows].to(self.plan.device)
        # (B, T', d), (B, T'); with attention labels the whole T (the targets are (B, L, H, Q, T))
        x, mask = data.batch(self.module, rows, self.plan.device, torch.float32, trim=attn_targets is None)
        yb = targets[rows].to(self.plan.device)  # (B,) or (B, C)
        with self.plan.context(replay=self.replay is not None):
            if attn_targets is None:
                logits = self.module(x, mask).float()  # (B, C)
            else:
                logits, attn = self.module(x, mask, output_attentions=True)  # (B, C), (B, L, H, T, T)
                logits = logits.float()
        loss = F.cross_entropy(logits, yb) if not soft else -(yb * logits.log_softmax(-1)).sum(-1).mean()
        if attn_targets is not None:  # the distilled-for inner loss: + weight x KL(targets || attention)

            loss = loss + self.attention[1] * attention_loss(attn.float(), attn_targets, mask)
        if self.replay is None:
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            return float(loss.detach())
        from distillctl.toolbox import optimizer_step

        r = self.replay
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(self.params, grads)):
                if g is None:
                    continue
                new, self.state[i] = optimizer_step(p, self.state[i], g, self.t, r.lr, optimizer=r.optimizer,
                                                    momentum=r.momentum, betas=r.betas, eps=r.eps)
                p.copy_(new)
        return float(loss.detach())

    def _head_first(self, data: TokenData, targets: "torch.Tensor", soft: bool) -> None:
        """Fit the head alone on the whole set, as distillation did before its inner steps
        (:func:`distillctl.distillation.tokens.head_first_step`): one SGD step at the replay's lr, or the ridge
        fit on the head's input features."""
        import torch
        from torch.nn import functional as F

        from distillctl.distillation.tokens import head_inputs, linear_head, ridge_head

        rows = torch.arange(len(data))
        x, mask = data.batch(self.module, rows, self.plan.device, torch.float32, trim=False)
        y = targets.to(self.plan.device)
        if self.replay.head_first == "ridge":
            probs = y.float() if soft else F.one_hot(y, self.C).float()  # (n, C)
            owner, weight, bias = linear_head(self.module, self.head_names)
            with torch.no_grad():
                feats = head_inputs(self.module, owner, lambda: self.module(x, mask))  # (n, h)
                w, b = ridge_head(feats.float(), probs)
                named = dict(self.module.named_parameters())
                named[weight].copy_(w)
                named[bias].copy_(b)
            return
        with self.plan.context(replay=True):
            logits = self.module(x, mask).float()  # (n, C)
        loss = F.cross_entropy(logits, y) if not soft else -(y * logits.log_softmax(-1)).sum(-1).mean()
        grads = torch.autograd.grad(loss, self.heads)
        with torch.no_grad():
            for p, g in zip(self.heads, grads):
                p.sub_(self.replay.lr * g)

    def predict(self, data: TokenData) -> "torch.Tensor":
        """(m,) predicted classes of every row, eval mode, length-sorted batches."""
        import torch

        was = self.module.training
        self.module.eval()
        order = torch.argsort(data.lengths(), descending=True, stable=True)
        out = torch.empty(len(data), dtype=torch.long)
        with torch.inference_mode():
            for i in range(0, len(data), self.plan.score_rows):
                idx = order[i:i + self.plan.score_rows]
                x, mask = data.batch(self.module, idx, self.plan.device, torch.float32)
                with self.plan.context(scoring=True):
                    out[idx] = self.module(x, mask).argmax(-1).cpu()
        self.module.train(was)
        return out

    def digest(self) -> str:
        """A hash of every parameter and buffer, bytes as stored (any dtype, any device): equal digests are
        the same model, which predicts the same classes on the same rows."""
        import hashlib

        import torch

        h = hashlib.blake2b(digest_size=16)
        for name, t in [*self.module.named_parameters(), *self.module.named_buffers()]:
            h.update(name.encode())
            h.update(t.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
        return h.hexdigest()

    def snapshot(self) -> list["torch.Tensor"]:
        return [p.detach().clone() for p in self.params]

    def restore(self, saved: list["torch.Tensor"]) -> None:
        import torch

        with torch.no_grad():
            for p, s in zip(self.params, saved):
                p.copy_(s)


# -- the protocol ------------------------------------------------------------------------------------

def finetune_and_score(build_student: Callable[[], Any], train: TokenData, y_train: "torch.Tensor",
                       test: TokenData, y_test: "torch.Tensor", *, seeds: Sequence[int], budget: Any,
                       num_classes: int, plan: DevicePlan | None = None, description: str | None = None,
                       quiet: bool | None = None, select_on: tuple | None = None, select_every: int | None = None,
                       select_patience: int | None = None, per_seed_rows: "torch.Tensor | None" = None,
                       replay: InnerReplay | None = None, attention: tuple | None = None,
                       scored: dict | None = None):
    """Fine-tune one student per seed on ``train`` with ``budget``; score each on ``test`` once.

    ``y_train`` (n,) int64 classes or (n, C) probabilities (soft labels). ``per_seed_rows`` (K, k): seed k
    trains on rows ``per_seed_rows[k]`` of ``train`` (a new random subset per seed). ``replay``: train with
    the distilled-for inner steps instead of ``budget`` (functional optimiser, ``replay.steps`` steps).
    ``attention=(labels (n, L, H, Q, T) probabilities, weight)``: with ``replay``, the inner loss of a set
    distilled with attention labels (cross-entropy + weight x KL to them).
    ``select_on=(val TokenData, y_val)``: the K students train in lockstep, are scored on val every
    ``select_every`` steps and after the last, and those of the step with the best mean val accuracy (the
    earliest of equal ones) are scored on test; ``select_patience`` checks in a row without a better mean
    end training. ``scored``: {parameter digest: test predictions} shared by the caller across calls on the
    same ``test`` rows: a student whose trained parameters are bit-identical to one already scored (a
    ``head_first: ridge`` set replays to the same model from every head) takes that model's predictions
    instead of a second pass over test (same model, same rows, same predictions; the student is still
    trained). Returns :class:`distillctl.evaluation.training.Scores` with ``peak_memory_mb``, ``device`` and
    ``models_scored`` (distinct models that ran over test) set as attributes.
    """
    import torch

    t0 = time.perf_counter()
    # 1. checks and targets
    seeds = [int(s) for s in seeds]
    K, C = len(seeds), int(num_classes)
    if not seeds or len(set(seeds)) != K:
        raise UserError(f"finetune_and_score: needs distinct seeds, got {seeds}")
    plan = plan or DevicePlan.resolve("auto")
    soft = y_train.is_floating_point()
    n = len(train)
    if y_train.shape[0] != n or (soft and tuple(y_train.shape) != (n, C)):
        raise UserError(f"finetune_and_score: labels {tuple(y_train.shape)} do not fit {n} rows x {C} classes")
    if len(test) == 0:
        raise UserError("finetune_and_score: the evaluation split is empty")
    targets = y_train.float() if soft else y_train.long()
    steps = replay.steps if replay is not None else budget.steps
    reset_peak(plan)
    # seed k's rows: all of train, or its own subset (a new random draw per seed)
    datas = [(train, targets) if per_seed_rows is None
             else (train.take(per_seed_rows[k]), targets[per_seed_rows[k]]) for k in range(K)]

    def new_student(k: int) -> _Student:
        return _Student(build_student, seeds[k], plan, budget, len(datas[k][0]), replay, C, attention)

    # 2. the K students: one after the other, or in lockstep when steps are chosen on val
    with progress(description or "fine-tuning students", steps * (1 if select_on is not None else K),
                  unit="step", quiet=quiet) as bar:
        if select_on is None:
            scored = {} if scored is None else scored
            before = len(scored)
            preds, losses, curve, best_step, done = _train_each(new_student, datas, steps, soft, test, bar, scored)
            models_scored = len(scored) - before
        else:
            preds, losses, curve, best_step, done = _train_in_lockstep(
                new_student, datas, steps, soft, test, select_on, select_every, select_patience, C, bar,
                description=description, quiet=quiet)
            models_scored = K

    # 3. scores
    metrics = classification_scores(torch.stack(preds), y_test, C)
    scores = Scores(seeds=seeds, accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"],
                    positive_f1=metrics.get("positive_f1"), train_loss=losses, seconds=time.perf_counter() - t0,
                    classes_predicted=metrics["classes_predicted"], chosen_steps=best_step,
                    val_curve=curve, steps_run=done)
    scores.peak_memory_mb = round(peak_memory_mb(plan), 1)  # type: ignore[attr-defined]
    scores.device = plan.describe()  # type: ignore[attr-defined]
    scores.models_scored = models_scored  # type: ignore[attr-defined]
    return scores


def _train_each(new_student, datas, steps: int, soft: bool, test, bar, scored: dict):
    """K students one after the other, ``steps`` each (only one model in memory at a time); each scored on
    ``test`` once, or given the predictions of a bit-identical model in ``scored`` (digest -> predictions,
    updated). Returns (preds, last losses, no val curve, no chosen step, steps run)."""
    preds, losses = [], []
    for k, (data, yk) in enumerate(datas):
        student, loss = new_student(k), float("nan")
        for _ in range(steps):
            loss = student.step(data, yk, soft)
            bar.advance(1, loss=loss)
        digest = student.digest()
        if digest not in scored:
            scored[digest] = student.predict(test)  # the test split, once per distinct model
        preds.append(scored[digest])
        losses.append(loss)
        del student
        release_freed_memory()  # before the next student is built
    return preds, losses, None, None, steps


def _train_in_lockstep(new_student, datas, steps: int, soft: bool, test, select_on, select_every: int,
                       select_patience: int | None, C: int, bar, *, description: str | None, quiet: bool | None):
    """K students stepped together, scored on val every ``select_every`` steps and after the last; those of
    the step with the best mean val accuracy (the earliest of equal ones) are scored on ``test`` once.
    ``select_patience`` checks in a row without a better mean end training. Returns (preds, last losses,
    val curve, chosen step, steps run)."""
    import torch

    x_sel, y_sel = select_on
    K = len(datas)
    students = [new_student(k) for k in range(K)]
    losses = [float("nan")] * K
    curve, best, best_step, saved, stale, done = [], -1.0, None, None, 0, 0
    for step in range(1, steps + 1):
        for k, student in enumerate(students):
            losses[k] = student.step(datas[k][0], datas[k][1], soft)
            release_freed_memory()  # the K students' states interleave with each step's freed activations
        bar.advance(1, loss=sum(losses) / K)
        done = step
        if step % select_every == 0 or step == steps:
            pred = torch.stack([s.predict(x_sel) for s in students])  # (K, m_val)
            acc = classification_scores(pred, y_sel, C)["accuracy"]
            curve.append({"step": step, "mean": sum(acc) / K, "values": acc})
            if curve[-1]["mean"] > best:  # strictly better: ties keep the earlier step
                best, best_step, stale = curve[-1]["mean"], step, 0
                saved = [s.snapshot() for s in students]
            else:
                stale += 1
            if not (is_quiet() if quiet is None else quiet):  # a long run shows where it is
                info(f"{description or 'fine-tuning'}: step {step}, val accuracy {curve[-1]['mean']:.4f} "
                     f"(best {best:.4f} at step {best_step})")
            if select_patience is not None and stale >= select_patience:
                break
    for s, snap in zip(students, saved):
        s.restore(snap)
    return [s.predict(test) for s in students], losses, curve, best_step, done  # the chosen students on test, once


def pooled_features(build_student: Callable[[], Any], data: TokenData, plan: DevicePlan, seed: int = 0
                    ) -> "torch.Tensor":
    """(n, d) pooled features of the pretrained student (``features``; the body is the same for every seed),
    in length-sorted batches: what herding and k-center choose real texts by at the token level."""
    import torch


    module = build_seeded(build_student, seed).to(plan.device).eval()
    order = torch.argsort(data.lengths(), descending=True, stable=True)
    out = None
    with torch.inference_mode():
        for i in range(0, len(data), plan.score_rows):
            idx = order[i:i + plan.score_rows]
            x, mask = data.batch(module, idx, plan.device, torch.float32)
            with plan.context(scoring=True):
                f = module.features(x, mask).float().cpu()  # (B, d)
            if out is None:
                out = torch.empty(len(data), f.shape[1])
            out[idx] = f
    del module
    return out


def copy_budget(budget: Any, **changes: Any):
    """``budget`` with some fields changed (a frozen dataclass)."""
    return type(budget)(**{**budget.as_dict(), **changes})


__all__ = ["TokenData", "DevicePlan", "cpu_has_native_bf16", "InnerReplay", "finetune_and_score", "pooled_features", "peak_memory_mb",
           "copy_budget"]

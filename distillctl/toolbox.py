"""The toolbox of a method author: what the built-in methods use, public for third-party ones.

A distillation method (:class:`distillctl.methods.Method`) answers one question per outer step: the
outer loss of the synthetic set and its gradient. The tools here do the parts most methods share:

- :class:`InnerProblem`: the students of the stage as one flat parameter tensor per population
  ``theta: (K, P)``, built by the recipe's student plugin (:meth:`InnerProblem.from_context`), with their
  logits and penultimate features, vectorised over the K students (``torch.func``).
- :func:`sample_rows`: the rows of one inner batch of the synthetic set, ``batch_per_class`` per class.
- :func:`optimizer_step`: one differentiable SGD-momentum or Adam step on ``theta``, in plain tensor ops,
  so ``torch.autograd.grad`` can go through it (``create_graph=True``).
- :class:`VerifiedCache`: tensors a method derives once and reuses across runs (mtt's expert trajectories,
  a teacher's features), saved as safetensors beside the embedding cache and checked by sha256 on every
  read; the stage's cache is ``MethodContext.cache``, keyed by the training data and the student already.

:mod:`distillctl.unrolling` builds on these for bptt (``unroll`` and the unroll strategies); krr, dm and
mtt use them without unrolling. docs/plugins.md has a worked example.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from distillctl.runs import atomic_save_tensors, atomic_write_json
from distillctl.verified import NotVerified, read_verified, sha256_of


# -- the students of a stage ---------------------------------------------------------------------

@dataclass
class InnerProblem:
    """Everything the inner loop needs apart from the learnable tensors.

    ``labels`` are the hard classes of the synthetic rows, shape (n,), n = ipc * C, stored class-major
    (rows ``c*ipc .. c*ipc+ipc-1`` are class c), which is what per-class batches rely on.
    """

    build_student: Callable[[], nn.Module]  # a fresh, randomly initialised student per call
    num_classes: int
    labels: torch.Tensor  # (n,) int64, class-major blocks of ipc rows
    optimizer: str = "adam"  # "sgd" | "adam"
    lr: float = 1e-3  # used when the learnables carry no "log_lr"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_per_class: int | None = None  # synthetic rows per class per inner step; None = all
    population: int = 1  # K students trained at once
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    _template: Any = field(default=None, repr=False)
    _feature_view: Any = field(default=None, repr=False)

    @classmethod
    def from_context(cls, context: Any, population: int | None = None) -> "InnerProblem":
        """A method's problem for its stage (:class:`distillctl.methods.MethodContext`): the recipe's student,
        classes and ``distill.inner`` settings, in the training vectors' dtype and device; ``population``
        overrides ``distill.inner.population``."""
        inner = context.inner
        return cls(context.build_student, context.num_classes, context.hard_labels, optimizer=inner.optimizer,
                   lr=inner.lr, momentum=inner.momentum, betas=tuple(inner.betas),
                   batch_per_class=inner.batch_per_class,
                   population=inner.population if population is None else population,
                   device=context.device, dtype=context.x_train.dtype)

    @property
    def ipc(self) -> int:
        return self.labels.numel() // self.num_classes

    def template(self) -> tuple[nn.Module, list[tuple[str, torch.Size]], dict[str, torch.Tensor]]:
        """A student used only for its structure: parameter names/shapes and buffers."""
        if self._template is None:
            module = self.build_student().to(device=self.device, dtype=self.dtype)
            shapes = [(name, p.shape) for name, p in module.named_parameters()]
            buffers = {name: b.detach() for name, b in module.named_buffers()}
            self._template = (module, shapes, buffers)
        return self._template

    def init_population(self, seed: int, count: int | None = None) -> torch.Tensor:
        """(K, P) fresh student parameters: K students built by the plugin's factory under ``seed``.

        ``count`` builds that many instead of the population's K (e.g. krr replacing some of its pool).
        """
        _, shapes, _ = self.template()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rows = []
            for _ in range(self.population if count is None else count):  # the training itself is vmapped
                student = self.build_student()
                rows.append(torch.cat([p.detach().reshape(-1) for _, p in student.named_parameters()]))
        return torch.stack(rows).to(device=self.device, dtype=self.dtype)  # (K, P)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """One student's flat (P,) parameters as named views with the student's shapes."""
        _, shapes, _ = self.template()
        # one split (its backward is one cat), not P slices (each slice's backward fills a zero (P,) tensor)
        pieces = theta.split([math.prod(shape) for _, shape in shapes])
        return {name: piece.view(shape) for (name, shape), piece in zip(shapes, pieces)}

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One student (theta: (P,)) on a batch x: (B, d) -> (B, C)."""
        module, _, buffers = self.template()
        return torch.func.functional_call(module, (self.unflatten(theta), buffers), (x,))

    def features(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One student's penultimate representation (its ``features(x)``): (B, d) -> (B, h)."""
        module, _, buffers = self.template()
        if self._feature_view is None:  # shares module's parameters; functional_call swaps them in
            self._feature_view = _FeatureView(module)
        view = self._feature_view
        params = {f"student.{k}": v for k, v in self.unflatten(theta).items()}
        bufs = {f"student.{k}": v for k, v in buffers.items()}
        return torch.func.functional_call(view, (params, bufs), (x,))

    def population_features(self, theta: torch.Tensor, x: torch.Tensor, *, vectorized: bool = True) -> torch.Tensor:
        """K students (theta: (K, P)) on the same batch: (B, d) -> (K, B, h); see population_logits."""
        if theta.shape[0] == 1:
            return self.features(theta[0], x).unsqueeze(0)
        if not vectorized:
            return torch.stack([self.features(theta_k, x) for theta_k in theta.unbind(0)])
        return torch.func.vmap(self.features, in_dims=(0, None), randomness="different")(theta, x)

    def population_logits(self, theta: torch.Tensor, x: torch.Tensor, *, vectorized: bool = True) -> torch.Tensor:
        """K students (theta: (K, P)) on the same batch x: (B, d) -> (K, B, C).

        ``vectorized``: one vmapped call, which is what pays off on the small synthetic batches of the
        inner steps. ``False`` calls the students one after another; on a CPU that is faster for the
        large real batch (Transformer, K = 12, 4,096 rows: 8.8 s per outer step instead of 19.6 s;
        BENCHMARKS.md, "Populations"). Both give the same logits.
        """
        if theta.shape[0] == 1:  # one student: the plain call is ~10% faster than a vmap of one
            return self.logits(theta[0], x).unsqueeze(0)
        if not vectorized:
            return torch.stack([self.logits(theta_k, x) for theta_k in theta.unbind(0)])
        return torch.func.vmap(self.logits, in_dims=(0, None), randomness="different")(theta, x)


class _FeatureView(nn.Module):
    """Calls a student's ``features(x)`` as its forward, so functional_call can run it."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student.features(x)


# -- inner batches and steps ---------------------------------------------------------------------

def sample_rows(problem: InnerProblem, generator: torch.Generator) -> torch.Tensor | None:
    """Indices of one inner batch: ``batch_per_class`` random rows from each class block; None = all."""
    b, ipc, C = problem.batch_per_class, problem.ipc, problem.num_classes
    if b is None or b >= ipc:
        return None
    order = torch.rand(C, ipc, generator=generator).argsort(dim=1)[:, :b]  # (C, b) rows within each class
    rows = (order + torch.arange(C).unsqueeze(1) * ipc).reshape(-1)  # (C*b,) rows of the class-major set
    return rows.to(problem.device)


def optimizer_step(theta: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], g: torch.Tensor, t: int,
                   lr: torch.Tensor | float, *, optimizer: str, momentum: float, betas: tuple[float, float],
                   eps: float) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One differentiable SGD-momentum or Adam step t (1-based) of (K, P) parameters with plain tensor ops.

    ``state`` is (buf, unused) for sgd (torch.optim.SGD semantics: buf = momentum * buf + g) and (m, v)
    for Adam, where sqrt(v_hat + eps^2) instead of sqrt(v_hat) + eps keeps d/dv finite at v = 0.
    Returns the new parameters and state; autograd differentiates through it (w.r.t. g and lr).
    """
    a, b = state
    if optimizer == "sgd":
        a = momentum * a + g
        return theta - lr * a, (a, b)
    b1, b2 = betas
    a = b1 * a + (1 - b1) * g
    b = b2 * b + (1 - b2) * g * g
    m_hat, v_hat = a / (1 - b1 ** t), b / (1 - b2 ** t)
    return theta - lr * m_hat / (v_hat + eps ** 2).sqrt(), (a, b)


# -- a verified cache of derived tensors ---------------------------------------------------------

class VerifiedCache:
    """Tensors a method derives from the training data and reuses across runs, verified on every read.

    An entry is ``<folder>/<name>/<digest>.safetensors`` plus a ``.json`` sidecar holding its key and the
    file's sha256; ``digest`` is the sha256 of the whole key: the cache's ``identity`` (what every entry
    depends on: distill gives ``{"data": embedding fingerprint, "student": the student's options}``) and the
    method's own ``key`` (its options, budget, seed, shapes). An entry that no longer matches its sidecar
    (truncated, altered) is reported and rebuilt, never used. A cache folder that cannot be written (a
    read-only shared cache) only costs the reuse: the tensors are used from memory.
    """

    def __init__(self, folder: str | Path, identity: Mapping[str, Any] | None = None,
                 say: Callable[[str], None] = lambda message: None):
        self.folder, self.identity, self.say = Path(folder), dict(identity or {}), say

    def keyed(self, **identity: Any) -> "VerifiedCache":
        """The same cache with more (or replaced) identity, e.g. each student's own options."""
        return VerifiedCache(self.folder, {**self.identity, **identity}, self.say)

    def entry(self, name: str, key: Mapping[str, Any]) -> tuple[Path, dict]:
        """``(path of the safetensors file, the whole key)`` of ``name``'s entry for ``key``."""
        whole = {**self.identity, **key}
        digest = sha256_of(json.dumps(whole, sort_keys=True).encode())[:32]
        return self.folder / name / f"{digest}.safetensors", whole

    def load(self, name: str, key: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
        """The tensors stored for ``key`` when they verify; None when there are none (or they no longer match)."""
        from safetensors.torch import load as load_bytes

        path, _ = self.entry(name, key)
        sidecar = path.with_suffix(".json")
        if not (path.exists() and sidecar.exists()):
            return None
        try:
            recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("sha256")
            if recorded is None:
                raise NotVerified(path, "has no recorded sha256")
            blob, _ = read_verified(path, recorded)
        except (NotVerified, json.JSONDecodeError):
            self.say(f"{name}: {path} does not match its recorded sha256 (truncated or altered); building it again")
            return None
        return load_bytes(blob)

    def save(self, name: str, key: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
             metadata: Mapping[str, str] | None = None) -> Path | None:
        """Store ``tensors`` for ``key`` (atomically, then the sidecar with their sha256); ``metadata`` goes
        into the safetensors header and the sidecar. None when the folder cannot be written."""
        path, whole = self.entry(name, key)
        try:
            atomic_save_tensors(path, tensors, metadata=metadata)
            atomic_write_json(path.with_suffix(".json"), {**(metadata or {}), "key": whole,
                                                           "sha256": sha256_of(path)})
        except OSError as exc:  # a read-only (shared) cache: the run goes on with the tensors in memory
            self.say(f"{name}: cannot cache {path.name} in {path.parent} ({exc.strerror or exc}); using it from memory")
            return None
        return path

    def get(self, name: str, key: Mapping[str, Any], build: Callable[[], dict[str, torch.Tensor]],
            metadata: Mapping[str, str] | None = None) -> tuple[dict[str, torch.Tensor], bool]:
        """``(tensors, reused)``: the stored tensors for ``key`` when they verify, else ``build()``'s, stored."""
        found = self.load(name, key)
        if found is not None:
            return found, True
        tensors = build()
        self.save(name, key, tensors, metadata)
        return tensors, False

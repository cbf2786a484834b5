"""Which real rows a baseline arm trains on, and when a full-data reference checks val: shared by the
vector-level arms (:mod:`distillctl.evaluation.baselines`) and the token-level ones
(:mod:`distillctl.evaluation.token_arms`).

Random subsets are a stratified draw per eval seed; herding and k-center coresets are chosen per class
on the rows' features; ``full-earlystop`` chooses its steps on val at :func:`earlystop_every`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from distillctl.seeds import RANDOM_SUBSET_STREAM, derive_seed

if TYPE_CHECKING:  # pragma: no cover
    import torch

SUBSET_KINDS = ("random", "herding", "kcenter")
#: full-earlystop: steps are chosen in [1, EARLYSTOP_MAX_FACTOR x eval.steps] ...
EARLYSTOP_MAX_FACTOR = 10
#: ... checking val at least EARLYSTOP_CHECKS times per eval.steps (see :func:`earlystop_every`)
EARLYSTOP_CHECKS = 4
#: ... and stopping after EARLYSTOP_PATIENCE checks in a row without a better mean val accuracy (one eval
#: budget of steps past the best: the 10x cap is then only reached by a student still improving)
EARLYSTOP_PATIENCE = 4


# -- coreset selection (one class at a time; rows of X are that class's training vectors) ---------

def herding_order(X: "torch.Tensor", k: int) -> "torch.Tensor":
    """Indices of the first ``k`` herding picks from X (n, d): greedy mean matching.

    Pick t minimises || mu - (x_1 + ... + x_{t-1} + x) / t || over the rows x not yet picked, where mu
    is the mean of X. Ties go to the lowest index. Computed in float64.

    Expanded, t^2 times that squared gap is ||x||^2 - 2 x.(t mu - running) + a term the same for every x, so
    each pick is one matrix-vector product over X, with no (n, d) temporaries: the direct form made four, float64,
    and took 315 MiB beyond the rows to choose MRPC's ipc-25 coreset from its 1,536-d pair features (now 57 MiB).
    """
    import torch

    X = X.double()  # (n, d)
    n = X.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside [0, {n}]")
    mu = X.mean(0)  # (d,)
    sq = torch.einsum("nd,nd->n", X, X)  # (n,) ||x||^2, without an (n, d) temporary
    running = torch.zeros_like(mu)  # (d,) sum of the picks so far
    taken = torch.zeros(n, dtype=torch.bool)
    order = []
    for t in range(1, k + 1):
        gap = sq - 2.0 * (X @ (t * mu - running))  # (n,) t^2 x squared distance of the new mean to mu, less a constant
        gap[taken] = float("inf")
        i = int(torch.argmin(gap))  # first minimum
        order.append(i)
        taken[i] = True
        running += X[i]
    return torch.tensor(order, dtype=torch.long)


def kcenter_order(X: "torch.Tensor", k: int) -> "torch.Tensor":
    """Indices of the first ``k`` k-center-greedy picks from X (n, d).

    The first pick is the row nearest the mean of X; each next pick is the row with the largest
    distance to its nearest pick (ties: lowest index). Computed in float64.
    """
    import torch

    X = X.double()  # (n, d)
    n = X.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside [0, {n}]")
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    first = int(torch.argmin(((X - X.mean(0)) ** 2).sum(1)))
    order = [first]
    nearest = ((X - X[first]) ** 2).sum(1)  # (n,) squared distance to the nearest pick
    nearest[first] = -1.0  # never picked twice, even among duplicates
    for _ in range(1, k):
        i = int(torch.argmax(nearest))  # first maximum
        order.append(i)
        nearest = torch.minimum(nearest, ((X - X[i]) ** 2).sum(1))
        nearest[order] = -1.0
    return torch.tensor(order, dtype=torch.long)


def coreset(X: "torch.Tensor", y: "torch.Tensor", num_classes: int, ipc: int, method: str) -> "torch.Tensor":
    """Row indices (ipc*C,) of a per-class coreset, class-major (rows c*ipc .. c*ipc+ipc-1 are class c)."""
    import torch

    pick = {"herding": herding_order, "kcenter": kcenter_order}[method]
    out = []
    for c in range(num_classes):
        rows = torch.nonzero(y == c).flatten()  # (n_c,) in row order
        out.append(rows[pick(X[rows], ipc)])
    return torch.cat(out)


def random_subsets(y: "torch.Tensor", num_classes: int, ipc: int, seeds: Sequence[int]) -> "torch.Tensor":
    """(K, ipc*C) row indices: for each seed a stratified draw of ``ipc`` rows per class, class-major.

    Seed s draws from its own generator, so its subset does not depend on the other seeds, and its
    subsets are nested in ipc (the first ipc rows of one fixed permutation per class).
    """
    import torch

    out = []
    for s in seeds:
        gen = torch.Generator().manual_seed(derive_seed(int(s), RANDOM_SUBSET_STREAM))
        rows = []
        for c in range(num_classes):
            members = torch.nonzero(y == c).flatten()  # (n_c,)
            rows.append(members[torch.randperm(len(members), generator=gen)[:ipc]])
        out.append(torch.cat(rows))
    return torch.stack(out)


def earlystop_every(steps: int) -> int:
    """Steps between val checks of ``full-earlystop``: ``steps / k`` for the smallest k >= EARLYSTOP_CHECKS
    dividing ``steps`` (1000 -> 250, 30 -> 6), so the same-budget step ``steps`` is always a checked one."""
    k = next(k for k in range(min(EARLYSTOP_CHECKS, steps), steps + 1) if steps % k == 0)
    return steps // k

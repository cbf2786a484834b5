"""The meta-gradient of the inner loop: finite differences, a second implementation, strategy identities."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
import torch
from torch.nn import functional as F

from distillctl.toolbox import InnerProblem
from distillctl.unrolling import FullUnroll, RandomTruncatedUnroll, TruncatedUnroll, inner_lr, synthetic_targets
from distillctl_plugins.students import TransformerOptions
from distillctl_plugins.students.models import build_mlp, build_transformer

D, C, IPC = 3, 2, 2


def make_problem(optimizer="sgd", population=1, dtype=torch.float64, build=None, **kw):
    build = build or (lambda: build_mlp(D, C, NS(hidden=[4], activation="tanh", dropout=0.0)))
    return InnerProblem(build, C, torch.arange(C).repeat_interleave(IPC), optimizer=optimizer, lr=0.1,
                        population=population, dtype=dtype, **kw)


def make_learnables(soft=True, learn_lr=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"x": torch.randn(C * IPC, D, generator=g, dtype=dtype)}
    if soft:
        out["label_logits"] = torch.randn(C * IPC, C, generator=g, dtype=dtype)
    if learn_lr:
        out["log_lr"] = torch.tensor(-1.5, dtype=dtype)
    return {k: v.requires_grad_() for k, v in out.items()}


def real_batch(n=16, d=D, dtype=torch.float64):
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, C, (n,), generator=g)


def reference_meta_gradient(problem, learn, real_x, real_y, seed, free, graph):
    """A second, deliberately plain implementation: one student at a time, a python list of
    parameter tensors, per-tensor optimiser math, autograd create_graph=True in the window."""
    theta0 = problem.init_population(seed)  # (K, P): the same initial students as `unroll`
    module, shapes, _ = problem.template()
    names = [n for n, _ in shapes]
    targets_full = synthetic_targets(problem, learn)
    lr_full = inner_lr(problem, learn)
    losses = []
    for k in range(theta0.shape[0]):  # a python loop over the population
        params = [p.clone() for p in problem.unflatten(theta0[k]).values()]
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        for t in range(1, free + graph + 1):
            in_window = t > free
            x = learn["x"] if in_window else learn["x"].detach()
            targets = targets_full if in_window else targets_full.detach()
            lr = lr_full if in_window else lr_full.detach()
            params = [p if (in_window and p.requires_grad) else p.detach().requires_grad_() for p in params]
            out = torch.func.functional_call(module, dict(zip(names, params)), (x,))
            loss = -(targets * out.log_softmax(-1)).sum(-1).mean()
            grads = torch.autograd.grad(loss, params, create_graph=in_window)
            new = []
            for i, (p, g) in enumerate(zip(params, grads)):
                if problem.optimizer == "sgd":
                    m[i] = problem.momentum * m[i] + g
                    new.append(p - lr * m[i])
                else:
                    b1, b2 = problem.betas
                    m[i] = b1 * m[i] + (1 - b1) * g
                    v[i] = b2 * v[i] + (1 - b2) * g * g
                    new.append(p - lr * (m[i] / (1 - b1 ** t)) / (v[i] / (1 - b2 ** t) + problem.eps ** 2).sqrt())
            params = new
            if not in_window:
                m, v = [a.detach() for a in m], [a.detach() for a in v]
        out = torch.func.functional_call(module, dict(zip(names, params)), (real_x,))
        losses.append(F.cross_entropy(out, real_y))
    outer = torch.stack(losses).mean()
    keys = list(learn)
    grads = torch.autograd.grad(outer, [learn[k] for k in keys])
    return float(outer.detach()), dict(zip(keys, grads))


def seed_of(gen_seed: int) -> int:
    """The student seed `unroll` draws first from a generator seeded with gen_seed."""
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(gen_seed)))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_full_bptt_matches_finite_differences(optimizer):
    problem = make_problem(optimizer)
    learn = make_learnables()
    rx, ry = real_batch()
    strategy = FullUnroll(total=4)
    ms = strategy.meta_gradient(problem, learn, rx, ry, torch.Generator().manual_seed(7))

    def loss_at(values):
        with torch.no_grad():
            probe = {k: v.detach().clone().requires_grad_() for k, v in values.items()}
        return strategy.meta_gradient(problem, probe, rx, ry, torch.Generator().manual_seed(7)).loss

    eps = 1e-6
    for key, tensor in learn.items():
        flat = tensor.detach().reshape(-1)
        numeric = torch.empty_like(flat)
        for i in range(flat.numel()):
            plus = {k: v.detach().clone() for k, v in learn.items()}
            minus = {k: v.detach().clone() for k, v in learn.items()}
            plus[key].view(-1)[i] += eps
            minus[key].view(-1)[i] -= eps
            numeric[i] = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        torch.testing.assert_close(ms.grads[key].reshape(-1), numeric, rtol=1e-5, atol=1e-8, msg=key)
    assert ms.free_steps == 0 and ms.graph_steps == 4


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ratbptt_from_zero_with_full_window_equals_full(optimizer):
    problem = make_problem(optimizer)
    learn = make_learnables()
    rx, ry = real_batch()
    rat = RandomTruncatedUnroll(window=5, total=5, min_start=0)
    full = FullUnroll(total=5)
    a = rat.meta_gradient(problem, learn, rx, ry, torch.Generator().manual_seed(3))
    b = full.meta_gradient(problem, learn, rx, ry, torch.Generator().manual_seed(3))
    assert a.free_steps == 0 and a.graph_steps == 5
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    for k in learn:
        torch.testing.assert_close(a.grads[k], b.grads[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_truncated_equals_autograd_through_last_window(optimizer):
    problem = make_problem(optimizer)
    learn = make_learnables()
    rx, ry = real_batch()
    ms = TruncatedUnroll(window=2, total=5).meta_gradient(problem, learn, rx, ry, torch.Generator().manual_seed(11))
    assert (ms.free_steps, ms.graph_steps) == (3, 2)
    loss, grads = reference_meta_gradient(problem, learn, rx, ry, seed_of(11), free=3, graph=2)
    assert ms.loss == pytest.approx(loss, rel=1e-10)
    for k in learn:
        torch.testing.assert_close(ms.grads[k], grads[k], rtol=1e-8, atol=1e-10)
    # and it differs from the full unroll (the prefix really is cut off)
    full = FullUnroll(total=5).meta_gradient(problem, learn, rx, ry, torch.Generator().manual_seed(11))
    assert not torch.allclose(full.grads["x"], ms.grads["x"])


def test_ratbptt_window_start_is_uniform_and_bounded():
    strategy = RandomTruncatedUnroll(window=3, total=10, min_start=2)
    g = torch.Generator().manual_seed(0)
    starts = [strategy.plan(g)[0] for _ in range(2000)]
    assert min(starts) == 2 and max(starts) == 7  # [min_start, total - window]
    counts = torch.bincount(torch.tensor(starts))[2:]
    assert counts.min() > 2000 / 6 * 0.75
    assert all(strategy.plan(g)[1] == 3 for _ in range(5))


@pytest.mark.parametrize("student", ["mlp", "transformer"])
def test_vmapped_population_equals_python_loop(student):
    if student == "mlp":
        build = None
    else:
        opts = TransformerOptions(n_tokens=2, d_model=4, layers=1, heads=2, ff=8)
        build = lambda: build_transformer(4, C, opts)
    d = 3 if student == "mlp" else 4
    problem = make_problem("adam", population=3, build=build)
    g = torch.Generator().manual_seed(5)
    learn = {"x": torch.randn(C * IPC, d, generator=g, dtype=torch.float64).requires_grad_(),
             "log_lr": torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)}
    rx, ry = real_batch(d=d)
    ms = TruncatedUnroll(window=2, total=3).meta_gradient(problem, learn, rx, ry, torch.Generator().manual_seed(9))
    loss, grads = reference_meta_gradient(problem, learn, rx, ry, seed_of(9), free=1, graph=2)
    assert ms.loss == pytest.approx(loss, rel=1e-10)
    for k in learn:
        torch.testing.assert_close(ms.grads[k], grads[k], rtol=1e-8, atol=1e-10)


def test_population_logits_vectorized_or_one_by_one_agree_with_their_gradients():
    """The real batch is scored student by student, the inner batches vmapped: both paths give the same
    logits and the same gradient with respect to the (K, P) parameters and the input."""
    opts = TransformerOptions(n_tokens=2, d_model=4, layers=1, heads=2, ff=8)
    problem = make_problem("adam", population=3, build=lambda: build_transformer(4, C, opts))
    theta = problem.init_population(0).requires_grad_()  # (3, P)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 6, C, dtype=torch.float64)
    results = []
    for vectorized in (True, False):
        out = problem.population_logits(theta, x, vectorized=vectorized)  # (3, 6, C)
        results.append((out, *torch.autograd.grad((out * w).sum(), [theta, x])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_population_students_differ_and_dropout_runs_under_vmap():
    problem = make_problem("adam", population=4, dtype=torch.float32,
                       build=lambda: build_mlp(D, C, NS(hidden=[8], activation="relu", dropout=0.5)))
    theta = problem.init_population(0)
    assert theta.shape[0] == 4 and not torch.equal(theta[0], theta[1])
    learn = make_learnables(dtype=torch.float32)
    rx, ry = real_batch(dtype=torch.float32)
    ms = RandomTruncatedUnroll(window=2, total=4).meta_gradient(problem, learn, rx, ry, torch.Generator().manual_seed(1))
    again = RandomTruncatedUnroll(window=2, total=4).meta_gradient(problem, learn, rx, ry,
                                                                   torch.Generator().manual_seed(1))
    assert all(torch.isfinite(g).all() for g in ms.grads.values())
    for k in learn:  # an outer step is a pure function of the generator, dropout included
        assert torch.equal(ms.grads[k], again.grads[k])


def test_per_class_batches_are_class_blocks():
    from distillctl.toolbox import sample_rows

    problem = InnerProblem(lambda: None, 3, torch.arange(3).repeat_interleave(5), batch_per_class=2)
    rows = sample_rows(problem, torch.Generator().manual_seed(0))
    assert rows.shape == (6,)
    assert torch.equal(problem.labels[rows], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert len(set(rows.tolist())) == 6

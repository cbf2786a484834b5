"""train_and_score: vmapped K students against a plain loop of nn.Module + torch.optim students."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distillctl.errors import UserError
from distillctl.evaluation.training import (
    BatchStream,
    TrainBudget,
    build_seeded,
    classification_scores,
    majority_scores,
    train_and_score,
)


def tiny_mlp(d=6, h=8, c=3):
    return lambda: nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c))


def blobs(n_per_class=12, d=6, c=3, seed=0, spread=0.6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g, dtype=dtype) * 2
    y = torch.arange(c).repeat_interleave(n_per_class)
    x = centers[y] + spread * torch.randn(len(y), d, generator=g, dtype=dtype)
    return x, y


def reference_loop(build, x, y, x_eval, seeds, budget, soft=False):
    """The obvious implementation: one nn.Module and one torch.optim optimiser per seed."""
    preds, losses = [], []
    for s in seeds:
        model = build_seeded(build, s).to(x.dtype)
        if budget.optimizer == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=budget.lr, momentum=budget.momentum,
                                  weight_decay=budget.weight_decay)
        n = x.shape[0]
        stream = None if n <= budget.batch_size else BatchStream(n, budget.batch_size, s)
        for _ in range(budget.steps):
            idx = torch.arange(n) if stream is None else stream.next()
            logits = model(x[idx])
            if soft:
                loss = -(y[idx] * logits.log_softmax(-1)).sum(-1).mean()
            else:
                loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
        with torch.no_grad():
            preds.append(model(x_eval).argmax(-1))
    return torch.stack(preds), losses


@pytest.mark.parametrize("optimizer,batch,wd", [("adam", 10, 0.0), ("sgd", 10, 1e-3), ("adam", 1000, 1e-2)])
def test_vmapped_students_equal_a_loop_of_single_students(optimizer, batch, wd):
    x, y = blobs(spread=2.0)
    xe, ye = blobs(n_per_class=20, seed=1, spread=2.0)
    budget = TrainBudget(steps=40, optimizer=optimizer, lr=0.05, momentum=0.9, batch_size=batch, weight_decay=wd)
    seeds = [0, 3, 7]
    build = tiny_mlp()
    scores = train_and_score(build, x, y, xe, ye, seeds=seeds, budget=budget, num_classes=3, return_params=True)
    ref_pred, ref_loss = reference_loop(build, x, y, xe, seeds, budget)
    ref = classification_scores(ref_pred, ye, 3)
    assert scores.accuracy == pytest.approx(ref["accuracy"], abs=1e-12)
    assert scores.macro_f1 == pytest.approx(ref["macro_f1"], abs=1e-12)
    assert scores.train_loss == pytest.approx(ref_loss, rel=1e-8)
    assert scores.params["0.weight"].shape == (3, 8, 6)
    assert not torch.equal(scores.params["0.weight"][0], scores.params["0.weight"][1])


def test_trained_weights_match_reference_exactly():
    x, y = blobs(spread=2.0)
    budget = TrainBudget(steps=25, optimizer="adam", lr=0.02, batch_size=8)
    build = tiny_mlp()
    scores = train_and_score(build, x, y, x, y, seeds=[5, 6], budget=budget, num_classes=3, return_params=True)
    for k, s in enumerate([5, 6]):
        model = build_seeded(build, s).double()
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        stream = BatchStream(x.shape[0], 8, s)
        for _ in range(25):
            idx = stream.next()
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(scores.params[name][k], p.detach(), rtol=1e-9, atol=1e-10)


def test_seed_result_does_not_depend_on_k():
    x, y = blobs(spread=2.5)
    xe, ye = blobs(n_per_class=30, seed=2, spread=2.5)
    budget = TrainBudget(steps=30, lr=0.03, batch_size=7)
    one = train_and_score(tiny_mlp(), x, y, xe, ye, seeds=[4], budget=budget, num_classes=3, return_params=True)
    many = train_and_score(tiny_mlp(), x, y, xe, ye, seeds=[0, 1, 2, 3, 4], budget=budget, num_classes=3,
                           return_params=True)
    assert many.accuracy[4] == one.accuracy[0]
    assert many.train_loss[4] == pytest.approx(one.train_loss[0], rel=1e-10)
    for name in one.params:
        torch.testing.assert_close(many.params[name][4], one.params[name][0], rtol=1e-10, atol=1e-12)


def test_global_rng_untouched():
    x, y = blobs()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_and_score(tiny_mlp(), x, y, x, y, seeds=[0, 1], budget=TrainBudget(steps=3, batch_size=5), num_classes=3)
    assert torch.equal(torch.rand(3), expected)


def test_linearly_separable_problem_is_learned():
    x, y = blobs(n_per_class=20, d=5, c=4, spread=0.2, dtype=torch.float32)
    xe, ye = blobs(n_per_class=50, d=5, c=4, spread=0.2, dtype=torch.float32)  # same centers (seed 0)
    scores = train_and_score(lambda: nn.Linear(5, 4), x, y, xe, ye, seeds=range(4),
                             budget=TrainBudget(steps=150, lr=0.05, batch_size=16), num_classes=4)
    assert min(scores.accuracy) >= 0.99
    assert scores.mean() >= 0.99 and scores.std() < 0.01
    assert min(scores.macro_f1) >= 0.99
    assert scores.positive_f1 is None
    assert scores.classes_predicted == [4, 4, 4, 4]


def test_students_trained_on_one_class_are_reported_as_single_class():
    x, y = blobs(n_per_class=20, d=5, c=4, spread=0.2, dtype=torch.float32)
    xe, ye = blobs(n_per_class=50, d=5, c=4, spread=0.2, dtype=torch.float32)
    scores = train_and_score(lambda: nn.Linear(5, 4), x, torch.full_like(y, 2), xe, ye, seeds=range(3),
                             budget=TrainBudget(steps=100, lr=0.05, batch_size=16), num_classes=4)
    assert scores.classes_predicted == [1, 1, 1]
    assert scores.accuracy == pytest.approx([0.25] * 3)  # the share of class 2 in the eval rows


def test_soft_one_hot_labels_equal_hard_labels():
    x, y = blobs(spread=1.5)
    budget = TrainBudget(steps=20, lr=0.05, batch_size=9)
    hard = train_and_score(tiny_mlp(), x, y, x, y, seeds=[1, 2], budget=budget, num_classes=3, return_params=True)
    soft = train_and_score(tiny_mlp(), x, F.one_hot(y, 3).double(), x, y, seeds=[1, 2], budget=budget,
                           num_classes=3, return_params=True)
    assert soft.accuracy == hard.accuracy
    for name in hard.params:
        torch.testing.assert_close(soft.params[name], hard.params[name], rtol=1e-10, atol=1e-12)


def test_soft_labels_match_reference_loop():
    x, _ = blobs()
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(x.shape[0], 3, generator=g, dtype=torch.float64), -1)
    budget = TrainBudget(steps=15, lr=0.05, batch_size=1000)
    scores = train_and_score(tiny_mlp(), x, probs, x, probs.argmax(-1), seeds=[0, 1], budget=budget,
                             num_classes=3)
    _, ref_loss = reference_loop(tiny_mlp(), x, probs, x, [0, 1], budget, soft=True)
    assert scores.train_loss == pytest.approx(ref_loss, rel=1e-8)


def test_metrics_match_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for C in (2, 3, 5):
        y = torch.randint(0, C, (200,), generator=g)
        pred = torch.randint(0, C, (4, 200), generator=g)
        pred[1] = y  # perfect
        pred[2] = 0  # one class only: other classes have F1 0
        if C == 5:
            y[y == 4] = 3  # class 4 absent from y_true
        got = classification_scores(pred, y, C)
        for k in range(4):
            yt, yp = y.numpy(), pred[k].numpy()
            assert got["accuracy"][k] == pytest.approx(sklearn_metrics.accuracy_score(yt, yp))
            assert got["macro_f1"][k] == pytest.approx(sklearn_metrics.f1_score(
                yt, yp, labels=list(range(C)), average="macro", zero_division=0))
            if C == 2:
                assert got["positive_f1"][k] == pytest.approx(sklearn_metrics.f1_score(yt, yp, zero_division=0))
        assert ("positive_f1" in got) == (C == 2)
        assert got["classes_predicted"] == [len(set(pred[k].tolist())) for k in range(4)]
        assert got["classes_predicted"][2] == 1


def test_majority_scores():
    y_train = torch.tensor([0, 1, 1, 2, 1, 2])
    y_eval = torch.tensor([1, 1, 0, 2])
    cls, m = majority_scores(y_train, y_eval, 3)
    assert cls == 1
    assert m["accuracy"] == 0.5
    assert m["macro_f1"] == pytest.approx((0 + 2 * 2 / (2 + 4) + 0) / 3)
    cls, m = majority_scores(torch.tensor([1, 0]), torch.tensor([1, 1, 0]), 2)  # tie -> lowest class
    assert cls == 0 and m["positive_f1"] == 0.0


def test_budget_from_eval_and_errors():
    from distillctl.recipe import EvalSettings

    b = TrainBudget.from_eval(EvalSettings(steps=12, optimizer="sgd", lr=0.1, batch_size=8))
    assert (b.steps, b.optimizer, b.lr, b.batch_size, b.momentum) == (12, "sgd", 0.1, 8, 0.9)
    assert "sgd" in b.describe() and "12 steps" in b.describe()
    x, y = blobs()
    with pytest.raises(UserError, match="labels must be in"):
        train_and_score(tiny_mlp(), x, y + 5, x, y, seeds=[0], budget=b, num_classes=3)
    with pytest.raises(UserError, match="soft labels"):
        train_and_score(tiny_mlp(), x, torch.ones(x.shape[0], 2, dtype=x.dtype), x, y, seeds=[0], budget=b,
                        num_classes=3)
    with pytest.raises(UserError, match="optimizer"):
        TrainBudget(optimizer="rmsprop")


def test_batch_stream_covers_every_row_once_per_pass():
    s = BatchStream(10, 4, seed=0)
    rows = torch.cat([s.next() for _ in range(5)])  # 20 rows = 2 passes
    assert sorted(rows[:10].tolist()) == list(range(10))
    assert sorted(rows[10:].tolist()) == list(range(10))
    assert not torch.equal(BatchStream(10, 4, seed=1).next(), BatchStream(10, 4, seed=0).next())


@pytest.mark.parametrize("batch", [5, 100])
def test_per_seed_training_sets_equal_separate_runs(batch):
    """(K, n, d) sets: seed k trains on set k only, exactly as if it were trained alone."""
    x, y = blobs(spread=1.5)
    xe, ye = blobs(n_per_class=10, seed=4, spread=1.5)
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(x.shape[0], generator=g)[:12] for _ in range(3)])  # (3, 12)
    budget = TrainBudget(steps=20, lr=0.05, batch_size=batch)
    both = train_and_score(tiny_mlp(), x[idx], y[idx], xe, ye, seeds=[0, 1, 2], budget=budget, num_classes=3,
                           return_params=True)
    for k in range(3):
        alone = train_and_score(tiny_mlp(), x[idx[k]], y[idx[k]], xe, ye, seeds=[k], budget=budget,
                                num_classes=3, return_params=True)
        assert both.accuracy[k] == alone.accuracy[0]
        for name in alone.params:
            torch.testing.assert_close(both.params[name][k], alone.params[name][0], rtol=1e-10, atol=1e-12)
    with pytest.raises(UserError, match="K=2"):
        train_and_score(tiny_mlp(), x[idx], y[idx], xe, ye, seeds=[0, 1], budget=budget, num_classes=3)


def test_real_mlp_student_trains():
    """The built-in `mlp` plugin through the registry, with dropout (random layers under vmap)."""
    from distillctl.plugins import get_registry

    info = get_registry().get("student", "mlp")
    x, y = blobs(n_per_class=20, d=6, c=3, spread=0.3, dtype=torch.float32)
    for opts in ({"hidden": [16]}, {"hidden": [16], "dropout": 0.2}):
        build = lambda: info.factory(6, 3, info.options(**opts))  # noqa: E731
        scores = train_and_score(build, x, y, x, y, seeds=[0, 1], budget=TrainBudget(steps=60, lr=0.02, batch_size=16),
                                 num_classes=3)
        assert min(scores.accuracy) > 0.95


def test_select_on_val_scores_the_students_of_the_best_val_step():
    """Early stopping: the students scored on the evaluation split are those of the checked step with the best
    mean accuracy on the selection split, i.e. exactly what a budget of that many steps trains; the curve is
    their accuracy on the selection split; the evaluation labels play no part in the choice."""
    x, y = blobs(n_per_class=20, spread=2.5, seed=1)
    x_test, y_test = blobs(n_per_class=10, spread=2.5, seed=3)  # here the selection split is (x, y) itself
    build = tiny_mlp()
    budget = TrainBudget(steps=60, lr=0.05, batch_size=16)
    seeds = [0, 1, 2]
    sel = train_and_score(build, x, y, x_test, y_test, seeds=seeds, budget=budget, num_classes=3,
                          select_on=(x, y), select_every=7)
    assert [p["step"] for p in sel.val_curve] == [7, 14, 21, 28, 35, 42, 49, 56, 60]  # and the last step
    # the curve: accuracy of the students trained for that many steps, scored on the selection split
    at_14 = train_and_score(build, x, y, x, y, seeds=seeds, budget=TrainBudget(steps=14, lr=0.05, batch_size=16),
                            num_classes=3)
    assert sel.val_curve[1]["values"] == at_14.accuracy and sel.val_curve[1]["mean"] == pytest.approx(at_14.mean())
    means = [p["mean"] for p in sel.val_curve]
    assert sel.chosen_steps == sel.val_curve[means.index(max(means))]["step"]  # the earliest best
    assert sel.chosen_steps < 60  # (here the best is not simply the last step)
    plain = train_and_score(build, x, y, x_test, y_test, seeds=seeds, num_classes=3,
                            budget=TrainBudget(steps=sel.chosen_steps, lr=0.05, batch_size=16), return_params=True)
    assert sel.accuracy == plain.accuracy and sel.macro_f1 == plain.macro_f1
    # with a selection split that never improves after the first check, the first check's students are scored
    flat = train_and_score(build, x, y, x_test, y_test, seeds=seeds, budget=budget, num_classes=3,
                           select_on=(x[:1], y[:1]), select_every=7)
    first = [p for p in flat.val_curve if p["mean"] == max(q["mean"] for q in flat.val_curve)][0]["step"]
    assert flat.chosen_steps == first
    # the evaluation labels do not move the choice
    shuffled = train_and_score(build, x, y, x_test, y_test.flip(0), seeds=seeds, budget=budget, num_classes=3,
                               select_on=(x, y), select_every=7)
    assert shuffled.chosen_steps == sel.chosen_steps and shuffled.val_curve == sel.val_curve
    # without select_on nothing changes: the students of the last step
    last = train_and_score(build, x, y, x_test, y_test, seeds=seeds, budget=budget, num_classes=3)
    assert last.chosen_steps is None and last.val_curve is None
    with pytest.raises(UserError, match="select_every"):
        train_and_score(build, x, y, x_test, y_test, seeds=seeds, budget=budget, num_classes=3,
                        select_on=(x, y), select_every=0)


def test_select_patience_stops_after_that_many_checks_without_a_better_val_mean():
    """Early stopping with patience: training ends P checks after the best one (the curve is the prefix of the
    run without patience), and the students scored are still those of the best check."""
    x, y = blobs(n_per_class=20, spread=2.5, seed=1)
    x_test, y_test = blobs(n_per_class=10, spread=2.5, seed=3)
    build = tiny_mlp()
    budget = TrainBudget(steps=60, lr=0.05, batch_size=16)
    seeds = [0, 1, 2]
    # a one-row selection split stops improving at once: its first check is the best
    full = train_and_score(build, x, y, x_test, y_test, seeds=seeds, budget=budget, num_classes=3,
                           select_on=(x[:1], y[:1]), select_every=7)
    stopped = train_and_score(build, x, y, x_test, y_test, seeds=seeds, budget=budget, num_classes=3,
                              select_on=(x[:1], y[:1]), select_every=7, select_patience=2)
    best = [p["step"] for p in full.val_curve].index(full.chosen_steps)
    assert stopped.val_curve == full.val_curve[:best + 3]  # the best check and 2 more
    assert stopped.steps_run == full.val_curve[best + 2]["step"] < 60 and full.steps_run == 60
    assert stopped.chosen_steps == full.chosen_steps and stopped.accuracy == full.accuracy

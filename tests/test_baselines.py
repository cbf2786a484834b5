"""baseline: coreset selection against hand-checked cases and brute-force implementations; the arms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fakes import evaluation as eval_fakes
from distillctl.evaluation.baselines import parse_ipc
from distillctl.evaluation.subsets import coreset, herding_order, kcenter_order, random_subsets
from distillctl.errors import UserError


# -- selection ------------------------------------------------------------------------------------

def herding_brute(X: np.ndarray, k: int) -> list[int]:
    """Welling's herding as written in the paper: one candidate at a time, plain Python."""
    mu = X.mean(0)
    chosen: list[int] = []
    for t in range(1, k + 1):
        best, best_gap = None, None
        for i in range(len(X)):
            if i in chosen:
                continue
            gap = float(np.sum((mu - (X[chosen].sum(0) + X[i]) / t) ** 2))
            if best_gap is None or gap < best_gap - 1e-12:
                best, best_gap = i, gap
        chosen.append(best)
    return chosen


def kcenter_brute(X: np.ndarray, k: int) -> list[int]:
    """k-center greedy from the full distance matrix."""
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    first = int(np.argmin(np.sqrt(((X - X.mean(0)) ** 2).sum(1))))
    chosen = [first]
    while len(chosen) < k:
        cover = D[:, chosen].min(1)
        cover[chosen] = -1
        chosen.append(int(np.argmax(cover)))
    return chosen


def test_herding_hand_checked():
    # mean 5: pick 4 (tie with 6 -> lower index), then 6 (mean 5), then 0 or 10 (tie -> index 0)
    X = torch.tensor([[0.0], [10.0], [4.0], [6.0]])
    assert herding_order(X, 4).tolist() == [2, 3, 0, 1]


def test_kcenter_hand_checked():
    # mean 4.8 -> 2 (index 2); farthest from it: 11; then 0 (2 away); then 1 vs 10 both 1 away -> index 1
    X = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    assert kcenter_order(X, 4).tolist() == [2, 4, 0, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, 5))
    assert herding_order(torch.from_numpy(X), 12).tolist() == herding_brute(X, 12)
    assert kcenter_order(torch.from_numpy(X), 12).tolist() == kcenter_brute(X, 12)


def test_herding_expanded_gap_picks_as_the_direct_one():
    # 1,536-d float32 rows as MRPC's pair features come, 600 of them: the expanded gap (one matrix-vector product
    # a pick) must choose the same 60 rows in the same order as the gap written out, one candidate at a time
    X = torch.from_numpy(np.random.default_rng(7).normal(size=(600, 1536))).float()
    assert herding_order(X, 60).tolist() == herding_brute(X.double().numpy(), 60)


def test_herding_mean_gets_close_and_duplicates_are_not_repicked():
    rng = np.random.default_rng(5)
    X = torch.from_numpy(rng.normal(size=(200, 4)))
    order = herding_order(X, 20)
    assert len(set(order.tolist())) == 20
    gap_herding = (X[order].mean(0) - X.mean(0)).norm()
    gap_random = (X[:20].mean(0) - X.mean(0)).norm()
    assert gap_herding < gap_random / 3
    dup = torch.zeros(5, 2)
    assert sorted(kcenter_order(dup, 5).tolist()) == [0, 1, 2, 3, 4]
    assert sorted(herding_order(dup, 5).tolist()) == [0, 1, 2, 3, 4]


def test_coreset_is_class_major_and_nested():
    emb = eval_fakes.embeddings()
    X, y = emb.splits["train"].X, emb.splits["train"].y
    for method in ("herding", "kcenter"):
        two, five = coreset(X, y, 3, 2, method), coreset(X, y, 3, 5, method)
        assert y[five].tolist() == [0] * 5 + [1] * 5 + [2] * 5
        assert five.view(3, 5)[:, :2].reshape(-1).tolist() == two.tolist()
        rows_c1 = torch.nonzero(y == 1).flatten()
        assert two[2:4].tolist() == rows_c1[(herding_order if method == "herding" else kcenter_order)(X[rows_c1], 2)].tolist()


def test_random_subsets_stratified_per_seed_and_nested():
    y = torch.arange(4).repeat_interleave(25)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    idx = random_subsets(y, 4, 5, [0, 1, 2])
    assert idx.shape == (3, 20)
    for k in range(3):
        assert y[idx[k]].tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
        assert len(set(idx[k].tolist())) == 20
    assert not torch.equal(idx[0], idx[1]) and not torch.equal(idx[1], idx[2])
    assert torch.equal(random_subsets(y, 4, 5, [2])[0], idx[2])  # seed 2's draw does not depend on K
    small = random_subsets(y, 4, 2, [0, 1, 2])
    assert torch.equal(small.view(3, 4, 2), idx.view(3, 4, 5)[:, :, :2])  # nested in ipc


def test_parse_ipc():
    assert parse_ipc("10,1, 5") == [1, 5, 10]
    for bad in ("a,b", "0", ""):
        with pytest.raises(UserError, match="--ipc"):
            parse_ipc(bad)


# -- the arms -------------------------------------------------------------------------------------

@pytest.fixture
def env(monkeypatch, tmp_path):
    emb = eval_fakes.embeddings()
    registry, state = eval_fakes.install(monkeypatch, emb)
    monkeypatch.chdir(tmp_path)
    from distillctl.recipe import validate_recipe

    recipe = validate_recipe(eval_fakes.recipe_data(), registry=registry)
    recipe_file = eval_fakes.write_recipe(tmp_path / "tiny.yaml", eval_fakes.recipe_data())
    return registry, emb, recipe, recipe_file, tmp_path


def test_majority_baseline(env, monkeypatch):
    from distillctl.evaluation.baselines import baseline

    registry, emb, recipe, _, _ = env
    # make class 2 the majority of train; test stays balanced -> accuracy 1/3, macro-F1 = (0 + 0 + 0.5) / 3
    tr = emb.splits["train"]
    keep = torch.cat([torch.nonzero(tr.y != 2).flatten()[::2], torch.nonzero(tr.y == 2).flatten()])
    tr.X, tr.y = tr.X[keep], tr.y[keep]
    (r,) = baseline(recipe, "majority", quiet=True)
    assert r["arm"] == "majority" and r["class"] == "class2" and r["budget"] is None
    assert r["accuracy"]["mean"] == pytest.approx(1 / 3)
    assert r["macro_f1"]["mean"] == pytest.approx((2 * (1 / 3) / (1 / 3 + 1)) / 3)
    # the record of an arm that trains nothing: no student, seeds, budget, options or time; one value each
    assert set(r) == {"arm", "ipc", "student", "seeds", "budget", "accuracy", "macro_f1", "class", "split", "n_test",
                      "majority", "chance", "seconds", "distilled_with", "labels"}
    assert r["ipc"] is None and r["student"] is None and r["seeds"] == [] and r["seconds"] == 0.0
    assert r["distilled_with"] is None and r["labels"] == "hard"
    acc = r["majority"]["accuracy"]
    assert r["accuracy"] == {"mean": acc, "std": 0.0, "values": [acc]} and r["chance"] == pytest.approx(1 / 3)


def test_subset_and_full_arms_share_the_protocol(env):
    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.protocol import eval_seeds
    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    registry, emb, recipe, _, tmp = env
    rand = baseline(recipe, "random", ipc=[1, 3], quiet=True)
    herd = baseline(recipe, "herding", ipc="1,3", quiet=True)
    full = baseline(recipe, "full", quiet=True)
    assert [r["arm"] for r in full] == ["full", "full-earlystop", "full-logreg"]
    full = full[:1]  # the same-budget arm
    assert [r["ipc"] for r in rand] == [1, 3] == [r["ipc"] for r in herd]
    assert full[0]["ipc"] is None and full[0]["n_train"] == 90 and full[0]["reference"] == "same-budget"
    assert all(r["labels"] == "hard" and r["distilled_with"] is None for r in rand + herd + full)
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in rand + herd + full}
    assert len(budgets) == 1 and {tuple(r["seeds"]) for r in rand + herd + full} == {tuple(eval_seeds(recipe))}
    # herding ipc 3 equals training on the herding coreset directly
    X, y = emb.splits["train"].X, emb.splits["train"].y
    idx = coreset(X, y, 3, 3, "herding")
    assert herd[1]["rows"] == idx.tolist()
    direct = train_and_score(student_builder(recipe, 8, 3), X[idx], y[idx], emb.splits["test"].X, emb.splits["test"].y,
                             seeds=eval_seeds(recipe), budget=TrainBudget.from_eval(recipe.eval), num_classes=3)
    assert herd[1]["accuracy"]["values"] == direct.accuracy
    # well-separated clusters: the full-data students are near perfect
    assert full[0]["accuracy"]["mean"] > 0.9


def test_baselines_stored_in_a_run_dir(env):
    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.protocol import read_results

    registry, emb, recipe, _, tmp = env
    baseline(recipe, "random", ipc=[1], quiet=True, run_dir=tmp / "run")
    baseline(recipe, "random", ipc=[2], quiet=True, run_dir=tmp / "run")
    stored = read_results(tmp / "run" / "eval" / "baseline-random.json")
    assert [r["ipc"] for r in stored] == [1, 2]
    from distillctl.recipe import load_recipe

    assert load_recipe(tmp / "run" / "recipe.resolved.yaml").fingerprint() == recipe.fingerprint()
    other = recipe.model_copy(deep=True)
    other.eval.steps = 5
    with pytest.raises(UserError, match="eval"):
        baseline(other, "random", ipc=[1], quiet=True, run_dir=tmp / "run")
    (tmp / "junk").mkdir()
    (tmp / "junk" / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a run directory"):
        baseline(recipe, "full", quiet=True, run_dir=tmp / "junk")


def test_cli_baseline(env, cli):
    _, _, _, recipe_file, tmp = env
    res = cli("baseline", recipe_file, "--kind", "kcenter", "--ipc", "1,2", "--seeds", "2", "--json")
    assert res.code == 0, res
    data = json.loads(res.out)
    assert [r["ipc"] for r in data] == [1, 2] and all(len(r["seeds"]) == 2 for r in data)
    assert {"arm", "ipc", "student", "seeds", "budget", "accuracy", "macro_f1"} <= set(data[0])
    res = cli("baseline", recipe_file, "--kind", "majority")
    assert res.code == 0 and "majority" in res.out
    res = cli("baseline", recipe_file, "--kind", "random", "--ipc", "1", "--seeds", "2")
    assert res.code == 0 and "budget: student mlp, adam lr=0.01, 30 steps, batch 16, K = 2 seeds" in res.out
    for args, msg in [(("--kind", "coreset"), "unknown baseline"),
                      (("--kind", "random", "--ipc", "31"),
                       "--ipc: ipc 31 exceeds the training rows of the smallest class ('class0': 30 rows); "
                       "use at most 30"),
                      (("--kind", "herding", "--set", "baseline.ipc=[1,40]"), "baseline.ipc: ipc 40 exceeds"),
                      (("--kind", "kcenter", "--set", "distill.ipc=[50]"), "distill.ipc: ipc 50 exceeds"),
                      (("--kind", "random", "--ipc", "x"), "--ipc"),
                      (("--kind", "full", "--set", "eval.steps=0"), "eval.steps")]:
        res = cli("baseline", recipe_file, *args)
        assert res.code == 2, res
        assert msg in res.err and "Traceback" not in res.err
    res = cli("baseline", tmp / "nope.yaml", "--kind", "full")
    assert res.code == 2 and "not found" in res.err


# -- the full-data references: steps and C chosen on val, never on test ------------------------------

def _hard_env(env):
    """Overlapping clusters: val accuracy varies with the number of steps and with C."""
    registry, emb, recipe, recipe_file, tmp = env
    hard = eval_fakes.embeddings(n_per_class=(40, 30, 30), sep=0.9, seed=3)
    emb.splits = hard.splits
    return registry, emb, recipe, recipe_file, tmp


def test_full_earlystop_chooses_steps_on_val_and_scores_test_once(env):
    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.subsets import EARLYSTOP_CHECKS, EARLYSTOP_MAX_FACTOR, EARLYSTOP_PATIENCE, earlystop_every
    from distillctl.evaluation.protocol import eval_seeds
    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    registry, emb, recipe, _, tmp = _hard_env(env)
    full, early, logreg = baseline(recipe, "full", quiet=True)
    assert early["arm"] == "full-earlystop" and early["reference"] == "val-steps" and early["student"] == "mlp"
    every = 6  # the smallest k >= EARLYSTOP_CHECKS dividing 30 is 5
    assert EARLYSTOP_CHECKS == 4 and [earlystop_every(n) for n in (1000, 30, 7, 1, 2)] == [250, 6, 1, 1, 1]
    assert early["max_steps"] == EARLYSTOP_MAX_FACTOR * 30 and early["select_every_steps"] == every
    steps = [p["step"] for p in early["val_curve"]]
    assert steps == list(range(every, early["steps_run"] + 1, every))
    # the chosen step: the earliest best mean val accuracy over the K seeds, recomputed from the curve
    means = [p["mean"] for p in early["val_curve"]]
    assert early["chosen_steps"] == steps[means.index(max(means))] == early["budget"]["steps"]
    # early stopping: it ran to the cap, or stopped EARLYSTOP_PATIENCE checks after its best
    assert early["patience_checks"] == EARLYSTOP_PATIENCE
    assert early["steps_run"] == 300 or (len(steps) - 1 - steps.index(early["chosen_steps"]) == EARLYSTOP_PATIENCE)
    for p in early["val_curve"]:
        assert p["mean"] == pytest.approx(sum(p["values"]) / 3)
    # the curve is real val accuracy: at step 30 it is that of the same-budget students scored on val
    X, y = emb.splits["train"].X, emb.splits["train"].y
    budget = TrainBudget.from_eval(recipe.eval)
    build = student_builder(recipe, 8, 3)
    on_val = train_and_score(build, X, y, emb.splits["val"].X, emb.splits["val"].y, seeds=eval_seeds(recipe),
                             budget=budget, num_classes=3)
    at_30 = next(p for p in early["val_curve"] if p["step"] == 30)
    assert at_30["values"] == on_val.accuracy
    # test scores: exactly those of students trained for the chosen number of steps
    direct = train_and_score(build, X, y, emb.splits["test"].X, emb.splits["test"].y, seeds=eval_seeds(recipe),
                             budget=TrainBudget(**{**budget.as_dict(), "steps": early["chosen_steps"]}), num_classes=3)
    assert early["accuracy"]["values"] == direct.accuracy and early["macro_f1"]["values"] == direct.macro_f1


def test_nothing_is_selected_on_test(env):
    """Shuffling the test labels changes the test scores but not the chosen steps, the chosen C or the val
    numbers they were chosen from."""
    from distillctl.evaluation.baselines import baseline

    registry, emb, recipe, _, tmp = _hard_env(env)
    _, early, logreg = baseline(recipe, "full", quiet=True)
    test = emb.splits["test"]
    test.y = test.y[torch.randperm(len(test.y), generator=torch.Generator().manual_seed(0))]
    _, early2, logreg2 = baseline(recipe, "full", quiet=True)
    assert early2["chosen_steps"] == early["chosen_steps"] and early2["val_curve"] == early["val_curve"]
    assert logreg2["chosen_C"] == logreg["chosen_C"] and logreg2["val_by_C"] == logreg["val_by_C"]
    assert early2["accuracy"] != early["accuracy"] and logreg2["accuracy"] != logreg["accuracy"]


def test_full_logreg_matches_scikit_learn_with_c_chosen_on_val(env):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from distillctl.evaluation.baselines import LOGREG_C_GRID, baseline

    registry, emb, recipe, _, tmp = _hard_env(env)
    *_, r = baseline(recipe, "full", quiet=True)
    assert r["arm"] == "full-logreg" and r["student"] == "logreg" and r["reference"] == "val-logreg"
    assert r["budget"] is None and r["seeds"] == [] and r["student_options"]["C"] == r["chosen_C"]
    # the reference: one scikit-learn fit per C on train, the best on val (ties: the smaller C), test once
    X, y = (emb.splits["train"].X.double().numpy(), emb.splits["train"].y.numpy())
    Xv, yv = emb.splits["val"].X.double().numpy(), emb.splits["val"].y.numpy()
    Xt, yt = emb.splits["test"].X.double().numpy(), emb.splits["test"].y.numpy()
    val = [float((LogisticRegression(C=c, max_iter=1000, tol=1e-6).fit(X, y).predict(Xv) == yv).mean())
           for c in LOGREG_C_GRID]
    assert [v["accuracy"] for v in r["val_by_C"]] == val and [v["C"] for v in r["val_by_C"]] == list(LOGREG_C_GRID)
    assert [v["iterations"] for v in r["val_by_C"]] == [
        int(LogisticRegression(C=c, max_iter=1000, tol=1e-6).fit(X, y).n_iter_.max()) for c in LOGREG_C_GRID]
    assert len(set(val)) > 1  # the choice matters on this data
    chosen = LOGREG_C_GRID[val.index(max(val))]
    assert r["chosen_C"] == chosen
    pred = LogisticRegression(C=chosen, max_iter=1000, tol=1e-6).fit(X, y).predict(Xt)
    assert r["accuracy"]["values"] == [pytest.approx(float((pred == yt).mean()))]
    assert r["macro_f1"]["values"] == [pytest.approx(f1_score(yt, pred, average="macro"))]


def test_full_trims_the_heap_the_students_freed_before_its_logistic_regression(env, monkeypatch):
    """The regression's float64 copies then reuse the students' freed pages instead of peaking on top of them
    (MRPC, 5 Transformer students: the job's peak 787 -> 670 MiB; BENCHMARKS.md)."""
    import distillctl.evaluation.baselines as b

    calls = []
    real_fit, real_train = b.logreg_reference, b.training.train_and_score
    monkeypatch.setattr(b, "release_freed_memory", lambda: calls.append("trim"))
    monkeypatch.setattr(b, "logreg_reference", lambda *a, **k: calls.append("logreg") or real_fit(*a, **k))
    monkeypatch.setattr(b.training, "train_and_score", lambda *a, **k: calls.append("students") or real_train(*a, **k))
    _, _, recipe, _, _ = _hard_env(env)
    b.baseline(recipe, "full", quiet=True)
    assert "students" in calls and calls[calls.index("trim"):] == ["trim", "logreg"], calls


def test_logreg_fit_is_the_minimiser_of_the_regularised_cross_entropy():
    """Closed-form check of the optimum: the gradient of 0.5 ||W||^2 + C * sum_i CE(softmax(W x_i + b), y_i)
    vanishes at the fitted model (scikit-learn's multinomial objective, bias unpenalised)."""
    from distillctl.evaluation.baselines import logreg_reference

    g = torch.Generator().manual_seed(0)
    X = torch.randn(90, 5, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(90, generator=g) > 0).long() + (X[:, 1] > 0.8).long()  # 3 classes
    fit = logreg_reference(X, y, X[:30], y[:30], X[:30], y[:30], 3, grid=[0.5])
    model = fit["model"]
    W, b, C = torch.tensor(model.coef_), torch.tensor(model.intercept_), fit["chosen_C"]
    P = torch.softmax(X.double() @ W.T + b, -1)  # (n, 3)
    Y = torch.nn.functional.one_hot(y, 3).double()
    grad_W = W + C * (P - Y).T @ X.double()
    grad_b = C * (P - Y).sum(0)
    assert grad_W.abs().max() < 1e-4 and grad_b.abs().max() < 1e-4


def test_baselines_for_several_students_and_stored_per_student(env, cli):
    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.protocol import eval_seeds, read_results
    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    registry, emb, recipe, recipe_file, tmp = env
    recs = baseline(recipe, "random", ipc=[2], quiet=True, students="mlp,linear", run_dir=tmp / "run")
    assert [(r["student"], r["ipc"]) for r in recs] == [("mlp", 2), ("linear", 2)]
    assert recs[1]["student_options"] == {"name": "linear", "bias": True}
    # the linear student on the same random draws equals a direct call
    from distillctl.evaluation.baselines import random_subsets
    from distillctl.evaluation.protocol import student_sections

    X, y = emb.splits["train"].X, emb.splits["train"].y
    idx = random_subsets(y, 3, 2, eval_seeds(recipe))
    (linear,) = student_sections(recipe, ["linear"])
    direct = train_and_score(student_builder(recipe, 8, 3, linear), X[idx], y[idx], emb.splits["test"].X,
                             emb.splits["test"].y, seeds=eval_seeds(recipe), budget=TrainBudget.from_eval(recipe.eval),
                             num_classes=3)
    assert recs[1]["accuracy"]["values"] == direct.accuracy
    # one record per (arm, ipc, student, labels): a second run for one student replaces only its record
    baseline(recipe, "random", ipc=[2], seeds=2, quiet=True, students=["linear"], run_dir=tmp / "run")
    stored = read_results(tmp / "run" / "eval" / "baseline-random.json")
    assert [(r["student"], len(r["seeds"])) for r in stored] == [("linear", 2), ("mlp", 3)]
    # full: full + full-earlystop per student, one full-logreg
    full = baseline(recipe, "full", quiet=True, students="linear,mlp")
    assert [(r["arm"], r["student"]) for r in full] == [("full", "linear"), ("full-earlystop", "linear"),
                                                       ("full", "mlp"), ("full-earlystop", "mlp"),
                                                       ("full-logreg", "logreg")]
    # eval.students in the recipe is the default; the CLI takes --students; bad ones exit 2 in one line
    data = eval_fakes.recipe_data()
    data["eval"]["students"] = ["linear", {"name": "mlp", "hidden": [4]}]
    two = eval_fakes.write_recipe(tmp / "two.yaml", data)
    res = cli("baseline", two, "--kind", "kcenter", "--ipc", "1", "--seeds", "2", "--json")
    assert res.code == 0, res
    assert [r["student_options"] for r in json.loads(res.out)] == [
        {"name": "linear", "bias": True}, {"name": "mlp", "hidden": [4], "activation": "relu", "dropout": 0.0}]
    res = cli("baseline", recipe_file, "--kind", "full", "--students", "mlp,{name: transformer, layers: 0}")
    assert res.code == 2 and "--students[1].layers" in res.err and len(res.err.strip().splitlines()) == 1, res
    res = cli("baseline", recipe_file, "--kind", "random", "--ipc", "1", "--students", "linear,cnn")
    assert res.code == 2 and "unknown student plugin 'cnn'" in res.err, res
    res = cli("baseline", recipe_file, "--kind", "full", "--seeds", "2")
    assert res.code == 0, res
    assert "full-earlystop (mlp): " in res.out and "full-logreg (logreg): C = " in res.out

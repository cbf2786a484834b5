"""eval: every distilled set of a run scored on test with the recipe's protocol; files and exit codes."""

from __future__ import annotations

import json

import pytest
import torch

from fakes import evaluation as eval_fakes
from distillctl.errors import UserError
from distillctl.runs import read_jsonl

REQUIRED = {"arm", "ipc", "student", "seeds", "budget", "accuracy", "macro_f1"}


@pytest.fixture
def env(monkeypatch, tmp_path):
    emb = eval_fakes.embeddings()
    registry, state = eval_fakes.install(monkeypatch, emb)
    monkeypatch.chdir(tmp_path)
    return registry, emb, state, tmp_path


def test_evaluate_run_dir_writes_results_and_matches_the_protocol(env):
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.evaluation.protocol import eval_seeds
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    registry, emb, state, tmp = env
    recipe, run = eval_fakes.make_run(tmp, registry, emb)
    records = evaluate(run.path, quiet=True)
    assert state.calls == ["tiny"]
    assert [r["ipc"] for r in records] == [1, 2]
    for r in records:
        assert REQUIRED <= set(r)
        assert r["arm"] == "distilled" and r["student"] == "mlp" and r["split"] == "test"
        assert r["seeds"] == [100000, 100001, 100002] == eval_seeds(recipe)
        assert r["budget"] == {"steps": 30, "optimizer": "adam", "lr": 0.01, "momentum": 0.9, "batch_size": 16,
                               "weight_decay": 0.0, "betas": [0.9, 0.999]}
        assert set(r["accuracy"]) == {"mean", "std", "values"} and len(r["accuracy"]["values"]) == 3
        assert "positive_f1" not in r  # three classes
        assert r["chance"] == pytest.approx(1 / 3)
        assert r["majority"]["accuracy"] == pytest.approx(1 / 3)  # balanced test split
    # the same numbers as the training function called directly on the set and the test split
    s = SyntheticSet.load(run.distilled / "ipc2.safetensors")
    direct = train_and_score(student_builder(recipe, 8, 3), s.x, s.labels, emb.splits["test"].X,
                             emb.splits["test"].y, seeds=eval_seeds(recipe), budget=TrainBudget.from_eval(recipe.eval),
                             num_classes=3)
    assert records[1]["accuracy"]["values"] == direct.accuracy
    assert records[1]["macro_f1"]["values"] == direct.macro_f1

    # written, read back; a second eval replaces the records in results.json and appends the history
    stored = json.loads((run.eval / "results.json").read_text())["results"]
    assert [(r["arm"], r["ipc"]) for r in stored] == [("distilled", 1), ("distilled", 2)]
    assert stored[0]["accuracy"] == records[0]["accuracy"]
    evaluate(run.path, seeds=2, quiet=True)
    stored = json.loads((run.eval / "results.json").read_text())["results"]
    assert len(stored) == 2 and all(len(r["seeds"]) == 2 for r in stored)
    assert len(read_jsonl(run.eval / "history.jsonl")) == 4


def test_seeds_are_a_prefix_whatever_k(env):
    from distillctl.evaluation.evaluate import evaluate

    registry, emb, _, tmp = env
    _, run = eval_fakes.make_run(tmp, registry, emb, ipcs=(2,))
    five = evaluate(run.path / "distilled" / "ipc2.safetensors", seeds=5, quiet=True)[0]
    two = evaluate(run.path / "distilled" / "ipc2.safetensors", seeds=2, quiet=True)[0]
    assert five["accuracy"]["values"][:2] == two["accuracy"]["values"]


def test_soft_label_set_and_binary_problem(env):
    from distillctl.evaluation.evaluate import evaluate

    registry, _, state, tmp = env
    emb2 = state.emb = eval_fakes.embeddings(C=2)
    _, run = eval_fakes.make_run(tmp, registry, emb2, ipcs=(3,), soft=True)
    (r, _) = evaluate(run.path, quiet=True)
    assert r["soft_labels"] is True and r["labels"] == "soft"
    assert set(r["positive_f1"]) == {"mean", "std", "values"}
    assert "positive_f1" in r["majority"]


def test_soft_label_set_is_also_scored_with_hard_labels(env):
    """A soft-label set gives two records per student: trained on its soft labels, and on their argmax."""
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    registry, emb, state, tmp = env
    recipe, run = eval_fakes.make_run(tmp, registry, emb, ipcs=(2,), soft=True)
    path = run.distilled / "ipc2.safetensors"
    s = SyntheticSet.load(path)
    s.labels = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.1, 0.7], [0.1, 0.6, 0.3],
                             [0.3, 0.4, 0.3], [0.2, 0.2, 0.6], [0.4, 0.35, 0.25]])  # argmax [0, 2, 1, 1, 2, 0]
    s.save(path)
    soft, hard = evaluate(run.path, quiet=True)
    assert (soft["labels"], hard["labels"]) == ("soft", "hard") and soft["soft_labels"] and hard["soft_labels"]
    assert soft["distilled_with"] == hard["distilled_with"] == "mlp"
    test = emb.splits["test"]
    args = dict(seeds=soft["seeds"], budget=TrainBudget.from_eval(recipe.eval), num_classes=3)
    build = student_builder(recipe, 8, 3)
    ref_soft = train_and_score(build, s.x, s.labels, test.X, test.y, **args)
    ref_hard = train_and_score(build, s.x, torch.tensor([0, 2, 1, 1, 2, 0]), test.X, test.y, **args)
    assert soft["accuracy"]["values"] == ref_soft.accuracy and hard["accuracy"]["values"] == ref_hard.accuracy
    assert soft["accuracy"]["values"] != hard["accuracy"]["values"]
    stored = json.loads((run.eval / "results.json").read_text())["results"]
    assert [(r["ipc"], r["student"], r["labels"]) for r in stored] == [(2, "mlp", "soft"), (2, "mlp", "hard")]


def test_transfer_every_student_on_every_set_with_embeddings_loaded_once(env):
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.evaluation.protocol import student_sections
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    registry, emb, state, tmp = env
    recipe, run = eval_fakes.make_run(tmp, registry, emb)
    students = "mlp,linear,{name: transformer, n_tokens: 2, d_model: 8, heads: 2, ff: 8, layers: 1}"
    records = evaluate(run.path, quiet=True, students=students)
    assert state.calls == ["tiny"]  # the embeddings are loaded once for every student and set
    assert [(r["student"], r["ipc"]) for r in records] == [(n, i) for n in ("mlp", "linear", "transformer")
                                                          for i in (1, 2)]
    assert records[5]["student_options"] == {"name": "transformer", "n_tokens": 2, "d_model": 8, "layers": 1,
                                             "heads": 2, "ff": 8, "dropout": 0.0, "zero_init_residual": False}
    assert all(r["distilled_with"] == "mlp" and r["labels"] == "hard" for r in records)
    # each cell: the numbers of that student trained directly on the set
    s = SyntheticSet.load(run.distilled / "ipc2.safetensors")
    for section, rec in zip(student_sections(recipe, students), records[1::2]):
        direct = train_and_score(student_builder(recipe, 8, 3, section), s.x, s.labels, emb.splits["test"].X,
                                 emb.splits["test"].y, seeds=rec["seeds"], budget=TrainBudget.from_eval(recipe.eval),
                                 num_classes=3)
        assert rec["accuracy"]["values"] == direct.accuracy
    # results.json keeps the newest per (arm, ipc, student, labels): re-running one student replaces its cells
    evaluate(run.path, quiet=True, students=["linear"], seeds=2)
    stored = json.loads((run.eval / "results.json").read_text())["results"]
    assert [(r["student"], r["ipc"], len(r["seeds"])) for r in stored] == [
        ("linear", 1, 2), ("mlp", 1, 3), ("transformer", 1, 3), ("linear", 2, 2), ("mlp", 2, 3), ("transformer", 2, 3)]


def test_eval_students_of_the_recipe_and_distilled_with(env):
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.evaluation.protocol import distilled_with
    from distillctl.recipe import RecipeError, validate_recipe

    registry, emb, state, tmp = env
    data = eval_fakes.recipe_data()
    data["eval"]["students"] = ["linear", {"name": "mlp", "hidden": [4]}]
    recipe, run = eval_fakes.make_run(tmp, registry, emb, ipcs=(1,), data=data)
    assert [(r["student"], r["student_options"]) for r in evaluate(run.path, quiet=True)] == [
        ("linear", {"name": "linear", "bias": True}),
        ("mlp", {"name": "mlp", "hidden": [4], "activation": "relu", "dropout": 0.0})]
    bad = {**data, "eval": {**data["eval"], "students": ["mlp", {"name": "linear", "bias": "maybe"}]}}
    with pytest.raises(RecipeError, match="eval.students.1.bias"):
        validate_recipe(bad, registry=registry)
    with pytest.raises(RecipeError, match="eval.students"):
        validate_recipe({**data, "eval": {**data["eval"], "students": []}}, registry=registry)
    # the student(s) that made a set: the recipe's student, or its distill.students joined by "+"
    assert distilled_with(recipe) == "mlp"
    several = {**data, "distill": {**data["distill"], "students": ["mlp", "linear"]}}
    assert distilled_with(validate_recipe(several, registry=registry)) == "mlp+linear"


def test_old_records_without_labels_still_read_and_merge(tmp_path):
    from distillctl.evaluation.protocol import read_results, record_key, store_results

    path = tmp_path / "results.json"
    old = [{"arm": "distilled", "ipc": 1, "student": "mlp", "soft_labels": True, "accuracy": {"mean": 0.1}},
           {"arm": "random", "ipc": 1, "student": "mlp", "accuracy": {"mean": 0.2}}]
    path.write_text(json.dumps({"results": old}))
    assert [record_key(r) for r in read_results(path)] == [("distilled", 1, "mlp", "soft"),
                                                          ("random", 1, "mlp", "hard")]
    new = [{"arm": "distilled", "ipc": 1, "student": "mlp", "labels": "hard", "soft_labels": True,
            "accuracy": {"mean": 0.3}},
           {"arm": "distilled", "ipc": 1, "student": "mlp", "labels": "soft", "soft_labels": True,
            "accuracy": {"mean": 0.4}}]
    store_results(path, new)
    stored = read_results(path)
    assert [(r["arm"], r.get("labels"), r["accuracy"]["mean"]) for r in stored] == [
        ("distilled", "soft", 0.4), ("distilled", "hard", 0.3), ("random", None, 0.2)]


def test_students_option_syntax():
    from distillctl.evaluation.protocol import parse_students

    assert parse_students("mlp,transformer,linear") == ["mlp", "transformer", "linear"]
    assert parse_students("mlp, {name: transformer, layers: 1}") == ["mlp", {"name": "transformer", "layers": 1}]
    for bad in ("", "mlp,{", "mlp,[1]", "{hidden: 4}"):
        with pytest.raises(UserError, match="--students"):
            parse_students(bad)


def test_set_file_outside_a_run_needs_a_recipe(env):
    import shutil

    from distillctl.evaluation.evaluate import evaluate

    registry, emb, _, tmp = env
    _, run = eval_fakes.make_run(tmp, registry, emb, ipcs=(1,))
    loose = tmp / "loose"
    loose.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(run.distilled / f"ipc1{suffix}", loose / f"ipc1{suffix}")
    with pytest.raises(UserError, match="--recipe"):
        evaluate(loose / "ipc1.safetensors", quiet=True)
    recipe_file = eval_fakes.write_recipe(tmp / "r.yaml", eval_fakes.recipe_data())
    (r,) = evaluate(loose / "ipc1.safetensors", recipe_file, quiet=True)
    assert r["ipc"] == 1
    assert not (loose / "eval").exists()  # nothing written outside a run directory


def test_set_from_other_embeddings_is_refused(env):
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.distillation.synthetic import SyntheticSet

    registry, emb, _, tmp = env
    _, run = eval_fakes.make_run(tmp, registry, emb, ipcs=(1,))
    path = run.distilled / "ipc1.safetensors"
    s = SyntheticSet.load(path)
    s.meta["embedding_fingerprint"] = "another-cache"
    s.save(path)
    with pytest.raises(UserError, match="other embeddings"):
        evaluate(run.path, quiet=True)
    SyntheticSet(x=torch.zeros(3, 5), labels=torch.arange(3), ipc=1, num_classes=3).save(path)
    with pytest.raises(UserError, match="3 x 8"):
        evaluate(run.path, quiet=True)


def test_cli_eval_json_table_and_exit_codes(env, cli):
    registry, emb, _, tmp = env
    _, run = eval_fakes.make_run(tmp, registry, emb)
    res = cli("eval", run.path, "--seeds", "2", "--json")
    assert res.code == 0, res
    data = json.loads(res.out)
    assert [r["ipc"] for r in data] == [1, 2] and all(REQUIRED <= set(r) for r in data)
    res = cli("eval", run.path, "--seeds", "2", "--set", "eval.steps=5")
    assert res.code == 0, res
    assert "distilled" in res.out and "budget: student mlp, adam lr=0.01, 5 steps, batch 16, K = 2 seeds" in res.out
    assert "majority class" in res.out

    for args, msg in [(("eval", tmp / "missing"), "no such run directory"),
                      (("eval", tmp), "not a run directory"),
                      (("eval", run.path / "recipe.resolved.yaml"), "not a set file")]:
        res = cli(*args)
        assert res.code == 2, res
        assert msg in res.err and len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err
    res = cli("eval", run.path, "--seeds", "2", "--students", "linear,{name: mlp, hidden: [4]}", "--json")
    assert res.code == 0, res
    assert [(r["student"], r["ipc"]) for r in json.loads(res.out)] == [("linear", 1), ("linear", 2), ("mlp", 1),
                                                                       ("mlp", 2)]
    for students, msg in [("mlp,cnn", "--students[1].name: unknown student plugin 'cnn'"),
                          ("{name: mlp, width: 3}", "--students[0].width"), ("mlp,{", "--students 'mlp,{'")]:
        res = cli("eval", run.path, "--students", students)
        assert res.code == 2 and msg in res.err and len(res.err.strip().splitlines()) == 1, res
    empty = tmp / "empty-run"
    empty.mkdir()
    (empty / "recipe.resolved.yaml").write_text((run.path / "recipe.resolved.yaml").read_text())
    res = cli("eval", empty)
    assert res.code == 2 and "no distilled sets" in res.err

"""eval: every distilled set of a run scored on test with the recipe's protocol; files and exit codes."""

from __future__ import annotations

import json

import pytest
import torch

import eval_fakes
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
    from distillctl.evaluate import eval_seeds, evaluate
    from distillctl.synthetic import SyntheticSet
    from distillctl.training import TrainBudget, student_builder, train_and_score

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
    from distillctl.evaluate import evaluate

    registry, emb, _, tmp = env
    _, run = eval_fakes.make_run(tmp, registry, emb, ipcs=(2,))
    five = evaluate(run.path / "distilled" / "ipc2.safetensors", seeds=5, quiet=True)[0]
    two = evaluate(run.path / "distilled" / "ipc2.safetensors", seeds=2, quiet=True)[0]
    assert five["accuracy"]["values"][:2] == two["accuracy"]["values"]


def test_soft_label_set_and_binary_problem(env):
    from distillctl.evaluate import evaluate

    registry, _, state, tmp = env
    emb2 = state.emb = eval_fakes.embeddings(C=2)
    _, run = eval_fakes.make_run(tmp, registry, emb2, ipcs=(3,), soft=True)
    (r,) = evaluate(run.path, quiet=True)
    assert r["soft_labels"] is True
    assert set(r["positive_f1"]) == {"mean", "std", "values"}
    assert "positive_f1" in r["majority"]


def test_set_file_outside_a_run_needs_a_recipe(env):
    import shutil

    from distillctl.evaluate import evaluate

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
    from distillctl.evaluate import evaluate
    from distillctl.synthetic import SyntheticSet

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
    empty = tmp / "empty-run"
    empty.mkdir()
    (empty / "recipe.resolved.yaml").write_text((run.path / "recipe.resolved.yaml").read_text())
    res = cli("eval", empty)
    assert res.code == 2 and "no distilled sets" in res.err

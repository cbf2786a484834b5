"""report: report.md / report.json / PNG from a run's eval and baseline results; exit codes."""

from __future__ import annotations

import json

import pytest

import eval_fakes
from distillctl.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(monkeypatch, tmp_path):
    """A run with two distilled sets evaluated and every baseline stored in it (K = 2, 30 steps)."""
    from distillctl.baselines import baseline
    from distillctl.evaluate import evaluate

    emb = eval_fakes.embeddings()
    registry, state = eval_fakes.install(monkeypatch, emb)
    monkeypatch.chdir(tmp_path)
    recipe, run = eval_fakes.make_run(tmp_path, registry, emb)
    evaluate(run.path, seeds=2, quiet=True)
    for kind in ("random", "herding", "kcenter", "full", "majority"):
        baseline(recipe, kind, ipc=[1, 2], seeds=2, quiet=True, run_dir=run.path)
    return run, emb


def test_report_files(run):
    from distillctl.evaluate import read_results
    from distillctl.report import report

    run, emb = run
    path = report(run.path, quiet=True)
    assert path == run.path / "report.md"
    md = path.read_text()
    assert "| IPC | distilled | random | herding | k-center | full | majority | gain over random |" in md
    assert "Budget (every trained arm): adam lr=0.01, 30 steps, batch 16" in md and "K = 2 seeds" in md
    assert "Different protocol" not in md

    data = json.loads((run.path / "report.json").read_text())
    assert data["ipcs"] == [1, 2] and data["metrics"] == ["accuracy", "macro_f1"]
    rows = data["tables"]["accuracy"]
    dist = {r["ipc"]: r for r in read_results(run.eval / "results.json")}
    rand = {r["ipc"]: r for r in read_results(run.eval / "baseline-random.json")}
    for row in rows:
        assert row["distilled"] == dist[row["ipc"]]["accuracy"]
        assert row["gain_over_random"] == pytest.approx(dist[row["ipc"]]["accuracy"]["mean"]
                                                        - rand[row["ipc"]]["accuracy"]["mean"])
        assert row["full"]["mean"] == data["full"]["accuracy"]["mean"]
        assert row["majority"]["mean"] == pytest.approx(1 / 3)
        line = next(line for line in md.splitlines() if line.startswith(f"| {row['ipc']} |"))
        assert f"{row['distilled']['mean'] * 100:.2f} ± {row['distilled']['std'] * 100:.2f}" in line
        assert f"{row['gain_over_random'] * 100:+.2f} pp" in line

    png = run.path / "plots" / "accuracy_vs_ipc.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000

    # nearest texts: the sets are made of real training rows, so each vector's top neighbour is itself
    near = {s["ipc"]: s for s in data["nearest"]}
    y = emb.splits["train"].y
    first_of_class1 = int((y == 1).nonzero()[0])
    v = near[2]["vectors"][2]  # ipc 2: rows 2, 3 are class 1
    assert v["class"] == "class1" and len(v["neighbours"]) == 3
    assert v["neighbours"][0]["train_row"] == first_of_class1 and v["neighbours"][0]["similarity"] == pytest.approx(1.0)
    assert v["neighbours"][0]["text"] == f"train text {first_of_class1} of class 1"
    assert f"train text {first_of_class1} of class 1" in md


def test_deviating_protocol_is_flagged(run):
    from distillctl.baselines import baseline
    from distillctl.recipe import load_recipe
    from distillctl.report import report

    run, _ = run
    # a random baseline with other seeds (K = 3) written into the run: the report marks it
    recipe = load_recipe(run.recipe)
    baseline(recipe, "random", ipc=[2], seeds=3, quiet=True, run_dir=run.path)
    md = report(run.path, quiet=True).read_text()
    assert "Different protocol" in md and "random ipc 2" in md and " †" in md


def test_cli_report_and_errors(run, cli, tmp_path):
    run, _ = run
    res = cli("report", run.path, "--json")
    assert res.code == 0, res
    data = json.loads(res.out)
    assert {"tables", "full", "majority", "protocol", "nearest", "plot", "report"} <= set(data)
    res = cli("report", run.path)
    assert res.code == 0 and "| IPC |" in res.out and "wrote" in res.out
    res = cli("report", tmp_path / "nowhere")
    assert res.code == 2 and "not a run directory" in res.err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "recipe.resolved.yaml").write_text(run.recipe.read_text())
    res = cli("report", fresh)
    assert res.code == 2 and "no results" in res.err and len(res.err.strip().splitlines()) == 1


def test_report_without_texts_still_writes(run):
    from distillctl.report import report

    run, emb = run
    emb.texts = lambda split: (_ for _ in ()).throw(UserError("no texts in this cache"))
    md = report(run.path, quiet=True).read_text()
    assert "nearest texts unavailable: no texts in this cache" in md


def test_single_class_students_are_named_in_report_and_eval_table(run):
    from distillctl.evaluate import read_results, results_table, store_results
    from distillctl.report import report

    run, _ = run
    path = run.eval / "results.json"
    records = read_results(path)
    assert all(len(r["classes_predicted"]) == 2 and all(1 <= c <= 3 for c in r["classes_predicted"])
               for r in records)  # what evaluate() recorded: 2 students, 3 classes
    md = report(run.path, quiet=True).read_text()
    assert "distilled ipc 1:" not in md  # its students all predict several classes

    # ipc 1's students made to predict one class each: named with how many of them
    for r in records:
        if r["ipc"] == 1:
            r["classes_predicted"] = [1, 3]
    store_results(path, records)
    md = report(run.path, quiet=True).read_text()
    assert "**Single-class students**" in md
    assert "- distilled ipc 1: 1 of 2 students predict a single class for every test row" in md
    data = json.loads((run.path / "report.json").read_text())
    assert data["single_class"] == ["distilled ipc 1: 1 of 2 students predict a single class for every test row"]
    _, lines = results_table(read_results(path), "eval")
    assert lines[-1] == "note: distilled ipc 1: 1 of 2 students predict a single class for every test row"

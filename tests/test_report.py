"""report: report.md / report.json / PNG from a run's eval and baseline results; exit codes."""

from __future__ import annotations

import json

import pytest

from fakes import evaluation as eval_fakes
from distillctl.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(monkeypatch, tmp_path):
    """A run with two distilled sets evaluated and every baseline stored in it (K = 2, 30 steps)."""
    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.evaluate import evaluate

    recipe, run, emb = eval_fakes.run_in(monkeypatch, tmp_path)
    evaluate(run.path, seeds=2, quiet=True)
    for kind in ("random", "herding", "kcenter", "full", "majority"):
        baseline(recipe, kind, ipc=[1, 2], seeds=2, quiet=True, run_dir=run.path)
    return run, emb


def test_report_files(run):
    from distillctl.evaluation.protocol import read_results
    from distillctl.reporting.report import report

    run, emb = run
    path = report(run.path, quiet=True)
    assert path == run.path / "report.md"
    md = path.read_text()
    assert ("| IPC | distilled | random | herding | k-center | full, same budget | full, steps on val | full, logreg "
            "| majority | gain over random |") in md
    assert "adam lr=0.01, 30 steps, batch 16" in md and "K = 2 seeds" in md
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
    from distillctl.evaluation.baselines import baseline
    from distillctl.recipe import load_recipe
    from distillctl.reporting.report import report

    run, _ = run
    # a random baseline with other seeds (K = 3) written into the run: the report marks it
    recipe = load_recipe(run.recipe)
    baseline(recipe, "random", ipc=[2], seeds=3, quiet=True, run_dir=run.path)
    md = report(run.path, quiet=True).read_text()
    assert "Different protocol" in md and "random ipc 2" in md and " †" in md


def test_a_reference_trained_in_another_number_format_is_flagged(run):
    """A token-level record's `device` names its number format; a full-earlystop reference trained in another
    one than the arms (float32 against bfloat16 autocast) is not the same protocol, and the report says so."""
    from distillctl.reporting.report import report

    run, _ = run
    path = run.eval / "baseline-full.json"
    data = json.loads(path.read_text())
    for r in data["results"]:
        if r["arm"] == "full-earlystop":
            r["device"] = "cpu (bfloat16 scoring)"
    path.write_text(json.dumps(data))
    md = report(run.path, quiet=True).read_text()
    assert "Different protocol" in md and "trained on cpu (bfloat16 scoring) (the others: not recorded)" in md


def test_cli_report_and_errors(run, cli, tmp_path):
    run, _ = run
    res = cli("report", run.path, "--json")
    assert res.code == 0, res
    data = json.loads(res.out)
    assert {"tables", "full", "majority", "protocol", "nearest", "plot", "report"} <= set(data)
    res = cli("report", run.path, "--full")
    assert res.code == 0 and "| IPC |" in res.out and "wrote" in res.out
    res = cli("report", tmp_path / "nowhere")
    assert res.code == 2 and "not a run directory" in res.err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "recipe.resolved.yaml").write_text(run.recipe.read_text())
    res = cli("report", fresh)
    assert res.code == 2 and "no results" in res.err and len(res.err.strip().splitlines()) == 1


def test_report_without_texts_still_writes(run):
    from distillctl.reporting.report import report

    run, emb = run
    emb.texts = lambda split: (_ for _ in ()).throw(UserError("no texts in this cache"))
    md = report(run.path, quiet=True).read_text()
    assert "nearest texts unavailable: no texts in this cache" in md


def test_single_class_students_are_named_in_report_and_eval_table(run):
    from distillctl.evaluation.evaluate import results_table
    from distillctl.evaluation.protocol import read_results, store_results
    from distillctl.reporting.report import report

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


# -- scores, claims, transfer, curve, PCA: records written by hand (no training), numbers from closed forms ---

BUDGET = {"steps": 30, "optimizer": "adam", "lr": 0.01, "momentum": 0.9, "batch_size": 16, "weight_decay": 0.0,
          "betas": [0.9, 0.999]}
MAJ = {"class": "class0", "class_index": 0, "accuracy": 1 / 3, "macro_f1": 1 / 6, "chance": 1 / 3}


def rec(arm, acc, std=0.0, *, ipc=None, student="mlp", **extra):
    """A result record of the agreed schema with mean ``acc`` and population std ``std`` over two seeds."""
    summary = {"mean": acc, "std": std, "values": [acc - std, acc + std]}
    return {"arm": arm, "ipc": ipc, "student": student, "student_options": {"name": student},
            "accuracy": summary, "macro_f1": summary, "seeds": [0, 1], "budget": BUDGET, "split": "test",
            "n_test": 75, "majority": MAJ, "chance": 1 / 3, "time": "2025-01-01T00:00:00+00:00", **extra}


def valid_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as im:
        im.verify()  # a truncated or corrupt file raises here
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 150


@pytest.fixture
def hand_run(monkeypatch, tmp_path):
    """A run with real-row sets (ipc 1, 2) whose eval files are written by hand: returns (run, emb, write)."""
    _, run, emb = eval_fakes.run_in(monkeypatch, tmp_path)

    def write(results, baselines=()):
        run.eval.mkdir(exist_ok=True)
        (run.eval / "results.json").write_text(json.dumps({"results": results}))
        (run.eval / "baseline-all.json").write_text(json.dumps({"results": list(baselines)}))

    return run, emb, write


def test_scores_follow_their_formulas():
    import math

    from distillctl.reporting.scores import dd_scores, hlr, ior, lrs

    assert hlr(0.85, 0.80) == pytest.approx(0.05) and ior(0.9, 0.7) == pytest.approx(0.2)
    assert lrs(0.0, 0.0) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))
    assert lrs(2.0, 0.0) == pytest.approx(1.0) and lrs(0.0, 2.0) == pytest.approx(0.0)  # alpha = +-1: the ends
    records = [rec("distilled", 0.90, ipc=1, labels="soft", distilled_with="mlp"),
               rec("distilled", 0.80, ipc=1, labels="hard", distilled_with="mlp"),
               rec("random", 0.70, ipc=1), rec("full", 0.85), rec("full-earlystop", 0.95)]
    rows = dd_scores(records)
    assert [(r["labels"], r["ipc"]) for r in rows] == [("soft", 1), ("hard", 1)]
    soft, hard = rows
    # HLR uses the same-budget full arm and the hard-label score in both rows; IOR uses each row's own labels
    assert soft["hlr"] == hard["hlr"] == pytest.approx(0.85 - 0.80)
    assert soft["ior"] == pytest.approx(0.20) and hard["ior"] == pytest.approx(0.10)
    for r in rows:
        alpha = 0.5 * r["ior"] - 0.5 * r["hlr"]
        assert r["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    # an old record without `labels` is hard unless it says soft_labels; no hard score -> no HLR / LRS
    old = [{k: v for k, v in rec("distilled", 0.9, ipc=2, soft_labels=True).items()}, rec("random", 0.5, ipc=2)]
    (row,) = dd_scores(old)
    assert row["labels"] == "soft" and row["hlr"] is None and row["lrs"] is None and row["ior"] == pytest.approx(0.4)


def test_claims_transfer_and_missing_arms(hand_run):
    from distillctl.reporting.report import report

    run, _, write = hand_run
    own = str((run.distilled / "ipc1.safetensors").resolve())
    results = [
        rec("distilled", 0.90, 0.01, ipc=1, labels="soft", distilled_with="mlp", set=own),
        rec("distilled", 0.80, 0.01, ipc=1, labels="hard", distilled_with="mlp", set=own),
        rec("distilled", 0.60, 0.02, ipc=1, student="transformer", labels="soft", distilled_with="mlp", set=own),
        rec("distilled", 0.88, 0.01, ipc=1, labels="soft", distilled_with="mlp+transformer", set="/elsewhere/ipc1"),
        rec("distilled", 0.80, 0.01, ipc=1, student="transformer", labels="soft", distilled_with="mlp+transformer",
            set="/elsewhere/ipc1"),
    ]
    baselines = [rec("random", 0.70, 0.02, ipc=1),
                 rec("full", 0.85, 0.02, n_train=65, reference="same-budget"),
                 rec("full-earlystop", 0.95, 0.0, reference="val-steps", chosen_steps=40),
                 rec("full", 0.90, 0.01, student="transformer", n_train=65, reference="same-budget"),
                 rec("full-earlystop", 0.97, 0.01, student="transformer", reference="val-steps", chosen_steps=120),
                 {**rec("majority", 1 / 3, student=None), "budget": None,
                  "accuracy": {"mean": 1 / 3, "std": 0.0, "values": [1 / 3]}}]
    write(results, baselines)
    md = report(run.path, quiet=True).read_text()
    data = json.loads((run.path / "report.json").read_text())

    # arms that were not run (herding, k-center, logreg) get no column; the hard-label score of the soft set does
    assert ("| IPC | distilled | distilled, hard labels | random | full, same budget | full, steps on val | majority "
            "| gain over random |") in md
    assert "| 1 | 90.00 ± 1.00 | 80.00 ± 1.00 | 70.00 ± 2.00 | 85.00 ± 2.00 | 95.00 ± 0.00 | 33.33 | +20.00 pp |" in md
    assert "herding" not in md.split("## Accuracy")[1].split("## Standard")[0]

    # the claim: against the best reference of every student (the transformer's chosen-steps arm), named
    best = "full-earlystop (transformer, steps chosen on val: 120 steps)"
    assert data["claims"]["best_reference"]["label"] == best
    (claim,) = data["claims"]["claims"]
    assert claim["fraction"] == pytest.approx(0.90 / 0.97)
    assert f"reaches **{0.90 / 0.97 * 100:.1f} %** of full data" in md and f"**{best}**" in md
    # above the same-budget arm: said, with the gap in std units (0.05 / hypot(0.01, 0.02)) and why
    (above,) = data["claims"]["above"]
    assert above["reference"] == "full (mlp, same budget)" and above["gap_std"] == pytest.approx(0.05 / 0.02236, 1e-3)
    line = next(x for x in md.splitlines() if x.startswith("- ipc 1: distilled 90.00 % is above"))
    assert "by +5.00 pp, 2.2 std" in line and "30 steps of batch 16 (7.4 epochs)" in line
    assert "with its steps chosen on val (40 steps) the same student reaches 95.00 %, so the same-budget arm is " \
           "undertrained" in line  # 40 chosen steps > the 30 of the budget

    # transfer matrix: each cell / the evaluating student's better of full and full-earlystop
    (t,) = data["transfer"]
    assert t["distilled_with"] == ["mlp", "mlp+transformer"] and t["students"] == ["mlp", "transformer"]
    fracs = [[c["of_full"] for c in row] for row in t["cells"]]
    assert fracs == [[pytest.approx(0.90 / 0.95), pytest.approx(0.60 / 0.97)],
                     [pytest.approx(0.88 / 0.95), pytest.approx(0.80 / 0.97)]]
    assert "| mlp+transformer | 88.00 ± 1.00 (93 % of full) | 80.00 ± 1.00 (82 % of full) |" in md
    valid_png(run.path / "plots" / "transfer.png")

    # the standard scores, as in test_scores_follow_their_formulas, in the report with their definitions
    soft = next(r for r in data["scores"] if r["student"] == "mlp" and r["distilled_with"] == "mlp"
                and r["labels"] == "soft")
    assert soft["hlr"] == pytest.approx(0.05) and soft["ior"] == pytest.approx(0.20)
    assert "**HLR**, hard-label recovery" in md and "**same-budget** `full` arm" in md and "LRS" in md
    assert f"| 1 | mlp | mlp | soft | 90.00 | 70.00 | 85.00 | 80.00 | +20.00 | +5.00 | {soft['lrs']:.4f} |" in md


def test_validation_curve_and_set_used(hand_run):
    from distillctl.reporting.report import report

    run, _, write = hand_run
    write([rec("distilled", 0.9, ipc=1), rec("distilled", 0.9, ipc=2)])
    for ipc, step, steps_run, val in ((1, 5, 10, 0.6), (2, 5, 5, 0.7)):
        side = run.distilled / f"ipc{ipc}.json"
        meta = json.loads(side.read_text())
        side.write_text(json.dumps({**meta, "method": "bptt", "outer_step": step, "outer_steps_run": steps_run,
                                    "val_accuracy": val}))
    lines = [{"stage": 0, "ipc": 1, "step": s, "val_accuracy": v} for s, v in ((0, 0.4), (5, 0.6), (10, 0.55))]
    lines += [{"stage": 0, "ipc": 1, "step": 7, "loss": 0.3},  # a training line: no point on the curve
              {"stage": 0, "ipc": 1, "step": 10, "event": "stopped", "reason": "no better val in 1 validation"},
              {"stage": 1, "ipc": 2, "step": 0, "val_accuracy": 0.5}, {"stage": 1, "ipc": 2, "step": 5, "val_accuracy": 0.7}]
    run.metrics.write_text("".join(json.dumps(x) + "\n" for x in lines))
    md = report(run.path, quiet=True).read_text()
    data = json.loads((run.path / "report.json").read_text())
    one, two = data["distillation"]
    assert one["points"] == [[0, 0.4], [5, 0.6], [10, 0.55]] and one["chosen_step"] == 5
    assert one["stop"] == {"step": 10, "reason": "no better val in 1 validation"}
    assert one["selection"] == "best-on-val" and two["selection"] == "best-on-val (= final)" and two["stop"] is None
    assert "| 1 | bptt | best-on-val | 5 | 10 | 60.00 | step 10: no better val in 1 validation |" in md
    assert "![validation curve](plots/val_curve.png)" in md
    valid_png(run.path / "plots" / "val_curve.png")


def test_pca_picture_is_the_projection_on_trains_principal_plane(hand_run, monkeypatch):
    import numpy as np

    import distillctl.reporting.report_plots
    from distillctl.reporting.report import report
    from distillctl.distillation.synthetic import SyntheticSet

    run, emb, write = hand_run
    monkeypatch.setattr(distillctl.reporting.report_plots, "PCA_REAL_ROWS", 50)  # fewer real rows drawn than train has
    write([rec("distilled", 0.9, ipc=1)])
    md = report(run.path, quiet=True).read_text()
    data = json.loads((run.path / "report.json").read_text())["pca"]
    X = emb.splits["train"].X.double().numpy()
    mu = X.mean(0)
    _, S, Vt = np.linalg.svd(X - mu, full_matrices=False)
    comps = Vt[:2].T * np.sign(Vt[:2].T[np.abs(Vt[:2].T).argmax(0), [0, 1]])  # largest loading positive
    assert data["explained_variance_ratio"] == pytest.approx((S[:2] ** 2 / (S ** 2).sum()).tolist(), abs=1e-6)
    for s in data["sets"]:
        x = SyntheticSet.load(run.distilled / f"ipc{s['ipc']}.safetensors").x.double().numpy()
        assert np.allclose(s["points"], (x - mu) @ comps, atol=1e-5)
        assert s["classes"] == [c for c in range(3) for _ in range(s["ipc"])]
    assert [s["ipc"] for s in data["sets"]] == [1, 2] and data["real_rows_drawn"] == 50
    assert emb.splits["train"].X.shape[0] > 50  # the basis is fitted on all of them (checked above)
    assert "![PCA of the sets](plots/pca.png)" in md
    valid_png(run.path / "plots" / "pca.png")


def test_the_initial_model_arm_of_a_token_set_is_its_own_column(hand_run):
    """Token level: `distilled-init` (the set fine-tuning the initial model it was distilled for) is shown
    beside `distilled` (fresh heads), in its own column, never mixed into it."""
    from distillctl.reporting.report import report

    run, _, write = hand_run
    own = str((run.distilled / "ipc1.safetensors").resolve())
    write([rec("distilled", 0.60, 0.05, ipc=1, labels="soft", set=own),
           {**rec("distilled-init", 0.82, ipc=1, labels="soft", set=own), "seeds": [0]}],
          [rec("random", 0.40, 0.02, ipc=1), rec("full", 0.88, 0.01, n_train=65, reference="same-budget")])
    md = report(run.path, quiet=True).read_text()
    assert ("| IPC | distilled | distilled, from its initial model | random | full, same budget | "
            "gain over random |") in md, md
    assert "| 1 | 60.00 ± 5.00 | 82.00 ± 0.00 | 40.00 ± 2.00 | 88.00 ± 1.00 | +20.00 pp |" in md, md


def test_headline_has_a_row_for_each_replay_of_a_token_sets_own_steps():
    from distillctl.reporting.summary import headline, headline_md

    def rec(arm, labels, acc, std=0.0, ipc=1):
        return {"arm": arm, "ipc": ipc, "student": "finetune", "labels": labels,
                "accuracy": {"mean": acc, "std": std, "values": [acc]}, "time": f"2026-12-06T09:0{len(arm) % 10}"}

    records = [rec("distilled-heads", "soft", 0.8496), rec("distilled", "hard", 0.724, 0.0249),
               rec("distilled-init", "soft", 0.8496), rec("distilled", "soft", 0.7059, 0.0299)]
    h = headline(records)
    assert [(r["labels"], r["cells"][1][0]) for r in h["rows"]] == [
        ("soft", 0.7059), ("hard", 0.724), ("soft, its steps, initial model", 0.8496),
        ("soft, its steps, fresh heads", 0.8496)]
    assert "| finetune | soft, its steps, fresh heads | 84.96 ± 0.00 |" in headline_md(h)

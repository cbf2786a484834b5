"""compare: a seed sweep's points aggregated over distillation seeds, and the set each point kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fakes import evaluation as eval_fakes


def _point(folder, registry, name, values, accs, *, step, steps_run, val):
    from distillctl.recipe import validate_recipe
    from distillctl.runs import create_run_dir

    recipe = validate_recipe(eval_fakes.recipe_data(), registry=registry)
    run = create_run_dir(recipe, stage="distill", run_dir=folder / name)
    run.distilled.mkdir(parents=True, exist_ok=True)
    (run.distilled / "ipc1.json").write_text(json.dumps({
        "ipc": 1, "num_classes": 3, "method": "bptt", "val_accuracy": val, "outer_step": step,
        "outer_steps_run": steps_run, "wall_seconds": 2.0}))
    run.eval.mkdir(parents=True, exist_ok=True)
    summary = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "values": accs}
    (run.eval / "results.json").write_text(json.dumps({"results": [
        {"arm": "distilled", "ipc": 1, "student": "mlp", "labels": "hard", "distilled_with": "mlp",
         "accuracy": summary, "macro_f1": summary, "seeds": list(range(len(accs)))}]}))
    return {"name": name, "values": values, "run_dir": str(run.path)}


def test_a_seed_sweep_is_aggregated_over_distillation_seeds(monkeypatch, tmp_path, cli):
    from distillctl.reporting.compare import seed_groups
    from distillctl.reporting.report import report

    registry, _ = eval_fakes.install(monkeypatch, eval_fakes.embeddings())
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "sub"
    accs = {0: [0.80, 0.84], 1: [0.70, 0.74], 2: [0.90, 0.96]}
    kept = {0: (5, 10), 1: (10, 10), 2: (5, 10)}  # seed 1's best step was its last one
    points = [_point(folder, registry, f"seed={s}", {"seed": str(s)}, accs[s], step=kept[s][0],
                     steps_run=kept[s][1], val=0.5 + 0.1 * s) for s in accs]
    (folder / "submission.json").write_text(json.dumps({"points": points}))

    md = report(folder).read_text()  # `distillctl report SUBMISSION`
    data = json.loads((folder / "comparison.json").read_text())
    (g,) = data["seed_groups"]
    means = [np.mean(v) for v in accs.values()]
    assert g["seeds"] == ["0", "1", "2"] and g["ipc"] == 1 and g["config"] == "(recipe)"
    assert g["test_accuracy"] == pytest.approx(np.mean(means))
    assert g["test_std_over_distill_seeds"] == pytest.approx(np.std(means))  # population std, as every cell
    assert g["test_std_within_mean"] == pytest.approx(np.mean([np.std(v) for v in accs.values()]))
    assert g["test_std_pooled"] == pytest.approx(np.std(sum(accs.values(), [])))
    assert g["val_accuracy"] == pytest.approx(0.6) and g["val_std"] == pytest.approx(np.std([0.5, 0.6, 0.7]))
    assert g["selection"] == {"best-on-val": 2, "best-on-val (= final)": 1}

    assert "## Over distillation seeds" in md
    row = next(line for line in md.splitlines() if line.startswith("| (recipe) | mlp | 1 | 0, 1, 2 |"))
    assert f"{np.mean(means) * 100:.2f} ± {np.std(means) * 100:.2f}" in row
    assert "best-on-val (2 of 3); best-on-val (= final) (1 of 3)" in row
    # every per-point row says which set it used
    assert any(line.startswith("| seed=1 |") and line.endswith("| best-on-val (= final) |") for line in md.splitlines())

    # the CLI on a submission folder prints the comparison (its JSON is comparison.json, not report.json)
    res = cli("report", folder, "--json")
    assert res.code == 0, res
    assert json.loads(res.out)["seed_groups"] == data["seed_groups"]
    res = cli("report", folder)
    assert res.code == 0 and "## Over distillation seeds" in res.out
    assert f"wrote {folder / 'comparison.md'}, {folder / 'comparison.json'}, {folder / 'plots'}" in res.out

    # another sweep key keeps its points apart; a sweep with no seed key has no seed groups
    rows = [dict(r, values={"distill.method.name": "bptt"}) for r in data["rows"]]
    assert seed_groups(rows) == []
    rows = [dict(r, values={"distill.method.name": m, "distill.seed": s})
            for r, (m, s) in zip(data["rows"], [("bptt", "0"), ("bptt", "1"), ("dm", "0")])]
    (only,) = seed_groups(rows)  # dm has one seed: nothing to aggregate
    assert only["config"] == "distill.method.name=bptt" and only["seeds"] == ["0", "1"]


def _summary(accs):
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "values": accs}


def test_a_seed_sweep_pools_references_transfer_and_scores(monkeypatch, tmp_path):
    """Each seed's records (two students, three full-data references, random) pooled: mean over the seeds
    of each seed's mean, std over the seeds; the strongest reference, the transfer matrix (+ heatmap) and
    HLR / IOR / LRS computed from those means."""
    from distillctl.reporting.compare import pool_records
    from distillctl.reporting.report import report
    from distillctl.reporting.scores import lrs

    registry, _ = eval_fakes.install(monkeypatch, eval_fakes.embeddings())
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "sub"
    # per seed: (distilled on mlp, on linear, full mlp, full-earlystop mlp (steps), full linear, logreg, random)
    per_seed = {0: (0.80, 0.70, 0.84, (0.86, 250), 0.78, 0.85, 0.50),
                1: (0.82, 0.66, 0.84, (0.88, 500), 0.80, 0.85, 0.54),
                2: (0.84, 0.68, 0.86, (0.87, 250), 0.79, 0.85, 0.52)}
    points = []
    for s, (d_mlp, d_lin, f_mlp, (es, steps), f_lin, logreg, rand) in per_seed.items():
        p = _point(folder, registry, f"seed={s}", {"seed": str(s)}, [d_mlp - 0.01, d_mlp + 0.01], step=5,
                   steps_run=10, val=0.6)
        ev = folder / f"seed={s}" / "eval"
        results = json.loads((ev / "results.json").read_text())["results"]
        results.append({"arm": "distilled", "ipc": 1, "student": "linear", "labels": "hard",
                        "distilled_with": "mlp", "accuracy": _summary([d_lin]), "macro_f1": _summary([d_lin]),
                        "seeds": [0]})
        (ev / "results.json").write_text(json.dumps({"results": results}))
        base = [{"arm": "full", "student": "mlp", "ipc": None, "accuracy": _summary([f_mlp]), "seeds": [0]},
                {"arm": "full-earlystop", "student": "mlp", "ipc": None, "accuracy": _summary([es]),
                 "chosen_steps": steps, "seeds": [0]},
                {"arm": "full", "student": "linear", "ipc": None, "accuracy": _summary([f_lin]), "seeds": [0]},
                {"arm": "full-logreg", "student": None, "ipc": None, "accuracy": _summary([logreg]),
                 "chosen_C": 1.0, "seeds": []},
                {"arm": "random", "student": "mlp", "ipc": 1, "accuracy": _summary([rand]), "seeds": [0]}]
        (ev / "baseline-full.json").write_text(json.dumps({"results": base}))
        points.append(p)
    (folder / "submission.json").write_text(json.dumps({"points": points}))

    md = report(folder).read_text()
    (sweep,) = json.loads((folder / "comparison.json").read_text())["seed_sweeps"]
    pooled = {(r["arm"], r.get("student")): r for r in sweep["records"]}
    es = pooled[("full-earlystop", "mlp")]
    assert es["accuracy"]["mean"] == pytest.approx(0.87) and es["accuracy"]["std"] == pytest.approx(np.std([.86, .88, .87]))
    assert es["chosen_steps"] == "250/500/250" and es["distill_seeds"] == 3
    assert pooled[("full-logreg", None)]["chosen_C"] == 1.0  # the same in every seed: kept as it is
    d = pooled[("distilled", "mlp")]["accuracy"]
    assert d["mean"] == pytest.approx(0.82) and d["within"] == pytest.approx(0.01)

    # the strongest reference over the seeds is full-earlystop (0.87 > logreg 0.85), the claim against it
    assert sweep["claims"]["best_reference"]["arm"] == "full-earlystop"
    (claim,) = sweep["claims"]["claims"]
    assert claim["fraction"] == pytest.approx(0.82 / 0.87)
    assert "full-earlystop (mlp, steps chosen on val: 250/500/250 steps)" in md
    # transfer: mlp-made set on the linear student, as a share of the linear student's own full arm
    (t,) = sweep["transfer"]
    lin = t["cells"][0][t["students"].index("linear")]
    assert lin["accuracy"]["mean"] == pytest.approx(0.68) and lin["of_full"] == pytest.approx(0.68 / 0.79)
    assert "| mlp | 82.00 ± 1.63 (94 % of full) | 68.00 ± 1.63 (86 % of full) |" in md
    assert (folder / "plots" / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    # scores from the pooled means: HLR against the same-budget full arm, IOR against random
    row = next(r for r in sweep["scores"] if r["student"] == "mlp")
    assert row["hlr"] == pytest.approx(0.8466666 - 0.82, abs=1e-6) and row["ior"] == pytest.approx(0.82 - 0.52)
    assert row["lrs"] == pytest.approx(lrs(0.82 - 0.52, 0.8466666 - 0.82), abs=1e-6)
    assert "### Standard scores" in md and "## Over distillation seeds: references, transfer and scores" in md
    # one seed alone is no seed sweep
    assert pool_records([[pooled[("full", "mlp")]]])[0]["distill_seeds"] == 1


def test_a_pooled_reference_with_steps_per_seed_explains_a_set_above_full():
    """Pooled over seeds, full-earlystop's chosen steps are a string ("250/500/250"): the note on a set above
    the same-budget arm still names them (it raised a TypeError comparing them with the budget)."""
    from distillctl.reporting.sections import why_below

    full = {"arm": "full", "student": "mlp", "accuracy": _summary([0.80]), "budget": {"steps": 1000, "batch_size": 256},
            "n_train": 12000}
    es = {"arm": "full-earlystop", "student": "mlp", "accuracy": _summary([0.82]), "chosen_steps": "250/500/250"}
    why = why_below(full, [full, es])
    assert "with its steps chosen on val (250/500/250 steps) the same student reaches 82.00 %" in why
    assert why.endswith("so the same-budget arm is below what this student can do")

"""A token-level report's "Beside the frozen-vector path": the best distilled cell per ipc and the strongest
full-data reference of the vector-level runs on the same splits in the same runs folder, nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from distillctl.reporting.frozen_path import frozen_path_md, frozen_vector_best

DATA = {"name": "agnews", "source": "files", "train": "/d/train.txt", "val": "/d/val.csv", "test": "/d/test.csv"}


def rec(arm, acc, ipc=None, student="mlp", labels="hard", seeds=3):
    return {"arm": arm, "ipc": ipc, "student": student, "labels": labels, "seeds": list(range(seeds)),
            "accuracy": {"mean": acc, "std": 0.01}}


def run(root: Path, name: str, dataset: dict, level: str, results: list[dict], baseline: list[dict] = ()) -> Path:
    folder = root / name
    (folder / "eval").mkdir(parents=True)
    (folder / "recipe.resolved.yaml").write_text(yaml.safe_dump(
        {"dataset": dataset, "embed": {"level": level}, "encoder": {"name": "sentence-transformers",
                                                                     "model": "all-MiniLM-L6-v2"}}))
    (folder / "eval" / "results.json").write_text(json.dumps({"results": results}))
    if baseline:
        (folder / "eval" / "baseline-full.json").write_text(json.dumps({"results": list(baseline)}))
    return folder


def test_the_best_vector_cells_on_the_same_splits_are_found_and_others_ignored(tmp_path):
    root = tmp_path / "runs"
    token_run = run(root, "tok/1", DATA, "tokens", [rec("distilled", 0.99, ipc=1)])  # itself: never a row
    run(root, "tok/2/point", DATA, "vectors", [rec("distilled", 0.5, ipc=1)])
    run(root, "vec/1", DATA, "vectors", [rec("distilled", 0.80, ipc=1), rec("distilled", 0.84, ipc=10)],
        [rec("full-logreg", 0.86), rec("full", 0.85)])
    run(root, "sweep/2/name=krr", DATA, "vectors", [rec("distilled", 0.82, ipc=1, labels="soft")])
    run(root, "other/1", {**DATA, "test": "/d/other.csv"}, "vectors", [rec("distilled", 0.95, ipc=1)],
        [rec("full", 0.97)])  # other test rows: not comparable
    run(root, "tok/2", DATA, "tokens", [rec("distilled", 0.97, ipc=1)])  # the token path: not the vector one
    recipe = SimpleNamespace(name="tok", dataset=SimpleNamespace(model_dump=lambda mode=None: dict(DATA)))

    got = frozen_vector_best(token_run, recipe)

    assert sorted(got["runs"]) == ["sweep/2/name=krr", "tok/2/point", "vec/1"]
    assert [(r["ipc"], r["accuracy"], r["run"], r["labels"]) for r in got["rows"]] == [
        (1, 0.82, "sweep/2/name=krr", "soft"), (10, 0.84, "vec/1", "hard")]
    assert (got["reference"]["arm"], got["reference"]["accuracy"]) == ("full-logreg", 0.86)
    md = "\n".join(frozen_path_md(got))
    assert "| best set, ipc 1 | 82.00 ± 1.00 | all-MiniLM-L6-v2 | mlp | soft | 3 | `sweep/2/name=krr` |" in md
    assert "| full data, `full-logreg` | 86.00 ± 1.00 |" in md


def test_a_sweep_point_looks_in_its_runs_folder(tmp_path):
    root = tmp_path / "runs"
    point = run(root, "tok/7/init_seed=3", DATA, "tokens", [rec("distilled", 0.9, ipc=1)])
    run(root, "vec/1", DATA, "vectors", [rec("distilled", 0.8, ipc=1)])
    recipe = SimpleNamespace(name="tok", dataset=SimpleNamespace(model_dump=lambda mode=None: dict(DATA)))
    assert frozen_vector_best(point, recipe)["runs"] == ["vec/1"]


def test_no_comparable_run_or_no_runs_folder_means_no_section(tmp_path):
    recipe = SimpleNamespace(name="tok", dataset=SimpleNamespace(model_dump=lambda mode=None: dict(DATA)))
    token_run = run(tmp_path / "runs", "tok/1", DATA, "tokens", [rec("distilled", 0.9, ipc=1)])
    got = frozen_vector_best(token_run, recipe)
    assert got == {"rows": [], "reference": None, "runs": []} and frozen_path_md(got) == []
    # a --run-dir outside runs/<recipe>/: nothing above it is scanned, even with a vector run beside it
    elsewhere = run(tmp_path / "mine", "x", DATA, "tokens", [rec("distilled", 0.9, ipc=1)])
    run(tmp_path / "mine", "y/z", DATA, "vectors", [rec("distilled", 0.8, ipc=1)])
    assert frozen_vector_best(elsewhere, recipe) == {"rows": [], "reference": None, "runs": []}

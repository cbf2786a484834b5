"""Run directories, manifests and atomic writes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import toyplugins  # noqa: E402

from distillctl import plugins as plugins_mod  # noqa: E402
from distillctl.errors import UserError  # noqa: E402
from distillctl.recipe import validate_recipe  # noqa: E402
from distillctl.runs import (atomic_save_tensors, atomic_write_json, atomic_write_text, append_jsonl,  # noqa: E402
                             create_run_dir, open_run_dir, read_jsonl)


@pytest.fixture
def recipe(monkeypatch, tmp_path):
    registry = plugins_mod.load_registry(entry_points=[], extra_plugins=[(toyplugins, "toy-plugins", "1.0")])
    plugins_mod.set_registry(registry)  # reset after each test by conftest
    return validate_recipe({"name": "demo", "seed": 5, "dataset": {"name": "toyset", "train": "a.csv"}},
                           base_dir=tmp_path, registry=registry)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temp files left behind


def test_interrupted_atomic_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies between write and rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_tensors_round_trip(tmp_path):
    import torch
    from safetensors.torch import load_file, safe_open

    x = torch.randn(4, 3)
    atomic_save_tensors(tmp_path / "t.safetensors", {"x": x}, {"ipc": "2"})
    assert torch.equal(load_file(tmp_path / "t.safetensors")["x"], x)
    with safe_open(tmp_path / "t.safetensors", "pt") as fh:
        assert fh.metadata() == {"ipc": "2"}


def test_jsonl_tolerates_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2})
    with open(path, "a") as fh:
        fh.write('{"step": 3, "lo')  # a crash mid-line
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_create_run_dir_writes_recipe_and_manifest(tmp_path, recipe):
    run = create_run_dir(recipe, stage="distill", root=tmp_path / "runs", argv=["distillctl", "distill", "r.yaml"])
    assert run.path.parent == (tmp_path / "runs" / "demo").resolve()
    manifest = json.loads(run.manifest.read_text())
    assert manifest["stage"] == "distill"
    assert manifest["seed"] == 5
    assert manifest["command"] == ["distillctl", "distill", "r.yaml"]
    assert manifest["recipe_fingerprint"] == recipe.fingerprint()
    import torch

    import distillctl

    assert manifest["versions"]["distillctl"] == distillctl.__version__
    assert manifest["versions"]["torch"] == torch.__version__
    assert {"kind": "dataset", "name": "toyset", "package": "toy-plugins", "version": "1.0",
            "module": "toyplugins"} in manifest["plugins"]
    assert "git_sha" in manifest
    # the stored recipe loads back to the same recipe
    assert open_run_dir(run.path).load_recipe().to_dict() == recipe.to_dict()
    run.log(step=1, loss=0.5)
    assert read_jsonl(run.metrics)[0]["loss"] == 0.5


def test_two_runs_get_distinct_dirs(tmp_path, recipe):
    a = create_run_dir(recipe, stage="x", root=tmp_path)
    b = create_run_dir(recipe, stage="x", root=tmp_path)
    assert a.path != b.path


def test_open_run_dir_rejects_other_folders(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        open_run_dir(tmp_path)

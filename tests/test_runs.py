"""Run directories, manifests and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distillctl import plugins as plugins_mod
from distillctl.errors import UserError
from distillctl.recipe import validate_recipe
from distillctl.runs import (atomic_save_tensors, atomic_write_json, atomic_write_text, append_jsonl,
                             create_run_dir, open_run_dir, read_jsonl)
from fakes import toyplugins


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
            "module": "fakes.toyplugins"} in manifest["plugins"]
    assert "git_sha" in manifest  # its value: test_manifest_records_the_git_commit_of_the_working_directory
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


# -- run locks, refusing to mix runs, metrics on resume ------------------------------------------------

HOLD_LOCK = """
import sys, time
from distillctl.runs import run_lock
with run_lock(sys.argv[1], sys.argv[2], argv=["distillctl", "distill", "other.yaml", "--run-dir", sys.argv[1]]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held_lock():
    """``hold(folder, role)``: another process holds the run lock (killed with SIGKILL at the end)."""
    import subprocess

    procs = []

    def hold(folder, role="distill"):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), role], stdout=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "locked\n"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_run_lock_names_its_holder_and_dies_with_it(tmp_path, held_lock):
    from distillctl.runs import run_lock

    proc = held_lock(tmp_path)
    with pytest.raises(UserError, match=rf"another distill is writing into this run directory: PID {proc.pid} on "
                                        r".*`distillctl distill other.yaml --run-dir .*`"):
        with run_lock(tmp_path, "distill"):
            pass
    with run_lock(tmp_path, "eval"):  # another role (other files) of the same run is free
        pass
    proc.kill()  # a killed holder leaves no stale lock
    proc.wait()
    with run_lock(tmp_path, "distill") as path:
        with run_lock(tmp_path, "distill"):  # the holder may take it again (nested stage calls)
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert path.read_text() == ""  # released: no holder named any more


@pytest.fixture
def distill_env(monkeypatch, tmp_path):
    """The real registry with the fake dataset/encoder; load_embeddings returns tiny Gaussian embeddings."""
    import yaml

    from fakes import distill as distill_fakes
    import distillctl.data.embed as embed_module

    registry = plugins_mod.load_registry(extra_plugins=[(distill_fakes, "tests", "0")])
    plugins_mod.set_registry(registry)
    emb = distill_fakes.gaussian_embeddings()
    monkeypatch.setattr(embed_module, "load_embeddings", lambda recipe, *, quiet=None: emb)
    monkeypatch.chdir(tmp_path)

    def recipe_file(**outer):
        data = distill_fakes.tiny_recipe({
            "ipc": [1, 2], "method": {"name": "dm"},
            "outer": {"lr": 0.05, "iterations": 4, "real_batch": 30, "val_every": 2, "ckpt_every": 2,
                      "val_seeds": 1, **outer}})
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return recipe_file


def test_distill_run_dir_refuses_a_folder_holding_a_run(distill_env, cli, tmp_path):
    recipe = distill_env()
    assert cli("distill", recipe, "--run-dir", tmp_path / "run").code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "distilled").iterdir()}
    r = cli("distill", recipe, "--set", "distill.ipc=[1]", "--run-dir", tmp_path / "run")
    assert r.code == 2 and "Traceback" not in r.err, r
    assert "already holds a run (recipe.resolved.yaml, manifest.json, metrics.jsonl, distilled, checkpoints)" in r.err
    assert f"`--resume {tmp_path / 'run'}`" in r.err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "distilled").iterdir()} == before
    assert cli("distill", recipe, "--resume", tmp_path / "run").code == 0  # the way to continue it
    (tmp_path / "file").write_text("x")
    r = cli("distill", recipe, "--run-dir", tmp_path / "file")
    assert r.code == 2 and "not a folder" in r.err, r


def test_second_writer_of_a_run_is_refused_with_the_holders_pid(distill_env, cli, tmp_path, held_lock):
    recipe = distill_env()
    assert cli("distill", recipe, "--run-dir", tmp_path / "run").code == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    proc = held_lock(tmp_path / "run", "distill")
    r = cli("distill", recipe, "--resume", tmp_path / "run")
    assert r.code == 2 and f"another distill is writing into this run directory: PID {proc.pid}" in r.err, r
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics  # nothing logged twice
    r = cli("distill", recipe, "--run-dir", tmp_path / "new")
    assert r.code == 0, r  # other folders are free
    held_lock(tmp_path / "run", "eval")
    r = cli("eval", tmp_path / "run")
    assert r.code == 2 and "another eval is writing into this run directory: PID" in r.err, r
    held_lock(tmp_path / "run", "report")
    r = cli("report", tmp_path / "run")
    assert r.code == 2 and "another report is writing into this run directory" in r.err, r
    held_lock(tmp_path / "run", "baseline-majority")
    r = cli("baseline", recipe, "--kind", "majority", "--run-dir", tmp_path / "run")
    assert r.code == 2 and "another baseline-majority is writing into this run directory" in r.err, r
    assert cli("baseline", recipe, "--kind", "random", "--ipc", "1", "--run-dir", tmp_path / "run").code == 0


def test_metrics_are_not_repeated_when_a_stopped_stage_is_resumed(distill_env, monkeypatch, tmp_path):
    """A stage stopped early (patience) logs its stop at the step of its last checkpoint; killed before its
    set is saved and resumed from that checkpoint, it stops again: the stop is logged once."""
    from distillctl.distillation.distill import distill
    from distillctl.recipe import load_recipe
    from distillctl.distillation.synthetic import SyntheticSet

    recipe = load_recipe(distill_env(iterations=8, patience=1))
    distill(recipe, run_dir=tmp_path / "a", quiet=True)
    real_save = SyntheticSet.save

    def killed(self, path):
        raise KeyboardInterrupt  # the process dies while saving the stopped stage's set

    monkeypatch.setattr(SyntheticSet, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        distill(recipe, run_dir=tmp_path / "b", quiet=True)
    monkeypatch.setattr(SyntheticSet, "save", real_save)
    distill(recipe, resume=tmp_path / "b", quiet=True)

    def plain(run):
        return [{k: v for k, v in r.items() if k not in ("time", "elapsed", "val_seconds")}
                for r in read_jsonl(tmp_path / run / "metrics.jsonl")]

    a, b = plain("a"), plain("b")
    assert [r for r in a if r.get("event") == "stopped"]  # the stage did stop early
    assert b == a


def test_manifest_records_the_git_commit_of_the_working_directory(tmp_path, recipe, monkeypatch):
    """A run started in a git checkout records its HEAD, with ``+dirty`` when tracked files changed; none
    outside a repository."""
    import shutil

    if shutil.which("git") is None:
        pytest.skip("git not on PATH")
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path counts
    assert json.loads(create_run_dir(recipe, stage="x", root=tmp_path / "runs").manifest.read_text())["git_sha"] is None

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    (repo / "f.txt").write_text("one")
    for args in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "one"]):
        subprocess.run(git + args, check=True, capture_output=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    manifest = json.loads(create_run_dir(recipe, stage="x", root=tmp_path / "runs").manifest.read_text())
    assert manifest["git_sha"] == head and len(head) == 40
    (repo / "f.txt").write_text("two")
    manifest = json.loads(create_run_dir(recipe, stage="x", root=tmp_path / "runs").manifest.read_text())
    assert manifest["git_sha"] == head + "+dirty"

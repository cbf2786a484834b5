"""Issue 22, items 3 and 6: every refusal of distill comes before its run folder exists (method x student x
labels, ipc vs class sizes, val / test sizes per class); Ctrl-C and SIGTERM say where the run stopped and the
command that continues it; `distill --resume RUN` needs no RECIPE; a differing recipe names each field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fakes import distill as distill_fakes
from distillctl.distillation.synthetic import SyntheticSet
from test_distill import env, recipe_data  # noqa: F401  (env: fixture)

TESTS = Path(__file__).resolve().parent


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def no_run_folders(tmp: Path) -> bool:
    runs = tmp / "runs"
    return not runs.exists() or not any(runs.rglob("*"))


@pytest.mark.parametrize("distill, needle", [
    ({"method": {"name": "dm"}, "soft_labels": True}, "does not use labels, so distill.soft_labels"),
    ({"method": {"name": "mtt", "experts": 1, "spacing": 10, "expert_epochs": 2, "max_start_epoch": 3}},
     "method 'mtt': max_start_epoch + expert_epochs (3 + 2)"),
    ({"ipc": [1, 61]}, "distill.ipc: ipc 61 exceeds the training rows of the smallest class"),
])
def test_refusals_write_no_run_folder(env, cli, distill, needle):
    recipe = write(env.tmp / "r.yaml", recipe_data(**distill))
    r = cli("distill", recipe)
    assert r.code == 2 and needle in r.err and len(r.err.strip().splitlines()) == 1, r
    assert no_run_folders(env.tmp)
    r = cli("distill", recipe, "--run-dir", env.tmp / "mine")
    assert r.code == 2 and not (env.tmp / "mine").exists(), r


def test_a_too_small_val_split_is_refused_naming_split_and_minimum(env, cli):
    small = distill_fakes.gaussian_embeddings(n_per_class=(60, 1, 20))
    env.emb.splits["val"] = small.splits["val"]
    r = cli("distill", write(env.tmp / "r.yaml", recipe_data()))
    assert r.code == 2, r
    assert "the val split is too small: 3 rows (1 of 'class0', 1 of 'class1', 1 of 'class2')" in r.err
    assert "at least 2 rows in val" in r.err and "embed.val_size" in r.err
    assert no_run_folders(env.tmp)


def test_a_one_row_test_split_is_refused_by_distill_when_recorded_and_by_eval(env, cli):
    """distill never reads test, so it checks the counts the embeddings record; eval checks the split."""
    env.emb.class_counts = {"test": [1, 0, 0]}
    r = cli("distill", write(env.tmp / "r.yaml", recipe_data()))
    assert r.code == 2 and "the test split is too small: 1 rows (1 of 'class0', 0 of 'class1', 0 of 'class2')" in r.err, r
    assert "embed.test_size" in r.err and no_run_folders(env.tmp)


def test_eval_refuses_a_one_row_test_split_before_writing(monkeypatch, tmp_path, cli):
    from fakes import evaluation as eval_fakes

    recipe, run, emb = eval_fakes.run_in(monkeypatch, tmp_path)
    one = distill_fakes.gaussian_embeddings(n_per_class=(30, 10, 1), C=3, d=8)
    emb.splits["test"] = distill_fakes.FakeSplit(one.splits["test"].X[:1], one.splits["test"].y[:1])
    r = cli("eval", run.path)
    assert r.code == 2 and "the test split is too small: 1 rows" in r.err and "at least 2 rows in test" in r.err, r
    assert not (run.eval / "results.json").exists()
    r = cli("baseline", run.recipe, "--kind", "random", "--run-dir", tmp_path / "elsewhere")
    assert r.code == 2 and "the test split is too small" in r.err and not (tmp_path / "elsewhere").exists(), r


def test_resume_without_recipe_uses_the_runs_own(env, cli):
    recipe = write(env.tmp / "r.yaml", recipe_data())
    r = cli("distill", recipe, "--run-dir", env.tmp / "run")
    assert r.code == 0, r
    before = (env.tmp / "run" / "distilled" / "ipc2.safetensors").read_bytes()
    r = cli("distill", "--resume", env.tmp / "run")
    assert r.code == 0 and "run directory:" in r.out, r
    assert (env.tmp / "run" / "distilled" / "ipc2.safetensors").read_bytes() == before  # finished: reused
    r = cli("distill")
    assert r.code == 2 and "missing RECIPE (or --resume RUN_DIR" in r.err, r


def test_resume_with_another_recipe_names_each_field_and_both_values(env, cli):
    recipe = write(env.tmp / "r.yaml", recipe_data())
    assert cli("distill", recipe, "--run-dir", env.tmp / "run").code == 0
    r = cli("distill", recipe, "--resume", env.tmp / "run", "--set", "distill.outer.lr=0.02", "--set", "seed=4")
    assert r.code == 2, r
    assert "distill.outer.lr: 0.01 in the run, 0.02 given" in r.err and "seed: 3 in the run, 4 given" in r.err, r
    r = cli("distill", "--resume", env.tmp / "run", "--set", "distill.outer.lr=0.02")  # overrides on the run's own
    assert r.code == 2 and "distill.outer.lr: 0.01 in the run, 0.02 given" in r.err, r


def test_ctrl_c_says_where_the_run_stopped_and_the_resume_command_continues_it_exactly(env, cli, monkeypatch):
    import distillctl.distillation.distill as d

    recipe = write(env.tmp / "r.yaml", recipe_data())
    assert cli("distill", recipe, "--run-dir", env.tmp / "whole").code == 0
    real = d._clip_scale

    def interrupt_at_step_7(outer, loop, norm):
        if loop.step == 6 and loop.ema is not None and not os.environ.get("RESUMED"):
            raise KeyboardInterrupt
        return real(outer, loop, norm)

    monkeypatch.setattr(d, "_clip_scale", interrupt_at_step_7)
    run = env.tmp / "run"
    r = cli("distill", recipe, "--run-dir", run)
    assert r.code == 130, r
    assert (f"interrupted (SIGINT) at stage ipc=1, after outer step 6 of 10; the newest checkpoint is step 4 "
            f"(ipc1-step0000004.safetensors), where the resume continues; continue with: "
            f"distillctl distill --resume {run.resolve()}") in r.err, r
    monkeypatch.setenv("RESUMED", "1")
    r = cli("distill", "--resume", run.resolve())
    assert r.code == 0, r
    for ipc in (1, 2):
        a = SyntheticSet.load(run / "distilled" / f"ipc{ipc}.safetensors")
        b = SyntheticSet.load(env.tmp / "whole" / "distilled" / f"ipc{ipc}.safetensors")
        assert torch.equal(a.x, b.x) and a.meta["val_accuracy"] == b.meta["val_accuracy"]


def test_a_sigterm_that_lands_inside_a_pydantic_serializer_still_stops_the_run_with_its_resume_command(
        env, cli, monkeypatch):
    """CI saw it: the signal's handler ran inside a model_serializer, pydantic re-raised the interrupt as
    PydanticSerializationError, and the run failed (exit 1) instead of stopping (exit 143)."""
    import pydantic

    import distillctl.distillation.distill as d

    class Serialized(pydantic.BaseModel):
        @pydantic.model_serializer(mode="plain")
        def _flatten(self) -> dict:
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at the next bytecode, inside pydantic's call
            return {"step": 1}

    real = d._clip_scale

    def signal_inside_a_serializer(outer, loop, norm):
        if loop.step == 6:
            Serialized().model_dump()
        return real(outer, loop, norm)

    monkeypatch.setattr(d, "_clip_scale", signal_inside_a_serializer)
    run = env.tmp / "run"
    r = cli("distill", write(env.tmp / "r.yaml", recipe_data()), "--run-dir", run)
    assert r.code == 143, r
    assert "PydanticSerializationError" not in r.err, r
    assert (f"interrupted (SIGTERM) at stage ipc=1, after outer step 6 of 10; the newest checkpoint is step 4 "
            f"(ipc1-step0000004.safetensors), where the resume continues; continue with: "
            f"distillctl distill --resume {run.resolve()}") in r.err, r
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler went with the command


def test_an_error_with_no_signal_behind_it_is_still_a_failed_run(env, cli, monkeypatch):
    import distillctl.distillation.distill as d

    def fails(outer, loop, norm):
        raise ValueError("a real failure")

    monkeypatch.setattr(d, "_clip_scale", fails)
    r = cli("distill", write(env.tmp / "r.yaml", recipe_data()), "--run-dir", env.tmp / "run")
    assert r.code == 1 and "run failed: ValueError: a real failure" in r.err, r


def test_sigterm_stops_a_distill_process_with_the_resume_command(tmp_path):
    data = recipe_data()
    data["distill"]["outer"].update(iterations=100_000, val_every=50_000, ckpt_every=2)
    recipe = write(tmp_path / "r.yaml", data)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fakes.cli", "distill", str(recipe), "--run-dir", str(run)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((run / "checkpoints").glob("*.safetensors")):
            time.sleep(0.2)
        assert list((run / "checkpoints").glob("*.safetensors")), "no checkpoint within 120 s"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM) at stage ipc=1, after outer step " in err
    assert f"continue with: distillctl distill --resume {run.resolve()}" in err
    assert not (run / ".locks" / "distill.lock").read_text()  # the lock was released with its holder's name
    assert json.loads((run / "manifest.json").read_text())["recipe_name"] == "tiny"

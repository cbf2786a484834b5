"""distill end to end on a tiny Gaussian-mixture "embedding cache": files, resume, Boost-DD, NaN, CLI."""

from __future__ import annotations

import json
import types

import pytest
import torch

from fakes import distill as distill_fakes
from distillctl.errors import RunError, UserError
from distillctl.plugins import load_registry, set_registry
from distillctl.recipe import validate_recipe
from distillctl.runs import read_jsonl
from distillctl.distillation.synthetic import SyntheticSet


def recipe_data(**distill):
    return distill_fakes.tiny_recipe({
        "ipc": [1, 2],
        "method": {"name": "bptt", "unroll": {"name": "ratbptt", "window": 3, "total": 6}},
        "inner": {"optimizer": "adam", "lr": 0.01},
        "outer": {"lr": 0.01, "iterations": 10, "real_batch": 48, "val_every": 5, "ckpt_every": 4,
                  "val_seeds": 2},
    }, **distill)


class NoTestSplit:
    """A split that fails the test if distill looks at it."""

    def __getattr__(self, name):
        raise AssertionError("distill touched the test split")


@pytest.fixture
def env(monkeypatch, tmp_path):
    """The real registry plus the fake dataset/encoder/scheduler, and fake embeddings for load_embeddings."""
    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0")])
    set_registry(registry)  # reset after each test by conftest
    emb = distill_fakes.gaussian_embeddings()
    emb.splits["test"] = NoTestSplit()
    import distillctl.data.embed as embed_module
    calls = []

    def fake_load_embeddings(recipe, *, quiet=None):
        calls.append(recipe.name)
        return emb

    monkeypatch.setattr(embed_module, "load_embeddings", fake_load_embeddings)
    monkeypatch.chdir(tmp_path)
    ns = types.SimpleNamespace(registry=registry, emb=emb, calls=calls, tmp=tmp_path)
    ns.recipe = lambda **kw: validate_recipe(recipe_data(**kw), registry=registry)
    return ns


def without_time(records):
    return [{k: v for k, v in r.items() if k not in ("time", "elapsed", "val_seconds")} for r in records]


def test_distill_writes_nested_sets_metrics_and_checkpoints(env):
    from distillctl.distillation.distill import distill

    recipe = env.recipe()
    res = distill(recipe, run_dir=env.tmp / "run", quiet=True)
    assert env.calls == ["tiny"]  # embeddings come from load_embeddings(recipe)
    assert [s["ipc"] for s in res.sets] == [1, 2]
    for s in res.sets:
        syn = SyntheticSet.load(s["path"])
        assert syn.x.shape == (3 * s["ipc"], 8) and syn.x.dtype == torch.float32
        assert syn.labels.dtype == torch.int64 and torch.equal(syn.labels, torch.arange(3).repeat_interleave(s["ipc"]))
        assert syn.meta["recipe_fingerprint"] == recipe.fingerprint()
        assert syn.meta["embedding_fingerprint"] == "fake-embeddings"
        assert syn.meta["label_names"] == ["class0", "class1", "class2"]
        assert syn.meta["val_accuracy"] == pytest.approx(s["val_accuracy"])
        assert 0 <= s["val_accuracy"] <= 1 and syn.meta["stage"] == s["ipc"] - 1
    side = json.loads((env.tmp / "run/distilled/ipc2.json").read_text())
    assert {"recipe_fingerprint", "embedding_fingerprint", "ipc", "stage", "outer_step", "val_accuracy",
            "label_names", "soft_labels"} <= set(side)
    metrics = read_jsonl(env.tmp / "run/metrics.jsonl")
    steps = [r for r in metrics if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 11)) * 2
    assert all({"loss", "grad_norm", "elapsed"} <= set(r) for r in steps)
    vals = [(r["stage"], r["step"]) for r in metrics if "val_accuracy" in r]
    assert vals == [(0, 0), (0, 5), (0, 10), (1, 0), (1, 5), (1, 10)]
    ckpts = sorted(p.name for p in (env.tmp / "run/checkpoints").iterdir())
    assert ckpts == ["ipc1-step0000004.safetensors", "ipc1-step0000008.safetensors",
                     "ipc2-step0000004.safetensors", "ipc2-step0000008.safetensors"]


def test_synthetic_set_round_trip_soft_labels(tmp_path):
    probs = torch.softmax(torch.randn(6, 3), -1)
    syn = SyntheticSet(torch.randn(6, 4), probs, ipc=2, num_classes=3, inner_lr=0.05,
                       meta={"label_names": ["a", "b", "c"], "stage": 1})
    syn.save(tmp_path / "ipc2.safetensors")
    back = SyntheticSet.load(tmp_path / "ipc2.safetensors")
    assert torch.equal(back.x, syn.x) and torch.equal(back.labels, probs) and back.soft
    assert back.inner_lr == 0.05 and back.label_names == ["a", "b", "c"] and back.meta["stage"] == 1
    (tmp_path / "ipc2.json").unlink()
    with pytest.raises(UserError, match="sidecar"):
        SyntheticSet.load(tmp_path / "ipc2.safetensors")
    with pytest.raises(UserError, match=r"x must be \(ipc\*C, d\)"):
        SyntheticSet(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), ipc=2, num_classes=3)


@pytest.mark.parametrize("die_at", [7, 15])  # stage 0 step 7; stage 1 step 6 (stage 0 already saved)
def test_resume_equals_uninterrupted(env, monkeypatch, die_at):
    import distillctl.unrolling as unrolling
    from distillctl.distillation.distill import distill

    kw = dict(soft_labels=True, inner={"learn_lr": True, "batch_per_class": 1, "population": 2},
              outer={"iterations": 9, "schedule": "cosine"})
    recipe = env.recipe(**kw)
    full = distill(recipe, run_dir=env.tmp / "a", quiet=True)

    real_unroll, calls = unrolling.unroll, []

    def dying_unroll(*args, **kwargs):  # the process "dies" at outer step `die_at` (counted over stages)
        calls.append(1)
        if len(calls) == die_at:
            raise KeyboardInterrupt
        return real_unroll(*args, **kwargs)

    monkeypatch.setattr(unrolling, "unroll", dying_unroll)
    with pytest.raises(KeyboardInterrupt):
        distill(recipe, run_dir=env.tmp / "b", quiet=True)
    monkeypatch.setattr(unrolling, "unroll", real_unroll)
    assert (env.tmp / "b/distilled/ipc1.safetensors").exists() == (die_at > 9)
    resumed = distill(env.recipe(**kw), resume=env.tmp / "b", quiet=True)

    assert [s["val_accuracy"] for s in resumed.sets] == [s["val_accuracy"] for s in full.sets]
    for a, b in zip(full.sets, resumed.sets):
        sa, sb = SyntheticSet.load(a["path"]), SyntheticSet.load(b["path"])
        torch.testing.assert_close(sa.x, sb.x, rtol=0, atol=0)
        torch.testing.assert_close(sa.labels, sb.labels, rtol=0, atol=0)
        assert sa.inner_lr == sb.inner_lr and sa.meta["outer_step"] == sb.meta["outer_step"]
    ma, mb = read_jsonl(env.tmp / "a/metrics.jsonl"), read_jsonl(env.tmp / "b/metrics.jsonl")
    assert without_time(ma) == without_time(mb)  # steps 5-6 logged before the crash were replaced


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_outer_lr_schedule(env, monkeypatch, schedule):
    """Every outer step uses lr x (1 + cos(pi (t - 1) / T)) / 2 (cosine) or lr (constant), for every group."""
    import math

    from distillctl.distillation.distill import distill

    seen, real_step = [], torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        if len(self.param_groups) == 2:  # the outer optimiser (x, label logits), not a validation student's
            seen.append([g["lr"] for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    T = 4
    distill(env.recipe(ipc=[1], soft_labels=True, outer={"iterations": T, "lr": 0.02, "label_lr": 0.5,
                                                         "schedule": schedule}),
            run_dir=env.tmp / "s", quiet=True)
    factors = [0.5 * (1 + math.cos(math.pi * (t - 1) / T)) if schedule == "cosine" else 1.0 for t in range(1, T + 1)]
    assert [lr for group in seen for lr in group] == pytest.approx([lr for f in factors for lr in (0.02 * f, 0.5 * f)])
    if schedule == "cosine":
        assert seen[0] == [0.02, 0.5] and seen[-1][0] < 0.003


def test_resume_rejects_another_recipe_and_non_run_dirs(env):
    from distillctl.distillation.distill import distill

    distill(env.recipe(outer={"iterations": 2}), run_dir=env.tmp / "r", quiet=True)
    with pytest.raises(UserError, match="recipe differs"):
        distill(env.recipe(outer={"iterations": 3}), resume=env.tmp / "r", quiet=True)
    with pytest.raises(UserError, match="not a run directory"):
        distill(env.recipe(), resume=env.tmp / "nowhere", quiet=True)


@pytest.mark.parametrize("soft", [False, True])
def test_boost_beta_zero_freezes_inherited_rows(env, soft):
    from distillctl.distillation.distill import distill

    res = distill(env.recipe(ipc=[1, 3], soft_labels=soft, boost={"beta": 0.0}, outer={"val_every": 3}),
                  run_dir=env.tmp / "z", quiet=True)
    one, three = (SyntheticSet.load(s["path"]) for s in res.sets)
    assert three.x.shape == (9, 8)
    assert torch.equal(three.x.view(3, 3, 8)[:, :1], one.x.view(3, 1, 8))  # nested and frozen
    assert not torch.equal(three.x.view(3, 3, 8)[:, 1:], torch.zeros(3, 2, 8))
    if soft:
        assert torch.allclose(three.labels.view(3, 3, 3)[:, :1], one.labels.view(3, 1, 3), atol=1e-6)


@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_boost_beta_scales_updates_of_inherited_rows(env, beta):
    """Adam's first step moves every coordinate by lr (m_hat / sqrt(v_hat) = +-1); inherited rows by beta x lr."""
    from safetensors.torch import load_file

    from distillctl.distillation.distill import distill

    lr = 0.01
    res = distill(env.recipe(ipc=[1, 2], boost={"beta": beta}, outer={"iterations": 1, "lr": lr, "ckpt_every": 1}),
                  run_dir=env.tmp / "b", quiet=True)
    one = SyntheticSet.load(res.sets[0]["path"])
    after = load_file(str(env.tmp / "b/checkpoints/ipc2-step0000001.safetensors"))["learn.x"].view(3, 2, 8)
    moved = (after[:, 0] - one.x.view(3, 8)).abs()  # (C, d) movement of the inherited rows
    torch.testing.assert_close(moved, torch.full_like(moved, beta * lr), rtol=1e-3, atol=1e-6)


def test_nan_stops_with_clear_error_and_keeps_last_checkpoint(env, monkeypatch):
    import distillctl.unrolling as unrolling
    from distillctl.distillation.distill import distill

    real_unroll, calls = unrolling.unroll, []

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        out = real_unroll(*args, **kwargs)
        if len(calls) == 3:
            out.loss = float("nan")
        return out

    monkeypatch.setattr(unrolling, "unroll", nan_at_step_3)
    with pytest.raises(RunError, match=r"outer step 3: the outer loss is nan.*last good checkpoint: .*ipc1-step0000002"):
        distill(env.recipe(outer={"ckpt_every": 2}), run_dir=env.tmp / "n", quiet=True)
    from distillctl.distillation import checkpoints

    last_good = env.tmp / "n/checkpoints/ipc1-step0000002.safetensors"
    assert checkpoints.newest(env.tmp / "n/checkpoints", 1) == last_good
    ckpt = checkpoints.load(last_good, "cpu")
    assert ckpt.loop.step == 2 and torch.isfinite(ckpt.learn.x).all()
    assert not (env.tmp / "n/distilled/ipc1.safetensors").exists()
    assert read_jsonl(env.tmp / "n/metrics.jsonl")[-1]["event"] == "non-finite"


# -- CLI -----------------------------------------------------------------------------------------

def write_recipe(env, **kw):
    import yaml

    path = env.tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe_data(**kw)))
    return path


def test_cli_distill_json(env, cli):
    path = write_recipe(env, ipc=[1, 2], outer={"iterations": 3})
    r = cli("distill", path, "--set", "distill.outer.val_every=3", "--run-dir", env.tmp / "cli", "--json")
    assert r.code == 0, r
    out = json.loads(r.out)
    assert out["run_dir"] == str((env.tmp / "cli").resolve())
    assert [s["ipc"] for s in out["sets"]] == [1, 2]
    assert all(set(s) == {"ipc", "path", "val_accuracy"} for s in out["sets"])
    assert SyntheticSet.load(out["sets"][1]["path"]).ipc == 2
    # resuming a finished run reuses its sets
    r2 = cli("distill", path, "--set", "distill.outer.val_every=3", "--resume", env.tmp / "cli", "--json")
    assert r2.code == 0, r2
    assert json.loads(r2.out)["sets"] == out["sets"]


def test_cli_distill_errors(env, cli):
    path = write_recipe(env)
    r = cli("distill", path, "--set", "distill.method.unroll.window=9")
    assert r.code == 2 and "distill.method.unroll" in r.err and "window (9) must be <= total (6)" in r.err, r
    r = cli("distill", path, "--resume", env.tmp / "missing")
    assert r.code == 2 and "not a run directory" in r.err, r
    r = cli("distill", path, "--set", "distill.ipc=[1,1000]")
    assert r.code == 2 and "distill.ipc: ipc 1000 exceeds the training rows of the smallest class ('class" in r.err, r
    r = cli("distill", path, "--set", "distill.inner.optimizer=sgd", "--set", "distill.inner.lr=1e30",
            "--set", "distill.outer.clip=0")
    assert r.code == 1 and "not finite" in r.err and "Traceback" not in r.err, r


def test_max_seconds_stops_the_stage_and_still_saves_the_best_set(env):
    from distillctl.distillation.distill import distill

    res = distill(env.recipe(ipc=[1], outer={"max_seconds": 1e-9}), run_dir=env.tmp / "m", quiet=True)
    syn = SyntheticSet.load(res.sets[0]["path"])
    assert syn.meta["outer_steps_run"] == 0 and syn.meta["outer_step"] == 0
    assert not [r for r in read_jsonl(env.tmp / "m/metrics.jsonl") if "loss" in r]


def test_stage_by_stage_equals_the_whole_chain(env):
    """`--stage` (one job per Boost-DD stage, as submit runs it) gives the same sets as one call."""
    from distillctl.distillation.distill import distill

    whole = distill(env.recipe(outer={"iterations": 3}), run_dir=env.tmp / "w", quiet=True)
    first = distill(env.recipe(outer={"iterations": 3}), run_dir=env.tmp / "s", quiet=True, stage=1)
    assert [s["ipc"] for s in first.sets] == [1] and not (env.tmp / "s/distilled/ipc2.safetensors").exists()
    with pytest.raises(UserError, match="not a stage"):
        distill(env.recipe(outer={"iterations": 3}), resume=env.tmp / "s", quiet=True, stage=3)
    second = distill(env.recipe(outer={"iterations": 3}), resume=env.tmp / "s", quiet=True, stage=2)
    for a, b in zip(whole.sets, second.sets):
        assert torch.equal(SyntheticSet.load(a["path"]).x, SyntheticSet.load(b["path"]).x)


@pytest.mark.parametrize("init", ["real", "mean"])
def test_initial_rows_come_from_the_class(env, init):
    """Stopped before the first step, the saved set is the initial one: real rows or class-part means."""
    from distillctl.distillation.distill import distill

    res = distill(env.recipe(ipc=[1, 2], init=init, outer={"max_seconds": 1e-9}), run_dir=env.tmp / init, quiet=True)
    X, y = env.emb.splits["train"].X, env.emb.splits["train"].y
    one, two = (SyntheticSet.load(s["path"]) for s in res.sets)
    for c in range(3):
        rows = X[y == c]
        if init == "mean":
            torch.testing.assert_close(one.x[c], rows.mean(0))
        else:
            assert (rows == one.x[c]).all(1).any()
        new = two.x.view(3, 2, 8)[c, 1]  # the row added by stage 2
        if init == "real":
            assert (rows == new).all(1).any()
        else:  # the mean of half of the class: inside the class's bounding box, not a real row
            assert (new >= rows.min(0).values).all() and (new <= rows.max(0).values).all()


# -- several students (distill.students) ------------------------------------------------------------

TINY_TRANSFORMER = {"name": "transformer", "n_tokens": 2, "d_model": 4, "layers": 1, "heads": 2, "ff": 4}


def test_one_student_records_its_name_and_no_per_student_metrics(env):
    from distillctl.distillation.distill import distill

    res = distill(env.recipe(ipc=[1], outer={"iterations": 2, "val_every": 2}), run_dir=env.tmp / "one", quiet=True)
    side = json.loads((res.run_dir / "distilled/ipc1.json").read_text())
    assert side["distilled_with"] == "mlp" and [s["name"] for s in side["distill_students"]] == ["mlp"]
    assert side["stopped"] is None
    assert not [r for r in read_jsonl(res.run_dir / "metrics.jsonl") if "val_by_student" in r or "loss_by_student" in r]


def test_several_students_validate_on_each_and_record_them(env):
    """distill.students: [mlp, transformer]: the set says so (`distilled_with`), every outer step reports the
    loss of each architecture, and each validation is the mean of the architectures' val accuracies, which
    equal those of one-student runs of the same initial set."""
    from distillctl.distillation.distill import distill

    mlp = {"name": "mlp", "hidden": [16]}
    both = distill(env.recipe(ipc=[1, 2], students=[mlp, TINY_TRANSFORMER]), run_dir=env.tmp / "both", quiet=True)
    for s in both.sets:
        syn = SyntheticSet.load(s["path"])
        assert syn.meta["distilled_with"] == "mlp+transformer" and syn.meta["student"] == "mlp"
        assert [x["name"] for x in syn.meta["distill_students"]] == ["mlp", "transformer"]
        assert syn.meta["distill_students"][0]["hidden"] == [16] and syn.meta["distill_students"][1]["d_model"] == 4
    metrics = read_jsonl(both.run_dir / "metrics.jsonl")
    steps = [r for r in metrics if "loss" in r]
    assert len(steps) == 20 and all(set(r["loss_by_student"]) == {"mlp", "transformer"} for r in steps)
    for r in steps:
        assert r["loss"] == pytest.approx(sum(r["loss_by_student"].values()) / 2, rel=1e-5)
        assert {"mlp.free_steps", "transformer.graph_steps"} <= set(r)
    vals = [r for r in metrics if "val_accuracy" in r]
    assert len(vals) == 6
    for r in vals:
        assert r["val_accuracy"] == pytest.approx(sum(r["val_by_student"].values()) / 2, abs=1e-12)
    # the initial set (drawn before any method step) validated by one-student runs of each architecture
    alone = {}
    for name, section in (("mlp", mlp), ("transformer", TINY_TRANSFORMER)):
        res = distill(env.recipe(ipc=[1], students=[section], outer={"iterations": 1}), run_dir=env.tmp / name,
                      quiet=True)
        first = read_jsonl(res.run_dir / "metrics.jsonl")[0]
        assert first["step"] == 0 and "val_by_student" not in first
        alone[name] = first["val_accuracy"]
        assert SyntheticSet.load(res.sets[0]["path"]).meta["distilled_with"] == name
    assert vals[0]["step"] == 0 and vals[0]["val_by_student"] == alone


def distill_killed_at_check(monkeypatch, recipe, run_dir, n):
    """Run distill into run_dir and "kill" it (KeyboardInterrupt) at the n-th OuterStep.check call."""
    from distillctl.distillation.distill import distill
    from distillctl.methods import OuterStep

    real_check, calls = OuterStep.check, []

    def dying_check(self, *args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_check(self, *args)

    monkeypatch.setattr(OuterStep, "check", dying_check)
    with pytest.raises(KeyboardInterrupt):
        distill(recipe, run_dir=run_dir, quiet=True)
    monkeypatch.setattr(OuterStep, "check", real_check)


def test_several_students_resume_to_the_same_set(env, monkeypatch):
    """krr keeps one online pool per architecture: both are checkpointed and restored."""
    from distillctl.distillation.distill import distill

    kw = dict(method={"name": "krr", "pool": 2, "online_steps": 3}, students=["mlp", TINY_TRANSFORMER],
              outer={"iterations": 8, "val_every": 4, "ckpt_every": 3})
    whole = distill(env.recipe(**kw), run_dir=env.tmp / "whole", quiet=True)
    # dies at stage ipc 2, step 5 (checkpoint at 3): 3 checks a step (PerStudent's of each architecture,
    # the loop's of the mean)
    distill_killed_at_check(monkeypatch, env.recipe(**kw), env.tmp / "cut", 3 * 12 + 1)
    from distillctl.distillation import checkpoints

    ckpt = checkpoints.load(checkpoints.newest(env.tmp / "cut/checkpoints", 2), "cpu")
    assert ckpt.loop.step == 3 and {"0.theta", "1.theta", "0.limit", "1.limit"} <= set(ckpt.method)
    resumed = distill(env.recipe(**kw), resume=env.tmp / "cut", quiet=True)
    for a, b in zip(whole.sets, resumed.sets):
        sa, sb = SyntheticSet.load(a["path"]), SyntheticSet.load(b["path"])
        assert torch.equal(sa.x, sb.x) and sa.meta["val_accuracy"] == sb.meta["val_accuracy"]
    assert without_time(read_jsonl(whole.run_dir / "metrics.jsonl")) == without_time(
        read_jsonl(env.tmp / "cut/metrics.jsonl"))


# -- auto-stop (distill.outer.patience) -------------------------------------------------------------

def scripted_validation(monkeypatch, accuracies):
    """Validation returns these accuracies in turn (a constant when given a float); returns the call list."""
    import distillctl.evaluation.training as training

    calls = []

    def fake_train_and_score(*args, **kwargs):
        calls.append(1)
        acc = accuracies if isinstance(accuracies, float) else accuracies[len(calls) - 1]
        return types.SimpleNamespace(accuracy=[acc])

    monkeypatch.setattr(training, "train_and_score", fake_train_and_score)
    return calls


def test_patience_stops_the_stage_after_n_validations_without_improvement(env, monkeypatch):
    from distillctl.distillation.distill import distill

    # step 0: 0.5, 1: 0.6 (best), 2: 0.55, 3: 0.6 (equal is no improvement), 4: 0.58 -> 3 without improvement
    calls = scripted_validation(monkeypatch, [0.5, 0.6, 0.55, 0.6, 0.58] + [0.9] * 20)
    res = distill(env.recipe(ipc=[1, 2], outer={"iterations": 10, "val_every": 1, "patience": 3}),
                  run_dir=env.tmp / "p", quiet=True)
    reason = "patience: 3 validations without improvement since step 1"
    side = json.loads((res.run_dir / "distilled/ipc1.json").read_text())
    assert side["stopped"] == {"step": 4, "reason": reason}
    assert side["outer_steps_run"] == 4 and side["outer_step"] == 1 and side["val_accuracy"] == 0.6
    metrics = read_jsonl(res.run_dir / "metrics.jsonl")
    stage0 = [r for r in metrics if r["stage"] == 0]
    assert [r["step"] for r in stage0 if "loss" in r] == [1, 2, 3, 4]
    assert stage0[-1] == {**stage0[-1], "event": "stopped", "step": 4, "reason": reason}
    # stage ipc 2: 0.9 at step 0, then 0.9 again (no improvement) at steps 1-3: stopped after step 3
    side2 = json.loads((res.run_dir / "distilled/ipc2.json").read_text())
    assert side2["stopped"] == {"step": 3, "reason": "patience: 3 validations without improvement since step 0"}
    assert len(calls) == 5 + 4


def test_patience_off_runs_every_iteration(env, monkeypatch):
    from distillctl.distillation.distill import distill

    scripted_validation(monkeypatch, 0.5)
    res = distill(env.recipe(ipc=[1], outer={"iterations": 6, "val_every": 1}), run_dir=env.tmp / "p", quiet=True)
    side = json.loads((res.run_dir / "distilled/ipc1.json").read_text())
    assert side["outer_steps_run"] == 6 and side["stopped"] is None
    assert not [r for r in read_jsonl(res.run_dir / "metrics.jsonl") if r.get("event") == "stopped"]


def test_resume_keeps_the_patience_counter(env, monkeypatch):
    """A kill after the checkpoint of step 3 (one stale validation, at step 2): the resumed stage still stops
    at step 4, as the uninterrupted one, not at step 6 (which a counter reset to 0 would give)."""
    from distillctl.distillation.distill import distill

    scripted_validation(monkeypatch, 0.5)  # never improves on the initial set
    kw = dict(ipc=[1], outer={"iterations": 10, "val_every": 2, "ckpt_every": 3, "patience": 2})
    whole = distill(env.recipe(**kw), run_dir=env.tmp / "whole", quiet=True)
    assert json.loads((whole.run_dir / "distilled/ipc1.json").read_text())["stopped"]["step"] == 4

    distill_killed_at_check(monkeypatch, env.recipe(**kw), env.tmp / "cut", 4)
    from distillctl.distillation import checkpoints

    assert checkpoints.load(checkpoints.newest(env.tmp / "cut/checkpoints", 1), "cpu").loop.stale_validations == 1
    resumed = distill(env.recipe(**kw), resume=env.tmp / "cut", quiet=True)
    a, b = SyntheticSet.load(whole.sets[0]["path"]), SyntheticSet.load(resumed.sets[0]["path"])
    assert b.meta["stopped"] == a.meta["stopped"] == {
        "step": 4, "reason": "patience: 2 validations without improvement since step 0"}
    assert torch.equal(a.x, b.x)
    assert without_time(read_jsonl(whole.run_dir / "metrics.jsonl")) == without_time(
        read_jsonl(env.tmp / "cut/metrics.jsonl"))

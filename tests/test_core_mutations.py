"""Core behaviour that a one-line break could silently lose (each test was checked to fail under its break):

1. the outer loop clips the meta-gradient at clip x EMA(past *clipped* norms) and moves x by the clipped step;
2. the saved set is the best one on `val`, not the last one;
3. ``Scores.std`` is the population standard deviation over the seeds;
4. a learned inner lr (``distill.inner.learn_lr``) really moves, and the saved set carries the best set's.

Runs use tiny fake Gaussian embeddings (tests/distill_fakes.py), as tests/test_distill.py does; tests 1-2
drive the shared outer loop with a scripted third-party method plugin registered here, whose gradient is
known exactly.
"""

from __future__ import annotations

import json
import math
import statistics
import types

import pytest
import torch
from pydantic import Field

from fakes import distill as distill_fakes
from distillctl import hookimpl
from distillctl.methods import Method, OuterStep
from distillctl.options import PluginOptions
from distillctl.plugins import load_registry, using_registry
from distillctl.recipe import validate_recipe
from distillctl.runs import read_jsonl
from distillctl.distillation.synthetic import SyntheticSet

# -- a scripted method plugin -------------------------------------------------------------------

#: script name -> fn(method, step, x) -> (n, d) gradient for x; steps count from 1 within a stage
SCRIPTS = {}


class ScriptedOptions(PluginOptions):
    script: str = Field(..., description="Key of SCRIPTS: the gradient to return at each outer step.")


class Scripted(Method):
    """Returns a gradient chosen by the test; remembers the x it was given at every step (a copy)."""

    name = "scripted"

    def __init__(self, options):
        self.options = options
        self.calls = 0
        self.seen_x = []  # seen_x[t] = x after outer step t (= the x given to step t + 1)
        CREATED.append(self)

    def step(self, learn, real_x, real_y, generator):
        self.calls += 1
        x = learn.x.detach().clone()
        self.seen_x.append(x)
        grad = SCRIPTS[self.options.script](self, self.calls, x)
        return OuterStep(loss=float(self.calls), grads={"x": grad})


CREATED: list[Scripted] = []


@hookimpl
def register_methods(register):
    register("scripted", Scripted, options=ScriptedOptions, description="test: scripted gradients")


PLUGIN = types.ModuleType("core_mutations_plugin")
PLUGIN.register_methods = register_methods


# -- harness (as tests/test_distill.py) ---------------------------------------------------------

def recipe_data(**distill):
    return distill_fakes.tiny_recipe({
        "ipc": [1],
        "method": {"name": "bptt", "unroll": {"name": "ratbptt", "window": 3, "total": 6}},
        "inner": {"optimizer": "adam", "lr": 0.01},
        "outer": {"lr": 0.01, "schedule": "constant", "iterations": 6, "real_batch": 48, "val_every": 100,
                  "ckpt_every": 100, "val_seeds": 2},  # a constant lr, whatever the default: steps are lr x grad
    }, **distill)


@pytest.fixture
def env(monkeypatch, tmp_path):
    """The installed plugins plus the fakes and the scripted method; fake embeddings for load_embeddings."""
    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0"), (PLUGIN, "tests", "0")])
    assert not registry.failures, registry.failures
    emb = distill_fakes.gaussian_embeddings()
    import distillctl.data.embed as embed_module

    monkeypatch.setattr(embed_module, "load_embeddings", lambda recipe, *, quiet=None: emb)
    monkeypatch.chdir(tmp_path)
    CREATED.clear()
    ns = types.SimpleNamespace(registry=registry, emb=emb, tmp=tmp_path)
    ns.recipe = lambda **kw: validate_recipe(recipe_data(**kw), registry=registry)
    with using_registry(registry):
        yield ns
    SCRIPTS.clear()


def steps_of(run_dir):
    """metrics.jsonl records of the outer steps (those with a loss), in order."""
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


# -- 1. clipping at clip x EMA of the clipped norms ---------------------------------------------

def test_meta_gradient_is_clipped_at_clip_times_ema_of_clipped_norms(env):
    """A 100x spike is clipped to clip x EMA; the EMA then follows the *clipped* norm, so a 5x step right
    after the spike is still clipped (an EMA fed the raw spike would have let it through); with plain SGD
    (no momentum) x moves by exactly lr x scale x grad at every step."""
    from distillctl.distillation.distill import distill

    factors = [1, 1, 1, 1, 1, 100, 5, 1, 1]  # gradient norm multiplier per outer step
    direction = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))  # (C*ipc, d)
    SCRIPTS["spike"] = lambda method, step, x: direction * factors[step - 1]
    lr, clip, decay = 0.01, 2.0, 0.9
    recipe = env.recipe(method={"name": "scripted", "script": "spike"},
                        outer={"optimizer": "sgd", "momentum": 0.0, "lr": lr, "clip": clip, "clip_ema": decay,
                               "iterations": len(factors), "ckpt_every": 100})
    distill(recipe, run_dir=env.tmp / "clip", quiet=True)
    records = steps_of(env.tmp / "clip")
    assert [r["step"] for r in records] == list(range(1, len(factors) + 1))
    norms = [r["grad_norm"] for r in records]
    base = float(direction.norm())
    assert norms == pytest.approx([f * base for f in factors], rel=1e-5)

    # the expected scales, from the recorded norms and the recipe's clip / clip_ema
    ema, expected = None, []
    for norm in norms:
        scale = clip * ema / norm if ema is not None and norm > clip * ema else 1.0
        expected.append(scale)
        ema = norm * scale if ema is None else decay * ema + (1 - decay) * norm * scale
    scales = [r["clip_scale"] for r in records]
    assert scales == pytest.approx(expected, rel=1e-6)
    spike, after = factors.index(100), factors.index(100) + 1
    assert scales[:spike] == [1.0] * spike  # a steady norm is never clipped
    assert scales[spike] == pytest.approx(clip / 100, rel=1e-6)  # EMA = base exactly before the spike
    ema_after_spike = decay * base + (1 - decay) * clip * base  # the EMA follows the clipped norm (2 x base)
    assert scales[after] == pytest.approx(clip * ema_after_spike / (5 * base), rel=1e-6)
    assert scales[after] < 1  # 5 x base > clip x 1.1 x base: clipped, not waved through by a raised EMA
    assert scales[after + 1] == 1.0

    # x moved by lr x scale x grad at every step (the clipped step actually reached the optimiser)
    seen = CREATED[-1].seen_x
    for t in range(1, len(factors)):  # the update of outer step t: seen[t] - seen[t - 1]
        step = seen[t] - seen[t - 1]
        torch.testing.assert_close(step, -lr * scales[t - 1] * factors[t - 1] * direction, rtol=1e-4, atol=1e-7)
    assert float((seen[spike + 1] - seen[spike]).norm()) == pytest.approx(lr * clip * base, rel=1e-4)


# -- 2. the best set on val is saved, not the last ----------------------------------------------

def test_saved_set_is_the_best_on_val_not_the_last(env):
    """x starts random, moves halfway to the class means for 3 steps (val accuracy rises), then towards the
    *next* class's mean (accuracy collapses): the saved set is the one at the best validation step."""
    from distillctl.distillation.distill import distill

    good_steps = 3

    def toward_means(method, step, x):
        ctx = method.context
        means = torch.stack([ctx.x_train[ctx.y_train == c].mean(0) for c in range(ctx.num_classes)])  # (C, d)
        target = means[ctx.hard_labels]  # (C*ipc, d)
        if step > good_steps:
            target = means[(ctx.hard_labels + 1) % ctx.num_classes]  # garbage: every row in the wrong class
        return x - target  # one SGD step with lr 0.5 halves the distance to the target

    SCRIPTS["drift"] = toward_means
    iterations = 8
    recipe = env.recipe(method={"name": "scripted", "script": "drift"}, init="random",
                        outer={"optimizer": "sgd", "momentum": 0.0, "lr": 0.5, "clip": 0, "iterations": iterations,
                               "val_every": 1, "ckpt_every": 100})
    res = distill(recipe, run_dir=env.tmp / "best", quiet=True)
    vals = [(r["step"], r["val_accuracy"]) for r in read_jsonl(env.tmp / "best/metrics.jsonl") if "val_accuracy" in r]
    assert [s for s, _ in vals] == list(range(0, iterations + 1))
    accs = [a for _, a in vals]
    best_step = accs.index(max(accs))  # the first step with the best accuracy (a tie does not replace it)
    assert 1 <= best_step <= good_steps, accs  # the scripted drift did what it should: rise, then fall
    assert accs[-1] < accs[best_step], accs
    assert read_jsonl(env.tmp / "best/metrics.jsonl")[-1]["best_val_accuracy"] == accs[best_step]

    path = env.tmp / "best/distilled/ipc1.safetensors"
    assert res.sets[0]["path"] == path and res.sets[0]["val_accuracy"] == accs[best_step]
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["outer_step"] == best_step and side["val_accuracy"] == accs[best_step]
    saved = SyntheticSet.load(path)
    seen = CREATED[-1].seen_x  # seen[t] = x after outer step t, t < iterations
    torch.testing.assert_close(saved.x, seen[best_step], rtol=0, atol=0)
    last = seen[-1] - 0.5 * toward_means(CREATED[-1], iterations, seen[-1])  # x after the last step
    assert not torch.allclose(saved.x, last, atol=1e-3)


# -- 3. Scores.std ------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [[0.5, 0.7, 0.9, 0.6], [0.25, 1.0], [0.8, 0.8, 0.81]])
def test_scores_std_is_the_population_std_over_seeds(values):
    import numpy as np

    from distillctl.evaluation.training import Scores

    scores = Scores(seeds=list(range(len(values))), accuracy=list(values), macro_f1=[v / 2 for v in values])
    assert scores.std() == pytest.approx(statistics.pstdev(values), rel=1e-12)
    assert scores.std() == pytest.approx(float(np.std(values)), rel=1e-12) and scores.std() > 0
    assert scores.std("macro_f1") == pytest.approx(statistics.pstdev(values) / 2, rel=1e-12)
    assert scores.summary()["std"] == pytest.approx(statistics.pstdev(values), rel=1e-12)
    assert scores.metrics()["macro_f1"]["std"] == pytest.approx(statistics.pstdev(values) / 2, rel=1e-12)
    assert Scores(seeds=[0], accuracy=[0.7], macro_f1=[0.7]).std() == 0.0


# -- 4. the learned inner lr --------------------------------------------------------------------

def test_learned_inner_lr_moves_and_the_best_sets_lr_is_saved(env):
    """bptt with `inner.learn_lr`: the inner lr logged per step changes, and the saved set's inner_lr is
    exp(log_lr) of the best set (checkpointed as best.log_lr), not the recipe's starting lr."""
    from distillctl.distillation import checkpoints
    from distillctl.distillation.distill import distill

    lr0, iterations = 0.01, 6
    recipe = env.recipe(init="random", inner={"learn_lr": True, "lr": lr0},
                        outer={"lr": 0.1, "iterations": iterations, "val_every": 1, "ckpt_every": 1,
                               "keep_checkpoints": iterations})
    res = distill(recipe, run_dir=env.tmp / "lr", quiet=True)
    records = steps_of(env.tmp / "lr")
    lrs = [r["inner_lr"] for r in records]
    assert len(lrs) == iterations and all(math.isfinite(v) and v > 0 for v in lrs)
    assert len(set(lrs)) == iterations, lrs  # it moves at every step
    assert abs(lrs[-1] / lr0 - 1) > 1e-3, lrs

    saved = SyntheticSet.load(res.sets[0]["path"])
    side = json.loads((env.tmp / "lr/distilled/ipc1.json").read_text())
    ckpt = checkpoints.load(checkpoints.newest(env.tmp / "lr/checkpoints", 1), torch.device("cpu"))
    assert ckpt.loop.step == iterations and ckpt.loop.best_step == side["outer_step"]
    best_lr = float(ckpt.loop.best.log_lr.exp())
    assert side["outer_step"] >= 1, side  # the best set is a learned one (init random: step 0 is poor)
    assert saved.inner_lr == pytest.approx(best_lr, rel=1e-6)
    assert side["inner_lr"] == pytest.approx(best_lr, rel=1e-6)
    assert saved.inner_lr == pytest.approx(lrs[side["outer_step"] - 1], rel=1e-6)  # logged at the best step
    assert abs(saved.inner_lr / lr0 - 1) > 1e-4

"""Distillation methods: KRR against a direct solve and scikit-learn, DM / MTT meta-gradients against finite
differences, resume exactness for every method, MTT's verified expert cache, a third-party method, and the
one-line errors for methods that cannot work with a recipe."""

from __future__ import annotations

import json
import types

import pytest
import torch
from pydantic import Field

import distill_fakes
from distillctl import hookimpl
from distillctl.errors import UserError
from distillctl.methods import Learnables, Method, MethodContext, OuterStep, gradients
from distillctl.options import PluginOptions
from distillctl.plugins import load_registry, set_registry
from distillctl.recipe import InnerSettings, validate_recipe
from distillctl.runs import read_jsonl
from distillctl.distillation.synthetic import SyntheticSet
from distillctl.evaluation.training import TrainBudget
from distillctl_plugins.methods import BPTTOptions, DMOptions, KRROptions, MTTOptions
from distillctl_plugins.methods.bptt import BPTT
from distillctl_plugins.methods.dm import DM
from distillctl_plugins.methods.krr import KRR, krr_predict
from distillctl_plugins.methods.mtt import MTT
from distillctl_plugins.students import MLPOptions, TransformerOptions
from distillctl_plugins.students.models import build_mlp, build_transformer


# -- a third-party method, registered as any outside package would ----------------------------------

class PullOptions(PluginOptions):
    strength: float = Field(1.0, gt=0, description="How hard rows are pulled to their class's real mean.")


class PullToMean(Method):
    """A tiny real method: squared distance of each synthetic row to its class's mean in the real batch."""

    def __init__(self, options):
        self.options = options

    def step(self, learn, real_x, real_y, generator):
        C, ipc = self.context.num_classes, self.context.ipc
        means = torch.stack([real_x[real_y == c].mean(0) for c in range(C)])  # (C, d)
        loss = self.options.strength * (learn.x.view(C, ipc, -1) - means[:, None]).pow(2).sum(-1).mean()
        return OuterStep(loss=float(loss.detach()), grads=gradients(loss, learn))


third_party = types.ModuleType("pull_plugin")


@hookimpl
def _register_methods(register):
    register("pull", PullToMean, options=PullOptions, description="test: pull rows to class means")


third_party.register_methods = _register_methods


# -- harness ---------------------------------------------------------------------------------------

@pytest.fixture
def env(monkeypatch, tmp_path):
    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0"), (third_party, "pull-plugin", "0.1")])
    set_registry(registry)  # reset after each test by conftest
    emb = distill_fakes.gaussian_embeddings()
    import distillctl.data.embed as embed_module

    monkeypatch.setattr(embed_module, "load_embeddings", lambda recipe, *, quiet=None: emb)
    monkeypatch.setattr("distillctl.distillation.distill._method_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    return types.SimpleNamespace(registry=registry, emb=emb, tmp=tmp_path)


def recipe(env, method: dict, *, student=None, **distill):
    data = {"name": "tiny", "seed": 3, "dataset": {"name": "fake-gauss"}, "encoder": {"name": "fake-encoder"},
            "scheduler": {"name": "fake-scheduler"}, "student": student or {"name": "mlp", "hidden": [16]},
            "distill": {"ipc": [1, 2], "method": method, "inner": {"optimizer": "adam", "lr": 0.01},
                        "outer": {"lr": 0.01, "iterations": 8, "real_batch": 48, "val_every": 4, "ckpt_every": 3,
                                  "val_seeds": 2}, **distill},
            "eval": {"steps": 30, "seeds": 2, "lr": 0.01, "batch_size": 32}}
    return validate_recipe(data, registry=env.registry)


def context(problem_student, *, C=3, ipc=2, d=5, n=30, dtype=torch.float64, inner=None, soft=False, **kw):
    torch.manual_seed(0)
    x_train = torch.randn(n, d, dtype=dtype)
    y_train = torch.arange(C).repeat_interleave(n // C)
    return MethodContext(
        build_student=problem_student, student_name="mlp", student_options={"name": "mlp"}, num_classes=C,
        ipc=ipc, hard_labels=torch.arange(C).repeat_interleave(ipc), x_train=x_train, y_train=y_train,
        inner=inner or InnerSettings(), eval_budget=TrainBudget(steps=40, lr=0.05, batch_size=8),
        device=torch.device("cpu"), seed=0, soft_labels=soft, **kw)


def mlp(d=5, C=3, hidden=(6,), activation="tanh"):
    return lambda: build_mlp(d, C, MLPOptions(hidden=list(hidden), activation=activation)).double()


def finite_difference_check(method, learn: Learnables, real_x, real_y, *, seed=7, eps=1e-6, entries=6):
    """The method's gradient against central differences of its own loss, on a few entries of each tensor."""
    out = method.step(learn, real_x, real_y, torch.Generator().manual_seed(seed))
    checked = 0
    for name, tensor in learn.items():
        flat = tensor.detach().reshape(-1)
        for i in torch.linspace(0, flat.numel() - 1, min(entries, flat.numel())).long().tolist():
            def loss_at(delta):
                moved = Learnables.from_dict({k: v.detach().clone() for k, v in learn.items()})
                getattr(moved, name).view(-1)[i] += delta
                moved = moved.as_leaves()
                return method.step(moved, real_x, real_y, torch.Generator().manual_seed(seed)).loss
            numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
            analytic = float(out.grads[name].reshape(-1)[i])
            assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8), (name, i)
            checked += 1
    assert checked >= 2


# -- KRR ---------------------------------------------------------------------------------------------

def test_krr_prediction_equals_a_direct_solve_and_scikit_learn():
    from sklearn.kernel_ridge import KernelRidge

    g = torch.Generator().manual_seed(0)
    phi_s, phi_t = torch.randn(2, 12, 7, generator=g, dtype=torch.float64), torch.randn(2, 20, 7, generator=g,
                                                                                       dtype=torch.float64)
    y_s = torch.randn(12, 3, generator=g, dtype=torch.float64)
    pred = krr_predict(phi_s, phi_t, y_s, ridge=0.05)  # (2, 20, 3)
    for k in range(2):
        k_ss = phi_s[k] @ phi_s[k].T
        lam = 0.05 * torch.trace(k_ss) / 12
        direct = phi_t[k] @ phi_s[k].T @ torch.linalg.solve(k_ss + lam * torch.eye(12, dtype=torch.float64), y_s)
        assert torch.allclose(pred[k], direct, atol=1e-10)
        ref = KernelRidge(alpha=float(lam), kernel="linear").fit(phi_s[k].numpy(), y_s.numpy())
        assert torch.allclose(pred[k], torch.from_numpy(ref.predict(phi_t[k].numpy())), atol=1e-8)


def test_krr_identity_gradient_matches_finite_differences():
    method = KRR(KRROptions(features="identity", ridge=0.1))
    method.setup(context(mlp()))
    g = torch.Generator().manual_seed(1)
    learn = Learnables(x=torch.randn(6, 5, generator=g, dtype=torch.float64),
                       label_logits=torch.randn(6, 3, generator=g, dtype=torch.float64)).as_leaves()
    real_x, real_y = torch.randn(15, 5, generator=g, dtype=torch.float64), torch.arange(3).repeat(5)
    finite_difference_check(method, learn, real_x, real_y)


def test_krr_student_features_need_a_student_that_exposes_them():
    class NoFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(UserError) as err:
        KRR(KRROptions(features="student")).setup(context(NoFeatures))
    assert str(err.value).startswith("method 'krr': student 'mlp' exposes no features(x)")
    assert "features: identity" in str(err.value)


def test_krr_pool_replaces_students_after_online_steps():
    method = KRR(KRROptions(features="student", pool=2, online_steps=2))
    method.setup(context(mlp()))
    learn = Learnables(x=torch.randn(6, 5, dtype=torch.float64)).as_leaves()
    g = torch.Generator().manual_seed(0)
    replaced = [method.step(learn, torch.randn(9, 5, dtype=torch.float64), torch.arange(3).repeat(3),
                            g).metrics["pool_replaced"] for _ in range(4)]
    # first lifetimes are staggered (1 and 2 steps), then every student lives online_steps = 2
    assert replaced == [1, 1, 1, 1]
    assert method.pool["t"].tolist() in ([1, 0], [0, 1])


# -- DM ----------------------------------------------------------------------------------------------

def test_dm_loss_is_the_class_mean_distance_and_its_gradient_matches_finite_differences():
    method = DM(DMOptions(students=2))
    method.setup(context(mlp()))
    g = torch.Generator().manual_seed(2)
    learn = Learnables(x=torch.randn(6, 5, generator=g, dtype=torch.float64)).as_leaves()
    real_x, real_y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.tensor([0, 1] * 6)  # no class 2
    finite_difference_check(method, learn, real_x, real_y)
    # the loss by hand: the same students (same seed), class 2 absent from the batch adds nothing
    gen = torch.Generator().manual_seed(7)
    out = method.step(learn, real_x, real_y, gen)
    from distillctl.seeds import draw_seed

    theta = method.problem.init_population(draw_seed(torch.Generator().manual_seed(7)))
    expected = 0.0
    for k in range(2):
        fs, fr = method.problem.features(theta[k], learn.x.detach()), method.problem.features(theta[k], real_x)
        for c in (0, 1):
            expected += (fs[2 * c:2 * c + 2].mean(0) - fr[real_y == c].mean(0)).pow(2).sum() / 2
    assert out.loss == pytest.approx(float(expected), rel=1e-10)


def test_dm_refuses_soft_labels_and_a_learned_inner_lr():
    with pytest.raises(UserError, match=r"^method 'dm' matches the classes' feature distributions .*soft_labels"):
        DM(DMOptions()).setup(context(mlp(), soft=True))
    with pytest.raises(UserError, match=r"^method 'dm' does not use an inner learning rate"):
        DM(DMOptions()).setup(context(mlp(), inner=InnerSettings(learn_lr=True)))


def test_dm_works_with_the_transformer_student():
    build = lambda: build_transformer(8, 3, TransformerOptions(n_tokens=2, d_model=8, layers=1, heads=2, ff=8))  # noqa: E731
    method = DM(DMOptions(students=2))
    method.setup(context(build, d=8, dtype=torch.float32))
    learn = Learnables(x=torch.randn(6, 8)).as_leaves()
    out = method.step(learn, torch.randn(9, 8), torch.arange(3).repeat(3), torch.Generator().manual_seed(0))
    assert out.grads["x"].shape == (6, 8) and float(out.grads["x"].abs().sum()) > 0


# -- MTT ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("syn_optimizer", ["expert", "sgd"])  # the experts' Adam, and plain SGD as in the paper
def test_mtt_gradient_matches_finite_differences_for_rows_labels_and_lr(tmp_path, syn_optimizer):
    inner = InnerSettings(batch_per_class=1)
    method = MTT(MTTOptions(experts=2, spacing=10, expert_epochs=1, max_start_epoch=2, syn_steps=3, trajectories=2,
                            syn_optimizer=syn_optimizer))
    method.setup(context(mlp(), inner=inner, cache_dir=tmp_path))
    method.trajectories = method.trajectories.double()
    g = torch.Generator().manual_seed(3)
    learn = Learnables(x=torch.randn(6, 5, generator=g, dtype=torch.float64),
                       label_logits=torch.randn(6, 3, generator=g, dtype=torch.float64),
                       log_lr=torch.tensor(-2.0, dtype=torch.float64)).as_leaves()
    finite_difference_check(method, learn, torch.zeros(1, 5, dtype=torch.float64), torch.zeros(1).long())


def test_mtt_expert_trajectories_are_cached_verified_and_rebuilt(tmp_path):
    messages = []
    opts = MTTOptions(experts=2, spacing=10, expert_epochs=1, max_start_epoch=2)
    first = MTT(opts)
    first.setup(context(mlp(), cache_dir=tmp_path, say=messages.append))
    assert first.trajectories.shape[:2] == (2, 5)  # 40 steps / spacing 10 -> checkpoints 0, 10, ..., 40
    files = sorted((tmp_path / "mtt").glob("*.safetensors"))
    assert len(files) == 1 and messages[-1].startswith("mtt: training 2 experts")
    second = MTT(opts)
    second.setup(context(mlp(), cache_dir=tmp_path, say=messages.append))
    assert messages[-1].startswith("mtt: reusing 2 cached expert trajectories")
    assert torch.equal(first.trajectories, second.trajectories)
    # flip bytes near the end of the file: reported and rebuilt, with the same result
    blob = bytearray(files[0].read_bytes())
    blob[-8:] = b"\x00" * 8
    files[0].write_bytes(bytes(blob))
    third = MTT(opts)
    third.setup(context(mlp(), cache_dir=tmp_path, say=messages.append))
    assert any("does not match its recorded sha256" in m for m in messages)
    assert torch.equal(first.trajectories, third.trajectories)
    # a truncated file too
    files[0].write_bytes(files[0].read_bytes()[:100])
    MTT(opts).setup(context(mlp(), cache_dir=tmp_path, say=messages.append))
    assert messages[-2].endswith("training the experts again")


def test_mtt_rejects_segments_longer_than_the_experts_and_fits_its_default_start(tmp_path):
    with pytest.raises(UserError, match=r"^method 'mtt': max_start_epoch \+ expert_epochs \(3 \+ 2\) must be <= "
                                        r"the 4 stored epochs"):
        MTT(MTTOptions(spacing=10, max_start_epoch=3)).setup(context(mlp()))
    with pytest.raises(UserError, match=r"\(0 \+ 5\) must be <= the 4 stored epochs"):
        MTT(MTTOptions(spacing=10, expert_epochs=5)).setup(context(mlp()))
    fit = MTT(MTTOptions(spacing=10))  # 40 steps / 10 = 4 epochs: start at most 2, then 2 ahead
    fit.setup(context(mlp(), cache_dir=tmp_path))
    assert fit.max_start == 2


# -- end to end through distill: every method, resume exactness --------------------------------------

# -- several students (distill.students) ------------------------------------------------------------

def two_architectures(d=5, C=3):
    """(name, build_student, options) of an MLP and a Transformer, in float64."""
    tr = TransformerOptions(n_tokens=1, d_model=4, layers=1, heads=2, ff=4)
    return [("mlp", mlp(d, C), {"name": "mlp"}),
            ("transformer", lambda: build_transformer(d, C, tr).double(), {"name": "transformer", "d_model": 4})]


def unroll_section(name: str, **options):
    from distillctl.recipe import PluginSection
    from distillctl_plugins.unroll import FullOptions

    section = PluginSection(name=name)
    section.options = FullOptions(**options)
    return section


SINGLE = {  # a fresh instance of each built-in method, its learnables' extras, and its context's settings
    "bptt": (lambda: BPTT(BPTTOptions(unroll=unroll_section("full", total=3))), {},
             {"inner": InnerSettings(lr=0.05, population=2)}),
    "krr": (lambda: KRR(KRROptions(pool=2, online_steps=2)), {"soft": True}, {}),
    "dm": (lambda: DM(DMOptions(students=2)), {}, {}),
    "mtt": (lambda: MTT(MTTOptions(experts=2, spacing=10, expert_epochs=1, max_start_epoch=2, syn_steps=2)),
            {"soft": True, "lr": True}, {}),
}


@pytest.mark.parametrize("name", list(SINGLE))
def test_a_two_architecture_step_is_the_mean_of_the_single_architecture_steps(tmp_path, name):
    """PerStudent (distill.students: [mlp, transformer]) against each architecture's method run on its own,
    drawing from the same generator in the same order: its loss and meta-gradient are their means, over
    two outer steps (krr's pools and mtt's experts are per architecture) and across a state round trip."""
    from dataclasses import replace

    from distillctl.methods import PerStudent

    make, extras, settings = SINGLE[name]
    students = two_architectures()
    ctx = context(students[0][1], soft=extras.get("soft", False), cache_dir=tmp_path, **settings)
    g = torch.Generator().manual_seed(1)
    learn = Learnables(x=torch.randn(6, 5, generator=g, dtype=torch.float64),
                       label_logits=torch.randn(6, 3, generator=g, dtype=torch.float64) if extras.get("soft") else None,
                       log_lr=torch.tensor(-3.0, dtype=torch.float64) if extras.get("lr") else None).as_leaves()
    real_x, real_y = ctx.x_train[::2], ctx.y_train[::2]  # (15, 5): every class

    both = PerStudent([make(), make()], students)
    both.setup(ctx)
    assert [m.context.student_name for m in both.methods] == ["mlp", "transformer"]
    assert all(m.context.students == ["mlp", "transformer"] for m in both.methods)
    singles = [make(), make()]
    for method, (student, build, options) in zip(singles, students):
        method.setup(replace(ctx, build_student=build, student_name=student, student_options=options))
    gen_both, gen_single = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for step in range(2):
        out = both.step(learn, real_x, real_y, gen_both)
        ref = [method.step(learn, real_x, real_y, gen_single) for method in singles]  # same draws, same order
        assert out.loss == pytest.approx((ref[0].loss + ref[1].loss) / 2, rel=1e-12)
        assert out.metrics["loss_by_student"] == {"mlp": ref[0].loss, "transformer": ref[1].loss}
        for k in learn.names():
            assert torch.equal(out.grads[k], (ref[0].grads[k] + ref[1].grads[k]) / 2), (name, step, k)
            assert not torch.allclose(ref[0].grads[k], ref[1].grads[k])  # the architectures do differ
        if step == 0:  # a checkpoint's round trip: a new PerStudent continues exactly
            state = both.state_dict()
            assert all(key.split(".")[0] in ("0", "1") for key in state)
            both = PerStudent([make(), make()], students)
            both.setup(ctx)
            both.load_state_dict(state)


def test_a_method_sees_every_student_and_may_refuse_several(env, monkeypatch):
    from distillctl.distillation.distill import distill

    class OneArchitecture(PullToMean):
        def setup(self, context):
            super().setup(context)
            if len(context.students) > 1:
                raise UserError(f"method 'one-arch': distils for one student, got distill.students "
                                f"{'+'.join(context.students)}; list one")

    plugin = types.ModuleType("one_arch_plugin")

    @hookimpl
    def register_methods(register):
        register("one-arch", OneArchitecture, options=PullOptions, description="test: one student only")

    plugin.register_methods = register_methods
    env.registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0"), (plugin, "one-arch", "0.1")])
    set_registry(env.registry)
    with pytest.raises(UserError, match=r"^method 'one-arch': distils for one student, got distill.students "
                                        r"mlp\+transformer; list one$"):
        distill(recipe(env, {"name": "one-arch"}, students=["mlp", {"name": "transformer", "n_tokens": 2,
                                                                  "d_model": 4, "heads": 2, "ff": 4}]),
                run_dir=env.tmp / "r", quiet=True)
    res = distill(recipe(env, {"name": "one-arch"}, ipc=[1], students=[{"name": "transformer", "n_tokens": 2,
                                                                      "d_model": 4, "heads": 2, "ff": 4}]),
                  run_dir=env.tmp / "one", quiet=True)
    assert SyntheticSet.load(res.sets[0]["path"]).meta["distilled_with"] == "transformer"


METHODS = {
    "bptt": {"name": "bptt", "unroll": {"name": "ratbptt", "window": 2, "total": 4}},
    "krr": {"name": "krr", "pool": 2, "online_steps": 3},
    "krr-identity": {"name": "krr", "features": "identity"},
    "dm": {"name": "dm", "students": 2},
    "mtt": {"name": "mtt", "experts": 2, "spacing": 5, "expert_epochs": 1, "max_start_epoch": 3, "syn_steps": 3},
    "pull": {"name": "pull", "strength": 2.0},
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_resumes_to_the_same_set_as_an_uninterrupted_run(env, monkeypatch, name):
    from distillctl.distillation.distill import distill

    extra = {"soft_labels": True} if name in ("krr", "mtt") else {}
    whole = distill(recipe(env, METHODS[name], **extra), run_dir=env.tmp / "whole", quiet=True)

    real_check, calls = OuterStep.check, []

    def dying_check(self, *args):  # the process "dies" at outer step 13 (stage ipc 2, step 5; checkpoint at 3)
        calls.append(1)
        if len(calls) == 13:
            raise KeyboardInterrupt
        return real_check(self, *args)

    monkeypatch.setattr(OuterStep, "check", dying_check)
    with pytest.raises(KeyboardInterrupt):
        distill(recipe(env, METHODS[name], **extra), run_dir=env.tmp / "cut", quiet=True)
    monkeypatch.setattr(OuterStep, "check", real_check)
    assert sorted(p.name for p in (env.tmp / "cut/checkpoints").glob("ipc2-*")) == ["ipc2-step0000003.safetensors"]
    resumed = distill(recipe(env, METHODS[name], **extra), resume=env.tmp / "cut", quiet=True)
    for a, b in zip(whole.sets, resumed.sets):
        sa, sb = SyntheticSet.load(a["path"]), SyntheticSet.load(b["path"])
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.labels, sb.labels), name
        assert sa.meta["val_accuracy"] == sb.meta["val_accuracy"]
        assert sa.meta["method"] == METHODS[name]["name"]
    strip = lambda rs: [{k: v for k, v in x.items() if k not in ("time", "elapsed", "val_seconds")} for x in rs]  # noqa: E731
    assert strip(read_jsonl(whole.run_dir / "metrics.jsonl")) == strip(read_jsonl(env.tmp / "cut/metrics.jsonl"))


def test_methods_move_the_set_and_record_their_options(env):
    from distillctl.distillation.distill import distill

    res = distill(recipe(env, METHODS["krr"]), run_dir=env.tmp / "krr", quiet=True)
    side = json.loads((res.run_dir / "distilled" / "ipc2.json").read_text())
    assert side["method"] == "krr" and side["method_options"]["pool"] == 2
    records = [r for r in read_jsonl(res.run_dir / "metrics.jsonl") if "loss" in r]
    assert all("pool_replaced" in r for r in records)
    assert len({r["loss"] for r in records}) > 1


def test_unknown_method_and_bad_method_options_exit_2(env, tmp_path):
    from distillctl.cli import main

    with pytest.raises(UserError, match=r"distill\.method\.name: unknown method plugin 'nope'; known: bptt "
                                        r"\(distillctl\), dm \(distillctl\), krr \(distillctl\), mtt \(distillctl\), "
                                        r"pull \(pull-plugin\)"):
        recipe(env, {"name": "nope"})
    with pytest.raises(UserError, match=r"distill\.method\.pool: must be greater than or equal to 1"):
        recipe(env, {"name": "krr", "pool": 0})
    with pytest.raises(UserError, match=r"distill\.method\.unroll\.windw: unknown field"):
        recipe(env, {"name": "bptt", "unroll": {"name": "ratbptt", "windw": 2}})
    assert main  # the CLI maps UserError to exit 2 (tested in test_recipe / test_cli)


def test_a_method_sweep_gets_a_comparison_report(env):
    from distillctl.reporting.compare import submission_points, write_comparison
    from distillctl.distillation.distill import distill
    from distillctl.evaluation.evaluate import evaluate

    folder = env.tmp / "sub"
    points = []
    for name in ("bptt", "krr-identity", "dm"):
        res = distill(recipe(env, METHODS[name]), run_dir=folder / f"name={name}", quiet=True)
        if name != "dm":  # dm's point has no eval yet: its row says so instead of a number
            evaluate(res.run_dir, quiet=True, embeddings=env.emb)
        points.append({"name": f"name={name}", "values": {"distill.method.name": name}, "run_dir": str(res.run_dir)})
    (folder / "submission.json").write_text(json.dumps({"points": points}))
    assert submission_points(folder) == points
    md = write_comparison(folder, points)
    data = json.loads((folder / "comparison.json").read_text())
    assert [(r["point"], r["ipc"]) for r in data["rows"]] == [
        ("name=bptt", 1), ("name=dm", 1), ("name=krr-identity", 1),
        ("name=bptt", 2), ("name=dm", 2), ("name=krr-identity", 2)]
    by = {(r["point"], r["ipc"]): r for r in data["rows"]}
    results = json.loads((folder / "name=bptt" / "eval" / "results.json").read_text())
    stored = next(r for r in (results if isinstance(results, list) else results["results"])
                  if r["arm"] == "distilled" and r["ipc"] == 2)
    assert by[("name=bptt", 2)]["test_accuracy"] == stored["accuracy"]["mean"]
    assert by[("name=krr-identity", 1)]["method"] == "krr" and "test_accuracy" not in by[("name=dm", 1)]
    side = json.loads((folder / "name=dm" / "distilled" / "ipc2.json").read_text())
    assert by[("name=dm", 2)]["distill_seconds"] == side["wall_seconds"]
    assert by[("name=dm", 2)]["seconds_to_best"] <= side["wall_seconds"]
    text = md.read_text()
    assert "| name=dm | dm | mlp | 2 | — | — |" in text
    assert (folder / "plots" / "time_to_quality.png").stat().st_size > 1000


def test_an_explicit_registry_reaches_every_plugin_distill_builds(tmp_path, monkeypatch):
    from distillctl.distillation.distill import distill

    monkeypatch.chdir(tmp_path)
    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0"), (third_party, "pull-plugin", "0.1")])
    data = distill_fakes.tiny_recipe({"ipc": [1], "method": {"name": "pull"},
                                      "outer": {"iterations": 3, "real_batch": 48, "val_every": 3, "val_seeds": 1}})
    r = validate_recipe(data, registry=registry)
    # the installed registry does not know `pull` or `fake-gauss`: only the one given can run this
    res = distill(r, run_dir=tmp_path / "run", quiet=True, embeddings=distill_fakes.gaussian_embeddings(),
                  registry=registry)
    assert json.loads((res.run_dir / "distilled" / "ipc1.json").read_text())["method"] == "pull"

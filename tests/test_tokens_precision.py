"""``eval.precision``: which passes of token-level evaluation run in bfloat16 autocast (training and scoring
where the CPU multiplies bfloat16 natively, scoring only where it would be emulated, never a replay of a set's
own inner steps on a CPU), and that bfloat16 passes train and predict as the float32 ones do (up to rounding)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_tokens_eval import C, real, synthetic, tiny_build  # noqa: E402


def test_precision_picks_the_autocasts_on_a_cpu(monkeypatch):
    from distillctl.evaluation import finetuning
    from distillctl.evaluation.finetuning import DevicePlan

    for native in (True, False):
        monkeypatch.setattr(finetuning, "cpu_has_native_bf16", lambda native=native: native)
        exact = DevicePlan.resolve("cpu", precision="float32")
        assert exact.score_autocast is None and exact.autocast is None and exact.describe() == "cpu"
        for precision in ("auto", "bfloat16"):
            plan = DevicePlan.resolve("cpu", precision=precision)
            # native: training and scoring; emulated: scoring only when forced, nothing under auto
            assert plan.autocast == (torch.bfloat16 if native else None)
            assert plan.score_autocast == (torch.bfloat16 if native or precision == "bfloat16" else None)
            assert plan.replay_autocast is None  # a set's own inner steps replay as the CPU distill ran them
        assert DevicePlan.resolve("cpu").describe() == ("cpu (bfloat16 autocast; replays float32)" if native else "cpu")
    assert DevicePlan.resolve("cpu", precision="bfloat16").describe() == "cpu (bfloat16 scoring)"  # emulated
    monkeypatch.setattr(finetuning, "cpu_has_native_bf16", lambda: True)
    plan = DevicePlan.resolve("cpu")
    for kw, on in (({}, True), ({"scoring": True}, True), ({"replay": True}, False)):
        with plan.context(**kw):
            assert torch.is_autocast_enabled("cpu") is on, kw


def test_an_unknown_precision_is_refused():
    from distillctl.errors import UserError
    from distillctl.evaluation.finetuning import DevicePlan

    with pytest.raises(UserError, match="eval.precision: 'half' is not one of auto, float32, bfloat16"):
        DevicePlan.resolve("cpu", precision="half")


def test_the_recipe_field_names_what_is_valid(tmp_path):
    from distillctl.errors import UserError
    from distillctl.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndataset: {name: sst2}\neval: {precision: half}\n")
    with pytest.raises(UserError, match=r"eval\.precision.*'auto', 'float32' or 'bfloat16'|eval\.precision.*auto"):
        load_recipe(path)


def test_bfloat16_passes_train_and_predict_nearly_as_float32(monkeypatch):
    from distillctl.evaluation import finetuning
    from distillctl.evaluation.finetuning import DevicePlan, TokenData, finetune_and_score
    from distillctl.evaluation.training import TrainBudget

    build = tiny_build()
    x, mask, y = synthetic()
    ids, tmask, ty = real(m=200)
    budget = TrainBudget(steps=4, optimizer="adam", lr=3e-3, batch_size=6)
    run = lambda precision: finetune_and_score(  # noqa: E731
        build, TokenData(mask=mask, x=x), y, TokenData(mask=tmask, ids=ids), ty, seeds=[0, 1], budget=budget,
        num_classes=C, plan=DevicePlan.resolve("cpu", precision=precision), quiet=True)
    exact = run("float32")
    monkeypatch.setattr(finetuning, "cpu_has_native_bf16", lambda: False)
    scored = run("bfloat16")  # emulated: bfloat16 scoring only
    assert scored.train_loss == exact.train_loss  # the training passes are float32 in both
    for a, b in zip(exact.accuracy, scored.accuracy):
        assert abs(a - b) <= 0.05  # at most 10 of 200 predictions move by bfloat16 rounding
    monkeypatch.setattr(finetuning, "cpu_has_native_bf16", lambda: True)
    fast = run("auto")  # training passes in bfloat16 autocast too (float32 weights and optimiser)
    assert fast.train_loss != exact.train_loss
    assert fast.train_loss == pytest.approx(exact.train_loss, rel=0.05)
    for a, b in zip(exact.accuracy, fast.accuracy):
        assert abs(a - b) <= 0.05

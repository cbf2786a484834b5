"""``eval.precision``: which passes of token-level evaluation run in bfloat16 autocast, and that a bfloat16
scoring pass predicts what the float32 one does (up to rounding) while training stays float32."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_tokens_eval import C, real, synthetic, tiny_build  # noqa: E402


def test_precision_picks_the_scoring_autocast_on_a_cpu(monkeypatch):
    from distillctl.evaluation import finetuning
    from distillctl.evaluation.finetuning import DevicePlan

    assert DevicePlan.resolve("cpu", precision="float32").score_autocast is None
    forced = DevicePlan.resolve("cpu", precision="bfloat16")
    assert forced.score_autocast == torch.bfloat16 and forced.autocast is None  # training stays float32 on a CPU
    assert forced.describe() == "cpu (bfloat16 scoring)"
    for native in (True, False):
        monkeypatch.setattr(finetuning, "cpu_has_native_bf16", lambda native=native: native)
        plan = DevicePlan.resolve("cpu")
        assert plan.score_autocast == (torch.bfloat16 if native else None) and plan.autocast is None
        assert plan.describe() == ("cpu (bfloat16 scoring)" if native else "cpu")


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


def test_bfloat16_scoring_trains_as_float32_and_predicts_nearly_the_same():
    from distillctl.evaluation.finetuning import DevicePlan, TokenData, finetune_and_score
    from distillctl.evaluation.training import TrainBudget

    build = tiny_build()
    x, mask, y = synthetic()
    ids, tmask, ty = real(m=200)
    budget = TrainBudget(steps=4, optimizer="adam", lr=3e-3, batch_size=6)
    run = lambda precision: finetune_and_score(  # noqa: E731
        build, TokenData(mask=mask, x=x), y, TokenData(mask=tmask, ids=ids), ty, seeds=[0, 1], budget=budget,
        num_classes=C, plan=DevicePlan.resolve("cpu", precision=precision), quiet=True)
    exact, fast = run("float32"), run("bfloat16")
    assert fast.train_loss == exact.train_loss  # the training passes are float32 in both
    for a, b in zip(exact.accuracy, fast.accuracy):
        assert abs(a - b) <= 0.05  # at most 10 of 200 predictions move by bfloat16 rounding

"""Issue 22, item 1: defaults that stop when done: early stopping on by default, and the default method per
measurement (krr on the raw vectors with soft labels for the mlp student, bptt for the others)."""

from __future__ import annotations

import json

import pytest

from fakes import distill as distill_fakes
from distillctl.recipe import PATIENCE, validate_recipe
from test_distill import env  # noqa: F401  (env: fixture)

BASE = {"name": "r", "dataset": {"name": "agnews", "source": "sample"}}


def test_the_mlp_default_is_krr_on_raw_vectors_with_soft_labels():
    r = validate_recipe(dict(BASE, student={"name": "mlp"}, distill={"ipc": 1}))
    assert r.distill.method.name == "krr" and r.distill.method.options.features == "identity"
    assert r.distill.soft_labels is True
    assert "name: krr" in r.to_yaml() and "features: identity" in r.to_yaml()  # the run records what it ran
    assert validate_recipe(dict(BASE)).distill.method.name == "krr"  # mlp is the default student


@pytest.mark.parametrize("data, method, soft", [
    ({"student": {"name": "transformer"}}, "bptt", False),
    ({"student": "linear"}, "bptt", False),
    ({"distill": {"method": {"name": "bptt"}}}, "bptt", False),
    ({"distill": {"soft_labels": False}}, "krr", False),  # the user's soft_labels is kept
    ({"distill": {"students": [{"name": "mlp"}, {"name": "linear"}]}}, "bptt", False),
])
def test_other_students_and_explicit_settings_keep_theirs(data, method, soft):
    r = validate_recipe(dict(BASE, **data))
    assert r.distill.method.name == method and r.distill.soft_labels is soft


def test_resolved_recipes_written_before_keep_their_meaning_and_fingerprint():
    """A resolved recipe of an older run says `patience: null` and names bptt: reloaded, it still runs bptt with
    every iteration and fingerprints as before (the measured defaults fill only what a recipe leaves out); the
    shipped 400-step recipes say `patience: null` themselves, so their fingerprints do not move either."""
    import yaml

    from distillctl.recipe import Recipe, load_recipe

    old = validate_recipe(dict(BASE, distill={"method": {"name": "bptt"}, "outer": {"patience": None}}))
    again = validate_recipe(yaml.safe_load(old.to_yaml()))
    assert again.distill.outer.patience is None and again.distill.method.name == "bptt"
    assert again.fingerprint() == old.fingerprint()
    shipped = load_recipe("recipes/agnews-mlp.yaml")
    assert shipped.distill.outer.patience is None
    # its fingerprint is what the schema alone gives (no measured default took part)
    assert Recipe.model_validate(shipped.to_dict()).fingerprint() == shipped.fingerprint()


def test_early_stopping_is_on_by_default():
    r = validate_recipe(dict(BASE))
    assert PATIENCE == 4 and r.distill.outer.patience == PATIENCE and "patience: 4" in r.to_yaml()
    assert validate_recipe(dict(BASE, student={"name": "transformer"})).distill.outer.patience == PATIENCE
    off = validate_recipe(dict(BASE, distill={"outer": {"patience": None}}))
    assert off.distill.outer.patience is None
    assert "BENCHMARKS.md" in type(r.distill.outer).model_fields["patience"].description


def test_a_default_distill_stops_when_done(env):
    """No method, no patience in the recipe: krr with soft labels, and the stage stops once `patience`
    validations brought nothing better (the set saved is the best on val)."""
    from distillctl.distillation.distill import distill
    from distillctl.distillation.synthetic import SyntheticSet

    data = distill_fakes.tiny_recipe({"ipc": [1], "outer": {"iterations": 400, "val_every": 5, "val_seeds": 1}})
    recipe = validate_recipe(data, registry=env.registry)
    assert recipe.distill.method.name == "krr" and recipe.distill.outer.patience == PATIENCE
    res = distill(recipe, run_dir=env.tmp / "run", quiet=True)
    s = SyntheticSet.load(res.sets[0]["path"])
    assert s.soft and s.meta["method"] == "krr"
    assert s.meta["stopped"] and s.meta["stopped"]["reason"].startswith(f"patience: {PATIENCE} validations")
    assert s.meta["outer_steps_run"] < 400
    vals = [json.loads(x) for x in (env.tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(v["val_accuracy"] for v in vals if "val_accuracy" in v)
    assert s.meta["val_accuracy"] == best

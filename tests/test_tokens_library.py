"""distill at the token level from a library caller's token rows that carry no cache fingerprint: the methods'
cache is keyed by the rows' own tensors (ids, masks) and the set is the one a cached run distils."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_tokens_distill_run import env  # noqa: E402,F401  (the fixture: tiny BERT, fake token cache)
from distillctl.distillation.synthetic import SyntheticSet  # noqa: E402


def test_token_rows_without_a_fingerprint_distil_the_same_set(env):  # noqa: F811
    from distillctl.distillation.distill import distill

    recipe = env.recipe(ipc=[1], outer={"lr": 0.01, "iterations": 2, "real_batch": 8, "val_every": 2,
                                        "val_seeds": 1})
    cached = distill(recipe, run_dir=env.tmp / "cached", quiet=True)
    env.emb.fingerprint = None  # tensors built in Python: nothing names the data but the rows themselves
    loose = distill(recipe, run_dir=env.tmp / "loose", quiet=True)
    a, b = SyntheticSet.load(cached.sets[0]["path"]), SyntheticSet.load(loose.sets[0]["path"])
    assert b.meta["embedding_fingerprint"] is None and a.meta["embedding_fingerprint"] == "fake-tokens"
    assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask) and torch.equal(a.labels, b.labels)

"""Test doubles for the eval / baseline / report tests: tiny Gaussian "embeddings" with texts.

Stands in for `distillctl.data.embed.load_embeddings(recipe)` (the embed stage's contract: splits[name].X
/ .y, label_names, num_classes, dim, fingerprint, texts(split)), so no text is ever encoded.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

from fakes import distill as distill_fakes
from distillctl.plugins import load_registry, set_registry
from distillctl.recipe import validate_recipe


@dataclass
class TextEmbeddings(distill_fakes.FakeEmbeddings):
    text_by_split: dict = field(default_factory=dict)

    def texts(self, split):
        return self.text_by_split[split]


def embeddings(n_per_class=(30, 10, 25), C=3, d=8, seed=0, sep=2.5) -> TextEmbeddings:
    base = distill_fakes.gaussian_embeddings(n_per_class=n_per_class, C=C, d=d, seed=seed, sep=sep)
    texts = {name: [f"{name} text {i} of class {int(c)}" for i, c in enumerate(split.y)]
             for name, split in base.splits.items()}
    return TextEmbeddings(splits=base.splits, label_names=base.label_names, num_classes=C, dim=d,
                          fingerprint=base.fingerprint, text_by_split=texts)


def recipe_data(name="tiny", **eval_settings):
    return {"name": name, "seed": 1, "dataset": {"name": "fake-gauss"}, "encoder": {"name": "fake-encoder"},
            "scheduler": {"name": "fake-scheduler"}, "student": {"name": "mlp", "hidden": [16]},
            "distill": {"ipc": [1, 2]},
            "eval": {"steps": 30, "seeds": 3, "lr": 0.01, "batch_size": 16, **eval_settings}}


def install(monkeypatch, emb):
    """Real registry + fake dataset/encoder/scheduler plugins; load_embeddings returns ``state.emb``.

    Returns (registry, state) with ``state.emb`` (swap it to change the data) and ``state.calls``.
    """
    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0")])
    set_registry(registry)  # reset after each test by conftest
    import distillctl.data.embed as embed_module
    state = types.SimpleNamespace(emb=emb, calls=[])

    def fake_load_embeddings(recipe, *, quiet=None):
        state.calls.append(recipe.name)
        return state.emb

    monkeypatch.setattr(embed_module, "load_embeddings", fake_load_embeddings)
    return registry, state


def write_recipe(path, data):
    import yaml

    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def make_run(tmp_path, registry, emb, *, ipcs=(1, 2), soft=False, data=None):
    """A run directory with distilled/ipcN.safetensors sets made of real training rows (class-major)."""
    import torch

    from distillctl.runs import create_run_dir
    from distillctl.distillation.synthetic import SyntheticSet

    recipe = validate_recipe(data or recipe_data(), registry=registry)
    run = create_run_dir(recipe, stage="distill", run_dir=tmp_path / "run")
    X, y = emb.splits["train"].X, emb.splits["train"].y
    C = emb.num_classes
    for stage, ipc in enumerate(ipcs):
        rows = torch.cat([torch.nonzero(y == c).flatten()[:ipc] for c in range(C)])
        labels = torch.nn.functional.one_hot(y[rows], C).float() if soft else y[rows]
        SyntheticSet(x=X[rows].clone(), labels=labels, ipc=ipc, num_classes=C, inner_lr=None,
                     meta={"stage": stage, "embedding_fingerprint": emb.fingerprint, "val_accuracy": 0.5,
                           "label_names": emb.label_names}).save(run.distilled / f"ipc{ipc}.safetensors")
    return recipe, run


def run_in(monkeypatch, tmp_path, **make_run_kw):
    """Fake plugins installed, cwd = tmp_path, and a run of real-row sets there: returns (recipe, run, emb)."""
    emb = embeddings()
    registry, _ = install(monkeypatch, emb)
    monkeypatch.chdir(tmp_path)
    recipe, run = make_run(tmp_path, registry, emb, **make_run_kw)
    return recipe, run, emb

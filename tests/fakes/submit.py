"""Shared by the submit tests: a small recipe over the fake Gaussian dataset, and a registry fixture."""

from __future__ import annotations

import types

import pytest
import yaml

from fakes import distill as distill_fakes
from distillctl.plugins import load_registry, set_registry


def recipe_data(**over):
    data = {"name": "tiny", "seed": 3, "dataset": {"name": "fake-gauss"}, "encoder": {"name": "fake-encoder"},
            "student": {"name": "mlp", "hidden": [16]},
            "distill": {"ipc": [1, 2], "method": {"name": "bptt", "unroll": {"name": "ratbptt", "window": 3, "total": 6}},
                        "inner": {"optimizer": "adam", "lr": 0.01},
                        "outer": {"lr": 0.01, "iterations": 10, "real_batch": 48, "val_every": 5, "ckpt_every": 4,
                                  "val_seeds": 2}},
            "eval": {"steps": 30, "seeds": 2, "lr": 0.01},
            "baseline": {"kinds": ["random", "full"]},
            "scheduler": {"name": "local", "workers": 2}}
    data.update(over)
    return data


@pytest.fixture
def env(monkeypatch, tmp_path):
    """The installed plugins plus a fake dataset/encoder; a recipe file in tmp_path; cwd = tmp_path."""
    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0")])
    set_registry(registry)  # reset after each test by conftest
    monkeypatch.chdir(tmp_path)

    def write(name="recipe.yaml", **over):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe_data(**over)))
        return path

    return types.SimpleNamespace(registry=registry, tmp=tmp_path, write=write, recipe_data=recipe_data)

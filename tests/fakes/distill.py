"""Test doubles for the distill tests: a tiny Gaussian-mixture "embedding cache" and a dataset plugin.

The embeddings stand in for `distillctl.data.embed.load_embeddings(recipe)` (same attributes as the
contract: splits[name].X / .y, label_names, num_classes, dim, fingerprint), so distill's tests stay
fast and independent of the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from distillctl import hookimpl
from distillctl.options import PluginOptions


@dataclass
class FakeSplit:
    X: object
    y: object


@dataclass
class FakeEmbeddings:
    splits: dict
    label_names: list
    num_classes: int
    dim: int
    fingerprint: str = "fake-embeddings"
    notes: list = field(default_factory=list)


def gaussian_embeddings(n_per_class=(60, 20, 20), C=3, d=8, seed=0, sep=2.0) -> FakeEmbeddings:
    """C Gaussian clusters in d dimensions; train/val/test with n_per_class rows per class each."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(C, d, generator=g) * sep
    splits = {}
    for name, n in zip(("train", "val", "test"), n_per_class):
        y = torch.arange(C).repeat_interleave(n)
        X = centers[y] + torch.randn(C * n, d, generator=g)
        splits[name] = FakeSplit(X.float(), y)
    return FakeEmbeddings(splits=splits, label_names=[f"class{c}" for c in range(C)], num_classes=C, dim=d)


def tiny_recipe(base: dict, **distill) -> dict:
    """A recipe dict over the fakes below: ``base`` is its ``distill`` section, ``distill`` overrides it
    (dict sections are merged key by key, except ``method``, which is replaced whole)."""
    base = dict(base)
    for key, value in distill.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "method":
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {"name": "tiny", "seed": 3, "dataset": {"name": "fake-gauss"}, "encoder": {"name": "fake-encoder"},
            "scheduler": {"name": "fake-scheduler"}, "student": {"name": "mlp", "hidden": [16]},
            "distill": base, "eval": {"steps": 30, "seeds": 2, "lr": 0.01}}


class FakeDatasetOptions(PluginOptions):
    size: int = Field(10, description="Unused; the data comes from gaussian_embeddings().")


class FakeSource:
    """Enough of a dataset for `submit`'s up-front input check (the data itself comes from
    gaussian_embeddings(), patched in for load_embeddings)."""

    def __init__(self, options=None):
        self.options = options

    def identity(self) -> dict:
        return {"fake": "gauss", "size": getattr(self.options, "size", None)}

    def load(self, *, bad_rows: str = "skip"):
        raise NotImplementedError("fake-gauss has no texts: tests patch load_embeddings")


class FakeEncoder:
    """Enough of an encoder for `submit`'s up-front input check."""

    dim = 0

    def __init__(self, options=None):
        pass

    def identity(self) -> dict:
        return {"fake": "encoder"}

    def encode(self, texts, **kwargs):
        raise NotImplementedError("fake-encoder encodes nothing: tests patch load_embeddings")


@hookimpl
def register_datasets(register):
    register("fake-gauss", FakeSource, options=FakeDatasetOptions, description="test stand-in")


@hookimpl
def register_encoders(register):
    register("fake-encoder", FakeEncoder, description="test stand-in")


@hookimpl
def register_schedulers(register):
    register("fake-scheduler", lambda options: None, description="test stand-in")

"""Test doubles for the embed tests: a fast, deterministic encoder (vectors are a hash of the text),
so cache behaviour (hits, fingerprints, corruption, shard resume) is tested without a neural network."""

from __future__ import annotations

import hashlib

import numpy as np
from typing import Optional

from pydantic import Field

from distillctl import hookimpl
from distillctl.options import PluginOptions

#: Sentences encoded so far (tests reset it) and an interruption switch: raise after this many calls.
STATE = {"encoded": 0, "calls": 0, "fail_after_calls": None, "longest": 0}


def vector(text: str, salt: str = "", dim: int = 8) -> np.ndarray:
    digest = hashlib.sha256((salt + "\0" + text).encode()).digest()
    return (np.frombuffer(digest[:dim], dtype=np.uint8).astype(np.float32) - 128.0) / 64.0


class HashOptions(PluginOptions):
    salt: str = Field("", description="Changes every vector (stands for other weights).")
    dim: int = Field(8, description="Vector width.")
    max_tokens: Optional[int] = Field(None, description="Tokens (here: words) read per text; None: all.")


class HashEncoder:
    pair_mode = "features"

    def __init__(self, options):
        self.options = options
        self.max_tokens = options.max_tokens

    def identity(self):
        return {"plugin": "hash", "salt": self.options.salt, "dim": self.options.dim,
                "max_tokens": self.options.max_tokens}

    def count_tokens(self, text):
        return len(text.split())

    def describe(self):
        return f"hash encoder (salt {self.options.salt!r})"

    def load(self, device="cpu"):
        pass

    @property
    def dim(self):
        return self.options.dim

    def encode(self, texts, pairs=None, *, batch_size=64, progress=None):
        if STATE["fail_after_calls"] is not None and STATE["calls"] >= STATE["fail_after_calls"]:
            raise KeyboardInterrupt("simulated interruption")
        STATE["calls"] += 1
        STATE["encoded"] += len(texts)
        STATE["longest"] = max([STATE["longest"], *map(len, texts), *map(len, pairs or [])])
        u = np.stack([vector(t, self.options.salt, self.options.dim) for t in texts])
        if pairs is not None:
            v = np.stack([vector(t, self.options.salt, self.options.dim) for t in pairs])
            u = np.concatenate([u, v, np.abs(u - v), u * v], 1)
        if progress:
            progress(len(texts))
        return u


@hookimpl
def register_encoders(register):
    register("hash", HashEncoder, options=HashOptions, description="test stand-in")


class TinyOptions(PluginOptions):
    n: int = Field(12, description="Rows per split.")


class TinySource:
    """A minimal third-party dataset: ``identity()`` and ``load()`` only (no ``bad_rows``, no ``describe``)."""

    def __init__(self, options):
        self.options = options

    def identity(self):
        return {"plugin": "tiny", "n": self.options.n}

    def load(self):
        from distillctl.textdata import TextDataset, TextSplit

        n = self.options.n
        train = TextSplit([f"row {i}" if i else "  " for i in range(n)], None, np.arange(n) % 2)
        test = TextSplit([f"test {i}" for i in range(4)], None, np.arange(4) % 2)
        return TextDataset({"train": train, "test": test}, ["a", "b"])


@hookimpl
def register_datasets(register):
    register("tiny", TinySource, options=TinyOptions, description="test stand-in")

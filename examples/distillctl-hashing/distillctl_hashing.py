"""A third-party distillctl encoder: a hashed bag of words (numpy only, no weights, nothing to load).

Every lower-cased word adds +1 or -1 (by a second hash) to one of ``dim`` buckets; the vector is then
L2-normalised. It only implements what the Encoder base class requires: ``identity()``, ``dim`` and
``encode()``; ``load(device)``, ``describe()`` and ``pair_mode`` keep the base-class defaults.
"""

import hashlib
import re

import numpy as np
from pydantic import Field

from distillctl import hookimpl
from distillctl.encoding import Encoder, pair_features
from distillctl.options import PluginOptions

WORD = re.compile(r"\w+", re.UNICODE)


class HashingOptions(PluginOptions):
    dim: int = Field(64, ge=2, description="Buckets, i.e. the width of a text's vector.")
    salt: str = Field("", description="Changes which word goes to which bucket.")


class HashingEncoder(Encoder):
    def __init__(self, options: HashingOptions):
        self.options = options

    def identity(self) -> dict:  # everything that changes the vectors, so the cache key changes with it
        return {"version": 1, "dim": self.options.dim, "salt": self.options.salt}

    @property
    def dim(self) -> int:
        return self.options.dim

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.options.dim, dtype=np.float32)
        for word in WORD.findall(text.lower()):
            h = int.from_bytes(hashlib.blake2b((self.options.salt + word).encode(), digest_size=8).digest(), "little")
            v[h % self.options.dim] += 1.0 if (h >> 32) & 1 else -1.0
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    def encode(self, texts, pairs=None, *, batch_size=64, progress=None) -> np.ndarray:
        u = np.stack([self._one(t) for t in texts]) if len(texts) else np.zeros((0, self.dim), np.float32)
        if pairs is not None:  # pair_mode "features" (the default): [u, v, |u - v|, u * v]
            v = np.stack([self._one(t) for t in pairs]) if len(pairs) else u
            u = pair_features(u, v)
        if progress is not None:
            progress(len(texts))
        return u


@hookimpl
def register_encoders(register):
    register("hashing", HashingEncoder, options=HashingOptions, description="hashed bag of words (numpy, no weights)")

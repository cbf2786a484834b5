"""Test doubles for the token level: a tiny BERT built in the test (no download) with the fine-tuned
student contract, and a token "cache" of random texts whose class shows in their tokens.

build_tiny_bert is the ``finetune`` student's own class around a tiny BertModel built here; the body is
the same for every seed, the head is drawn from the global RNG (so build_seeded gives one head per seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import ClassVar

from pydantic import Field

from distillctl import hookimpl
from distillctl.options import PluginOptions

VOCAB, T = 24, 6


class TinyBertOptions(PluginOptions):
    level: ClassVar[str] = "tokens"  # reads token-level data
    hidden: int = Field(8, description="Hidden size.")
    layers: int = Field(2, description="Transformer layers.")
    dtype: str = Field("float32", description="float32 | float64")


_BODIES: dict = {}


def build_tiny_bert(input_dim, num_classes, options=None):
    """The real ``finetune`` student class around a tiny BertModel (2 layers, d 8, eager attention): the body
    is the same for every build (a fixed "pretrained" body, deep-copied), the head draws from the global RNG."""
    import copy

    import torch
    from transformers import BertConfig, BertModel

    from distillctl_plugins.students import FinetuneOptions
    from distillctl_plugins.students.finetune import from_body

    options = options or TinyBertOptions()
    key = (options.hidden, options.layers)
    if key not in _BODIES:
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=options.hidden, num_hidden_layers=options.layers,
                         num_attention_heads=2, intermediate_size=2 * options.hidden, max_position_embeddings=16,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         initializer_range=0.5)  # word vectors far apart: the classes show in the features
        cfg._attn_implementation = "eager"  # double backward needs the eager attention
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            _BODIES[key] = BertModel(cfg, add_pooling_layer=False)
    student = from_body(copy.deepcopy(_BODIES[key]), num_classes, FinetuneOptions())
    return student.to(getattr(torch, options.dtype))


@dataclass
class TokenSplit:
    ids: object
    mask: object
    y: object
    type_ids: object = None


@dataclass
class TokenEmbeddings:
    splits: dict
    label_names: list
    num_classes: int
    dim: int
    fingerprint: str = "fake-tokens"
    level: str = "tokens"
    notes: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def texts(self, split):
        s = self.splits[split]
        return [" ".join(f"w{int(t)}" for t, m in zip(row, mk) if m) for row, mk in zip(s.ids, s.mask)]


def token_embeddings(n_per_class=(12, 6, 6), C=2, seed=0) -> TokenEmbeddings:
    """Random texts of T tokens (first token 1 = [CLS]); class c uses mostly tokens from its own half of
    the vocabulary; the last position is padding in every other row."""
    import torch

    g = torch.Generator().manual_seed(seed)
    splits = {}
    half = (VOCAB - 2) // C
    for name, n in zip(("train", "val", "test"), n_per_class):
        y = torch.arange(C).repeat_interleave(n)
        ids = 2 + y.view(-1, 1) * half + torch.randint(0, half, (C * n, T), generator=g)
        ids[:, 0] = 1
        mask = torch.ones(C * n, T, dtype=torch.int64)
        mask[::2, -1] = 0
        ids[::2, -1] = 0
        splits[name] = TokenSplit(ids, mask, y)
    return TokenEmbeddings(splits=splits, label_names=[f"class{c}" for c in range(C)], num_classes=C, dim=8,
                           meta={"max_length": T, "pad_token_id": 0, "vocab_size": VOCAB})


@hookimpl
def register_students(register):
    register("tiny-bert", build_tiny_bert, options=TinyBertOptions, description="test stand-in: a tiny BERT")

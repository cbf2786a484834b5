"""Test doubles for the token level: a tiny BERT built in the test (no download) with the fine-tuned
student contract, and a token "cache" of random texts whose class shows in their tokens.

TinyBert follows the contract of the ``finetune`` student (docs/plugins.md): forward(inputs_embeds,
attention_mask[, output_attentions]) -> logits (and (B, L, H, T, T) attentions), embed_tokens,
features, word_embeddings, trainable_names; the body is the same for every seed, the head is drawn
from the global RNG (so build_seeded gives one head per seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from distillctl.options import PluginOptions

VOCAB, T = 24, 6


class TinyBertOptions(PluginOptions):
    hidden: int = Field(8, description="Hidden size.")
    layers: int = Field(2, description="Transformer layers.")
    dtype: str = Field("float32", description="float32 | float64")


def build_tiny_bert(input_dim, num_classes, options=None):
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    options = options or TinyBertOptions()
    dtype = getattr(torch, options.dtype)

    class TinyBert(nn.Module):
        level = "tokens"

        def __init__(self):
            super().__init__()
            cfg = BertConfig(vocab_size=VOCAB, hidden_size=options.hidden, num_hidden_layers=options.layers,
                             num_attention_heads=2, intermediate_size=2 * options.hidden, max_position_embeddings=16,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            cfg._attn_implementation = "eager"  # double backward needs the eager attention
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1234)  # the "pretrained" body: the same for every seed
                self.body = BertModel(cfg, add_pooling_layer=False)
            self.head = nn.Linear(options.hidden, num_classes)  # drawn from the global RNG: one per seed
            self.to(dtype)

        def features(self, inputs_embeds, attention_mask):
            h = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.to(h.dtype).unsqueeze(-1)
            return (h * m).sum(1) / m.sum(1).clamp_min(1)

        def forward(self, inputs_embeds, attention_mask, output_attentions: bool = False):
            out = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            output_attentions=output_attentions)
            m = attention_mask.to(out.last_hidden_state.dtype).unsqueeze(-1)
            logits = self.head((out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1))
            if output_attentions:
                return logits, torch.stack(out.attentions, dim=1)  # (B, L, H, T, T)
            return logits

        def embed_tokens(self, ids):
            return self.body.embeddings.word_embeddings(ids)

        def word_embeddings(self):
            return self.body.embeddings.word_embeddings.weight

        def trainable_names(self):
            return [n for n, _ in self.named_parameters()]

    return TinyBert()


@dataclass
class TokenSplit:
    ids: object
    mask: object
    y: object


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

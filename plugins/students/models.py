"""Student networks: plain ``nn.Module``s mapping ``(batch, input_dim)`` vectors to ``(batch, C)`` logits.

All are used functionally (``torch.func.functional_call``) and vmapped over a population of students,
so they keep no buffers, use no in-place updates and no batch norm. Dropout layers are only created
when ``dropout > 0`` (a vmapped random op needs ``randomness="different"``, which the inner loop sets).
Attention is written with plain matmul/softmax (not the fused kernel) because the meta-gradient
differentiates through the student's own backward pass (double backward).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class Linear(nn.Linear):
    """Softmax regression: (batch, input_dim) -> (batch, num_classes) logits ``x @ W.T + b``.

    :meth:`features` is the input itself (the penultimate representation of a one-layer model), so
    ``krr`` / ``dm`` with ``features: student`` work on the raw vectors.
    """

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, d)
        return x


def build_linear(input_dim: int, num_classes: int, options) -> nn.Module:
    return Linear(input_dim, num_classes, bias=options.bias)


class MLP(nn.Sequential):
    """input -> [Linear -> activation -> (Dropout)] x len(hidden) -> Linear -> logits.

    A plain ``nn.Sequential`` (parameter names ``0.weight`` ...), plus :meth:`features`: everything
    before the last Linear, i.e. the penultimate representation (the input itself for a linear model).
    """

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, hidden[-1])
        for layer in list(self)[:-1]:
            x = layer(x)
        return x


def build_mlp(input_dim: int, num_classes: int, options) -> nn.Module:
    """input -> [Linear -> activation -> (Dropout)] x len(hidden) -> Linear -> logits."""
    layers: list[nn.Module] = []
    width = input_dim
    for h in options.hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[options.activation]()]
        if options.dropout > 0:
            layers.append(nn.Dropout(options.dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return MLP(*layers)


class SelfAttention(nn.Module):
    """Multi-head self-attention with plain ops (double-backward safe under vmap)."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (B, T, D)
        B, T, D = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D/H)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.heads)  # (B, H, T, T)
        att = self.drop(att.softmax(dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm transformer encoder block: h + attn(LN(h)), then h + FF(LN(h))."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float, zero_init_residual: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        ff_layers: list[nn.Module] = [nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model)]
        if dropout > 0:
            ff_layers.append(nn.Dropout(dropout))
        self.ff = nn.Sequential(*ff_layers)
        if zero_init_residual:  # both residual branches start at 0: the block starts as the identity
            for layer in (self.attn.out, ff_layers[2]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.ff(self.ln2(h))


class TokenTransformer(nn.Module):
    """A small Transformer over an embedding vector cut into ``n_tokens`` equal pieces.

    (B, d) -> zero-pad to n_tokens * token_dim -> (B, T, token_dim) -> Linear -> + position
    -> blocks -> LayerNorm -> mean over tokens -> Linear -> (B, C) logits.
    """

    def __init__(self, input_dim: int, num_classes: int, *, n_tokens: int, d_model: int, layers: int,
                 heads: int, ff: int, dropout: float, zero_init_residual: bool = False):
        super().__init__()
        self.n_tokens = n_tokens
        self.token_dim = -(-input_dim // n_tokens)  # ceil: the last token is zero-padded if needed
        self.pad = self.n_tokens * self.token_dim - input_dim
        self.proj = nn.Linear(self.token_dim, d_model)
        self.pos = nn.Parameter(torch.randn(n_tokens, d_model) * 0.02)
        self.blocks = nn.Sequential(*[Block(d_model, heads, ff, dropout, zero_init_residual) for _ in range(layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, d) -> (B, D) the pooled representation
        if self.pad:
            x = F.pad(x, (0, self.pad))
        h = self.proj(x.view(x.shape[0], self.n_tokens, self.token_dim)) + self.pos  # (B, T, D)
        h = self.ln(self.blocks(h))
        return h.mean(dim=1)  # mean pooling over tokens -> (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, d) -> (B, C)
        return self.head(self.features(x))


def build_transformer(input_dim: int, num_classes: int, options) -> nn.Module:
    return TokenTransformer(input_dim, num_classes, n_tokens=options.n_tokens, d_model=options.d_model,
                            layers=options.layers, heads=options.heads, ff=options.ff, dropout=options.dropout,
                            zero_init_residual=options.zero_init_residual)

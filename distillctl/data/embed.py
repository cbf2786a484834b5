"""``embed``: a labelled text dataset -> vectors of a frozen encoder, once, in a verified cache.

Cache layout (``$DISTILLCTL_CACHE``, else the platform's user cache folder)::

    <root>/embeddings/<key>/manifest.json            identities, split sizes, label names, sha256 of every file
                           /<split>.safetensors      X (n, d) float32|float16, y (n,) int64   (split: native splits)
                           /<split>.texts.json       {"texts": [...], "pairs": [...] | null}  (reports, nearest texts)
                           /partial/                 shards of a build in progress (resume point)
    <root>/file-hashes.json                          sha256 of model files by (path, size, mtime)

``key`` is the sha256 of the dataset identity (file checksums and parsing options, or a hub
fingerprint), the encoder identity (weights checksum or revision, pooling, pair mode, max length,
normalisation), the storage dtype, ``embed.bad_rows`` and the cache format. The manifest is written last, so an entry
without one is unfinished; before any use every file is checked against the manifest's sha256, and a
truncated or corrupted entry is reported and rebuilt, never used. Each file is read once: its checksum
is computed on the bytes in hand and the tensors (or texts) come from those same bytes.

Token level (``embed.level: tokens``, :mod:`distillctl.data.tokens`): the same entry layout and checks,
built with the student model's own tokenizer instead of an encoder; each ``<split>.safetensors`` holds
``ids`` (n, T) int64, ``mask`` (n, T) int64 (1 = a real token), ``y`` (n,) and, for sentence pairs,
``type_ids`` (n, T); ``T = embed.max_length``. Its key covers the level, the model folder's checksum
and revision, and ``max_length``; the manifest's ``tokens`` section holds ``max_length``,
``pad_token_id``, ``vocab_size`` and ``hidden_size``.

The validation split, when the dataset has none, is carved from train at load time (seeded,
stratified; ``embed.val_size`` and ``seed``): carving is an index operation, so one cache entry serves
every seed and val size, while :attr:`Embeddings.fingerprint` covers the carve as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import inspect
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from distillctl import __version__
from distillctl.console import err_console, is_quiet, progress
from distillctl.data.cache import CACHE_ENV, embeddings_dir
from distillctl.devices import resolve_device
from distillctl.encoding import char_budget, cut_to_budget, output_dim, quiet_loading
from distillctl.errors import RunError, UserError
from distillctl.plugins import get_registry, with_registry
from distillctl.runs import atomic_write_bytes, atomic_write_json
from distillctl.seeds import carve_seed
from distillctl.textdata import PAIR_SEPARATOR, TextDataset, carve_val, check_classes, finish_rows
from distillctl.verified import NotVerified, read_verified, sha256_of

CACHE_FORMAT = 1
SPLIT_ORDER = ("train", "val", "test")


# -- results ----------------------------------------------------------------------------------------

@dataclass
class EmbeddingSplit:
    """One split of the cache: ``X`` (n, d) torch.float32 and ``y`` (n,) torch.int64; at the token level
    ``X`` is None and ``ids`` / ``mask`` (n, T) torch.int64 (and ``type_ids`` for pairs) hold the rows."""

    X: Any
    y: Any
    ids: Any = None
    mask: Any = None
    type_ids: Any = None


@dataclass
class Embeddings:
    """What every later stage reads: ``splits["train"|"val"|"test"]`` with ``.X`` / ``.y``."""

    splits: dict[str, EmbeddingSplit]
    label_names: list[str]
    num_classes: int
    dim: int  # vector width, or at the token level the model's hidden size d (the input-embedding width)
    fingerprint: str
    cache_dir: Path
    notes: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    #: rows per class of each split (``{"test": [C counts]}``): sizes a stage may check without reading the split
    class_counts: dict = field(default_factory=dict)
    level: str = "vectors"  # or "tokens"
    tokens: dict | None = None  # token level: max_length, pad_token_id, vocab_size, hidden_size, model, revision
    _text_index: dict = field(default_factory=dict, repr=False)  # split -> (native split, row indices)
    _texts_json: dict = field(default_factory=dict, repr=False)  # native split -> verified texts.json bytes

    def texts(self, split: str) -> list[str]:
        """The texts of ``split`` in row order (pairs joined as ``"a ||| b"``), verified against the manifest."""
        if split not in self._text_index:
            raise UserError(f"the embeddings have no {split!r} split (splits: {', '.join(self.splits)})")
        native, index = self._text_index[split]
        data = json.loads(self._texts_json[native])  # verified against the manifest when the entry was read
        texts, pairs = data["texts"], data.get("pairs")
        if pairs is not None:
            return [f"{texts[i]}{PAIR_SEPARATOR}{pairs[i]}" for i in index]
        return [texts[i] for i in index]


@dataclass
class EmbedResult:
    """What ``embed`` did: where the cache is, whether it was a hit, and each split's shape and balance."""

    cache_dir: Path
    cache_hit: bool
    splits: dict[str, dict]
    label_names: list[str]
    fingerprint: str
    notes: list[str]
    seconds: float
    dataset: str = ""
    encoder: str = ""

    def to_json(self) -> dict:
        return {"cache": str(self.cache_dir), "cache_hit": self.cache_hit, "splits": self.splits}


# -- hashing ----------------------------------------------------------------------------------------

def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


# -- the two public functions -------------------------------------------------------------------------

@with_registry  # registry=: run with that plugin registry (default: get_registry())
def embed(recipe, *, force: bool = False, quiet: bool | None = None) -> EmbedResult:
    """Embed the recipe's dataset with its encoder into the cache (a verified hit when already there).

    ``force`` rebuilds the entry. Returns the cache folder, whether it was a hit, and per split (after
    carving ``val`` from train when the dataset has none) ``n``, ``dim`` and ``class_counts``.
    """
    t0 = time.perf_counter()
    entry, manifest, contents, hit = _ensure(recipe, force=force, quiet=quiet)
    emb = _open(recipe, entry, manifest, contents)
    splits = {name: {"n": int(s.y.shape[0]), "dim": int(emb.dim),
                     **({"level": "tokens", "max_length": int(s.ids.shape[1])} if emb.level == "tokens" else {}),
                     "class_counts": _bincount(s.y, emb.num_classes)} for name, s in emb.splits.items()}
    return EmbedResult(cache_dir=entry, cache_hit=hit, splits=splits, label_names=emb.label_names,
                       fingerprint=emb.fingerprint, notes=emb.notes, seconds=time.perf_counter() - t0,
                       dataset=manifest["dataset"].get("description", ""),
                       encoder=manifest["encoder"].get("description", ""))


@with_registry  # registry=: run with that plugin registry (default: get_registry())
def load_embeddings(recipe, *, quiet: bool | None = None) -> Embeddings:
    """The recipe's embeddings (embedded first when the cache is missing or fails verification)."""
    entry, manifest, contents, _ = _ensure(recipe, force=False, quiet=quiet)
    return _open(recipe, entry, manifest, contents)


# -- cache entry ------------------------------------------------------------------------------------

def _identities(recipe):
    registry = get_registry()
    source = registry.build("dataset", recipe.dataset)
    ds_id = source.identity()
    if _level(recipe) == "tokens":  # the student model's tokenizer in the encoder's place
        from distillctl.data.tokens import TokenEncoder

        encoder = TokenEncoder(_student_section(recipe), recipe.embed.max_length)
        enc_id = encoder.identity()
        ident = {"format": CACHE_FORMAT, "level": "tokens", "dataset": {"plugin": recipe.dataset.name, **ds_id},
                 "tokenizer": enc_id}
    else:
        encoder = registry.build("encoder", recipe.encoder)
        enc_id = encoder.identity()
        ident = {"format": CACHE_FORMAT, "dataset": {"plugin": recipe.dataset.name, **ds_id},
                 "encoder": {"plugin": recipe.encoder.name, **enc_id}, "dtype": recipe.embed.dtype}
    # Which rows are embedded depends on embed.bad_rows: a `fail` run must not reuse what a `skip` run
    # stored (the rows it dropped are the ones `fail` must stop at).
    ident["bad_rows"] = recipe.embed.bad_rows
    key = sha256_of(_canonical(ident).encode())
    return source, encoder, ds_id, enc_id, key


def _level(recipe) -> str:
    return getattr(recipe.embed, "level", "vectors")


def _student_section(recipe):
    """``recipe.student`` with its validated options (defaults when the recipe gave none)."""
    section = recipe.student
    if section.options is None or isinstance(section.options, dict):
        from distillctl.recipe import validate_plugin_section

        section = validate_plugin_section("student", {"name": section.name, **(section.options or {})}, "student")
    return section


def _encoder_name(recipe) -> str:
    """What made the rows: the encoder plugin, or at the token level the student whose tokenizer did."""
    return f"student {recipe.student.name}" if _level(recipe) == "tokens" else recipe.encoder.name


def entry_dir(key: str) -> Path:
    return embeddings_dir() / key[:24]


def _ensure(recipe, *, force: bool, quiet: bool | None) -> tuple[Path, dict, dict, bool]:
    """A verified cache entry for the recipe: ``(folder, manifest, contents, cache_hit)``; ``contents`` as
    :func:`_read_verified` returns them (what the files hold, read once)."""
    source, encoder, ds_id, enc_id, key = _identities(recipe)
    entry = entry_dir(key)
    if not force:
        # A complete entry is read without the lock: every file is checksummed against the manifest,
        # which is written last (atomically), so a half-written entry never passes. Locking first would
        # need write access, and a lab-wide cache on a read-only file system could not be read at all.
        manifest, contents, _ = _read_verified(entry, key)
        if manifest is not None:
            return entry, manifest, contents, True
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"embedding cache {entry}: cannot create it ({exc.strerror}); set DISTILLCTL_CACHE to a "
                        "writable folder") from exc
    with _lock(entry, quiet):
        if not force:
            manifest, contents, problem = _read_verified(entry, key)
            if manifest is not None:
                return entry, manifest, contents, True
            if problem:
                _say(f"embedding cache {entry}: {problem}; rebuilding", quiet)
        manifest, contents = _build(recipe, entry, key, source, encoder, ds_id, enc_id, quiet=quiet)
        return entry, manifest, contents, False


@contextlib.contextmanager
def _lock(entry: Path, quiet: bool | None) -> Iterator[None]:
    """One writer per entry (parallel sweep jobs wait for the first to finish, then hit the cache)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    try:
        fh = open(entry / ".lock", "a+")
    except OSError as exc:
        # Only writers get here (a verified entry was read without the lock): no lock, no build.
        raise UserError(f"embedding cache {entry}: cannot write there ({exc.strerror or exc}), and it holds no "
                        f"complete entry for this dataset and encoder; set {CACHE_ENV} to a writable folder "
                        "(or embed once where the shared cache is writable)") from exc
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process embedding into {entry}", quiet)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_verified(entry: Path, key: str) -> tuple[dict | None, dict, str | None]:
    """``(manifest, contents, None)`` when the entry is complete and every checksum matches, else
    ``(None, {}, problem)`` (``problem`` is None for an entry that was never finished).

    Each file is read once: its size and sha256 are checked on the bytes in hand, and ``contents`` holds
    what those bytes are, by file name: the tensors of ``<split>.safetensors`` (``{"X", "y"}``, as stored)
    and the bytes of ``<split>.texts.json``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = entry / "manifest.json"
    if not path.exists():
        return None, {}, None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None, {}, "manifest.json is unreadable (corrupt)"
    if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
        return None, {}, "manifest.json belongs to another cache format or key"
    files = manifest.get("files") or {}
    contents: dict[str, Any] = {}
    for name, meta in files.items():
        try:
            data, _ = read_verified(entry / name, meta.get("sha256"), size=meta.get("bytes"))
        except NotVerified as exc:
            return None, {}, f"{name} {exc.problem}"
        if name.endswith(".safetensors"):
            try:
                contents[name] = load(data)  # tensors copied out of the verified bytes
            except SafetensorError as exc:
                return None, {}, f"{name} is not a readable safetensors file ({exc})"
        else:
            contents[name] = data
        del data  # one file's bytes in memory at a time
    for split in manifest.get("splits_stored", []):
        if f"{split}.safetensors" not in files or f"{split}.texts.json" not in files:
            return None, {}, f"the manifest lists no files for split {split!r}"
    return manifest, contents, None


def _say(message: str, quiet: bool | None) -> None:
    if not (is_quiet() if quiet is None else quiet):
        err_console().print(message, markup=False, highlight=False)


# -- building -------------------------------------------------------------------------------------------

def _build(recipe, entry: Path, key: str, source, encoder, ds_id: dict, enc_id: dict, *,
           quiet) -> tuple[dict, dict]:
    """Embed every native split in shards (resumable), then write the split files and the manifest.

    Returns ``(manifest, contents)``, ``contents`` as :func:`_read_verified` gives them (what was written).
    """
    import torch

    t0 = time.perf_counter()
    settings = recipe.embed
    device = str(resolve_device(settings.device, field="embed.device"))  # auto: CUDA when there, else CPU
    # 1. Read the text data (bad rows skipped or failing per embed.bad_rows).
    data, splits = _read_splits(recipe, source)
    is_pairs = any(s.pairs is not None for s in splits.values())

    # 2. Load the encoder (after the data, so bad data fails before the slow part).
    quiet_loading()
    encoder.load(device)
    tokens = _level(recipe) == "tokens"
    dim = int(encoder.dim) if tokens else output_dim(encoder, is_pairs)
    dtype = torch.float16 if settings.dtype == "float16" else torch.float32
    _cut_long_texts(encoder, splits, data.notes)

    # 3. Embed in shards under partial/: a finished shard is never recomputed (resume after interruption).
    partial = entry / "partial"
    where = "" if tokens else f" on {device}"  # a tokenizer runs on the CPU
    shards = _embed_shards(partial, key, splits, encoder, settings, dim, dtype, quiet=quiet, level=_level(recipe),
                           says=f"with {_describe(encoder, _encoder_name(recipe))}{where} -> {entry}")

    # 4. One safetensors file and one texts file per split, then the manifest (last: marks completion).
    manifest, contents = _finish_entry(recipe, entry, key, data, splits, shards, source, encoder, ds_id, enc_id,
                                       dim=dim, device=device, seconds=time.perf_counter() - t0)
    shutil.rmtree(partial, ignore_errors=True)
    return manifest, contents


def _finish_entry(recipe, entry: Path, key: str, data, splits: dict, shards: dict[str, list], source, encoder,
                  ds_id: dict, enc_id: dict, *, dim: int, device: str, seconds: float) -> tuple[dict, dict]:
    """Write every split's files, then the manifest (last: it marks the entry complete); ``(manifest,
    contents)`` as :func:`_build` returns them."""
    settings = recipe.embed
    tokens = _level(recipe) == "tokens"
    is_pairs = any(s.pairs is not None for s in splits.values())
    files, contents = _write_splits(entry, key, splits, shards)
    manifest = {
        "format": CACHE_FORMAT,
        "key": key,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "distillctl_version": __version__,
        "seconds": round(seconds, 2),
        "dataset": {"plugin": recipe.dataset.name, "identity": ds_id, "description": _describe(source, recipe.dataset.name),
                    "label_names": list(data.label_names), "notes": list(data.notes), "pairs": is_pairs,
                    "splits": {n: {"n": len(s), "class_counts": s.class_counts(data.num_classes)}
                               for n, s in splits.items()}},
        "encoder": {"plugin": _encoder_name(recipe), "identity": enc_id,
                    "description": _describe(encoder, _encoder_name(recipe)),
                    "dim": dim, "pair_mode": getattr(encoder, "pair_mode", None) if is_pairs else None,
                    "device": device, "batch_size": settings.batch_size},
        "dtype": "int64" if tokens else settings.dtype,
        **({"level": "tokens", "tokens": encoder.meta()} if tokens else {}),
        "splits_stored": list(splits),
        "files": files,
        "versions": _versions(),
    }
    atomic_write_json(entry / "manifest.json", manifest)
    return manifest, contents


def write_stand_in_entry(recipe, root: Path, dim: int, data: Any = None) -> Path:
    """A complete, verified cache entry for a vector-level ``recipe`` under the cache folder ``root`` (as
    ``$DISTILLCTL_CACHE``), keyed as the real one, with the dataset's real texts, labels and splits and random
    vectors of width ``dim``: files of the real sizes, so a job run on it (``DISTILLCTL_CACHE=root``) loads and
    verifies what the real job will. ``distillctl plan`` times a whole job on it when the real cache is missing.
    ``data``: the recipe's dataset as the caller loaded it already (else it is read here)."""
    import torch

    source, encoder, ds_id, enc_id, key = _identities(recipe)
    data, splits = _read_splits(recipe, source, data)
    dtype = torch.float16 if recipe.embed.dtype == "float16" else torch.float32
    g = torch.Generator().manual_seed(0)
    shards = {name: [{"X": torch.randn(len(sp), dim, generator=g).to(dtype)}] for name, sp in splits.items()}
    entry = Path(root) / "embeddings" / key[:24]
    entry.mkdir(parents=True, exist_ok=True)
    _finish_entry(recipe, entry, key, data, splits, shards, source, encoder, ds_id, enc_id, dim=dim,
                  device="cpu", seconds=0.0)
    return entry


def _read_splits(recipe, source, data: Any = None) -> tuple[Any, dict]:
    """The dataset (``data``, or read) and its non-empty native splits (train, val, test order), labels checked."""
    data = _load_dataset(source, recipe.embed.bad_rows) if data is None else data
    splits = {name: s for name, s in data.splits.items() if name in SPLIT_ORDER and len(s) > 0}
    if "train" not in splits:
        raise UserError(f"dataset {recipe.dataset.name!r}: no 'train' split with rows")
    C = data.num_classes
    for name, s in splits.items():
        if s.labels.size and (s.labels.min() < 0 or s.labels.max() >= C):
            raise UserError(f"dataset {recipe.dataset.name!r}: split {name} has labels outside 0..{C - 1}")
    # Built-in plugins check this per file already; here for third-party datasets too.
    check_classes({n: [s] for n, s in splits.items()}, data.label_names)
    return data, splits


def _embed_shards(partial: Path, key: str, splits: dict, encoder, settings, dim: int, dtype, *, quiet,
                  says: str, level: str = "vectors") -> dict[str, list]:
    """Every split's rows, as ``{split: [tensors per shard]}``: ``{"X": (rows, dim)}`` per shard, or at the token
    level ``{"ids", "mask"[, "type_ids"]: (rows, T) int64}``; each shard of ``shard_size`` rows is embedded
    (tokenised) once and kept in ``partial/`` (with its sha256 in ``shards.json``), so an interrupted build
    resumes at the last whole shard. ``partial/`` is started afresh when its plan (key, shard size, dim,
    the texts) differs from this build's (the key covers the level)."""
    from safetensors.torch import load as load_tensors

    plan = {"key": key, "shard_size": settings.shard_size, "dim": dim,
            "splits": {n: {"n": len(s), "texts_sha256": _texts_digest(s)} for n, s in splits.items()}}
    plan_file, done_file = partial / "plan.json", partial / "shards.json"
    if partial.exists():
        try:
            same = json.loads(plan_file.read_text(encoding="utf-8")) == plan
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_file, plan)
    try:
        done = json.loads(done_file.read_text(encoding="utf-8")) if done_file.exists() else {}
    except (OSError, json.JSONDecodeError):
        done = {}
    S = settings.shard_size
    work = []  # (split, shard file name, start row, stop row)
    for name, s in splits.items():
        for k in range(math.ceil(len(s) / S)):
            work.append((name, f"{name}-{k:05d}.safetensors", k * S, min(len(s), (k + 1) * S)))

    # A finished shard's bytes are read once: hashed against shards.json, then kept as the tensors themselves.
    shard_X: dict[str, dict] = {}  # shard file name -> {"X": (b-a, dim)} or {"ids", "mask"[, "type_ids"]: (b-a, T)}
    todo = []
    for name, shard, a, b in work:
        if shard in done:
            try:
                blob, _ = read_verified(partial / shard, done[shard])
                shard_X[shard] = load_tensors(blob)
                continue
            except NotVerified:  # missing or damaged: embedded again
                pass
        todo.append((name, shard, a, b))
    total = sum(b - a for _, _, a, b in todo)
    unit = "pairs" if any(s.pairs is not None for s in splits.values()) else "sentences"
    if len(work) > len(todo):
        _say(f"resuming: {len(work) - len(todo)} of {len(work)} shards already embedded in {partial}", quiet)
    _say(f"{'tokenising' if level == 'tokens' else 'embedding'} {total:,} {unit} {says}", quiet)
    with progress("embed", total, unit=unit, quiet=quiet) as bar:
        for name, shard, a, b in todo:
            s = splits[name]
            out = encoder.encode(s.texts[a:b], None if s.pairs is None else s.pairs[a:b],
                                 batch_size=settings.batch_size, progress=bar.advance)
            shard_X[shard] = (_token_shard(out, encoder.max_length, name, a, b) if level == "tokens"
                              else _vector_shard(out, dim, dtype, name, a, b))
            done[shard] = sha256_of(_write_tensors(partial / shard, shard_X[shard]))
            atomic_write_json(done_file, done)
    return {name: [shard_X[shard] for n, shard, _, _ in work if n == name] for name in splits}


def _vector_shard(X, dim: int, dtype, name: str, a: int, b: int) -> dict:
    """``{"X": (b-a, dim)}`` from an encoder's output, checked: the right shape, finite."""
    import torch

    if X.shape != (b - a, dim) or not np.isfinite(X).all():
        raise RunError(f"encoder returned {'non-finite values' if X.shape == (b - a, dim) else X.shape} "
                       f"for {name} rows {a}..{b} (expected ({b - a}, {dim}))")
    return {"X": torch.from_numpy(X).to(dtype)}


def _token_shard(out: dict, T: int, name: str, a: int, b: int) -> dict:
    """``{"ids", "mask"[, "type_ids"]: (b-a, T) int64}`` from a tokenizer's output, shapes checked."""
    import torch

    if any(v.shape != (b - a, T) for v in out.values()):
        raise RunError(f"tokenizer returned shapes {[tuple(v.shape) for v in out.values()]} for {name} "
                       f"rows {a}..{b} (expected ({b - a}, {T}))")
    return {k: torch.from_numpy(v).long() for k, v in out.items()}


def _write_splits(entry: Path, key: str, splits: dict, shards: dict[str, list]) -> tuple[dict, dict]:
    """``<split>.safetensors`` (X, y; token level: ids, mask[, type_ids], y) and ``<split>.texts.json`` of every
    split; returns the manifest's ``files`` (sha256 and size of each, hashed from the bytes written) and
    ``contents`` (what they hold)."""
    import torch

    files: dict[str, dict] = {}
    contents: dict[str, Any] = {}
    for name, s in splits.items():
        rows = {k: torch.cat([sh[k] for sh in shards[name]], 0) for k in shards[name][0]}  # X (n, dim) or (n, T) each
        rows["y"] = torch.from_numpy(np.asarray(s.labels, dtype=np.int64))  # (n,)
        fn = f"{name}.safetensors"
        blob = _write_tensors(entry / fn, rows, metadata={"split": name, "key": key})
        files[fn] = {"sha256": sha256_of(blob), "bytes": len(blob)}
        contents[fn] = rows
        tn = f"{name}.texts.json"
        blob = json.dumps({"texts": s.texts, "pairs": s.pairs}, ensure_ascii=False).encode("utf-8")
        atomic_write_bytes(entry / tn, blob)
        files[tn] = {"sha256": sha256_of(blob), "bytes": len(blob)}
        contents[tn] = blob
        del blob
    return files, contents


def _write_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> bytes:
    """Save tensors as safetensors atomically; the bytes written (hashed in hand, never read back)."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, blob)
    return blob


def _load_dataset(source, bad_rows: str):
    """``source.load(bad_rows=...)``; a third-party source whose ``load()`` takes no ``bad_rows`` gets its rows
    checked here instead (empty or non-text rows skipped or failing the same way)."""
    params = inspect.signature(source.load).parameters
    if "bad_rows" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return source.load(bad_rows=bad_rows)
    data = source.load()
    if not isinstance(data, TextDataset):
        raise RunError(f"dataset plugin returned {type(data).__name__}, not a distillctl.textdata.TextDataset")
    notes = list(data.notes)
    splits = {name: finish_rows(s.texts, s.pairs, s.labels.tolist(), where=f"dataset.{name}", bad_rows=bad_rows,
                                notes=notes, num_classes=len(data.label_names), label_names=data.label_names)
              for name, s in data.splits.items()}
    return TextDataset(splits=splits, label_names=data.label_names, notes=notes)


def _cut_long_texts(encoder, splits: dict, notes: list[str]) -> None:
    """Cut every text (and second sentence) longer than the encoder reads to its character budget, in
    place, before tokenising: the cost of a row is then bounded by ``max_tokens`` whatever the file holds,
    and the cached texts are what was embedded. The count goes to ``notes``."""
    total = 0
    for s in splits.values():
        s.texts, n = cut_to_budget(encoder, s.texts)
        total += n
        if s.pairs is not None:
            s.pairs, n = cut_to_budget(encoder, s.pairs)
            total += n
    if total:
        tokens = encoder.max_tokens
        notes.append(f"{total} text{'s' if total != 1 else ''} longer than {char_budget(tokens):,} characters cut "
                     f"before tokenising (the encoder reads at most {tokens} tokens)")


def _describe(component, name: str) -> str:
    describe = getattr(component, "describe", None)
    return describe() if callable(describe) else name


def _texts_digest(split) -> str:
    h = hashlib.sha256()
    for i, t in enumerate(split.texts):
        h.update(t.encode("utf-8", "surrogatepass") + b"\x00")
        if split.pairs is not None:
            h.update(split.pairs[i].encode("utf-8", "surrogatepass") + b"\x00")
    h.update(split.labels.tobytes())
    return h.hexdigest()


def _versions() -> dict:
    out = {"distillctl": __version__}
    for dist in ("torch", "sentence-transformers", "transformers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


# -- opening ----------------------------------------------------------------------------------------------

def _open(recipe, entry: Path, manifest: dict, contents: dict) -> Embeddings:
    """The verified entry from its ``contents`` (as :func:`_read_verified` gives them, nothing is read
    again); carve ``test`` and then ``val`` from train when the dataset lacks them."""
    import torch

    label_names = list(manifest["dataset"]["label_names"])
    C = len(label_names)
    tokens = manifest.get("level") == "tokens"
    native = {}  # split -> {"X" | "ids", "mask"[, "type_ids"], "y"}
    for split in manifest["splits_stored"]:
        t = dict(contents[f"{split}.safetensors"])
        want = manifest["dataset"]["splits"][split]["n"]
        if tokens:
            T = manifest["tokens"]["max_length"]
            t = {k: v.long() for k, v in t.items()}  # (n, T) ids / mask / type_ids, (n,) y
            shape, expected = tuple(t["ids"].shape), (want, T)
            bad = shape != expected or tuple(t["mask"].shape) != expected or t["y"].shape[0] != want
        else:
            t = {"X": t["X"].float(), "y": t["y"].long()}  # (n, d) float32, (n,) int64
            shape, expected = tuple(t["X"].shape), (want, manifest["encoder"]["dim"])
            bad = shape != expected or t["y"].shape[0] != want
        if bad:
            raise RunError(f"embedding cache {entry}: {split} has shape {shape}, the manifest says "
                           f"{expected}; run `distillctl embed RECIPE --force`")
        native[split] = t
    index = {name: (name, list(range(native[name]["y"].shape[0]))) for name in native}
    carve: dict = {}  # what was held out, for the fingerprint
    notes = list(manifest["dataset"].get("notes", []))
    # A split the dataset lacks is held out from (what is left of) train: test first, so the test rows
    # never depend on val_size; a different seed stream per split.
    for held, size, what in (("test", recipe.embed.test_size, "test"), ("val", recipe.embed.val_size, "validation")):
        if held in native:
            continue
        rows = native["train"]
        origin = index["train"][1]  # stored train rows behind the current train rows
        tr, ho = carve_val(rows["y"].numpy(), size, carve_seed(recipe.seed, held), where=f"embed.{held}_size",
                           what=what)
        carve.update({f"{held}_size": size, "seed": recipe.seed})
        tr_t, ho_t = torch.from_numpy(tr), torch.from_numpy(ho)  # int64 row indices into the current train
        native[held] = {k: v[ho_t] for k, v in rows.items()}
        native["train"] = {k: v[tr_t] for k, v in rows.items()}
        index[held] = ("train", [origin[i] for i in ho.tolist()])
        index["train"] = ("train", [origin[i] for i in tr.tolist()])
        notes.append(f"{held}: {ho.size} rows carved from train (stratified, {held}_size {size}, seed {recipe.seed})")
    splits = {name: EmbeddingSplit(X=native[name].get("X"), y=native[name]["y"], ids=native[name].get("ids"),
                                   mask=native[name].get("mask"), type_ids=native[name].get("type_ids"))
              for name in SPLIT_ORDER if name in native}
    fingerprint = sha256_of(_canonical({"key": manifest["key"], "carve": carve or None}).encode())
    texts_json = {split: contents[f"{split}.texts.json"] for split in manifest["splits_stored"]}
    return Embeddings(splits=splits, label_names=label_names, num_classes=C, dim=int(manifest["encoder"]["dim"]),
                      fingerprint=fingerprint, cache_dir=entry, notes=notes, manifest=manifest, _text_index=index,
                      _texts_json=texts_json, level="tokens" if tokens else "vectors",
                      tokens=dict(manifest["tokens"]) if tokens else None,
                      class_counts={name: _bincount(s.y, C) for name, s in splits.items()})


def _bincount(y, C: int) -> list[int]:
    import torch

    return torch.bincount(y, minlength=C).tolist()

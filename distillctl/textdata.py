"""Labelled text data as the embed stage sees it, and the helpers every dataset plugin shares.

A dataset plugin's factory returns a :class:`DatasetSource`: ``identity()`` (cheap, JSON-able: file
checksums and the parsing options, or a Hugging Face fingerprint; it keys the embedding cache) and
``load(bad_rows=...)`` -> :class:`TextDataset` with named splits ``train`` / ``val`` / ``test``.

Shared helpers (used by the built-in plugins, usable by third-party ones):

- :func:`check_file`: a missing file is a one-line :class:`UserError`; :func:`files_identity`: the
  sha256 of each file of each split (:func:`distillctl.verified.sha256_of`), for ``identity()``.
- :func:`finish_rows`: empty or non-text rows are counted and skipped (or fail, ``bad_rows="fail"``);
  labels are checked against the label set.
- :func:`merge_parts`: several files form one split; exact duplicates are removed and counted.
- :func:`drop_overlap`: training rows that also occur in the test split are removed and counted.
- :func:`carve_val`: a seeded, stratified validation split carved from train.

Only numpy is imported at module level (the CLI imports nothing from here at startup anyway).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distillctl.errors import UserError
from distillctl.verified import sha256_of

#: The split names every stage uses. ``val`` may be absent from a dataset (then it is carved from train).
SPLITS = ("train", "val", "test")

#: Bump when a parser of a built-in plugin changes what it produces: it is part of every dataset identity,
#: so embedding caches made by an older parser are not reused. 2: strict quoting and per-reason bad rows
#: (a version-1 cache of a file with a stray quote holds glued rows), texts cut to the encoder's budget.
PARSER_VERSION = 2

#: How a text pair is shown as one string (reports, ``Embeddings.texts``).
PAIR_SEPARATOR = " ||| "


# -- data model -----------------------------------------------------------------------------------

@dataclass
class TextSplit:
    """One split: ``texts[i]`` (and ``pairs[i]`` for sentence-pair data) with ``labels[i]`` (int64)."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray
    #: where the rows come from, for messages (``dataset.test (test.csv)``); empty when unknown
    origin: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.pairs is not None and len(self.pairs) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.pairs)} second sentences")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int] | np.ndarray) -> "TextSplit":
        index = np.asarray(index, dtype=np.int64)
        return TextSplit([self.texts[i] for i in index],
                         None if self.pairs is None else [self.pairs[i] for i in index],
                         self.labels[index], self.origin)

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class TextDataset:
    """Named splits (``train``, ``test``, optionally ``val``), the label names and notes for the user
    (duplicates removed, rows skipped, ...)."""

    splits: dict[str, TextSplit]
    label_names: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


class DatasetSource:
    """Base class of dataset plugins (``factory(options) -> DatasetSource``).

    Required: :meth:`identity`, :meth:`load`. Optional, with working defaults here: :meth:`describe`
    (the plugin name) and :attr:`name`. Raise :class:`distillctl.errors.UserError` for what the user
    must fix (a missing file, an unknown column): the command exits 2 with that one line.
    """

    #: the plugin name (set when the registry builds the source); the default of :meth:`describe`
    name: str = ""

    def identity(self) -> dict:
        """JSON-able and cheap; equal identities must mean equal data (it keys the embedding cache)."""
        raise NotImplementedError(f"dataset {self.name!r} does not implement identity()")

    def describe(self) -> str:
        """Optional: one line for humans (file paths, hub name). Default: the plugin name."""
        return self.name or type(self).__name__

    def load(self, *, bad_rows: str = "fail") -> TextDataset:
        """Read the data: :class:`TextDataset` with splits ``train`` and ``test`` (``val`` optional).
        ``bad_rows``: ``fail`` on a row the file cannot give whole (empty / non-text field, no label,
        malformed quoting, wrong number of fields, undecodable bytes) or ``skip`` it (counted per reason, with
        its line, in a note); :func:`finish_rows` and :mod:`distillctl_plugins.datasets.readers` do both.
        A ``load()`` without ``bad_rows`` gets its rows checked by the core."""
        raise NotImplementedError(f"dataset {self.name!r} does not implement load()")


# -- files ----------------------------------------------------------------------------------------

def check_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or a :class:`UserError` naming ``what`` (e.g. ``dataset.train``)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what}: file not found: {p}")
    if not p.is_file():
        raise UserError(f"{what}: not a file: {p}")
    return p


def as_path_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def files_identity(files: dict[str, list[str]]) -> dict[str, list[str]]:
    """``{split: [sha256 of each file]}``: the data, not where it lives (moving files keeps the cache)."""
    return {split: [sha256_of(check_file(p, f"dataset.{split}")) for p in paths]
            for split, paths in files.items() if paths}


# -- rows -----------------------------------------------------------------------------------------

def is_text(value: Any) -> bool:
    """A usable text field: a string with something other than whitespace in it."""
    return isinstance(value, str) and bool(value.strip())


def finish_rows(texts: Sequence[Any], pairs: Sequence[Any] | None, labels: Sequence[Any], *,
                where: str, bad_rows: str, notes: list[str], num_classes: int | None = None,
                label_names: Sequence[str] | None = None, raw_labels: Sequence[Any] | None = None) -> TextSplit:
    """Turn parsed rows into a :class:`TextSplit`.

    Rows whose text (or second text) is missing, empty or not a string, or whose label is missing,
    are counted: ``bad_rows="skip"`` drops them (and adds a note), ``"fail"`` raises one
    :class:`UserError`. Labels must already be integers; one outside ``[0, num_classes)`` is always an
    error naming the label set (and the value as the file has it, from ``raw_labels``).
    """
    n = len(texts)
    bad: list[int] = []
    keep: list[int] = []
    for i in range(n):
        ok = is_text(texts[i]) and (pairs is None or is_text(pairs[i])) and _is_label(labels[i])
        (keep if ok else bad).append(i)
    if bad:
        first = bad[0]
        msg = (f"{where}: {len(bad)} of {n} rows have an empty or non-text field or no label "
               f"(first at row {first + 1})")
        if bad_rows == "fail":
            raise UserError(msg + "; fix the data or set embed.bad_rows=skip")
        notes.append(msg + "; skipped (embed.bad_rows=skip)")
    lab = np.asarray([int(labels[i]) for i in keep], dtype=np.int64)
    if num_classes is not None and lab.size:
        out = (lab < 0) | (lab >= num_classes)
        if out.any():
            i = keep[int(np.argmax(out))]
            names = f" ({', '.join(label_names)})" if label_names else ""
            shown = raw_labels[i] if raw_labels is not None else labels[i]
            if isinstance(shown, str):
                shown = excerpt(shown)
            mapped = f" (class index {labels[i]})" if raw_labels is not None and str(raw_labels[i]) != str(labels[i]) else ""
            raise UserError(f"{where}: label {shown}{mapped} at row {i + 1} is outside the label set "
                            f"0..{num_classes - 1}{names}")
    return TextSplit([str(texts[i]) for i in keep], None if pairs is None else [str(pairs[i]) for i in keep],
                     lab, where)


#: Characters of input quoted in an error message at most (then "…"): a 52 MB line stays out of the terminal.
EXCERPT = 80


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """``repr`` of ``value`` (a string, else its ``str``) cut to ``limit`` characters, ``…`` marking the cut."""
    s = value if isinstance(value, str) else str(value)
    return repr(s) if len(s) <= limit else repr(s[:limit]) + "…"


def _is_label(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value) and float(value).is_integer()
    return False


_NON_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


#: Characters of a text normalised for :func:`dedupe_key`; the rest is compared exactly (through its sha256),
#: so a 67 MB cell costs one hash instead of a 30 s normalisation, and different words are still never merged.
DEDUPE_PREFIX = 4096


def dedupe_key(text: str, pair: str | None = None) -> str:
    """What counts as the same row: case, whitespace and punctuation ignored (in the first
    :data:`DEDUPE_PREFIX` characters; beyond them texts must be equal exactly).

    Needed because the same AG News article is distributed as ``title. description``, ``title .
    description`` and ``titledescription``; different words are never merged.
    """
    def norm(s: str) -> str:
        head = _NON_ALNUM.sub("", unicodedata.normalize("NFKC", s[:DEDUPE_PREFIX]).casefold())
        if len(s) <= DEDUPE_PREFIX:
            return head
        return head + "\x01" + sha256_of(s[DEDUPE_PREFIX:].encode("utf-8", "surrogatepass"))

    return norm(text) if pair is None else norm(text) + "\x00" + norm(pair)


def merge_parts(parts: Sequence[TextSplit], *, where: str, notes: list[str], dedupe: bool = True) -> TextSplit:
    """Concatenate the parts of one split (one per file) and drop exact duplicates (same normalised
    text and same label; the first occurrence is kept). The counts go to ``notes``."""
    texts: list[str] = [t for p in parts for t in p.texts]
    has_pairs = any(p.pairs is not None for p in parts)
    pairs = [t for p in parts for t in (p.pairs or [""] * len(p))] if has_pairs else None
    labels = np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, np.int64)
    merged = TextSplit(texts, pairs, labels, ", ".join(p.origin for p in parts if p.origin))
    if not dedupe:
        return merged
    seen: dict[str, int] = {}
    keep: list[int] = []
    conflicts = 0
    for i, t in enumerate(texts):
        key = dedupe_key(t, None if pairs is None else pairs[i])
        if key in seen:
            if labels[seen[key]] != labels[i]:
                conflicts += 1  # same text, another label: both kept, the data says so
                keep.append(i)
            continue
        seen[key] = i
        keep.append(i)
    removed = len(texts) - len(keep)
    src = f"{len(parts)} files" if len(parts) > 1 else "1 file"
    notes.append(f"{where}: {removed} exact duplicate rows removed ({len(texts)} rows from {src} -> {len(keep)})")
    if conflicts:
        notes.append(f"{where}: {conflicts} rows repeat a text with a different label (kept)")
    return merged.subset(keep) if removed else merged


def drop_overlap(rows: TextSplit, other: TextSplit, *, where: str, notes: list[str],
                 other_name: str = "test") -> TextSplit:
    """Remove the rows of ``rows`` whose text also occurs in ``other`` (the ``other_name`` split): no test
    text is ever seen in training, no training text is scored as validation. The count goes to ``notes``."""
    other_keys = {dedupe_key(t, None if other.pairs is None else other.pairs[i]) for i, t in enumerate(other.texts)}
    keep = [i for i, t in enumerate(rows.texts)
            if dedupe_key(t, None if rows.pairs is None else rows.pairs[i]) not in other_keys]
    removed = len(rows) - len(keep)
    notes.append(f"{where}: {removed} rows whose text also occurs in the {other_name} split removed")
    return rows.subset(keep) if removed else rows


# -- labels ---------------------------------------------------------------------------------------

def map_labels(raw: Sequence[Any], *, where: str, label_names: Sequence[str] | None, offset: int = 0,
               known: dict[str, int] | None = None) -> list[Any]:
    """Raw label values -> class indices (``None`` for a missing label; bad rows are handled later).

    Integers (or integer-valued floats / strings of digits) are indices after subtracting ``offset``;
    other strings are looked up in ``label_names`` (or in ``known``). An unknown name is a
    :class:`UserError` listing the label set.
    """
    names = list(label_names) if label_names else None
    lookup = {n: i for i, n in enumerate(names)} if names else dict(known or {})
    out: list[Any] = []
    for i, v in enumerate(raw):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
            continue
        if isinstance(v, (bool, np.bool_)):
            out.append(int(v) - offset)
            continue
        if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            out.append(int(v) - offset)
            continue
        s = str(v).strip()
        if s == "":
            out.append(None)
        elif s in lookup:
            out.append(lookup[s])
        elif re.fullmatch(r"[+-]?\d{1,18}", s):  # longer digit strings are no class index (and int() refuses 4,300+)
            out.append(int(s) - offset)
        else:
            allowed = ", ".join(lookup) if lookup else "integers"
            raise UserError(f"{where}: label {excerpt(s)} at row {i + 1} is not in the label set ({allowed})")
    return out


def check_classes(splits: dict[str, Sequence[TextSplit]], label_names: Sequence[str], *,
                  where: str = "dataset") -> None:
    """Every class scored must be learnable: at least two classes have training rows, and no label of
    ``val`` / ``test`` is absent from ``train`` (a :class:`UserError` naming the label and its file).

    ``splits`` maps a split name to its parts (one per file, each with its ``origin``). Without this, a
    class only in the test file gets 0 training rows (and later "use at most 0" from the IPC check), and
    a one-class dataset distils to a meaningless validation accuracy of 1.0.
    """
    def name(k: int) -> str:
        return repr(label_names[k]) if 0 <= k < len(label_names) else repr(str(k))

    train = set(np.unique(np.concatenate([p.labels for p in splits.get("train", [])] or [np.zeros(0, np.int64)]))
                .tolist())
    if len(train) < 2:
        if not train:
            raise UserError(f"{where}.train: no training rows are left (after removing empty rows, duplicates and "
                            "rows whose text also occurs in test); check the train files and the dedupe option")
        raise UserError(f"{where}.train: every training row has the class {name(next(iter(train)))}; "
                        f"classification needs at least two classes (label set: "
                        f"{', '.join(map(str, label_names[:20]))}{', …' if len(label_names) > 20 else ''})")
    for split in ("val", "test"):
        for part in splits.get(split, []):
            extra = sorted(set(np.unique(part.labels).tolist()) - train)
            if extra:
                k = extra[0]
                more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
                raise UserError(f"{part.origin or f'{where}.{split}'}: label {name(k)} (class index {k}){more} occurs "
                                f"in {split} but in no training row; a class without training rows cannot be "
                                f"learned: add training rows for it or remove its {split} rows")


# -- validation split -------------------------------------------------------------------------------

def carve_val(labels: np.ndarray, val_size: float, seed: int, *, where: str = "embed.val_size",
              what: str = "validation") -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified validation split: ``(train_index, val_index)``, both sorted.

    ``val_size`` < 1 is a fraction of the rows, >= 1 a row count. Every class gets its share (largest
    remainder rounding, so the total is exact) and keeps at least one training row.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    if n == 0:
        raise UserError(f"{where}: the training split is empty")
    n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if n_val < 1:
        raise UserError(f"{where}: {val_size} of {n} training rows is less than one row; use a larger value")
    if n_val >= n:
        raise UserError(f"{where}: {n_val} {what} rows asked for but train has only {n}; use a fraction "
                        "(0 < x < 1) or a smaller count")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n_val / n)
    take = np.floor(quota).astype(np.int64)
    # Largest remainders first; ties broken by class index so the result is deterministic.
    for j in np.argsort(-(quota - take), kind="stable")[: n_val - int(take.sum())]:
        take[j] += 1
    take = np.minimum(take, counts - 1)  # a class never loses all its training rows
    rng = np.random.default_rng(seed)
    val_parts = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(labels == c)
        val_parts.append(rng.permutation(idx)[:k])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def assemble(parts: dict[str, list[TextSplit]], label_names: Sequence[str], *, notes: list[str],
             dedupe: bool = True, where: str = "dataset") -> TextDataset:
    """Merge each split's parts (one per file); with ``dedupe``, drop duplicate train / val rows,
    train / val rows whose text occurs in test, and val rows whose text occurs in train (the test split
    itself is never changed).

    ``parts`` maps ``train`` / ``val`` / ``test`` to the parsed files of that split (``val`` and ``test``
    may be missing: the embed stage then carves them from train).
    """
    splits: dict[str, TextSplit] = {}
    for name in SPLITS:
        if parts.get(name):
            # The test split is kept exactly as distributed (scores stay comparable with the literature);
            # duplicates are removed from train / val, and so is any row whose text occurs in test.
            splits[name] = merge_parts(parts[name], where=f"{where}.{name}", notes=notes,
                                       dedupe=dedupe and name != "test")
    if "train" not in splits or len(splits["train"]) == 0:
        raise UserError(f"{where}.train: no usable rows")
    if parts.get("test") and len(splits.get("test", ())) == 0:  # test files given, but nothing usable in them
        raise UserError(f"{where}.test: no usable rows")
    if dedupe and "test" in splits:
        for name in ("train", "val"):
            if name in splits:
                splits[name] = drop_overlap(splits[name], splits["test"], where=f"{where}.{name}", notes=notes)
    if dedupe and "val" in splits:  # a validation file that shares rows with train would flatter selection
        splits["val"] = drop_overlap(splits["val"], splits["train"], where=f"{where}.val", notes=notes,
                                     other_name="train")
    # After dedupe: removing duplicates / test overlap can take a class's last training row.
    check_classes({"train": [splits["train"]], "val": parts.get("val") or [], "test": parts.get("test") or []},
                  label_names, where=where)
    return TextDataset(splits=splits, label_names=list(label_names), notes=notes)

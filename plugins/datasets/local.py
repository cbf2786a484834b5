"""Any labelled text table on disk: CSV, TSV, JSONL, JSON or Parquet, with a column mapping.

Labels: integers are class indices (after subtracting ``label_offset``, e.g. 1 for classes 1..C);
strings are class names, looked up in ``label_names`` when given, else the sorted names found in the
training files form the label set. A label outside the set is an error naming the set.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field

from distillctl.errors import UserError
from distillctl.options import PluginOptions, RecipePath
from distillctl.textdata import (PARSER_VERSION, DatasetSource, TextDataset, TextSplit, as_path_list, assemble,
                                 check_file, excerpt, files_identity, finish_rows, map_labels)
from distillctl_plugins.datasets.readers import check_encoding, column, detect_format, read_table


class LocalOptions(PluginOptions):
    train: Union[RecipePath, list[RecipePath]] = Field(
        description="Training file(s); several files form one split (exact duplicates removed and counted).")
    val: Union[RecipePath, list[RecipePath], None] = Field(
        None, description="Validation file(s); absent: `embed.val_size` rows are carved from train "
        "(stratified, seeded).")
    test: Union[RecipePath, list[RecipePath], None] = Field(
        None, description="Test file(s), used only for final scores; none: `embed.test_size` of train is held out.")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = Field(
        "auto", description="File format; `auto` = from the extension (.csv, .tsv/.txt, .jsonl/.ndjson, .json, "
        ".parquet). Files compressed with gzip, bzip2, xz or zip (one file per archive) are read as their contents "
        "(`train.csv.gz`, `train.zip` holding `train.csv`).")
    text: str = Field("text", description="Column with the text (the first sentence for pair data).")
    text_pair: Optional[str] = Field(None, description="Column with the second sentence of a pair, if any.")
    label: str = Field("label", description="Column with the label (integer index or class name).")
    label_names: Optional[list[str]] = Field(
        None, description="Class names in index order; absent: from the data (sorted names, or `0`..`C-1` "
        "for integer labels). Numeric labels that are not integers (`0.5`, `3.5`: a regression target?) are "
        "refused unless listed here as text classes.")
    label_offset: int = Field(0, description="Subtracted from integer labels (1 for labels numbered 1..C).")
    header: bool = Field(
        True, description="CSV/TSV: the first row names the columns; false: columns are named 0, 1, 2, ...")
    quoting: Literal["csv", "none"] = Field(
        "csv", description="CSV/TSV quoting: `csv` (double quotes, parsed strictly: a quote left open or text "
        "after a closing quote is a bad row, never rows glued into one; a CSV field may span lines, a TSV row "
        "is one line) or `none` (quotes are text, split on the delimiter only; for text with unbalanced quotes "
        "such as MRPC).")
    encoding: str = Field(
        "utf-8", description="Text encoding of CSV / TSV / JSON / JSONL files (a Python codec name: `utf-8`, "
        "`latin-1`, `cp1252`, `utf-16`, ...); a UTF-8 byte-order mark is dropped. Undecodable bytes are bad "
        "rows (see `embed.bad_rows`).")
    dedupe: bool = Field(
        True, description="Remove duplicate rows (same text ignoring case, spacing and punctuation, same label) "
        "from train / val, and train / val rows whose text occurs in test; counts reported. Test is never changed.")


class LocalSource(DatasetSource):
    def __init__(self, options: LocalOptions):
        self.options = options

    def _files(self) -> dict[str, list[str]]:
        o = self.options
        return {k: as_path_list(getattr(o, k)) for k in ("train", "val", "test")}

    def identity(self) -> dict:
        o = self.options
        opts = o.model_dump(exclude={"train", "val", "test"})
        return {"plugin": "local", "parser": PARSER_VERSION, **opts, "files": files_identity(self._files())}

    def describe(self) -> str:
        return "local " + "; ".join(f"{k}: {', '.join(v)}" for k, v in self._files().items() if v)

    def load(self, *, bad_rows: str = "fail") -> TextDataset:
        o = self.options
        notes: list[str] = []
        raw: dict[str, list] = {}
        for split, paths in self._files().items():
            raw[split] = []
            for p in paths:
                where = f"dataset.{split}"
                path = check_file(p, where)
                names, cols = read_table(path, fmt=o.format, header=o.header, quoting=o.quoting, where=where,
                                         encoding=o.encoding, bad_rows=bad_rows, notes=notes)
                texts = column(cols, names, o.text, where="dataset.text", path=path)
                pairs = column(cols, names, o.text_pair, where="dataset.text_pair", path=path) if o.text_pair else None
                labels = column(cols, names, o.label, where="dataset.label", path=path)
                raw[split].append((path, texts, pairs, labels))

        label_names = list(o.label_names) if o.label_names else None
        known: dict[str, int] = {}
        if label_names is None:
            label_names, known = _label_set(raw, o.label_offset)
        parts: dict[str, list[TextSplit]] = {}
        for split, files in raw.items():
            parts[split] = []
            for path, texts, pairs, labels in files:
                where = f"dataset.{split} ({Path(path).name})"
                idx = map_labels(labels, where=where, label_names=o.label_names, offset=o.label_offset, known=known)
                parts[split].append(finish_rows(texts, pairs, idx, where=where, bad_rows=bad_rows, notes=notes,
                                                num_classes=len(label_names), label_names=label_names,
                                                raw_labels=labels))
        return assemble(parts, label_names, notes=notes, dedupe=o.dedupe)


_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _non_integer_number(v) -> bool:
    """A label that is a number but no integer: ``0.5``, ``"3.5"``, ``"1e-3"`` (``2.0`` / ``"2"`` are integers)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return not float(v).is_integer()
    s = str(v).strip()
    return bool(_NUMBER.fullmatch(s)) and not float(s).is_integer()


def _refuse_non_integer_numbers(raw: dict[str, list]) -> None:
    """Non-integer numeric labels are no classes (a score or a regression target): refused, naming the first,
    unless ``label_names`` declares them as text classes (the caller checks that)."""
    for split, files in raw.items():
        for path, _, _, labels in files:
            bad = [i for i, v in enumerate(labels) if v is not None and _non_integer_number(v)
                   and not (isinstance(v, float) and v != v)]
            if bad:
                distinct = sorted({float(str(labels[i]).strip()) for i in bad})
                shown = ", ".join(f"{x:g}" for x in distinct[:6]) + (", …" if len(distinct) > 6 else "")
                raise UserError(f"dataset.label: {path}: row {bad[0] + 1} has the label {excerpt(str(labels[bad[0]]))}, "
                                f"a number that is not an integer ({len(bad)} such rows; values {shown}); "
                                "classification needs integer class indices or class names: round or bin the "
                                "values, or list them in dataset.label_names to use them as text classes")


def _label_set(raw: dict[str, list], offset: int) -> tuple[list[str], dict[str, int]]:
    """Label names from the data: integer labels -> ``0``..``max``; names -> sorted names of train."""
    _refuse_non_integer_numbers(raw)
    ints: list[int] = []
    names: set[str] = set()
    for split, files in raw.items():
        for path, _, _, labels in files:
            for v in labels:
                if v is None or (isinstance(v, float) and v != v):
                    continue
                s = str(v).strip()
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    ints.append(int(v) - offset)
                elif s.lstrip("+-").isdigit() and len(s) <= 18:  # the same rule as map_labels
                    ints.append(int(s) - offset)
                elif s:
                    if split == "train":
                        names.add(s)
    if names and ints:
        raise UserError("dataset.label: the label column mixes numbers and names; give label_names")
    if names:
        ordered = sorted(names)
        return ordered, {n: i for i, n in enumerate(ordered)}
    if not ints:
        raise UserError("dataset.label: no labels found in the training files")
    return [str(i) for i in range(max(ints) + 1)], {}


def build(options: LocalOptions) -> LocalSource:
    check_encoding(options.encoding)
    for split in ("train", "val", "test"):
        for p in as_path_list(getattr(options, split)):
            detect_format(Path(p), options.format, f"dataset.{split}")
    return LocalSource(options)

"""MRPC (Microsoft Research Paraphrase Corpus): sentence pairs, label 1 = paraphrase.

Splits follow GLUE: GLUE ``train.tsv`` (3,668) for training, GLUE ``dev.tsv`` (408) for validation, and
the labelled original ``msr_paraphrase_test.txt`` (1,725) for test (GLUE's ``test.tsv`` has no labels).
Every file has the header ``Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String``, begins with a
UTF-8 byte-order mark and has unbalanced double quotes inside sentences, so lines are split on TABs
(no CSV quoting at all; the csv module would silently merge rows).

``dev_ids`` (GLUE's ``dev_ids.tsv``) rebuilds the GLUE train/dev split from the original
``msr_paraphrase_train.txt``, e.g. for the tokenized files in ``senteval_tokenized/``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from distillctl.errors import UserError
from distillctl.options import PluginOptions, RecipePath
from distillctl.textdata import (PARSER_VERSION, DatasetSource, TextDataset, TextSplit, assemble, check_file,
                                 excerpt, files_identity, finish_rows)
from distillctl.verified import sha256_of
from distillctl_plugins.datasets.readers import BadRows, check_encoding, check_width, decode_lines, parse_delimited

LABEL_NAMES = ["not_equivalent", "equivalent"]  # the Hugging Face glue/mrpc names, same order
HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


class MRPCOptions(PluginOptions):
    source: Literal["files", "hub"] = Field(
        "files", description="`files`: the MSR / GLUE files (`dir` or `train` / `val` / `test`); `hub`: GLUE "
        "train and validation of `glue/mrpc` from the Hugging Face hub (needs the network or a local cache) "
        "with the labelled test file from `test`.")
    dir: Optional[RecipePath] = Field(
        None, description="Folder with the files: train.tsv (else msr_paraphrase_train.txt + dev_ids.tsv), "
        "dev.tsv, msr_paraphrase_test.txt.")
    train: Optional[RecipePath] = Field(None, description="Training pairs (GLUE train.tsv or an MSR file).")
    val: Optional[RecipePath] = Field(
        None, description="Validation pairs (GLUE dev.tsv); absent: built with `dev_ids`, else carved from "
        "train by `embed.val_size`.")
    test: Optional[RecipePath] = Field(None, description="Labelled test pairs (msr_paraphrase_test.txt).")
    dev_ids: Optional[RecipePath] = Field(
        None, description="GLUE dev_ids.tsv: pairs (`#1 ID<TAB>#2 ID`) moved from `train` to validation.")
    dedupe: bool = Field(
        False, description="Remove exact duplicate pairs from train / val and train / val pairs that also occur "
        "in test (counts reported). Off by default: the GLUE split sizes (3,668 / 408 / 1,725) stay standard.")
    encoding: str = Field(
        "utf-8", description="Text encoding of the files (a Python codec name, e.g. `latin-1`); the UTF-8 "
        "byte-order mark of the distributed files is dropped.")
    hub_name: str = Field("nyu-mll/glue", description="Hugging Face dataset id for source: hub (config mrpc).")
    revision: Optional[str] = Field(None, description="Hub revision for source: hub.")

    @model_validator(mode="after")
    def _check(self) -> "MRPCOptions":
        if self.source == "files" and not self.dir and not (self.train and self.test):
            raise ValueError("source: files needs dir (the MRPC folder) or train and test")
        if self.source == "hub" and not (self.test or self.dir):
            raise ValueError("source: hub needs test (msr_paraphrase_test.txt) or dir: the hub's GLUE test split "
                             "has no labels")
        if self.val and self.dev_ids:
            raise ValueError("give val (dev.tsv) or dev_ids, not both")
        return self


def read_pairs(path: Path, *, where: str, bad_rows: str, notes: list[str],
               encoding: str = "utf-8") -> tuple[TextSplit, list[tuple[str, str]]]:
    """One MSR/GLUE file -> (TextSplit, [(id1, id2)]). One pair per line, fields split on TAB only: quotes are
    text (``csv.QUOTE_NONE``). A line with another number of fields, or undecodable bytes, is a bad row."""
    found = BadRows()
    lines = decode_lines(path, encoding=encoding, where=where, bad_rows=bad_rows)
    records = parse_delimited(lines, delimiter="\t", quoting="none", multiline=False, where=where, path=path,
                              bad_rows=bad_rows, found=found)
    del lines
    if not records:
        raise UserError(f"{where}: {path} is empty")
    header = [h.strip() for h in records[0][1]]
    if header and header[0].lower() == "index":
        raise UserError(f"{where}: {path} has no labels (GLUE test.tsv); use the labelled msr_paraphrase_test.txt")
    if header != HEADER:
        raise UserError(f"{where}: {path} is not an MRPC file: header {excerpt(' | '.join(header))} (expected "
                        f"{' | '.join(HEADER)})")
    texts, pairs, labels, ids = [], [], [], []
    for _, f in check_width(records[1:], len(HEADER), names=HEADER, where=where, path=path, bad_rows=bad_rows,
                            found=found):
        q = f[0].strip()
        labels.append(int(q) if q in ("0", "1") else (q if q else None))
        texts.append(f[3].strip())
        pairs.append(f[4].strip())
        ids.append((f[1].strip(), f[2].strip()))
    found.note(f"{where} ({path.name})", notes)
    labels = [lab if not isinstance(lab, str) else _bad_label(lab, path, where) for lab in labels]
    keep_ids = [i for i, t in enumerate(texts) if t and pairs[i] and labels[i] is not None]
    split = finish_rows(texts, pairs, labels, where=f"{where} ({path.name})", bad_rows=bad_rows, notes=notes,
                        num_classes=2, label_names=LABEL_NAMES)
    return split, [ids[i] for i in keep_ids]


def _bad_label(value: str, path: Path, where: str):
    raise UserError(f"{where}: {path}: Quality {excerpt(value)} is outside the label set 0, 1 "
                    f"({', '.join(LABEL_NAMES)})")


def read_dev_ids(path: Path, encoding: str = "utf-8") -> set[tuple[str, str]]:
    """GLUE's ``#1 ID<TAB>#2 ID`` pairs (the header and anything that is not two ids are no pairs)."""
    out = set()
    for _, ln in decode_lines(path, encoding=encoding, where="dataset.dev_ids", bad_rows="fail"):
        f = ln.strip().split("\t")
        if len(f) == 2 and f[0].isdigit():
            out.add((f[0], f[1]))
    return out


class MRPCSource(DatasetSource):
    """The :class:`distillctl.textdata.DatasetSource` of the ``mrpc`` plugin."""

    def __init__(self, options: MRPCOptions):
        self.options = options

    def _files(self) -> dict[str, Optional[str]]:
        o = self.options
        d = Path(o.dir) if o.dir else None
        if d is not None and not d.is_dir():
            raise UserError(f"dataset.dir: not a folder: {d}")

        def pick(explicit, *names):
            if explicit:
                return explicit
            if d is not None:
                for n in names:
                    if (d / n).exists():
                        return str(d / n)
            return None

        train = pick(o.train, "train.tsv", "msr_paraphrase_train.txt")
        dev_ids = o.dev_ids
        val = o.val
        if not val and not dev_ids:
            if train and Path(train).name == "msr_paraphrase_train.txt":
                dev_ids = pick(None, "dev_ids.tsv")  # rebuild GLUE's split from the original train file
            else:
                val = pick(None, "dev.tsv")
        test = pick(o.test, "msr_paraphrase_test.txt")
        if o.source == "files" and not train:
            raise UserError(f"dataset.dir: no train.tsv or msr_paraphrase_train.txt in {d}")
        if not test:
            raise UserError(f"dataset.test: no msr_paraphrase_test.txt in {d}; set test: to the labelled MSR test file")
        return {"train": train if o.source == "files" else None, "val": val if o.source == "files" else None,
                "test": test, "dev_ids": dev_ids if o.source == "files" else None}

    def identity(self) -> dict:
        o = self.options
        files = self._files()
        ident = {"plugin": "mrpc", "parser": PARSER_VERSION, "dedupe": o.dedupe, "encoding": o.encoding,
                 "files": files_identity({k: [v] for k, v in files.items() if v and k != "dev_ids"})}
        if files["dev_ids"]:
            ident["dev_ids"] = sha256_of(check_file(files["dev_ids"], "dataset.dev_ids"))
        if o.source == "hub":
            ident["hub"] = self._hub.identity()
        return ident

    def describe(self) -> str:
        files = self._files()
        src = f"hub {self.options.hub_name}/mrpc + " if self.options.source == "hub" else ""
        return "MRPC " + src + "; ".join(f"{k}: {v}" for k, v in files.items() if v)

    @cached_property
    def _hub(self):
        """The hub source, built once: identity() and load() share its loaded dataset."""
        from distillctl_plugins.datasets.hf import HFOptions, HFSource

        o = self.options
        return HFSource(HFOptions(path=o.hub_name, config="mrpc", revision=o.revision, text="sentence1",
                                  text_pair="sentence2", label="label", val_split="validation", test_split=None,
                                  label_names=LABEL_NAMES, dedupe=False))

    def load(self, *, bad_rows: str = "fail") -> TextDataset:
        files = self._files()
        notes: list[str] = []
        parts: dict[str, list[TextSplit]] = {"train": [], "val": [], "test": []}
        test, _ = read_pairs(check_file(files["test"], "dataset.test"), where="dataset.test", bad_rows=bad_rows,
                             notes=notes, encoding=self.options.encoding)
        parts["test"] = [test]
        if self.options.source == "hub":
            hub = self._hub.load(bad_rows=bad_rows)
            notes += hub.notes
            parts["train"] = [hub.splits["train"]]
            parts["val"] = [hub.splits["val"]] if "val" in hub.splits else []
        else:
            train, ids = read_pairs(check_file(files["train"], "dataset.train"), where="dataset.train",
                                    bad_rows=bad_rows, notes=notes, encoding=self.options.encoding)
            if files["dev_ids"]:
                dev = read_dev_ids(check_file(files["dev_ids"], "dataset.dev_ids"), self.options.encoding)
                in_dev = [i for i, pair in enumerate(ids) if pair in dev]
                if not in_dev:
                    raise UserError(f"dataset.dev_ids: none of the {len(dev)} id pairs of {files['dev_ids']} occur in "
                                    f"{files['train']}")
                dev_set = set(in_dev)
                parts["val"] = [train.subset(in_dev)]
                train = train.subset([i for i in range(len(train)) if i not in dev_set])
                notes.append(f"dataset.val: {len(in_dev)} pairs moved from train by {Path(files['dev_ids']).name}")
            elif files["val"]:
                val, _ = read_pairs(check_file(files["val"], "dataset.val"), where="dataset.val", bad_rows=bad_rows,
                                    notes=notes, encoding=self.options.encoding)
                parts["val"] = [val]
            parts["train"] = [train]
        return assemble(parts, LABEL_NAMES, notes=notes, dedupe=self.options.dedupe)


def build(options: MRPCOptions) -> MRPCSource:
    check_encoding(options.encoding)
    return MRPCSource(options)

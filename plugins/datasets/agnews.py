"""AG News (4 topics: World, Sports, Business, Sci/Tech) from its distributed files, the bundled sample,
or the Hugging Face hub.

File formats (detected per file from its first line, or forced with ``format:``):

- ``csv``: the original release (``train.csv`` / ``test.csv``): no header, ``"class","title","description"``
  with class 1-4.
- ``tab``: the 12,000-row balanced subset (``ag_news_train.txt``): ``label<TAB>text``, label 1-4, text =
  title immediately followed by the description (no separator, as distributed).
- ``noisyag``: NoisyAG-News (``samples10000valMed.csv``): header ``label,gt,text,group``; the gold label
  ``gt`` (0-3) is used, never the crowd-sourced noisy ``label``; text = ``title . description``.

Text: ``title + join + description`` (``join`` = ". " by default: the title becomes the first sentence;
when the title already ends in . ! or ? only a space is put between). ``noisyag`` texts are split at
their first `` . `` and joined the same way, so the same article reads the same from both files.
``clean`` (default on) repairs the escaping residue of the original crawl, identically for every
format: HTML entities with their ``&`` lost (`` #36;`` -> ``$``, `` #39;`` -> ``'``, `` quot;`` -> ``"``),
real entities (``&lt;``), HTML tags, ``\\$`` -> ``$`` and the backslashes that stand for line breaks.
"""

from __future__ import annotations

import html
import re
from functools import cached_property
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, model_validator

import distillctl
from distillctl.errors import UserError
from distillctl.options import PluginOptions, RecipePath
from distillctl.textdata import (PARSER_VERSION, DatasetSource, TextDataset, TextSplit, as_path_list, assemble,
                                 check_file, excerpt, files_identity, finish_rows)
from distillctl_plugins.datasets.readers import BadRows, check_encoding, check_width, decode_lines, parse_delimited

LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
#: Version of this module's parsing and cleaning, part of the dataset identity: bump it whenever the
#: texts it produces change, so embedding caches of the old texts are not reused.
AGNEWS_PARSER = 2
HUB_NAME = "fancyzhx/ag_news"


def sample_dir() -> Path:
    """The AG News sample bundled with distillctl (see its SOURCE.md)."""
    return Path(distillctl.__file__).resolve().parent / "samples" / "agnews"


class AGNewsOptions(PluginOptions):
    source: Literal["files", "sample", "hub"] = Field(
        "files", description="`files`: the paths in `train` / `val` / `test`; `sample`: the small balanced "
        "AG News sample bundled with distillctl (2,400 train / 1,200 test rows, offline); `hub`: the "
        "Hugging Face dataset `hub_name` (needs the network or a local datasets cache).")
    train: Union[RecipePath, list[RecipePath], None] = Field(
        None, description="Training file(s) (source: files). Several files form one split; exact "
        "duplicates are removed and counted.")
    val: Union[RecipePath, list[RecipePath], None] = Field(
        None, description="Validation file(s); when absent, `embed.val_size` rows are carved from train "
        "(stratified, seeded).")
    test: Union[RecipePath, list[RecipePath], None] = Field(
        None, description="Test file(s) (source: files), e.g. the original test.csv (7,600 rows).")
    format: Literal["auto", "csv", "tab", "noisyag"] = Field(
        "auto", description="File format: `csv` (original release: class 1-4, title, description), `tab` "
        "(12k subset: label 1-4 TAB text), `noisyag` (header label,gt,text,group; uses `gt` 0-3), or "
        "`auto` (detected per file from its first line).")
    fields: Literal["title+description", "title", "description"] = Field(
        "title+description", description="Which parts of an article form the text. `title` / "
        "`description` need files that keep them apart (csv, noisyag).")
    join: str = Field(
        ". ", description="Put between title and description (a title ending in . ! ? gets a space only).")
    clean: bool = Field(
        True, description="Repair HTML-entity residue (` #36;` -> `$`, ` quot;` -> `\"`), HTML tags, `\\$` and "
        "the backslashes standing for line breaks, the same way in every format.")
    dedupe: bool = Field(
        True, description="Remove duplicate rows (same text ignoring case, spacing and punctuation, same label) "
        "from train / val, and train / val rows whose text occurs in test; counts reported. Test is never changed.")
    encoding: str = Field(
        "utf-8", description="Text encoding of the files (a Python codec name, e.g. `latin-1`); a UTF-8 "
        "byte-order mark is dropped.")
    hub_name: str = Field(HUB_NAME, description="Hugging Face dataset id for source: hub.")
    revision: Optional[str] = Field(None, description="Hub revision (branch, tag or commit) for source: hub.")

    @model_validator(mode="after")
    def _check_source(self) -> "AGNewsOptions":
        if self.source == "files":
            missing = [k for k in ("train", "test") if not as_path_list(getattr(self, k))]
            if missing:
                raise ValueError(f"source: files needs {' and '.join(missing)} (paths to AG News files), "
                                 "or use source: sample for the bundled sample")
        elif any(as_path_list(getattr(self, k)) for k in ("train", "val", "test")):
            raise ValueError(f"train / val / test are file paths for source: files; remove them with "
                             f"source: {self.source}")
        return self


# -- text cleaning --------------------------------------------------------------------------------

_NUM_RESIDUE = re.compile(r"\s?#(\d{1,5});")                       # " #36;" (the "&" was lost)
# " quot;": the space is what replaced the "&" (so it goes too), e.g. 'said  quot;Hi quot;.' -> 'said "Hi".'
_NAMED_RESIDUE = re.compile(r"\s?(?<![A-Za-z])(quot|amp|lt|gt|nbsp|apos);")
_NAMED = {"quot": '"', "amp": "&", "lt": "<", "gt": ">", "nbsp": " ", "apos": "'"}
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")     # <b>, </a>, <font face=...>; not <DELL.O>
_SPACE = re.compile(r"\s+")


def _chr(code: str) -> str:
    try:
        return chr(int(code))
    except (ValueError, OverflowError):
        return " "


def clean_text(s: str) -> str:
    """Undo the crawl's escaping residue (see the module docstring); whitespace collapsed."""
    s = html.unescape(s)
    s = _NUM_RESIDUE.sub(lambda m: _chr(m.group(1)), s)
    s = _NAMED_RESIDUE.sub(lambda m: _NAMED[m.group(1)], s)
    s = _TAG.sub(" ", s)
    s = s.replace("\\$", "$")
    s = re.sub(r"\\+", " ", s)  # "\" marks a line break in the original files
    return _SPACE.sub(" ", s).strip()


def join_text(title: str, description: str, join: str) -> str:
    title, description = title.strip(), description.strip()
    if not title:
        return description
    if not description:
        return title
    sep = " " if (title[-1] in ".!?" and join.strip() == ".") else join
    return f"{title}{sep}{description}"


# -- formats --------------------------------------------------------------------------------------

def detect_format(path: Path, first: str = "") -> str:
    """``csv`` / ``tab`` / ``noisyag`` from the file's first line (``first``; read from ``path`` when not given)."""
    if not first:
        with open(path, "rb") as fh:  # detection only: an undecodable byte is reported by the parser
            first = fh.readline(4096).decode("utf-8-sig", "replace")
    head = first.strip().lower().replace('"', "")
    if head.startswith("label,gt,text"):
        return "noisyag"
    if re.match(r'^"?[1-4]"?\t', first):
        return "tab"
    if re.match(r'^"?[1-4]"?,', first):
        return "csv"
    raise UserError(f"dataset.format: cannot tell the AG News format of {path} from its first line "
                    f"({excerpt(first.rstrip(), 60)}); set format: csv | tab | noisyag")


#: Fields per row of each format (noisyag: its header's).
WIDTH = {"csv": 3, "tab": 2}


def parse_file(path: Path, fmt: str, opts: AGNewsOptions, *, where: str, bad_rows: str,
               notes: list[str]) -> TextSplit:
    """One AG News file -> a TextSplit (labels 0-3, HF order).

    Every format has one article per line (the originals escape line breaks as ``\\``), so each line is
    parsed on its own with strict CSV quoting: a stray quote costs its own row (an error, or with
    ``bad_rows="skip"`` a counted, listed skip), never the rows after it.
    """
    lines = decode_lines(path, encoding=opts.encoding, where=where, bad_rows=bad_rows)
    if fmt == "auto":
        fmt = detect_format(path, next((t for _, t in lines if t.strip()), ""))
    if fmt == "tab" and opts.fields != "title+description":
        raise UserError(f"dataset.fields: {path} is the TAB 12k subset, whose texts join title and description "
                        "without a separator; only fields: title+description is possible")
    found = BadRows()
    records = parse_delimited(lines, delimiter="\t" if fmt == "tab" else ",", quoting="csv", multiline=False,
                              where=where, path=path, bad_rows=bad_rows, found=found)
    del lines
    titles: list = []
    descs: list = []
    labels: list = []
    raw: list = []  # labels as the file has them (for messages)
    if fmt == "noisyag":
        header = [h.strip() for h in records[0][1]] if records else []
        if "gt" not in header or "text" not in header:
            raise UserError(f"{where}: {path} has columns {', '.join(excerpt(h, 20) for h in header[:8])}; a NoisyAG "
                            "file needs gt and text (set format: to the right one)")
        records = check_width(records[1:], len(header), names=header, where=where, path=path, bad_rows=bad_rows,
                              found=found)
        gt, tx = header.index("gt"), header.index("text")
        for _, row in records:
            text = row[tx]
            title, sep, desc = text.partition(" . ")
            titles.append(title if text else None)
            descs.append(desc if sep else "")
            raw.append(row[gt])
            labels.append(_int(row[gt]))
    else:
        for _, row in check_width(records, WIDTH[fmt], where=where, path=path, bad_rows=bad_rows, found=found):
            label = _int(row[0])
            raw.append(row[0])
            labels.append(None if label is None else label - 1)  # 1-4 -> 0-3
            titles.append(row[1])
            descs.append(row[2] if fmt == "csv" else "")
    found.note(f"{where} ({path.name}, {fmt})", notes)
    texts = []
    for t, d in zip(titles, descs):
        if t is None:
            texts.append(None)
            continue
        if opts.clean:
            t, d = clean_text(t), clean_text(d or "")
        if opts.fields == "title":
            texts.append(t)
        elif opts.fields == "description":
            texts.append(d)
        else:
            texts.append(join_text(t, d or "", opts.join))
    return finish_rows(texts, None, labels, where=f"{where} ({path.name}, {fmt})", bad_rows=bad_rows, notes=notes,
                       num_classes=4, label_names=LABEL_NAMES, raw_labels=raw)


def _int(value) -> int | None:
    try:
        return int(str(value).strip().strip('"'))
    except (TypeError, ValueError):
        return None


# -- the source -----------------------------------------------------------------------------------

class AGNewsSource(DatasetSource):
    """The :class:`distillctl.textdata.DatasetSource` of the ``agnews`` plugin."""

    def __init__(self, options: AGNewsOptions):
        self.options = options

    def _files(self) -> dict[str, list[str]]:
        o = self.options
        if o.source == "sample":
            d = sample_dir()
            return {"train": [str(d / "train.txt")], "val": [], "test": [str(d / "test.csv")]}
        return {k: as_path_list(getattr(o, k)) for k in ("train", "val", "test")}

    @cached_property
    def _hub(self):
        """The hub source, built once: identity() and load() share its loaded dataset."""
        from distillctl_plugins.datasets.hf import HFOptions, HFSource

        o = self.options
        return HFSource(HFOptions(path=o.hub_name, revision=o.revision, text="text", label="label",
                                  label_names=LABEL_NAMES, dedupe=o.dedupe), transform=clean_text if o.clean else None)

    def identity(self) -> dict:
        o = self.options
        parse = {"format": o.format, "fields": o.fields, "join": o.join, "clean": o.clean, "dedupe": o.dedupe,
                 "encoding": o.encoding}
        if o.source == "hub":
            return {"plugin": "agnews", "parser": [PARSER_VERSION, AGNEWS_PARSER], "clean": o.clean,
                    "hub": self._hub.identity()}
        return {"plugin": "agnews", "parser": [PARSER_VERSION, AGNEWS_PARSER], **parse,
                "files": files_identity(self._files())}

    def describe(self) -> str:
        o = self.options
        if o.source == "hub":
            return f"AG News from the Hugging Face hub ({o.hub_name})"
        files = self._files()
        return "AG News " + ("bundled sample " if o.source == "sample" else "") + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in files.items() if v)

    def load(self, *, bad_rows: str = "fail") -> TextDataset:
        o = self.options
        if o.source == "hub":
            return self._hub.load(bad_rows=bad_rows)
        notes: list[str] = []
        parts: dict[str, list[TextSplit]] = {}
        for split, paths in self._files().items():
            parts[split] = [parse_file(check_file(p, f"dataset.{split}"), o.format, o, where=f"dataset.{split}",
                                       bad_rows=bad_rows, notes=notes) for p in paths]
        return assemble(parts, LABEL_NAMES, notes=notes, dedupe=o.dedupe)


def build(options: AGNewsOptions) -> AGNewsSource:
    check_encoding(options.encoding)
    return AGNewsSource(options)

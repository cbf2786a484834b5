"""Reading tables (CSV / TSV / JSONL / JSON / Parquet) into columns, so that no row is ever lost silently.

Values stay as the file has them: CSV/TSV fields are strings (so a text "0123" is never turned into
a number), JSONL/Parquet values keep their types.

A row the file cannot give whole is a *bad row*, found here with its line number and reason:

- ``undecodable``: bytes that are not valid in the file's ``encoding`` (the message names the byte offset);
- ``malformed quoting``: a ``"`` that opens a field and is not closed on the same line (single-line
  formats), or stray text after a closing quote (``strict`` CSV parsing: the csv module's lenient default
  glues the following rows into one text, which is how a 40-row TSV used to load as 20 rows);
- ``ragged``: a row with more or fewer fields than the header (or than most rows, without a header);
- ``invalid JSON``: a JSONL line that does not parse.

With ``bad_rows="fail"`` (the default of ``embed.bad_rows``) the first one is a :class:`UserError` naming the
file, the line and what was found (an excerpt of at most :data:`EXCERPT` characters); with ``"skip"`` the rows
are dropped and :class:`BadRows` counts them per reason with their lines, for the run's notes.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

from distillctl.errors import UserError
from distillctl.textdata import EXCERPT, check_file, excerpt

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
_EXT = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
        ".parquet": "parquet", ".pq": "parquet"}

#: Line numbers listed per reason in a skip summary at most (then "…").
LISTED_LINES = 10


def detect_format(path: Path, fmt: str | None, where: str) -> str:
    if fmt and fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".xz")]
    for s in reversed(suffixes):
        if s in _EXT:
            return _EXT[s]
    raise UserError(f"{where}: cannot tell the format of {path} from its extension; set format: "
                    f"{' | '.join(FORMATS)}")


def raise_field_limit() -> None:
    # The csv module refuses fields over 128 KiB; a long text is legitimate (it is cut to the encoder's
    # character budget before tokenising), and a runaway quote is caught as malformed quoting instead.
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:  # pragma: no cover - 32-bit platforms
        csv.field_size_limit(2**31 - 1)


def check_encoding(encoding: str, where: str = "dataset.encoding") -> str:
    """The codec's canonical name, or a :class:`UserError` with examples of valid names."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"{where}: unknown encoding {excerpt(encoding)}; use a Python codec name such as "
                        "utf-8, utf-8-sig, latin-1, cp1252 or utf-16") from None


# -- bad rows -------------------------------------------------------------------------------------

class BadRows:
    """The rows one reader dropped (``bad_rows="skip"``) by reason, each with its line (or line range)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {}

    def add(self, reason: str, first: int, last: Optional[int] = None) -> None:
        self.lines.setdefault(reason, []).append(str(first) if last in (None, first) else f"{first}-{last}")

    def __len__(self) -> int:
        return sum(len(v) for v in self.lines.values())

    def summary(self) -> str:
        """``"skipped 3 rows: 2 ragged (lines 4, 9), 1 undecodable (line 7)"``."""
        parts = []
        for reason, lines in self.lines.items():
            shown = ", ".join(lines[:LISTED_LINES]) + (", …" if len(lines) > LISTED_LINES else "")
            parts.append(f"{len(lines)} {reason} (line{'s' if len(lines) > 1 or '-' in lines[0] else ''} {shown})")
        n = len(self)
        return f"skipped {n} row{'s' if n != 1 else ''}: " + ", ".join(parts)

    def note(self, where: str, notes: list[str]) -> None:
        """Add the summary to ``notes`` (nothing when no row was dropped)."""
        if len(self):
            notes.append(f"{where}: {self.summary()} (embed.bad_rows=skip)")


def bad_row(found: BadRows, bad_rows: str, *, where: str, path: Path, line: int, reason: str, detail: str,
            last: Optional[int] = None, hint: str = "") -> None:
    """One bad row: a :class:`UserError` (``bad_rows="fail"``) naming file, line and ``detail``, or counted."""
    if bad_rows == "fail":
        span = f"{line}-{last}" if last not in (None, line) else str(line)
        raise UserError(f"{where}: {path}:{span}: {reason}: {detail}; {hint + ', or ' if hint else ''}"
                        "set embed.bad_rows=skip to skip such rows (each is counted and listed)")
    found.add(reason, line, last)


# -- decoding -------------------------------------------------------------------------------------

_ESCAPED = None  # compiled on first use: a lone surrogate U+DC80..U+DCFF = one undecodable byte


def undecodable(text: str) -> bool:
    """Whether ``text`` (from :func:`decode_lines` in skip mode) holds bytes its encoding could not decode."""
    global _ESCAPED
    if _ESCAPED is None:
        _ESCAPED = re.compile("[\udc80-\udcff]")
    return _ESCAPED.search(text) is not None


def decode_lines(path: Path, *, encoding: str = "utf-8", where: str, bad_rows: str) -> list[tuple[int, str]]:
    """The file's lines as ``(line number, text with its line ending)``, a leading UTF-8 byte-order mark
    dropped. Lines split like ``open(newline="")`` (``\\n``, ``\\r\\n`` or ``\\r``), so the csv module
    sees what it would see reading the file itself.

    Undecodable bytes fail naming the line and byte offset (``bad_rows="fail"``); with ``"skip"`` they are
    kept as lone surrogates (``surrogateescape``) so the parser drops the *row* that holds them (see
    :func:`undecodable`), not a physical line that may be half of a quoted field.
    """
    codec = check_encoding(encoding)
    data = path.read_bytes()
    if codec in ("utf-8", "utf-8-sig") and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
        codec = "utf-8"
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        first = exc
        text = None
        if bad_rows == "skip":
            try:
                text = data.decode(codec, "surrogateescape")
            except UnicodeDecodeError:  # a codec that cannot escape (e.g. an odd byte count in UTF-16)
                pass
        if text is None:
            line = data.count(b"\n", 0, first.start) + 1
            bad = data[first.start:first.end].hex(" ")
            raise UserError(f"{where}: {path}:{line}: bytes not valid {encoding} at byte offset {first.start} "
                            f"(0x{bad}); set encoding: latin-1 (or the file's real encoding, e.g. cp1252), or "
                            "embed.bad_rows=skip to skip such rows") from None
    del data
    return list(enumerate(io.StringIO(text, newline=""), 1))


# -- delimited text ---------------------------------------------------------------------------------

def parse_delimited(lines: list[tuple[int, str]], *, delimiter: str, quoting: str, multiline: bool,
                    where: str, path: Path, bad_rows: str, found: BadRows,
                    hint: str = "") -> list[tuple[int, list[str]]]:
    """``(first line, fields)`` of every record; blank lines are no records.

    ``quoting``: ``"csv"`` = double quotes, parsed ``strict`` (stray text after a closing quote and a quote
    left open at the end of the input are errors, never silently glued text); ``"none"`` = quotes are data.
    ``multiline``: a quoted field may span lines (CSV as spreadsheets write it); otherwise each line is one
    record and a quote left open at its end is malformed quoting (the formats whose files never break a
    row: AG News, TSV), so one bad quote costs one row, never the rows after it. ``hint`` is added to
    the malformed-quoting message (e.g. ``set quoting: none``).
    """
    raise_field_limit()
    q = csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL
    dialect = {"delimiter": delimiter, "quoting": q, "strict": q != csv.QUOTE_NONE}
    out: list[tuple[int, list[str]]] = []

    def keep(first: int, last: int, fields: list[str]) -> None:
        if not fields or not any(f.strip() for f in fields):
            return  # a blank line
        if any(undecodable(f) for f in fields):
            found.add("undecodable", first, last)  # only in skip mode: fail mode stopped at decoding
            return
        out.append((first, fields))

    if not multiline:
        for lineno, text in lines:
            if not text.strip():
                continue
            try:
                fields = next(csv.reader((text,), **dialect), [])
            except csv.Error as exc:
                bad_row(found, bad_rows, where=where, path=path, line=lineno, reason="malformed quoting",
                        detail=f"{_quote_problem(exc)} in {excerpt(text.rstrip())}", hint=hint)
                continue
            keep(lineno, lineno, fields)
        return out

    span = [0, 0]  # physical lines of the record being read: first, last

    def feed() -> Iterator[str]:
        for lineno, text in lines:
            if span[0] == 0:
                span[0] = lineno
            span[1] = lineno
            yield text

    reader = csv.reader(feed(), **dialect)
    while True:
        span[0] = 0
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            first, last = span
            bad_row(found, bad_rows, where=where, path=path, line=first, last=last, reason="malformed quoting",
                    detail=f"{_quote_problem(exc)} in {excerpt(_joined(lines, first, last))}", hint=hint)
            continue
        keep(span[0], span[1], fields)
    return out


def _quote_problem(exc: csv.Error) -> str:
    msg = str(exc)
    if "unexpected end of data" in msg:
        return "a quote is opened and never closed"
    if "expected after" in msg:
        return "text follows a closing quote"
    return msg


def _joined(lines: list[tuple[int, str]], first: int, last: int) -> str:
    # The lines of one record, for an excerpt: only the first EXCERPT characters matter.
    out, size = [], 0
    for lineno, text in lines[first - 1:]:
        if lineno > last or size > EXCERPT:
            break
        out.append(text)
        size += len(text)
    return "".join(out).rstrip()


def check_width(records: list[tuple[int, list[str]]], width: int, *, names: Optional[list[str]] = None,
                where: str, path: Path, bad_rows: str, found: BadRows) -> list[tuple[int, list[str]]]:
    """The records with exactly ``width`` fields; any other is a ``ragged`` bad row."""
    out = []
    for lineno, fields in records:
        if len(fields) == width:
            out.append((lineno, fields))
            continue
        expected = f"{width} ({', '.join(excerpt(n, 20) for n in names[:8])}{', …' if len(names) > 8 else ''})" \
            if names else str(width)
        bad_row(found, bad_rows, where=where, path=path, line=lineno, reason="ragged",
                detail=f"{len(fields)} fields where {expected} were expected: {excerpt(_first_fields(fields))}",
                hint="check the delimiter and quoting")
    return out


def _first_fields(fields: list[str]) -> str:
    return " | ".join(f[:EXCERPT] for f in fields[:4])


# -- tables ---------------------------------------------------------------------------------------

def read_table(path: str | Path, *, fmt: str | None = None, header: bool = True, quoting: str = "csv",
               where: str = "dataset", encoding: str = "utf-8", bad_rows: str = "fail",
               notes: Optional[list[str]] = None) -> tuple[list[str], dict[str, list[Any]]]:
    """``(column names, {column: values})``. Without a header, columns are named ``0``, ``1``, ...

    Bad rows (see the module docstring) fail, or with ``bad_rows="skip"`` are dropped and summed up in
    one line appended to ``notes``.
    """
    path = check_file(path, where)
    fmt = detect_format(path, fmt, where)
    found = BadRows()
    try:
        if fmt in ("csv", "tsv"):
            return _read_delimited(path, "," if fmt == "csv" else "\t", header, quoting, where, encoding,
                                   bad_rows, found)
        if fmt == "jsonl":
            rows = []
            for lineno, line in decode_lines(path, encoding=encoding, where=where, bad_rows=bad_rows):
                if not line.strip():
                    continue
                if undecodable(line):
                    found.add("undecodable", lineno)
                    continue
                try:
                    obj = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    bad_row(found, bad_rows, where=where, path=path, line=lineno, reason="invalid JSON",
                            detail=f"{exc.msg} in {excerpt(line.strip())}")
                    continue
                rows.append(obj if isinstance(obj, dict) else {"value": obj})
            return _columns_of(rows)
        if fmt == "json":
            text = "".join(line for _, line in decode_lines(path, encoding=encoding, where=where, bad_rows="fail"))
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: {path}:{exc.lineno}: invalid JSON ({exc.msg}); a JSON file is read "
                                "whole, so no row of it can be skipped") from exc
            if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
                return list(data), {k: list(v) for k, v in data.items()}  # column-oriented
            if not isinstance(data, list):
                raise UserError(f"{where}: {path}: expected a list of objects or an object of columns")
            return _columns_of([r if isinstance(r, dict) else {"value": r} for r in data])
        if fmt == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise UserError(f"{where}: reading {path} needs pyarrow: pip install pyarrow") from exc
            try:
                table = pq.read_table(path)
            except Exception as exc:  # pyarrow raises ArrowInvalid etc.
                raise UserError(f"{where}: {path}: not a readable Parquet file "
                                f"({excerpt(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})") from exc
            return list(table.column_names), table.to_pydict()
        raise UserError(f"{where}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    finally:
        if notes is not None:
            found.note(f"{where} ({path.name})", notes)


def _columns_of(rows: list[dict]) -> tuple[list[str], dict[str, list[Any]]]:
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    return names, {k: [r.get(k) for r in rows] for k in names}


def _read_delimited(path: Path, delimiter: str, header: bool, quoting: str, where: str, encoding: str,
                    bad_rows: str, found: BadRows):
    lines = decode_lines(path, encoding=encoding, where=where, bad_rows=bad_rows)
    what = "CSV" if delimiter == "," else "TSV"
    hint = "set quoting: none if the quotes are part of the text" if quoting != "none" else ""
    # CSV may break a quoted field over lines (spreadsheets do); TSV keeps one row per line.
    records = parse_delimited(lines, delimiter=delimiter, quoting=quoting, multiline=delimiter == ",",
                              where=where, path=path, bad_rows=bad_rows, found=found, hint=hint)
    del lines
    if header:
        if not records:
            raise UserError(f"{where}: {path} has no header row ({what} with header: true)")
        names = [c.strip() for c in records[0][1]]
        records = records[1:]
    else:
        # The most common width (the first on a tie): one odd row must not redefine the columns.
        width = Counter(len(f) for _, f in records).most_common(1)[0][0] if records else 0
        names = [str(i) for i in range(width)]
    records = check_width(records, len(names), names=names if header else None, where=where, path=path,
                          bad_rows=bad_rows, found=found)
    cols = {n: [f[i] for _, f in records] for i, n in enumerate(names)}
    return names, cols


def column(cols: dict[str, list[Any]], names: list[str], name: str, *, where: str, path: Path | str) -> list[Any]:
    """One column, or a :class:`UserError` listing the available ones (each name cut to a short excerpt)."""
    if name not in cols:
        shown = ", ".join(n if len(str(n)) <= 40 else excerpt(n, 40) for n in map(str, names[:20]))
        more = f", … ({len(names)} columns)" if len(names) > 20 else ""
        raise UserError(f"{where}: column {excerpt(name, 40)} not in {path} (columns: {shown or 'none'}{more})")
    return cols[name]

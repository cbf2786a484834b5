"""Reading tables (CSV / TSV / JSONL / JSON / Parquet) into columns, with one-line errors.

Values stay as the file has them: CSV/TSV fields are strings (so a text "0123" is never turned into
a number), JSONL/Parquet values keep their types. Malformed rows become rows of ``None`` so the
shared bad-row handling (:func:`distillctl.textdata.finish_rows`) counts them.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from distillctl.errors import UserError
from distillctl.textdata import check_file

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
_EXT = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
        ".parquet": "parquet", ".pq": "parquet"}


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
    # AG News descriptions can be long; the csv module's default limit (128 KiB) is plenty, but a
    # single unbalanced quote can swallow the rest of a file: raise the limit so that case is reported
    # as a malformed row count rather than a csv.Error.
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:  # pragma: no cover - 32-bit platforms
        csv.field_size_limit(2**31 - 1)


def read_table(path: str | Path, *, fmt: str | None = None, header: bool = True, quoting: str = "csv",
               where: str = "dataset") -> tuple[list[str], dict[str, list[Any]]]:
    """``(column names, {column: values})``. Without a header, columns are named ``0``, ``1``, ..."""
    path = check_file(path, where)
    fmt = detect_format(path, fmt, where)
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, "," if fmt == "csv" else "\t", header, quoting, where)
    if fmt == "jsonl":
        rows = []
        with open(path, encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{where}: {path}:{lineno}: invalid JSON ({exc.msg})") from exc
                rows.append(obj if isinstance(obj, dict) else {"value": obj})
        return _columns_of(rows)
    if fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: {path}: invalid JSON ({exc.msg}, line {exc.lineno})") from exc
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
            raise UserError(f"{where}: {path}: not a readable Parquet file ({exc})") from exc
        return list(table.column_names), table.to_pydict()
    raise UserError(f"{where}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _columns_of(rows: list[dict]) -> tuple[list[str], dict[str, list[Any]]]:
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    return names, {k: [r.get(k) for r in rows] for k in names}


def _read_delimited(path: Path, delimiter: str, header: bool, quoting: str, where: str):
    raise_field_limit()
    q = csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as fh:
        try:
            rows = list(csv.reader(fh, delimiter=delimiter, quoting=q))
        except csv.Error as exc:
            raise UserError(f"{where}: {path}: malformed {'CSV' if delimiter == ',' else 'TSV'} ({exc}); "
                            "for files with unbalanced quotes set quoting: none") from exc
    rows = [r for r in rows if r and any(f.strip() for f in r)]  # blank lines
    if header:
        if not rows:
            raise UserError(f"{where}: {path} is empty")
        names = [c.strip() for c in rows[0]]
        rows = rows[1:]
    else:
        width = max((len(r) for r in rows), default=0)
        names = [str(i) for i in range(width)]
    width = len(names)
    # A row with the wrong number of fields is malformed: all None, counted as a bad row later.
    cols = {n: [r[i] if len(r) == width else None for r in rows] for i, n in enumerate(names)}
    return names, cols


def column(cols: dict[str, list[Any]], names: list[str], name: str, *, where: str, path: Path | str) -> list[Any]:
    """One column, or a :class:`UserError` listing the available ones."""
    if name not in cols:
        raise UserError(f"{where}: column {name!r} not in {path} (columns: {', '.join(map(str, names)) or 'none'})")
    return cols[name]

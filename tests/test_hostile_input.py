"""Issue 22, item 7: compressed inputs are read as their contents (or refused naming the compression), and
numeric labels that are not integers are refused unless declared as text classes."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile

import pytest

from distillctl.errors import UserError
from test_readers import one_line_error, recipe, reg, source  # noqa: F401  (reg: fixture)


def csv_text(n: int = 12, label=lambda i: i % 2) -> str:
    return "text,label\n" + "".join(f"sentence number {i},{label(i)}\n" for i in range(n))


def _zip(data: bytes, name: str = "train.csv") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("name,pack", [("d.csv.gz", gzip.compress), ("d.csv.bz2", bz2.compress),
                                       ("d.csv.xz", lzma.compress), ("d.zip", _zip)])
def test_compressed_csv_reads_as_its_contents(tmp_path, name, pack):
    plain = tmp_path / "plain.csv"
    plain.write_text(csv_text())
    (tmp_path / name).write_bytes(pack(plain.read_bytes()))
    want = source("local", tmp_path, train="plain.csv", test="plain.csv", dedupe=False).load()
    got = source("local", tmp_path, train=name, test=name, dedupe=False).load()
    assert got.splits["train"].texts == want.splits["train"].texts
    assert got.splits["train"].labels.tolist() == want.splits["train"].labels.tolist()


def test_gzip_without_its_extension_is_still_recognised(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(gzip.compress(b"".join(
        json.dumps({"text": f"row {i}", "label": i % 2}).encode() + b"\n" for i in range(6))))
    data = source("local", tmp_path, train="d.jsonl", test="d.jsonl", dedupe=False).load()
    assert data.splits["train"].texts[:2] == ["row 0", "row 1"]


def test_compressed_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [f"t {i}" for i in range(6)], "label": [i % 2 for i in range(6)]}), buf)
    (tmp_path / "d.parquet.gz").write_bytes(gzip.compress(buf.getvalue()))
    data = source("local", tmp_path, train="d.parquet.gz", test="d.parquet.gz", dedupe=False).load()
    assert data.splits["train"].labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_truncated_gzip_names_the_compression_not_the_encoding(tmp_path, reg, cli):
    blob = gzip.compress(csv_text(200).encode())
    (tmp_path / "d.csv.gz").write_bytes(blob[: len(blob) // 2])
    err = one_line_error(cli("embed", recipe(tmp_path, {"name": "local", "train": "d.csv.gz", "test": "d.csv.gz"})))
    assert "gzip" in err and "d.csv.gz" in err and "encoding" not in err and "bad_rows" not in err


def test_zip_of_several_files_is_refused_naming_them(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.csv", csv_text())
        zf.writestr("b.csv", csv_text())
    (tmp_path / "d.zip").write_bytes(buf.getvalue())
    with pytest.raises(UserError, match=r"zip archive holding 2 files \(a\.csv, b\.csv\)"):
        source("local", tmp_path, train="d.zip", test="d.zip").load()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_non_integer_numeric_labels_are_refused(tmp_path, fmt):
    values = [0.5, 1.5, 2.5, 3.5]
    if fmt == "csv":
        (tmp_path / "d.csv").write_text(csv_text(8, label=lambda i: values[i % 4]))
    else:
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"s {i}", "label": values[i % 4]}) + "\n"
                                                  for i in range(8)))
    with pytest.raises(UserError) as info:
        source("local", tmp_path, train=f"d.{fmt}", test=f"d.{fmt}", dedupe=False).load()
    msg = str(info.value)
    assert "not an integer" in msg and "row 1" in msg and "0.5" in msg and "label_names" in msg


def test_non_integer_labels_declared_as_text_classes_load(tmp_path):
    values = ["0.5", "1.5", "2.5", "3.5"]
    (tmp_path / "d.csv").write_text(csv_text(8, label=lambda i: values[i % 4]))
    data = source("local", tmp_path, train="d.csv", test="d.csv", dedupe=False, label_names=values).load()
    assert data.label_names == values and data.splits["train"].labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_integer_valued_floats_stay_class_indices(tmp_path):
    (tmp_path / "d.csv").write_text(csv_text(6, label=lambda i: f"{i % 2}.0" if False else i % 2))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"s {i}", "label": float(i % 2)}) + "\n"
                                              for i in range(6)))
    data = source("local", tmp_path, train="d.jsonl", test="d.jsonl", dedupe=False).load()
    assert data.label_names == ["0", "1"]

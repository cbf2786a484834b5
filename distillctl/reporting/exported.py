"""Reading an export back: the tables :func:`distillctl.reporting.export.export` writes (CSV / JSONL with their
``.meta.json``, Parquet, a Hugging Face dataset folder) as the :class:`SyntheticSet` they came from.

The set is verified: its vectors and labels are saved again as the safetensors bytes distill wrote, and their
sha256 must equal the ``set_sha256`` the export recorded (float32 values round-trip exactly through every
format), so an edited table is refused like an edited set file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from distillctl.errors import UserError

#: what :func:`load_export` reads, by file suffix (``hf``: a folder written by ``Dataset.save_to_disk``)
EXPORT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_info.json").is_file() and (path / "state.json").is_file()


def export_format(path: str | Path) -> str | None:
    """``csv`` / ``jsonl`` / ``parquet`` / ``hf`` when ``path`` looks like an export, else None."""
    path = Path(path)
    if is_hf_folder(path):
        return "hf"
    return EXPORT_SUFFIXES.get(path.suffix.lower()) if path.is_file() else None


def load_export(path: str | Path):
    """The :class:`SyntheticSet` of an export (see the module docstring); a :class:`UserError` naming the file
    when it is not one, misses its metadata, needs a missing extra, or differs from the set it was exported from."""
    from distillctl.reporting.export import EXPORT_FORMAT, EXTRAS, metadata_sidecar

    path = Path(path)
    fmt = export_format(path)
    if fmt is None:
        raise UserError(f"{path}: not an export of distillctl (expected a .csv, .jsonl or .parquet file, or a "
                        "Hugging Face dataset folder written by `distillctl export`)")
    # 1. The rows (x, labels) and the metadata, per format.
    if fmt in ("csv", "jsonl"):
        side = metadata_sidecar(path)
        if not side.is_file():
            raise UserError(f"{path}: its metadata {side.name} is missing (export writes both; export the set again)")
        meta = _json(side)
        rows = _csv_rows(path, meta) if fmt == "csv" else _jsonl_rows(path)
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{path}: reading Parquet needs pyarrow: {EXTRAS['pyarrow']}") from None
        try:
            table = pq.read_table(path)
        except Exception as exc:  # ArrowInvalid and friends
            raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None
        raw = (table.schema.metadata or {}).get(b"distillctl")
        if raw is None:
            raise UserError(f"{path}: no distillctl metadata in its schema (not written by `distillctl export`)")
        meta = json.loads(raw)
        rows = table.to_pylist()
    else:
        try:
            import datasets
        except ImportError:
            raise UserError(f"{path}: reading a Hugging Face dataset needs datasets: {EXTRAS['datasets']}") from None
        ds = datasets.load_from_disk(str(path))
        try:
            meta = json.loads(ds.info.description or "")
        except ValueError:
            raise UserError(f"{path}: no distillctl metadata in its dataset info (not written by "
                            "`distillctl export`)") from None
        rows = ds.to_list()
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: metadata format {meta.get('format') if isinstance(meta, dict) else None!r}; "
                        f"expected {EXPORT_FORMAT}")
    return _as_set(path, rows, meta)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable JSON ({exc})") from None


def _csv_rows(path: Path, meta: dict) -> list[dict]:
    d, names = int(meta["dim"]), list(meta["label_names"])
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh):
            try:
                row = {"class_index": int(rec["class_index"]), "x": [float(rec[f"x_{i}"]) for i in range(d)]}
                if meta.get("soft_labels"):
                    row["soft_labels"] = [float(rec[f"p_{n}"]) for n in names]
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(f"{path}: row {len(rows) + 1}: missing or non-numeric column ({exc})") from None
            rows.append(row)
    return rows


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise UserError(f"{path}:{i}: invalid JSON ({exc})") from None
    return rows


def _as_set(path: Path, rows: list[dict], meta: dict):
    """Rebuild the set and check it is byte for byte the one exported (``meta["set_sha256"]``)."""
    import torch
    from safetensors.torch import save

    from distillctl.distillation.synthetic import FORMAT, SyntheticSet
    from distillctl.verified import sha256_of

    soft = bool(meta.get("soft_labels"))
    try:
        x = torch.tensor([r["x"] for r in rows], dtype=torch.float32).reshape(len(rows), int(meta["dim"]))  # (n, d)
        labels = (torch.tensor([r["soft_labels"] for r in rows], dtype=torch.float32) if soft  # (n, C)
                  else torch.tensor([int(r["class_index"]) for r in rows], dtype=torch.int64))  # (n,)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: rows do not form a set of {meta.get('rows')} x {meta.get('dim')} ({exc})") from None
    blob = save({"x": x.contiguous(), "labels": labels.contiguous()}, metadata={"format": FORMAT})
    digest = sha256_of(blob)
    if digest != meta.get("set_sha256"):
        raise UserError(f"{path}: its vectors or labels differ from the set it was exported from (sha256 "
                        f"{digest[:12]}…, the export recorded {str(meta.get('set_sha256'))[:12]}…); export it again")
    own = {k: meta[k] for k in ("label_names", "embedding_fingerprint", "recipe_fingerprint", "recipe_name")
           if k in meta}
    set_meta = {**(meta.get("set_meta") or {}), **own, "sha256": digest,
                "exported_from": {"path": str(path), "run_dir": meta.get("run_dir"), "set_file": meta.get("set_file")}}
    return SyntheticSet(x=x, labels=labels, ipc=int(meta["ipc"]), num_classes=int(meta["num_classes"]),
                        inner_lr=meta.get("inner_lr"), meta=set_meta)

"""export: one distilled set as a table other tools read (CSV, JSON Lines, Parquet, a Hugging Face dataset).

One row per synthetic vector, class-major as in the set::

    row, class_index, label            the row, its hard class (soft labels: the most probable) and its name
    x                                  the vector (d float32); CSV: columns x_0 .. x_{d-1}
    soft_labels                        the class probabilities (C floats), only for soft-label sets;
                                       CSV: columns p_<label name>
    nearest_texts / _labels /          the NEIGHBOURS real training texts nearest by cosine similarity (from the
    _similarities / _train_rows        run's embedding cache, as report.md shows them); CSV: nearest_<k>_text, ...

A token-level set (``embed.level: tokens``) has one row per synthetic *sequence*: ``x`` is its (T, d) input
embeddings flattened row-major (T*d floats; CSV: x_0 .. x_{T*d-1}, position-major), plus ``mask`` (T floats),
``reads_as`` (the nearest vocabulary token of each attended position, as text) and ``nearest_tokens`` (per
position its nearest tokens joined by ``/``; empty where masked); the nearest texts come from the initial
model's pooled features (:mod:`distillctl.reporting.readable`).

with the metadata of the set (format, ipc, label names, inner lr), the resolved recipe and the fingerprints
that identify what was exported (embedding cache, recipe, the set file's sha256). Where the metadata goes:
Parquet: the schema metadata key ``distillctl`` (JSON); hf: ``Dataset.info.description`` (JSON) of a folder
written by ``datasets.Dataset.save_to_disk``; CSV and JSONL: a sidecar ``<out>.meta.json``.

Every output is all or nothing: a file or folder is written whole under a temp name, then renamed; a CSV /
JSONL table appears only once its sidecar is in place (a full disk leaves neither). An existing output is
replaced only with ``force``. :func:`distillctl.load_set` reads every format back (verified against
``set_sha256``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distillctl import __version__
from distillctl.console import is_quiet
from distillctl.data import embed  # embed.load_embeddings: looked up per call (tests stand in for it)
from distillctl.distillation.synthetic import SyntheticSet
from distillctl.errors import UserError
from distillctl.evaluation.protocol import set_files
from distillctl.plugins import with_registry
from distillctl.reporting.report import nearest_texts, NEIGHBOURS
from distillctl.runs import atomic_write_bytes, existing_run_of, open_run_dir, run_lock

FORMATS = ("csv", "jsonl", "parquet", "hf")
EXPORT_FORMAT = "distillctl.reporting.export/1"
#: what each row's columns mean (also stored in the metadata)
COLUMNS = {
    "row": "row of the set (class-major: rows c*ipc .. c*ipc+ipc-1 were initialised as class c)",
    "class_index": "hard class of the row (soft labels: the most probable class)",
    "label": "name of class_index",
    "x": "the synthetic vector (float32, in the encoder's embedding space)",
    "soft_labels": "class probabilities, in label_names order (soft-label sets only)",
    "nearest_texts": "the nearest real training texts by cosine similarity, nearest first",
    "nearest_labels": "their true labels",
    "nearest_similarities": "their cosine similarities to x",
    "nearest_train_rows": "their rows in the train split of the embedding cache",
}
#: the token level's own columns
TOKEN_COLUMNS = {
    "x": "the synthetic input embeddings (T, d) flattened row-major (position-major), float32",
    "mask": "attention mask of the sequence (T floats, 1 = attended)",
    "reads_as": "the nearest vocabulary token (cosine, word-embedding table) of each attended position, as text",
    "nearest_tokens": "per position, its nearest vocabulary tokens joined by '/' ('' where masked)",
}


@dataclass
class ExportResult:
    """Where the set went: ``path`` (file or, for hf, folder), ``metadata_path`` (csv/jsonl sidecar)."""

    path: Path
    format: str
    ipc: int
    rows: int
    set_sha256: str
    metadata_path: Path | None = None

    def to_json(self) -> dict:
        return {"path": str(self.path), "format": self.format, "ipc": self.ipc, "rows": self.rows,
                "set_sha256": self.set_sha256,
                "metadata": str(self.metadata_path) if self.metadata_path else None}


def default_out(run_path: Path, fmt: str, ipc: int) -> Path:
    """``RUN/export/ipc{N}.{csv,jsonl,parquet}`` or ``RUN/export/ipc{N}-hf/``."""
    return run_path / "export" / (f"ipc{ipc}-hf" if fmt == "hf" else f"ipc{ipc}.{fmt}")


def metadata_sidecar(out: Path) -> Path:
    """``sets/ipc10.csv`` -> ``sets/ipc10.csv.meta.json`` (csv and jsonl keep their metadata beside them; the
    full name, so a csv and a jsonl export of one set do not share one)."""
    return out.with_name(out.name + ".meta.json")


@with_registry  # registry=: run with that plugin registry (default: get_registry())
def export(target: str | Path, fmt: str, *, out: str | Path | None = None, ipc: int | None = None,
           force: bool = False, quiet: bool | None = None, embeddings: Any = None,
           argv: list[str] | None = None) -> ExportResult:
    """Write one distilled set of a run (``ipc``; default the largest) as ``fmt`` to ``out`` (default
    :func:`default_out`). ``target``: the run directory or one of its ``distilled/ipcN.safetensors``.
    ``embeddings`` skips loading the cache (library callers, tests)."""

    quiet = is_quiet() if quiet is None else quiet
    # 1. What to export: the run, its set, where to.
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    target = Path(target)
    run_path = existing_run_of(target)
    if run_path is None:
        raise UserError(f"{target}: not a run directory (no recipe.resolved.yaml) or a set in its distilled/ folder")
    run = open_run_dir(run_path)
    files = {int(f.stem[3:]): f for f in set_files(run.path)}
    if target.is_file():
        if ipc is not None and f"ipc{ipc}" != target.stem:
            raise UserError(f"--ipc {ipc}: differs from the set file given ({target.name})")
        ipc = int(target.stem[3:]) if target.stem[3:].isdigit() else None
    if not files:
        from distillctl.runs import not_ready

        raise not_ready(target, f"no distilled sets in {run.distilled}", "run `distillctl distill` first")
    if ipc is None:
        ipc = max(files)
    if ipc not in files:
        raise UserError(f"--ipc {ipc}: {run.distilled} has no ipc{ipc}.safetensors (sets: "
                        f"{', '.join(f'ipc {k}' for k in sorted(files))})")
    out = Path(out) if out is not None else default_out(run.path, fmt, ipc)
    side = metadata_sidecar(out) if fmt in ("csv", "jsonl") else None
    if side is not None and _orphan_sidecar(out, side):
        side.unlink()  # the metadata of an export that never completed (its table is missing): not a result
    existing = [p for p in (out, side) if p is not None and (p.exists() or p.is_symlink())]
    if existing and not force:
        lone = side is not None and out.exists() and not side.exists()
        raise UserError(f"{existing[0]}: already exists" + (f" without its metadata {side.name} (an incomplete "
                        "export of an older distillctl)" if lone else "")
                        + "; pass --force to overwrite it, or choose another --out")
    if out.exists() and (out.is_dir() != (fmt == "hf")):
        kind = "a folder" if out.is_dir() else "a file"
        raise UserError(f"--out {out}: is {kind}; --format {fmt} writes a {'folder' if fmt == 'hf' else 'file'}")

    # 2. Under the run's export lock: the verified set, its nearest texts, the table, the files.
    with run_lock(run.path, "export", argv=argv):
        if fmt == "parquet":
            _need("pyarrow", fmt)  # before the nearest texts are computed: a missing extra is bad input
        elif fmt == "hf":
            _need("datasets", fmt)
        table, meta = export_table(run, files[ipc], embeddings=embeddings, quiet=quiet)
        if fmt == "csv":
            _write_pair(out, _csv_bytes(table, meta), side, meta)
        elif fmt == "jsonl":
            _write_pair(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table).encode("utf-8"),
                        side, meta)
        elif fmt == "parquet":
            _write_file(out, _parquet_bytes(table, meta))
        else:
            _write_hf(out, table, meta)
    return ExportResult(path=out, format=fmt, ipc=ipc, rows=len(table), set_sha256=meta["set_sha256"],
                        metadata_path=side)


def export_table(run, set_file: Path, *, embeddings: Any = None, quiet: bool | None = None) -> tuple[list[dict], dict]:
    """(rows, metadata) of one set of a run: see the module docstring for the columns."""

    s = SyntheticSet.load(set_file)  # verified: sha256 (sidecar and manifest), finite values
    recipe = run.load_recipe()
    if embeddings is None:

        embeddings = embed.load_embeddings(recipe, quiet=quiet)
    fp, set_fp = getattr(embeddings, "fingerprint", None), s.meta.get("embedding_fingerprint")
    if fp and set_fp and fp != set_fp:
        raise UserError(f"{set_file}: distilled from other embeddings (fingerprint {set_fp[:12]}, the run recipe's "
                        f"cache is {fp[:12]}); its nearest texts would come from the wrong data")
    if s.num_classes != int(embeddings.num_classes) or s.dim != int(embeddings.dim):
        raise UserError(f"{set_file}: set has {s.num_classes} classes x {s.dim} dims; the run recipe's embeddings "
                        f"have {embeddings.num_classes} x {embeddings.dim}")
    if s.level == "tokens":
        from distillctl.reporting.readable import token_readout

        (read,) = token_readout([set_file], embeddings, k_texts=NEIGHBOURS)
        near = {"vectors": [{"neighbours": q["neighbours"]} for q in read["sequences"]]}
    else:
        (near,) = nearest_texts(run.path, embeddings, k=NEIGHBOURS, files=[set_file])
    names = s.label_names
    classes = s.hard_labels().tolist()
    xs = s.x.float().reshape(s.x.shape[0], -1).tolist()  # (n, d) or (n, T*d) float32 values as Python floats
    probs = s.labels.float().tolist() if s.soft else None  # (n, C)
    table = []
    for row, vec in enumerate(near["vectors"]):
        nbs = vec["neighbours"]
        rec = {"row": row, "class_index": classes[row], "label": names[classes[row]], "x": xs[row]}
        if probs is not None:
            rec["soft_labels"] = probs[row]
        if s.level == "tokens":
            q = read["sequences"][row]
            rec.update(mask=s.mask[row].float().tolist(), reads_as=q["text"],
                       nearest_tokens=["/".join(t) for t in q["tokens"]])
        rec.update(nearest_texts=[n["text"] for n in nbs], nearest_labels=[n["label"] for n in nbs],
                   nearest_similarities=[n["similarity"] for n in nbs],
                   nearest_train_rows=[n["train_row"] for n in nbs])
        table.append(rec)
    own = ("label_names", "sha256", "embedding_fingerprint", "recipe_fingerprint", "recipe_name")
    meta = {
        "format": EXPORT_FORMAT, "distillctl": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run.path), "set_file": set_file.resolve().relative_to(run.path).as_posix(),
        "set_sha256": s.sha256, "embedding_fingerprint": set_fp or fp,
        "recipe_fingerprint": s.meta.get("recipe_fingerprint") or recipe.fingerprint(), "recipe_name": recipe.name,
        "ipc": s.ipc, "num_classes": s.num_classes, "dim": s.dim, "rows": len(table), "label_names": names,
        "soft_labels": s.soft, "inner_lr": s.inner_lr, "level": s.level,
        **({"seq_len": int(s.x.shape[1]), "x_width": int(s.x.shape[1] * s.dim),
            "init_seed": s.meta.get("init_seed")} if s.level == "tokens" else {}),
        "nearest": {"k": NEIGHBOURS, "metric": "cosine", "split": "train", "embedding_fingerprint": fp,
                    **({"features": "pooled features of the initial model", "rows_searched": read["real_rows_searched"]}
                       if s.level == "tokens" else {})},
        "columns": {**{k: v for k, v in COLUMNS.items() if k != "soft_labels" or s.soft},
                    **(TOKEN_COLUMNS if s.level == "tokens" else {})},
        "set_meta": {k: v for k, v in s.meta.items() if k not in own},
        "recipe": recipe.to_dict(),
    }
    return table, json.loads(json.dumps(meta, default=str))  # plain JSON types (paths as strings)


# -- writers ---------------------------------------------------------------------------------------

#: the pip install that adds what a format needs
EXTRAS = {"pyarrow": "pip install 'distillctl[parquet]'", "datasets": "pip install 'distillctl[hf]'"}


def _need(module: str, fmt: str) -> None:
    """A :class:`UserError` naming the ``pip install`` when ``module`` (an optional extra) is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"--format {fmt} needs {module}, which is not installed: {EXTRAS[module]} "
                        f"(or pip install {module})")


def _write_file(out: Path, data: bytes) -> None:
    atomic_write_bytes(out, data)


def _orphan_sidecar(out: Path, side: Path) -> bool:
    """A ``.meta.json`` of ours whose table is missing: what an export interrupted between its two renames
    leaves (see :func:`_write_pair`); it holds no result, so a new export may replace it."""
    if out.exists() or out.is_symlink() or not side.is_file():
        return False
    try:
        return json.loads(side.read_text(encoding="utf-8")).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_pair(out: Path, data: bytes, side: Path, meta: dict) -> None:
    """A table and its metadata sidecar, all or nothing: both are written in full to temp files (a full
    disk fails here, before either name exists), then the sidecar is renamed into place and the table last.
    The table's name appears only when its metadata is there; if the last rename fails, the sidecar is
    removed again (and a sidecar alone is never taken for an export, see :func:`_orphan_sidecar`)."""
    from distillctl.runs import atomic_write_bytes

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        atomic_write_bytes(tmp / side.name, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        atomic_write_bytes(tmp / out.name, data)
        os.replace(tmp / side.name, side)
        try:
            os.replace(tmp / out.name, out)
        except BaseException:
            side.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _csv_bytes(table: list[dict], meta: dict) -> bytes:
    """One flat row per vector: x_0..x_{d-1}, p_<label> (soft), nearest_<k>_{text,label,similarity,train_row}."""
    d, k = meta.get("x_width", meta["dim"]), meta["nearest"]["k"]
    tokens = meta.get("level") == "tokens"
    head = ["row", "class_index", "label"] + [f"x_{i}" for i in range(d)]
    if meta["soft_labels"]:
        head += [f"p_{name}" for name in meta["label_names"]]
    if tokens:
        T = meta["seq_len"]
        head += [f"mask_{i}" for i in range(T)] + ["reads_as"] + [f"tokens_{i}" for i in range(T)]
    for j in range(1, k + 1):
        head += [f"nearest_{j}_text", f"nearest_{j}_label", f"nearest_{j}_similarity", f"nearest_{j}_train_row"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for r in table:
        cells = [r["row"], r["class_index"], r["label"], *r["x"]]
        if meta["soft_labels"]:
            cells += r["soft_labels"]
        if tokens:
            cells += [*r["mask"], r["reads_as"], *r["nearest_tokens"]]
        for j in range(k):
            have = j < len(r["nearest_texts"])  # a train split smaller than k: empty cells
            cells += ([r["nearest_texts"][j], r["nearest_labels"][j], r["nearest_similarities"][j],
                       r["nearest_train_rows"][j]] if have else ["", "", "", ""])
        writer.writerow(cells)
    return buf.getvalue().encode("utf-8")


def _arrow_table(table: list[dict], meta: dict):
    """A pyarrow Table: x and soft_labels as fixed-size float32 lists, the rest as plain columns."""
    _need("pyarrow", "parquet")
    import pyarrow as pa
    d, C = meta.get("x_width", meta["dim"]), meta["num_classes"]
    cols = {
        "row": pa.array([r["row"] for r in table], pa.int64()),
        "class_index": pa.array([r["class_index"] for r in table], pa.int64()),
        "label": pa.array([r["label"] for r in table], pa.string()),
        "x": pa.array([r["x"] for r in table], pa.list_(pa.float32(), d)),
    }
    if meta["soft_labels"]:
        cols["soft_labels"] = pa.array([r["soft_labels"] for r in table], pa.list_(pa.float32(), C))
    if meta.get("level") == "tokens":
        cols["mask"] = pa.array([r["mask"] for r in table], pa.list_(pa.float32(), meta["seq_len"]))
        cols["reads_as"] = pa.array([r["reads_as"] for r in table], pa.string())
        cols["nearest_tokens"] = pa.array([r["nearest_tokens"] for r in table], pa.list_(pa.string()))
    cols.update(
        nearest_texts=pa.array([r["nearest_texts"] for r in table], pa.list_(pa.string())),
        nearest_labels=pa.array([r["nearest_labels"] for r in table], pa.list_(pa.string())),
        nearest_similarities=pa.array([r["nearest_similarities"] for r in table], pa.list_(pa.float32())),
        nearest_train_rows=pa.array([r["nearest_train_rows"] for r in table], pa.list_(pa.int64())),
    )
    return pa.table(cols)


def _parquet_bytes(table: list[dict], meta: dict) -> bytes:
    import pyarrow.parquet as pq

    arrow = _arrow_table(table, meta)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                           b"distillctl": json.dumps(meta).encode("utf-8")})
    buf = io.BytesIO()
    pq.write_table(arrow, buf)
    return buf.getvalue()


@contextlib.contextmanager
def _no_datasets_progress(datasets):
    """Turn off the progress bars of Hugging Face ``datasets`` for a block, then restore them."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _write_hf(out: Path, table: list[dict], meta: dict) -> None:
    """``datasets.Dataset.save_to_disk`` into a temp folder beside ``out``, then renamed into place (the old
    folder, with --force, is moved aside first and removed once the new one is there)."""
    _need("datasets", "hf")
    import datasets
    d, C, names = meta.get("x_width", meta["dim"]), meta["num_classes"], meta["label_names"]
    features = {
        "row": datasets.Value("int64"),
        "class_index": datasets.ClassLabel(names=names),
        "label": datasets.Value("string"),
        "x": datasets.Sequence(datasets.Value("float32"), length=d),
    }
    if meta["soft_labels"]:
        features["soft_labels"] = datasets.Sequence(datasets.Value("float32"), length=C)
    if meta.get("level") == "tokens":
        features.update(mask=datasets.Sequence(datasets.Value("float32"), length=meta["seq_len"]),
                        reads_as=datasets.Value("string"), nearest_tokens=datasets.Sequence(datasets.Value("string")))
    features.update(nearest_texts=datasets.Sequence(datasets.Value("string")),
                    nearest_labels=datasets.Sequence(datasets.Value("string")),
                    nearest_similarities=datasets.Sequence(datasets.Value("float32")),
                    nearest_train_rows=datasets.Sequence(datasets.Value("int64")))
    columns = {name: [r[name] for r in table] for name in features}
    features = datasets.Features(features)
    info = datasets.DatasetInfo(description=json.dumps(meta), features=features,
                                dataset_name=f"{meta['recipe_name']}-ipc{meta['ipc']}")
    ds = datasets.Dataset.from_dict(columns, features=features, info=info)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with _no_datasets_progress(datasets):  # our output is one line; theirs is a progress bar on stderr
            ds.save_to_disk(str(tmp))
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

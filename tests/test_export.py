"""`distillctl export`: a distilled set as CSV / JSONL / Parquet / Hugging Face dataset, read back."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fakes import evaluation as eval_fakes
from distillctl.distillation.synthetic import SyntheticSet


@pytest.fixture
def env(monkeypatch, tmp_path):
    emb = eval_fakes.embeddings()
    registry, state = eval_fakes.install(monkeypatch, emb)
    monkeypatch.chdir(tmp_path)
    return registry, emb, tmp_path


def make(env, soft=False):
    registry, emb, tmp = env
    recipe, run = eval_fakes.make_run(tmp, registry, emb, soft=soft)
    return recipe, run


def expected_texts(emb, s):
    """The sets are real training rows (the first ipc of each class), so each row's nearest text is its own."""
    y = emb.splits["train"].y
    rows = torch.cat([torch.nonzero(y == c).flatten()[:s.ipc] for c in range(3)])
    return [emb.texts("train")[int(i)] for i in rows]


def check_meta(meta, run, recipe, s):
    assert meta["format"] == "distillctl.reporting.export/1"
    assert meta["set_sha256"] == s.sha256 and meta["set_file"] == f"distilled/ipc{s.ipc}.safetensors"
    assert meta["embedding_fingerprint"] == "fake-embeddings"
    assert meta["recipe"] == json.loads(json.dumps(recipe.to_dict(), default=str))
    assert meta["recipe_fingerprint"] == recipe.fingerprint()
    assert meta["label_names"] == ["class0", "class1", "class2"] and meta["ipc"] == s.ipc
    assert meta["nearest"]["k"] == 3 and meta["nearest"]["metric"] == "cosine"


@pytest.mark.parametrize("soft", [False, True])
def test_export_csv(env, cli, soft):
    recipe, run = make(env, soft=soft)
    r = cli("export", run.path, "--format", "csv")
    assert r.code == 0, r
    out = run.path / "export" / "ipc2.csv"
    assert f"-> {out}" in r.out
    s = SyntheticSet.load(run.distilled / "ipc2.safetensors")
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 6
    x = torch.tensor([[float(row[f"x_{i}"]) for i in range(8)] for row in rows])
    assert torch.equal(x, s.x)  # float32 values round-trip exactly
    assert [row["label"] for row in rows] == ["class0", "class0", "class1", "class1", "class2", "class2"]
    assert [int(row["class_index"]) for row in rows] == s.hard_labels().tolist()
    assert [row["nearest_1_text"] for row in rows] == expected_texts(env[1], s)
    assert all(float(row["nearest_1_similarity"]) == pytest.approx(1.0, abs=1e-4) for row in rows)
    assert {"nearest_3_text", "nearest_3_label", "nearest_3_train_row"} <= set(rows[0])
    if soft:
        p = torch.tensor([[float(row[f"p_class{c}"]) for c in range(3)] for row in rows])
        assert torch.equal(p, s.labels)
    else:
        assert "p_class0" not in rows[0]
    meta = json.loads((run.path / "export" / "ipc2.csv.meta.json").read_text())
    check_meta(meta, run, recipe, s)
    assert meta["soft_labels"] is soft


def test_export_jsonl_one_set_to_a_chosen_path(env, cli):
    recipe, run = make(env, soft=True)
    out = env[2] / "mine" / "one.jsonl"
    r = cli("export", run.path, "--format", "jsonl", "--ipc", "1", "--out", out, "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["metadata"] == str(env[2] / "mine" / "one.jsonl.meta.json")
    s = SyntheticSet.load(run.distilled / "ipc1.safetensors")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert torch.equal(torch.tensor([r["x"] for r in rows]), s.x)
    assert torch.equal(torch.tensor([r["soft_labels"] for r in rows]), s.labels)
    assert [r["nearest_texts"][0] for r in rows] == expected_texts(env[1], s)
    assert all(len(r["nearest_labels"]) == 3 and len(r["nearest_train_rows"]) == 3 for r in rows)
    check_meta(json.loads((env[2] / "mine" / "one.jsonl.meta.json").read_text()), run, recipe, s)


def test_export_parquet_keeps_metadata_in_the_schema(env, cli):
    pq = pytest.importorskip("pyarrow.parquet")
    recipe, run = make(env, soft=True)
    assert cli("export", run.distilled / "ipc2.safetensors", "--format", "parquet").code == 0
    table = pq.read_table(run.path / "export" / "ipc2.parquet")
    s = SyntheticSet.load(run.distilled / "ipc2.safetensors")
    assert torch.equal(torch.tensor(table.column("x").to_pylist()), s.x)
    assert torch.equal(torch.tensor(table.column("soft_labels").to_pylist()), s.labels)
    assert table.column("label").to_pylist() == ["class0", "class0", "class1", "class1", "class2", "class2"]
    assert [t[0] for t in table.column("nearest_texts").to_pylist()] == expected_texts(env[1], s)
    check_meta(json.loads(table.schema.metadata[b"distillctl"]), run, recipe, s)


def test_export_hf_dataset(env, cli):
    datasets = pytest.importorskip("datasets")
    recipe, run = make(env)
    out = env[2] / "hf"
    assert cli("export", run.path, "--format", "hf", "--out", out).code == 0
    ds = datasets.load_from_disk(str(out))
    s = SyntheticSet.load(run.distilled / "ipc2.safetensors")
    assert torch.equal(torch.tensor(ds["x"]), s.x)
    assert ds.features["class_index"].names == ["class0", "class1", "class2"]
    assert ds["class_index"] == s.hard_labels().tolist()
    assert [t[0] for t in ds["nearest_texts"]] == expected_texts(env[1], s)
    check_meta(json.loads(ds.info.description), run, recipe, s)
    # --force replaces the folder as a whole
    r = cli("export", run.path, "--format", "hf", "--out", out, "--ipc", "1", "--force")
    assert r.code == 0, r
    assert len(datasets.load_from_disk(str(out))) == 3
    assert sorted(p.name for p in env[2].iterdir() if p.name.startswith(".hf")) == []  # no temp folders left


def test_export_refuses_to_overwrite_and_bad_input(env, cli):
    _, run = make(env)
    assert cli("export", run.path, "--format", "jsonl").code == 0
    out = run.path / "export" / "ipc2.jsonl"
    before = out.read_bytes()
    r = cli("export", run.path, "--format", "jsonl")
    assert r.code == 2 and f"{out}: already exists; pass --force to overwrite it" in r.err, r
    assert out.read_bytes() == before
    assert cli("export", run.path, "--format", "jsonl", "--force").code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["ipc2.jsonl", "ipc2.jsonl.meta.json"]  # no temp files
    r = cli("export", run.path, "--format", "xlsx")
    assert r.code == 2 and "--format 'xlsx': expected one of csv, jsonl, parquet, hf" in r.err, r
    r = cli("export", run.path, "--format", "csv", "--ipc", "7")
    assert r.code == 2 and "--ipc 7: " in r.err and "(sets: ipc 1, ipc 2)" in r.err, r
    r = cli("export", env[2] / "nowhere", "--format", "csv")
    assert r.code == 2 and "not a run directory" in r.err, r
    data = bytearray((run.distilled / "ipc2.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run.distilled / "ipc2.safetensors").write_bytes(bytes(data))
    r = cli("export", run.path, "--format", "csv")
    assert r.code == 2 and "contents changed since it was saved" in r.err and "Traceback" not in r.err, r
    assert not (run.path / "export" / "ipc2.csv").exists()

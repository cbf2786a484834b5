"""Distilled sets as verified artifacts: sha256 in the sidecar and the run manifest, finite values,
older sets without a digest, and `distillctl.load_set`."""

from __future__ import annotations

import json

import pytest
import torch

from fakes import evaluation as eval_fakes
from distillctl.errors import UserError
from distillctl.distillation.synthetic import SyntheticSet


@pytest.fixture
def env(monkeypatch, tmp_path):
    return eval_fakes.run_in(monkeypatch, tmp_path)[1]


def flip_bytes(path, count=8):
    """Flip ``count`` bytes at the end of the file: tensor data (the header stays valid)."""
    data = bytearray(path.read_bytes())
    for i in range(1, count + 1):
        data[-i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_save_records_the_files_sha256_and_load_verifies_it(env, cli):
    import hashlib

    path = env.distilled / "ipc1.safetensors"
    side = json.loads((env.distilled / "ipc1.json").read_text())
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert SyntheticSet.load(path).sha256 == side["sha256"]
    flip_bytes(path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UserError, match=rf"ipc1.safetensors: contents changed since it was saved: sha256 "
                                        rf"{actual[:12]}… on disk, {side['sha256'][:12]}… in ipc1.json"):
        SyntheticSet.load(path)
    r = cli("eval", env.path)  # before: exit 0 and a lower accuracy
    assert r.code == 2 and "contents changed since it was saved" in r.err and "Traceback" not in r.err, r
    assert len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["x", "labels", "inner_lr"])
def test_non_finite_values_are_refused(env, cli, where):
    """A set whose file and sidecar agree (digest included) but that holds a NaN or inf."""
    from safetensors.torch import save

    path = env.distilled / "ipc2.safetensors"
    x = torch.randn(6, 8)
    labels = torch.softmax(torch.randn(6, 3), -1)
    if where == "x":
        x[4, 2] = float("nan")
    elif where == "labels":
        labels[1, 0] = float("inf")
    blob = save({"x": x, "labels": labels})
    path.write_bytes(blob)
    side = json.loads((env.distilled / "ipc2.json").read_text())
    side.update(sha256=__import__("hashlib").sha256(blob).hexdigest(), soft_labels=True,
                inner_lr=float("nan") if where == "inner_lr" else 0.01)
    (env.distilled / "ipc2.json").write_text(json.dumps(side))
    expected = {"x": r"x holds 1 non-finite values \(NaN/inf\), the first in row 4",
                "labels": r"labels holds 1 non-finite values \(NaN/inf\), the first in row 1",
                "inner_lr": r"inner_lr is nan; expected a finite number > 0"}[where]
    with pytest.raises(UserError, match=rf"ipc2.safetensors: synthetic set: {expected}"):
        SyntheticSet.load(path)
    r = cli("eval", path)
    assert r.code == 2 and ("non-finite" in r.err or "inner_lr is nan" in r.err) and "Traceback" not in r.err, r


def test_a_set_the_run_did_not_save_is_refused(env):
    """A set and sidecar replaced together (from another run): the manifest's digest no longer matches."""
    from distillctl.runs import record_set

    path = env.distilled / "ipc1.safetensors"
    record_set(env, path, SyntheticSet.load(path).sha256)  # as distill does after saving
    manifest = json.loads(env.manifest.read_text())
    recorded = manifest["sets"]["distilled/ipc1.safetensors"]["sha256"]
    other = SyntheticSet.load(path)
    other.x = other.x + 1
    other.save(path)
    with pytest.raises(UserError, match=rf"ipc1.safetensors: not the set this run saved: sha256 "
                                        rf"{other.sha256[:12]}… on disk, {recorded[:12]}… in .*manifest.json"):
        SyntheticSet.load(path)


def test_distill_records_set_digests_in_the_manifest_and_keeps_them_on_resume(monkeypatch, tmp_path):
    from fakes import distill as distill_fakes
    import distillctl.data.embed as embed_module
    from distillctl.distillation.distill import distill
    from distillctl.plugins import load_registry, set_registry
    from distillctl.recipe import validate_recipe

    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0")])
    set_registry(registry)
    emb = distill_fakes.gaussian_embeddings()
    monkeypatch.setattr(embed_module, "load_embeddings", lambda recipe, *, quiet=None: emb)
    recipe = validate_recipe(distill_fakes.tiny_recipe({
        "ipc": [1, 2], "method": {"name": "dm"},
        "outer": {"lr": 0.05, "iterations": 2, "real_batch": 30, "val_every": 2, "ckpt_every": 2, "val_seeds": 1}}),
        registry=registry)
    res = distill(recipe, run_dir=tmp_path / "run", quiet=True)
    distill(recipe, resume=tmp_path / "run", quiet=True)  # rewrites the manifest: the digests stay
    sets = json.loads((tmp_path / "run" / "manifest.json").read_text())["sets"]
    assert sets == {f"distilled/ipc{s['ipc']}.safetensors": {"sha256": SyntheticSet.load(s["path"]).sha256}
                    for s in res.sets}


def test_a_set_without_a_digest_loads_with_a_warning(env, cli):
    side_path = env.distilled / "ipc1.json"
    side = json.loads(side_path.read_text())
    del side["sha256"]  # as written before digests existed
    side_path.write_text(json.dumps(side))
    r = cli("eval", env.distilled / "ipc1.safetensors", "--json")
    assert r.code == 0, r
    assert "warning:" in r.err and "no sha256 in ipc1.json" in r.err and "cannot be verified" in r.err


def test_load_set_returns_the_verified_set(env):
    import distillctl

    s = distillctl.load_set(env.path)  # a run directory: its largest set
    assert s.ipc == 2 and s.x.shape == (6, 8) and s.x.dtype == torch.float32
    assert s.hard_labels().tolist() == [0, 0, 1, 1, 2, 2] and s.label_names == ["class0", "class1", "class2"]
    assert s.sha256 == json.loads((env.distilled / "ipc2.json").read_text())["sha256"]
    assert distillctl.load_set(env.path, ipc=1).ipc == 1
    assert distillctl.load_set(env.distilled / "ipc1.safetensors").ipc == 1
    with pytest.raises(UserError, match=r"no set with ipc 5 \(sets: ipc 1, ipc 2\)"):
        distillctl.load_set(env.path, ipc=5)
    flip_bytes(env.distilled / "ipc2.safetensors")
    with pytest.raises(UserError, match="contents changed since it was saved"):
        distillctl.load_set(env.path)

"""The method author's toolbox: verified files, the verified cache, and the worked example of docs/plugins.md
(run as written: registered, distilled with, its gradient checked, its cached teacher reused and rebuilt)."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
import torch

from fakes import distill as distill_fakes
from distillctl.distillation.synthetic import SyntheticSet
from distillctl.methods import Learnables
from distillctl.plugins import load_registry, set_registry
from distillctl.recipe import validate_recipe
from distillctl.toolbox import VerifiedCache
from distillctl.verified import NotVerified, read_verified, sha256_of

REPO = Path(__file__).resolve().parents[1]


# -- verified files ---------------------------------------------------------------------------------

def test_read_verified_returns_the_bytes_it_hashed_and_names_what_differs(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"0123456789" * 1000)
    digest = sha256_of(f)
    assert digest == sha256_of(f.read_bytes()) == "%s" % __import__("hashlib").sha256(f.read_bytes()).hexdigest()
    assert read_verified(f, digest, size=10_000) == (f.read_bytes(), digest)
    assert read_verified(f, None)[1] == digest  # nothing recorded: the caller gets the digest to decide
    with pytest.raises(NotVerified, match=r"has 10000 bytes, 9999 were recorded \(truncated or changed\)$"):
        read_verified(f, digest, size=9_999)
    f.write_bytes(b"1" + f.read_bytes()[1:])
    with pytest.raises(NotVerified, match=r"fails its sha256 check \(corrupt\)$") as err:
        read_verified(f, digest)
    assert err.value.actual == sha256_of(f) != digest
    with pytest.raises(NotVerified, match=r"is missing$"):
        read_verified(tmp_path / "gone.bin", digest)


def test_verified_cache_round_trip_keys_and_a_damaged_entry(tmp_path):
    said = []
    cache = VerifiedCache(tmp_path, {"data": "d1"}, say=said.append)
    t = {"w": torch.arange(6.0).view(2, 3)}
    assert cache.load("m", {"k": 1}) is None
    path = cache.save("m", {"k": 1}, t, metadata={"format": "test/1"})
    assert path.parent == tmp_path / "m" and path == cache.entry("m", {"k": 1})[0]
    side = json.loads(path.with_suffix(".json").read_text())
    assert side == {"format": "test/1", "key": {"data": "d1", "k": 1}, "sha256": sha256_of(path)}
    assert torch.equal(cache.load("m", {"k": 1})["w"], t["w"])
    # the identity is part of the key: another student or other data is another entry
    assert cache.keyed(student={"name": "mlp"}).entry("m", {"k": 1})[0] != path
    assert VerifiedCache(tmp_path, {"data": "d2"}).load("m", {"k": 1}) is None
    # a damaged file is reported and not used; get() rebuilds it and stores it again
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    assert cache.load("m", {"k": 1}) is None and "does not match its recorded sha256" in said[-1]
    built = []
    got, reused = cache.get("m", {"k": 1}, lambda: built.append(1) or {"w": t["w"] + 1})
    assert not reused and built == [1] and torch.equal(got["w"], t["w"] + 1)
    got, reused = cache.get("m", {"k": 1}, lambda: pytest.fail("rebuilt a verified entry"))
    assert reused and torch.equal(got["w"], t["w"] + 1)


def test_verified_cache_in_a_read_only_folder_still_gives_the_tensors(tmp_path):
    said = []
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = VerifiedCache(blocker, {}, say=said.append)  # folder/<name>/ cannot be created under a file
    got, reused = cache.get("m", {"k": 1}, lambda: {"w": torch.ones(2)})
    assert not reused and torch.equal(got["w"], torch.ones(2))
    assert said and said[-1].startswith("m: cannot cache") and said[-1].endswith("using it from memory")


# -- the worked example of docs/plugins.md ----------------------------------------------------------

def doc_example() -> types.ModuleType:
    """The ``kdmatch`` code block of docs/plugins.md's toolbox section, as a module."""
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = guide.split("## A method's toolbox: `distillctl.toolbox`", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)\n```", section, re.S)
    module = types.ModuleType("kdmatch_doc_example")
    exec(compile(code, "docs/plugins.md#kdmatch", "exec"), module.__dict__)
    return module


@pytest.fixture
def env(monkeypatch, tmp_path):
    example = doc_example()
    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0"), (example, "kdmatch-doc", "0.1")])
    set_registry(registry)  # reset after each test by conftest
    monkeypatch.setattr("distillctl.distillation.distill._method_cache_dir", lambda: tmp_path / "cache")
    recipe = validate_recipe(distill_fakes.tiny_recipe({
        "ipc": [1, 2], "method": {"name": "kdmatch", "steps": 2, "teacher_steps": 30},
        "soft_labels": True, "inner": {"optimizer": "adam", "lr": 0.01, "learn_lr": True, "population": 2},
        "outer": {"lr": 0.01, "iterations": 4, "real_batch": 48, "val_every": 2, "ckpt_every": 2, "val_seeds": 2},
    }), registry=registry)
    return types.SimpleNamespace(example=example, registry=registry, recipe=recipe, tmp=tmp_path,
                                 emb=distill_fakes.gaussian_embeddings())


def test_the_documented_method_distils_and_reuses_its_verified_teacher(env):
    from distillctl.distillation.distill import distill

    first = distill(env.recipe, run_dir=env.tmp / "a", quiet=True, embeddings=env.emb)
    teachers = sorted((env.tmp / "cache" / "kdmatch").glob("*.safetensors"))
    assert len(teachers) == 1  # one teacher per data, student and options: both stages share it
    stamp = teachers[0].stat().st_mtime_ns
    again = distill(env.recipe, run_dir=env.tmp / "b", quiet=True, embeddings=env.emb)
    assert teachers[0].stat().st_mtime_ns == stamp  # reused, not trained and written again
    teachers[0].write_bytes(teachers[0].read_bytes()[:200])  # truncated: rebuilt, same teacher
    rebuilt = distill(env.recipe, run_dir=env.tmp / "c", quiet=True, embeddings=env.emb)
    assert read_verified(teachers[0], json.loads(teachers[0].with_suffix(".json").read_text())["sha256"])
    for a, b, c in zip(first.sets, again.sets, rebuilt.sets):
        assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes() == Path(c["path"]).read_bytes()
        syn = SyntheticSet.load(a["path"])
        assert syn.soft and syn.inner_lr is not None and syn.meta["method"] == "kdmatch"


def test_the_documented_method_gradient_matches_finite_differences(tmp_path):
    from test_methods import context, finite_difference_check, mlp

    example = doc_example()
    method = example.KDMatch(example.KDMatchOptions(steps=2, teacher_steps=10))
    method.setup(context(mlp(), cache_dir=tmp_path))  # float64 students and data
    g = torch.Generator().manual_seed(1)
    learn = Learnables(x=torch.randn(6, 5, generator=g, dtype=torch.float64),
                       label_logits=torch.randn(6, 3, generator=g, dtype=torch.float64),
                       log_lr=torch.tensor(-2.0, dtype=torch.float64)).as_leaves()
    real_x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    finite_difference_check(method, learn, real_x, torch.arange(3).repeat(3))

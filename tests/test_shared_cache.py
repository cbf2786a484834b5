"""A shared embedding cache on a read-only file system: a complete entry is read without writing anything
(no lock file); only a build needs write access, and then the error says what to do."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest

from fakes import embed as embed_fakes
from test_embed import load, make_data, write_recipe


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def reg():
    from distillctl.plugins import load_registry, set_registry

    registry = load_registry(extra_plugins=[(embed_fakes, "tests", "0")])
    set_registry(registry)  # reset after each test by conftest
    embed_fakes.STATE.update(encoded=0, calls=0, fail_after_calls=None)
    return registry


def read_only(monkeypatch, root: Path) -> None:
    """Every open for writing, mkdir and rename under ``root`` fails with EROFS (as on a read-only mount;
    chmod would not stop root, who runs the tests in some containers)."""
    real_open, real_mkdir, real_replace = builtins.open, os.mkdir, os.replace

    def inside(path) -> bool:
        try:
            return root in Path(os.fspath(path)).resolve().parents
        except TypeError:
            return False

    def fail(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def ro_open(file, mode="r", *a, **k):
        if inside(file) and any(c in mode for c in "wax+"):
            fail(file)
        return real_open(file, mode, *a, **k)

    def ro_mkdir(path, *a, **k):
        if inside(path) or Path(os.fspath(path)).resolve() == root:
            if Path(os.fspath(path)).exists():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
            fail(path)
        return real_mkdir(path, *a, **k)

    def ro_replace(src, dst, *a, **k):
        if inside(dst):
            fail(dst)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(builtins, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    monkeypatch.setattr(os, "replace", ro_replace)
    monkeypatch.setattr(os, "open", _ro_os_open(os.open, inside, fail))


def _ro_os_open(real, inside, fail):
    def ro(path, flags, *a, **k):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            fail(path)
        return real(path, flags, *a, **k)
    return ro


def test_a_complete_entry_on_a_read_only_cache_is_a_hit(tmp_path, reg, monkeypatch):
    from distillctl.data.embed import embed, load_embeddings

    recipe = load(write_recipe(tmp_path, make_data(tmp_path)))
    first = embed(recipe)  # filled while writable (by whoever maintains the lab cache)
    (first.cache_dir / ".lock").unlink()  # a cache copied or synced to the read-only mount has none
    read_only(monkeypatch, (tmp_path / "cache").resolve())
    again = embed(recipe)
    assert again.cache_hit and again.cache_dir == first.cache_dir and embed_fakes.STATE["encoded"] == 52
    assert load_embeddings(recipe).splits["train"].X.shape == (30, 8)
    assert not (first.cache_dir / ".lock").exists()


def test_a_missing_entry_on_a_read_only_cache_says_how_to_fix_it(tmp_path, reg, monkeypatch, cli):
    from distillctl.data.embed import embed

    path = write_recipe(tmp_path, make_data(tmp_path))
    recipe = load(path)
    first = embed(recipe)
    (first.cache_dir / "manifest.json").unlink()  # incomplete: it would have to be built
    read_only(monkeypatch, (tmp_path / "cache").resolve())
    r = cli("embed", path)
    assert r.code == 2, r
    assert "cannot write there" in r.err and "DISTILLCTL_CACHE" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1

"""Issue 22, items 5, 8, 9: exports are all or nothing, `load_set` reads every export format back (verified),
a missing extra is exit 2 naming the pip install, no foreign progress bar, short reprs for sets."""

from __future__ import annotations

import builtins
import errno
import json
import os

import pytest
import torch

from distillctl import load_set
from distillctl.distillation.synthetic import SyntheticSet
from distillctl.errors import UserError
from test_export import env, make  # noqa: F401  (env: fixture)


def _same(a: SyntheticSet, b: SyntheticSet) -> None:
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert a.ipc == b.ipc and a.num_classes == b.num_classes and a.label_names == b.label_names
    assert a.sha256 == b.sha256


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "hf"])
@pytest.mark.parametrize("soft", [False, True])
def test_load_set_reads_every_export_format(env, cli, fmt, soft):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    if fmt == "hf":
        pytest.importorskip("datasets")
    _, run = make(env, soft=soft)
    r = cli("export", run.path, "--format", fmt, "--json")
    assert r.code == 0, r
    got = load_set(json.loads(r.out)["path"])
    _same(got, SyntheticSet.load(run.distilled / "ipc2.safetensors"))
    assert got.meta["recipe_name"] == "tiny" and got.meta["exported_from"]["set_file"] == "distilled/ipc2.safetensors"


def test_load_set_refuses_an_edited_export_and_a_missing_sidecar(env, cli):
    _, run = make(env)
    assert cli("export", run.path, "--format", "jsonl").code == 0
    out = run.path / "export" / "ipc2.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rows[0]["x"][0] += 1.0
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="differ from the set it was exported from"):
        load_set(out)
    (run.path / "export" / "ipc2.jsonl.meta.json").unlink()
    with pytest.raises(UserError, match=r"its metadata ipc2\.jsonl\.meta\.json is missing"):
        load_set(out)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_on_a_full_disk_leaves_nothing_and_the_next_export_works(env, cli, monkeypatch, fmt):
    """The sidecar's write fails (ENOSPC): neither the table nor its metadata appear, no temp files stay, and
    the next export is not refused with "already exists"."""
    import distillctl.runs as runs

    _, run = make(env)
    real = runs.atomic_write_bytes

    def full_disk(path, data):
        if str(path).endswith(".meta.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", full_disk)
    r = cli("export", run.path, "--format", fmt)
    assert r.code == 1 and "No space left on device" in r.err, r
    folder = run.path / "export"
    assert not folder.exists() or sorted(os.listdir(folder)) == []
    monkeypatch.setattr(runs, "atomic_write_bytes", real)
    r = cli("export", run.path, "--format", fmt)
    assert r.code == 0, r
    assert sorted(os.listdir(folder)) == [f"ipc2.{fmt}", f"ipc2.{fmt}.meta.json"]
    load_set(folder / f"ipc2.{fmt}")


def test_export_interrupted_between_its_renames_is_not_an_export(env, cli, monkeypatch):
    """The table's rename fails after the sidecar's: the sidecar is taken back; a sidecar left alone (a kill
    between the two renames) is replaced by the next export without --force."""
    _, run = make(env)
    real = os.replace

    def fail_table(src, dst):
        if str(dst).endswith("ipc2.csv"):
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_table)
    assert cli("export", run.path, "--format", "csv").code == 1
    monkeypatch.setattr(os, "replace", real)
    folder = run.path / "export"
    assert sorted(os.listdir(folder)) == []
    (folder / "ipc2.csv.meta.json").write_text(json.dumps({"format": "distillctl.reporting.export/1"}))
    r = cli("export", run.path, "--format", "csv")
    assert r.code == 0, r
    load_set(folder / "ipc2.csv")


@pytest.mark.parametrize("fmt,module,extra", [("parquet", "pyarrow", "distillctl[parquet]"),
                                              ("hf", "datasets", "distillctl[hf]")])
def test_missing_extra_is_exit_2_naming_the_pip_install(env, cli, monkeypatch, fmt, module, extra):
    import importlib.util
    import sys

    _, run = make(env)
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    real_find, real_import = importlib.util.find_spec, builtins.__import__
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == module else real_find(name, *a))

    def no_module(name, *args, **kwargs):
        if name.split(".")[0] == module:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_module)
    r = cli("export", run.path, "--format", fmt)
    assert r.code == 2, r
    assert f"pip install '{extra}'" in r.err and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert not (run.path / "export").exists() or not any((run.path / "export").iterdir())


def test_a_missing_extra_anywhere_is_exit_2(cli, monkeypatch):
    """Any optional module missing at run time (not only export's) maps to exit 2 and its pip install."""
    import distillctl.cli as cli_module

    def boom(*a, **k):
        raise ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")

    monkeypatch.setattr("distillctl.reporting.export.export", boom)
    r = cli("export", "x", "--format", "parquet")
    assert r.code == 2 and "pip install 'distillctl[parquet]'" in r.err, r
    assert cli_module  # imported for the monkeypatch target's module


def test_export_hf_prints_no_progress_bar(env, cli):
    pytest.importorskip("datasets")
    from datasets.utils import logging as ds_logging

    ds_logging.enable_progress_bar()
    _, run = make(env)
    r = cli("export", run.path, "--format", "hf")
    assert r.code == 0, r
    assert "Saving the dataset" not in r.err + r.out and "%|" not in r.err and len(r.out.strip().splitlines()) == 1
    assert ds_logging.is_progress_bar_enabled()  # the user's setting is restored


def test_a_set_prints_in_one_short_line(env):
    _, run = make(env, soft=True)
    s = load_set(run.path)
    text = repr(s)
    assert "\n" not in text and len(text) < 200 and text == str(s)
    assert text.startswith("SyntheticSet(ipc=2, classes=3 [class0, class1, class2], x=(6, 8) float32, soft labels")
    assert s.sha256[:12] in text

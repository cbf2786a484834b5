"""device: auto (the default) resolves in one place; explicit devices are checked; manifests record them."""

from __future__ import annotations

import json

import pytest
import torch

from distillctl.devices import describe_device, resolve_device
from distillctl.errors import UserError

NO_CUDA = not torch.cuda.is_available()


def test_auto_is_cuda_when_torch_sees_it_else_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device() == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_follows_what_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_explicit_cuda_without_a_gpu_is_a_user_error_naming_the_field():
    with pytest.raises(UserError, match=r"embed\.device: 'cuda' but torch sees no CUDA device; use auto or cpu"):
        resolve_device("cuda", field="embed.device")
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda:1")
    d = describe_device("cuda")
    assert d["resolved"] is None and "no CUDA device" in d["error"]


def test_nonsense_device_is_a_user_error():
    with pytest.raises(UserError, match="distill.device: 'gpu0' is not a torch device"):
        resolve_device("gpu0", field="distill.device")


def test_recipe_defaults_are_auto_and_explicit_cpu_still_validates():
    from distillctl.recipe import DistillSettings, EmbedSettings

    assert EmbedSettings().device == "auto" and DistillSettings().device == "auto"
    assert EmbedSettings(device="cpu").device == "cpu"


def test_manifest_records_the_resolved_devices(tmp_path):
    from distillctl.plugins import load_registry, set_registry
    from distillctl.recipe import validate_recipe
    from distillctl.runs import create_run_dir
    from fakes import toyplugins

    registry = load_registry(entry_points=[], extra_plugins=[(toyplugins, "toy-plugins", "1.0")])
    set_registry(registry)  # reset after each test by conftest
    recipe = validate_recipe({"name": "demo", "seed": 5, "dataset": {"name": "toyset", "train": "a.csv"},
                              "distill": {"device": "cpu"}}, base_dir=tmp_path, registry=registry)
    run = create_run_dir(recipe, stage="submit", root=tmp_path / "runs")
    assert json.loads(run.manifest.read_text())["devices"] == {}  # submit runs on no device of the recipe
    create_run_dir(recipe, stage="distill", run_dir=run.path)
    assert json.loads(run.manifest.read_text())["devices"] == {
        "distill": {"requested": "cpu", "resolved": "cpu", "name": "cpu"}}
    # a later stage rewrites the manifest but keeps the device distill ran on
    create_run_dir(recipe, stage="baseline", run_dir=run.path)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["stage"] == "baseline" and manifest["devices"]["distill"]["resolved"] == "cpu"
    auto = validate_recipe({"name": "demo", "seed": 5, "dataset": {"name": "toyset", "train": "a.csv"}},
                           base_dir=tmp_path, registry=registry)
    other = create_run_dir(auto, stage="distill", root=tmp_path / "runs")
    devices = json.loads(other.manifest.read_text())["devices"]
    assert devices["distill"]["requested"] == "auto"
    assert devices["distill"]["resolved"] == str(resolve_device("auto"))


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_cli_embed_with_cuda_on_a_cpu_machine_exits_2(tmp_path, cli):
    from fakes import embed as embed_fakes
    from distillctl.plugins import load_registry, set_registry

    set_registry(load_registry(extra_plugins=[(embed_fakes, "tests", "0")]))  # reset after each test by conftest
    recipe = tmp_path / "r.yaml"
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "a b", "label": "x"}) + "\n"
                                          + json.dumps({"text": "c d", "label": "y"}) + "\n")
    recipe.write_text("name: r\ndataset: {name: local, train: train.jsonl}\nencoder: {name: hash}\n"
                      "embed: {device: cuda}\n")
    r = cli("embed", str(recipe))
    assert r.code == 2 and "embed.device: 'cuda' but torch sees no CUDA device" in r.err, r


def test_release_freed_memory_returns_pages_on_glibc_and_is_a_no_op_elsewhere(monkeypatch):
    """Lockstep fine-tuning trims the C heap after each student's step: where glibc has malloc_trim, freed
    pages go back (the process's resident set falls after a large freed allocation of small chunks); where
    the C library has none, nothing fails."""
    import ctypes
    import sys

    from distillctl import devices

    monkeypatch.setattr(devices, "_TRIM", [])
    monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(name)))
    devices.release_freed_memory()  # no glibc: a no-op
    assert devices._TRIM == [None]
    monkeypatch.undo()
    if not sys.platform.startswith("linux"):
        return
    monkeypatch.setattr(devices, "_TRIM", [])

    def resident() -> int:
        return int(open("/proc/self/statm").read().split()[1])

    chunks = [bytearray(1000) for _ in range(200_000)]  # ~200 MB of small heap chunks (below mmap's threshold)
    keep = chunks[-1]
    del chunks
    before = resident()
    devices.release_freed_memory()
    if devices._TRIM[0] is None:  # another C library
        return
    assert resident() < before - 10_000  # pages (4 KiB): at least ~40 MB handed back
    assert len(keep) == 1000

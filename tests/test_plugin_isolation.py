"""Plugin packages installed on the machine do not leak into the tests (as llm does it under pytest).

tests/conftest.py sets ``DISTILLCTL_LOAD_PLUGINS=""``: discovery then loads distillctl's own entry points
(the built-ins) only. A test that exercises a third-party package names it in that variable (or passes
``load_registry(entry_points=...)``). Each test here first checks that importlib.metadata does see the
"stray" package, so the assertions that it is left out can fail.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys

import pytest

from distillctl.errors import UserError
from distillctl.plugins import LOAD_PLUGINS_ENV, get_registry, installed_registry, load_registry
from fakes.distributions import make_dist

STRAY = """
    from distillctl import hookimpl

    def build(input_dim, num_classes, options):
        import torch.nn as nn
        return nn.Linear(input_dim, num_classes)

    @hookimpl
    def register_students(register):
        register("stray", build, description="installed on the machine, not part of the test setup")
"""


@pytest.fixture
def stray(tmp_path, monkeypatch):
    """A plugin package ``distillctl-stray`` (student ``stray``) that importlib.metadata sees as installed."""
    monkeypatch.syspath_prepend(str(tmp_path))
    make_dist(tmp_path, "distillctl-stray", "0.1", "stray_plugin", STRAY)
    installed = {ep.dist.name for ep in md.entry_points(group="distillctl") if ep.dist}
    assert {"distillctl", "distillctl-stray"} <= installed
    yield tmp_path
    installed_registry.cache_clear()  # a registry loaded while the stray package was on sys.path


def test_the_test_setup_loads_the_builtins_only():
    assert os.environ[LOAD_PLUGINS_ENV] == ""
    registry = get_registry()
    assert {p.package for p in registry.all()} == {"distillctl"}
    assert {"mlp", "transformer", "linear"} <= set(registry.names("student"))


def test_a_stray_installed_plugin_is_not_loaded(stray):
    registry = load_registry()
    assert "stray" not in registry.names("student") and "mlp" in registry.names("student")
    assert "distillctl-stray" in registry.skipped
    assert not registry.failures
    installed_registry.cache_clear()
    assert "stray" not in get_registry().names("student")  # the registry every stage uses
    with pytest.raises(UserError) as err:
        registry.get("student", "stray")
    assert f"not loaded because {LOAD_PLUGINS_ENV} does not name them:" in str(err.value)
    assert "distillctl-stray" in str(err.value)


@pytest.mark.parametrize("value", ["distillctl-stray", "Distillctl_Stray", "other-package, distillctl-stray"])
def test_naming_a_package_opts_it_back_in(stray, monkeypatch, value):
    monkeypatch.setenv(LOAD_PLUGINS_ENV, value)
    registry = load_registry()
    info = registry.get("student", "stray")
    assert (info.package, info.version, info.module) == ("distillctl-stray", "0.1", "stray_plugin")
    assert "mlp" in registry.names("student")  # the built-ins are always loaded
    assert "distillctl-stray" not in registry.skipped


def test_without_the_variable_every_installed_package_is_loaded(stray, monkeypatch):
    monkeypatch.delenv(LOAD_PLUGINS_ENV)
    registry = load_registry()
    assert registry.get("student", "stray").package == "distillctl-stray"
    assert registry.skipped == []


def test_a_subprocess_cli_inherits_the_isolation(stray):
    """`distillctl plugins --json` in a new process, the stray package on its PYTHONPATH: not listed;
    named in the variable: listed."""
    def rows(**env):
        res = subprocess.run([sys.executable, "-m", "distillctl.cli", "plugins", "--json"], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(stray), **env}, timeout=120)
        assert res.returncode == 0, res.stderr
        return {(r["kind"], r["name"]): r["package"] for r in json.loads(res.stdout)}

    isolated = rows()
    assert ("student", "stray") not in isolated and isolated[("student", "mlp")] == "distillctl"
    assert set(isolated.values()) == {"distillctl"}
    assert rows(**{LOAD_PLUGINS_ENV: "distillctl-stray"})[("student", "stray")] == "distillctl-stray"

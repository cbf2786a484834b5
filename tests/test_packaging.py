"""The built wheel ships the built-in plugins under their own import name and declares their entry points."""

from __future__ import annotations

import configparser
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_plugins_and_entry_points(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    wheel = next(tmp_path.glob("distillctl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    for package in project["tool"]["setuptools"]["packages"]:  # every sub-package, every plugin kind
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert "distillctl/hookspecs.py" in names
    assert not any(n.startswith("plugins/") for n in names)  # no collidable top-level name
    assert any(n.startswith("distillctl/samples/agnews/") for n in names)  # the quickstart data
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    parsed = configparser.ConfigParser(delimiters=("=",))
    parsed.optionxform = str  # entry-point names are case-sensitive
    parsed.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert dict(parsed["distillctl"]) == project["project"]["entry-points"]["distillctl"]
    assert dict(parsed["console_scripts"]) == {"distillctl": "distillctl.cli:main"}

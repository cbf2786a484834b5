"""The built wheel ships the built-in plugins under their own import name and declares their entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_plugins_and_entry_points(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    wheel = next(tmp_path.glob("distillctl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for kind in ("datasets", "encoders", "students", "unroll", "schedulers"):
        assert f"distillctl_plugins/{kind}/__init__.py" in names
    assert "distillctl/hookspecs.py" in names
    assert not any(n.startswith("plugins/") for n in names)  # no collidable top-level name
    assert any(n.startswith("distillctl/samples/agnews/") for n in names)  # the quickstart data
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[distillctl]" in text and "students = distillctl_plugins.students" in text
    assert "[console_scripts]" in text and "distillctl = distillctl.cli:main" in text

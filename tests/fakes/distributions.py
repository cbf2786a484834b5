"""A plugin package as pip leaves it, made in a folder: a module plus a ``*.dist-info`` with entry points.

Put the folder on ``sys.path`` (``monkeypatch.syspath_prepend``) or on ``PYTHONPATH`` of a subprocess and
``importlib.metadata`` finds the package like any installed one.
"""

from __future__ import annotations

import importlib.metadata as md
import textwrap
from pathlib import Path


def make_dist(root: Path, dist: str, version: str, module: str, source: str, entry: str | None = None) -> list:
    """Write ``module.py`` (``source``, dedented) and a dist-info naming it in group ``distillctl``;
    returns the distribution's entry points."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[distillctl]\n{entry or module} = {module}\n")
    return list(md.Distribution.at(info).entry_points)

"""Shared fixtures: an isolated embedding cache and a CLI runner that returns (exit code, stdout, stderr).

Two tiers: ``python -m pytest -m "not slow"`` is the fast lane (in-process on fakes, small shapes); tests marked
``slow`` start new processes that import torch, pip-install, run real scheduler jobs or SLURM, load the real
MiniLM or read the real data files. ``bash .ci/run`` runs both.
"""

from __future__ import annotations

import os

import pytest

# Small shapes, reproducible timings: tests never need more than one thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Only distillctl's own entry points (the built-in plugins): a plugin package installed on this machine must
# not change what the tests see. Set before anything loads the registry, and inherited by every subprocess
# (CLI runs, scheduler jobs). A test that exercises third-party packages opts back in by naming them:
# ``monkeypatch.setenv("DISTILLCTL_LOAD_PLUGINS", "distillctl-linear")`` or ``load_registry(entry_points=...)``.
os.environ["DISTILLCTL_LOAD_PLUGINS"] = ""


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own embedding cache unless DISTILLCTL_CACHE is set by the caller."""
    if "DISTILLCTL_TEST_CACHE" in os.environ:
        monkeypatch.setenv("DISTILLCTL_CACHE", os.environ["DISTILLCTL_TEST_CACHE"])
    else:
        monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("DISTILLCTL_QUIET", "1")


@pytest.fixture(autouse=True)
def _installed_registry_after_each_test():
    """Tests switch the plugin registry with ``distillctl.plugins.set_registry`` / ``using_registry``
    (never by monkeypatching ``get_registry``); every test ends with the installed plugins again."""
    yield
    from distillctl import plugins

    plugins.set_registry(None)
    plugins._SWITCHED.clear()


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def cli(capsys):
    """Run ``distillctl ARGS`` in-process through the real entry point (exit-code mapping included)."""
    from distillctl.cli import main
    from distillctl.console import set_quiet

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            set_quiet(False)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run

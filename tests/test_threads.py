"""Torch threads of distillctl processes: one by default, an explicit OMP_NUM_THREADS or --threads wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillctl.threads import DEFAULT_THREADS, THREAD_VARIABLES, configure_threads, resolve_threads

ROOT = Path(__file__).resolve().parent.parent


def test_the_default_is_one_thread():
    assert DEFAULT_THREADS == 1


@pytest.mark.parametrize("explicit, environ, expected", [
    (None, {}, (1, "default")),
    (None, {"OMP_NUM_THREADS": ""}, (1, "default")),  # set but empty: as unset
    (None, {"OMP_NUM_THREADS": "3"}, (3, "OMP_NUM_THREADS")),
    (None, {"OMP_NUM_THREADS": "4,2"}, (None, "OMP_NUM_THREADS")),  # an OpenMP list: the user's to keep
    (None, {"OMP_NUM_THREADS": "0"}, (None, "OMP_NUM_THREADS")),
    (2, {"OMP_NUM_THREADS": "1"}, (2, "--threads")),  # --threads wins over the environment
])
def test_precedence(explicit, environ, expected):
    assert resolve_threads(explicit, environ) == expected


def test_configure_sets_the_variables_torch_reads_without_overwriting_the_users():
    env = {}
    assert configure_threads(None, env) == 1
    assert env == {name: "1" for name in THREAD_VARIABLES}
    env = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "5"}
    assert configure_threads(None, env) == 3
    assert env == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "5", "OPENBLAS_NUM_THREADS": "3"}
    env = {"OMP_NUM_THREADS": "1"}
    assert configure_threads(2, env) == 2 and all(env[name] == "2" for name in THREAD_VARIABLES)
    env = {"OMP_NUM_THREADS": "4,2"}
    assert configure_threads(None, env) is None and env == {"OMP_NUM_THREADS": "4,2"}


def test_configure_applies_to_an_already_imported_torch():
    import torch

    before = torch.get_num_threads()
    try:
        configure_threads(2, {})
        assert torch.get_num_threads() == 2
        configure_threads(1, {})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _threads_of_a_command(args: list[str], env_threads: str | None) -> tuple[int, str | None]:
    """A fresh process runs `distillctl ARGS` (the CLI entry), then imports torch as a command would."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    if env_threads is not None:
        env["OMP_NUM_THREADS"] = env_threads
    code = ("import os, sys\nfrom distillctl.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "assert 'torch' not in sys.modules  # the command itself did not import it\n"
            "import torch\nprint(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    threads, omp = out.stdout.split()[-2:]
    return int(threads), omp


@pytest.mark.slow
def test_cli_commands_run_with_one_thread_unless_told_otherwise():
    validate = ["recipe", "validate", "recipes/quickstart.yaml"]
    # nothing set: one thread (torch alone would take one per core)
    assert _threads_of_a_command(validate, None) == (1, "1")
    # an OMP_NUM_THREADS the user exported is honoured
    assert _threads_of_a_command(validate, "2") == (2, "2")
    # --threads wins over it
    assert _threads_of_a_command(["--threads", "2", *validate], "1") == (2, "2")

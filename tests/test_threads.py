"""Torch threads of distillctl processes: from the machine by default, an explicit OMP_NUM_THREADS or --threads
wins (the machine-derived default itself: tests/test_hostile_threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillctl.threads import DEFAULT_THREADS, THREAD_VARIABLES, configure_threads, resolve_threads

ROOT = Path(__file__).resolve().parent.parent


def test_the_fewest_threads_is_one():
    assert DEFAULT_THREADS == 1


@pytest.fixture
def two_idle_cores(monkeypatch):
    """A machine of 2 usable cores, no quota, nothing else running."""
    import distillctl.threads as threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda root="": None)
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 0)


@pytest.mark.usefixtures("two_idle_cores")
@pytest.mark.parametrize("explicit, environ, expected", [
    (None, {}, (2, "machine")),
    (None, {"OMP_NUM_THREADS": ""}, (2, "machine")),  # set but empty: as unset
    (None, {"OMP_NUM_THREADS": "3"}, (3, "OMP_NUM_THREADS")),
    (None, {"OMP_NUM_THREADS": "4,2"}, (None, "OMP_NUM_THREADS")),  # an OpenMP list: the user's to keep
    (None, {"OMP_NUM_THREADS": "0"}, (None, "OMP_NUM_THREADS")),
    (2, {"OMP_NUM_THREADS": "1"}, (2, "--threads")),  # --threads wins over the environment
])
def test_precedence(explicit, environ, expected):
    assert resolve_threads(explicit, environ) == expected


def test_configure_sets_the_variables_torch_reads_without_overwriting_the_users(two_idle_cores):
    env = {}
    assert configure_threads(None, env) == 2
    assert env == {**{name: "2" for name in THREAD_VARIABLES}, "DISTILLCTL_MACHINE_THREADS": "2"}
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
def test_cli_commands_run_with_the_machines_threads_unless_told_otherwise():
    from distillctl.threads import machine_threads

    validate = ["recipe", "validate", "recipes/quickstart.yaml"]
    # nothing set: what the machine gives (the same count the child measures, unless the load changed)
    threads, omp = _threads_of_a_command(validate, None)
    assert threads == int(omp) and 1 <= threads <= len(os.sched_getaffinity(0))
    assert abs(threads - machine_threads()[0]) <= 1
    # an OMP_NUM_THREADS the user exported is honoured
    assert _threads_of_a_command(validate, "2") == (2, "2")
    # --threads wins over it
    assert _threads_of_a_command(["--threads", "2", *validate], "1") == (2, "2")

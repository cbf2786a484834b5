"""CPU threads of a distillctl process: one torch (OpenMP) thread unless told otherwise.

Why one by default (BENCHMARKS.md, "Torch threads on a busy machine"): torch's OpenMP threads spin while
they wait for each other. With 2 threads per job on a 2-core machine and another torch job on one core,
20 outer steps of the quickstart's ipc-1 stage took 157-167 s instead of 4 s (~40x); with one thread
per job the same run took 4.2-4.3 s, as on a quiet machine. On a quiet machine a second thread gained
nothing for `distill` (3.7-4.2 s against 3.9-4.1 s) and ~1.7x for `eval` with K = 10 students (1.88
against 3.17 s). So one thread loses at most 1.7x where a job owns the machine, and two lose up to 40x
where it does not: a job cannot tell which machine it is on, so the default is the one that holds on
both. `benchmarks/threads.py` re-measures this on any machine.

Precedence, for the commands run directly (``distillctl distill ...``) and for the jobs of ``submit``
(the schedulers export ``OMP_NUM_THREADS`` to each job): ``--threads N`` > an ``OMP_NUM_THREADS`` already
in the environment > :data:`DEFAULT_THREADS`. The library functions (``distillctl.distillation.distill.distill`` ...)
leave the calling process's threads alone.
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping, Optional

#: torch threads per distillctl process when neither ``--threads`` nor ``OMP_NUM_THREADS`` says otherwise
DEFAULT_THREADS = 1

#: the variables torch's OpenMP / MKL / OpenBLAS read when they start (the local scheduler exports the same)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _positive_int(value: Optional[str]) -> Optional[int]:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def resolve_threads(explicit: Optional[int] = None,
                    environ: Optional[MutableMapping[str, str]] = None) -> tuple[Optional[int], str]:
    """``(threads, source)`` with source ``"--threads"``, ``"OMP_NUM_THREADS"`` or ``"default"``.

    An ``OMP_NUM_THREADS`` that is not one positive integer (OpenMP also takes lists such as ``4,2``) is the
    user's to keep: ``(None, "OMP_NUM_THREADS")``, and nothing is changed.
    """
    environ = os.environ if environ is None else environ
    if explicit is not None:
        if explicit < 1:
            raise ValueError(f"threads must be >= 1, got {explicit}")
        return int(explicit), "--threads"
    if environ.get("OMP_NUM_THREADS", "").strip():
        return _positive_int(environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    return DEFAULT_THREADS, "default"


def configure_threads(explicit: Optional[int] = None,
                      environ: Optional[MutableMapping[str, str]] = None) -> Optional[int]:
    """Apply :func:`resolve_threads` to this process; returns the thread count (None: left to OpenMP).

    The variables are set before the command imports torch, so its OpenMP pool starts at that size, and
    processes this one starts (the local scheduler's runner, data loaders) inherit it. When torch is
    already imported (a command called in-process) ``torch.set_num_threads`` applies it as well.
    """
    environ = os.environ if environ is None else environ
    threads, source = resolve_threads(explicit, environ)
    if threads is None:
        return None
    for name in THREAD_VARIABLES:
        if source == "--threads":
            environ[name] = str(threads)
        else:  # an OMP_NUM_THREADS of the user's, or the default: never overwrite what the user exported
            environ.setdefault(name, str(threads))
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads

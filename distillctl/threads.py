"""CPU threads of a distillctl process: the cores it may use, shared among the jobs run at once, less the
cores other processes keep busy.

The default (:func:`machine_threads`) is measured from the machine when the process starts:

1. the cores this process may use: the smallest of its CPU affinity (``taskset``, cpusets, a SLURM
   allocation), the cgroup CPU quota (``cpu.max``, rounded down: a container limited to 2.5 CPUs gets 2) and
   ``SLURM_CPUS_PER_TASK``;
2. shared among the jobs a scheduler runs at once (``DISTILLCTL_JOBS_AT_ONCE``, set by the local scheduler
   to its ``workers``): 4 workers on 16 cores get 4 threads each;
3. less the cores other processes keep busy right now (the runnable tasks of ``/proc/loadavg``, the smallest
   of a few readings 10 ms apart, so a passing process does not count), at least 1.

Why step 3 (BENCHMARKS.md, "Torch threads on a busy machine"): torch's OpenMP threads spin while they wait
for each other. With 2 threads per job on a 2-core machine and another torch job on one core, 20 outer steps
of the quickstart's ipc-1 stage took 157-167 s instead of 4 s (~40x); one thread per job took 4.2-4.3 s. So a
job never starts more threads than there are idle cores. On a quiet machine of one's own the cores are used
(eval K = 10 was 1.6x faster with 2 threads than with 1 on 2 cores; embed 1.8x). A job started on a quiet
machine that another process fills later keeps its threads: give ``--threads 1`` (or ``scheduler.threads:
1``) where foreign jobs come and go. ``benchmarks/threads.py`` re-measures this on any machine.

Precedence, for the commands run directly (``distillctl distill ...``) and for the jobs of ``submit``:
``--threads N`` > an ``OMP_NUM_THREADS`` already in the environment (the slurm scheduler exports
``SLURM_CPUS_PER_TASK``; the local scheduler ``threads`` when set) > :func:`machine_threads`. The library
functions (``distillctl.distillation.distill.distill`` ...) leave the calling process's threads alone.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping, Optional

#: the fewest torch threads a process gets (and the answer where nothing about the machine can be read)
DEFAULT_THREADS = 1
#: jobs a scheduler runs at once on this machine (the local scheduler exports its ``workers``)
JOBS_VARIABLE = "DISTILLCTL_JOBS_AT_ONCE"
#: set beside OMP_NUM_THREADS when the count came from the machine (a scheduler drops both for its jobs, which
#: measure their own share)
MACHINE_VARIABLE = "DISTILLCTL_MACHINE_THREADS"
#: readings of /proc/loadavg (10 ms apart) whose smallest runnable count is taken
LOAD_READINGS = 5

#: the variables torch's OpenMP / MKL / OpenBLAS read when they start (the local scheduler exports the same)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _positive_int(value: Optional[str]) -> Optional[int]:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except (OSError, ValueError):
        return None


def machine_derived(environ: Mapping[str, str]) -> bool:
    """Whether ``OMP_NUM_THREADS`` in ``environ`` is the count :func:`configure_threads` derived from the machine
    for its own process (``MACHINE_VARIABLE`` beside it), not one the user exported: a scheduler's jobs measure
    their own share instead."""
    return environ.get(MACHINE_VARIABLE) is not None and environ.get(MACHINE_VARIABLE) == environ.get(THREAD_VARIABLES[0])


def exported_threads(environ: Mapping[str, str]) -> Optional[int]:
    """The thread count the user exported (``OMP_NUM_THREADS``, one positive integer), or None: unset, not one
    positive integer, or :func:`machine_derived`."""
    return None if machine_derived(environ) else _positive_int(environ.get(THREAD_VARIABLES[0]))


def cgroup_cpus(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` of v1), or None when unlimited or unreadable."""
    text = _read(os.path.join(root, "cpu.max"))
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                return max(float(parts[0]) / float(parts[1]), 0.0) or None
            except (ValueError, ZeroDivisionError):
                return None
        return None
    quota, period = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us")), _read(os.path.join(root, "cpu", "cpu.cfs_period_us"))
    try:
        q, p = int(str(quota).strip()), int(str(period).strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def allowed_cores(environ: Optional[MutableMapping[str, str]] = None, *, cgroup_root: str = "/sys/fs/cgroup") -> tuple[int, str]:
    """``(cores, why)``: the cores this process may use: affinity, cgroup quota (rounded down, at least 1) and
    ``SLURM_CPUS_PER_TASK``, the smallest of them."""
    environ = os.environ if environ is None else environ
    try:
        found = {"CPU affinity": len(os.sched_getaffinity(0))}
    except (AttributeError, OSError):  # macOS, Windows
        found = {"CPU count": os.cpu_count() or 1}
    quota = cgroup_cpus(cgroup_root)
    if quota is not None:
        found["cgroup quota"] = max(1, int(quota))
    slurm = _positive_int(environ.get("SLURM_CPUS_PER_TASK"))
    if slurm is not None:
        found["SLURM_CPUS_PER_TASK"] = slurm
    why = min(found, key=found.get)
    return found[why], why


def busy_cores(loadavg: str = "/proc/loadavg", readings: int = LOAD_READINGS) -> Optional[int]:
    """Cores other processes keep busy now: the runnable tasks of ``/proc/loadavg`` (4th field ``R/T``) less this
    one, the smallest of ``readings`` readings 10 ms apart (a process that runs steadily is runnable in each,
    a passing one is not). None where the file is missing (not Linux)."""
    import time

    counts = []
    for i in range(readings):
        text = _read(loadavg)
        try:
            counts.append(int(text.split()[3].split("/")[0]))
        except (AttributeError, IndexError, ValueError):
            return None
        if i + 1 < readings:
            time.sleep(0.01)
    return max(0, min(counts) - 1)


def machine_threads(environ: Optional[MutableMapping[str, str]] = None, *, cgroup_root: str = "/sys/fs/cgroup",
                    loadavg: str = "/proc/loadavg") -> tuple[int, str]:
    """``(threads, why)``: the default thread count of this process, from the machine (module docstring)."""
    environ = os.environ if environ is None else environ
    cores, source = allowed_cores(environ, cgroup_root=cgroup_root)
    why = [f"{cores} cores ({source})"]
    jobs = _positive_int(environ.get(JOBS_VARIABLE)) or 1
    share = max(1, cores // jobs)
    if jobs > 1:
        why.append(f"shared by {jobs} jobs at once: {share}")
    busy = busy_cores(loadavg)
    threads = share
    if busy:
        idle = max(1, (os.cpu_count() or cores) - busy)
        threads = max(DEFAULT_THREADS, min(share, idle))
        why.append(f"{busy} busy with other processes: {threads}")
    return threads, ", ".join(why)


def resolve_threads(explicit: Optional[int] = None,
                    environ: Optional[MutableMapping[str, str]] = None) -> tuple[Optional[int], str]:
    """``(threads, source)`` with source ``"--threads"``, ``"OMP_NUM_THREADS"`` or ``"machine"`` (see
    :func:`machine_threads`).

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
    return machine_threads(environ)[0], "machine"


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
        else:  # an OMP_NUM_THREADS of the user's, or the machine's: never overwrite what the user exported
            environ.setdefault(name, str(threads))
    if source == "machine":
        environ[MACHINE_VARIABLE] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads

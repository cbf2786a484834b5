"""Issue 22, item 2: the default thread count comes from the machine: CPU affinity, cgroup quota,
SLURM_CPUS_PER_TASK, shared among the jobs a scheduler runs at once, less the cores other processes keep busy."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import distillctl.threads as threads
from distillctl.threads import allowed_cores, busy_cores, cgroup_cpus, machine_threads, resolve_threads


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fake machine: 8 cores in the affinity mask, a cgroup folder and a /proc/loadavg of our own."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    cg = tmp_path / "cgroup"
    cg.mkdir()
    load = tmp_path / "loadavg"

    def set_load(runnable: int) -> None:  # runnable tasks, this process included
        load.write_text(f"0.50 0.40 0.30 {runnable}/300 4242\n")

    set_load(1)
    real = threads.machine_threads

    def measured(environ=None, **kw):
        return real(environ, cgroup_root=str(cg), loadavg=str(load))

    monkeypatch.setattr(threads, "machine_threads", measured)
    return cg, set_load


def test_the_quiet_machine_default_is_its_cores_not_one(machine):
    assert resolve_threads(None, {}) == (8, "machine")


def test_cgroup_quota_v2_and_v1(machine, tmp_path):
    cg, _ = machine
    (cg / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs
    assert cgroup_cpus(str(cg)) == 2.5
    assert allowed_cores({}, cgroup_root=str(cg)) == (2, "cgroup quota")
    assert resolve_threads(None, {}) == (2, "machine")
    (cg / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(str(cg)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(str(v1)) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(str(v1)) is None


def test_affinity_and_slurm_bound_the_cores(machine, monkeypatch):
    assert resolve_threads(None, {"SLURM_CPUS_PER_TASK": "3"}) == (3, "machine")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)  # taskset -c 0,5
    assert resolve_threads(None, {"SLURM_CPUS_PER_TASK": "3"}) == (2, "machine")
    assert allowed_cores({"SLURM_CPUS_PER_TASK": "3"})[1] == "CPU affinity"


def test_jobs_at_once_share_the_cores(machine):
    assert resolve_threads(None, {"DISTILLCTL_JOBS_AT_ONCE": "4"}) == (2, "machine")
    assert resolve_threads(None, {"DISTILLCTL_JOBS_AT_ONCE": "16"}) == (1, "machine")


def test_busy_cores_are_left_alone(machine):
    """Another torch job on 7 of 8 cores: one thread (the 40x case on a 2-core machine: 1 of 2 busy -> 1)."""
    _, set_load = machine
    set_load(8)  # 7 others + this process
    assert resolve_threads(None, {}) == (1, "machine")
    set_load(4)
    assert resolve_threads(None, {}) == (5, "machine")
    n, why = threads.machine_threads({})
    assert why == "8 cores (CPU affinity), 3 busy with other processes: 5"


def test_a_passing_process_is_not_counted(tmp_path, monkeypatch):
    load = tmp_path / "loadavg"
    readings = iter([5, 1, 5, 5, 5])

    def fake_read(path):
        return f"0 0 0 {next(readings)}/10 1" if path == str(load) else None

    monkeypatch.setattr(threads, "_read", fake_read)
    assert busy_cores(str(load)) == 0  # one reading without them: they were passing
    assert busy_cores(str(tmp_path / "missing"), readings=1) is None


def test_busy_cores_reads_the_real_proc_loadavg():
    if not Path("/proc/loadavg").exists():
        pytest.skip("no /proc/loadavg")
    n = busy_cores()
    assert n is not None and n >= 0


def test_local_scheduler_jobs_measure_their_own_share(tmp_path, monkeypatch):
    """threads: null (the default): a job sees no OMP_NUM_THREADS the submitting process derived, and how many
    jobs run at once; a count the user exported is kept."""
    from distillctl.scheduling import Job
    from distillctl_plugins.schedulers.local import LocalOptions, LocalScheduler
    from test_local_scheduler import wait_final

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("DISTILLCTL_MACHINE_THREADS", "2")  # what configure_threads marks as its own
    code = "import os; print('seen', os.environ.get('OMP_NUM_THREADS'), os.environ.get('DISTILLCTL_JOBS_AT_ONCE'))"
    job = Job(id="env", argv=[sys.executable, "-c", code], cwd=str(tmp_path), log=str(tmp_path / "env.log"),
              name="env", kind="test", group="test")
    sched = LocalScheduler(LocalOptions(workers=3))
    wait_final(sched, sched.submit([job], tmp_path / "a"))
    assert "seen None 3" in (tmp_path / "env.log").read_text()
    monkeypatch.delenv("DISTILLCTL_MACHINE_THREADS")  # the user's own export
    job2 = Job(id="env", argv=[sys.executable, "-c", code], cwd=str(tmp_path), log=str(tmp_path / "env2.log"),
               name="env", kind="test", group="test")
    wait_final(sched, sched.submit([job2], tmp_path / "b"))
    assert "seen 2 3" in (tmp_path / "env2.log").read_text()
    assert time  # imported for symmetry with the scheduler tests

"""Built-in schedulers: ``local`` (the default: this machine, no service) and ``slurm`` (sbatch scripts).

Modules are imported inside the factories, so listing plugins stays cheap.
"""

from distillctl import hookimpl
from distillctl_plugins.schedulers.local import LocalOptions
from distillctl_plugins.schedulers.slurm import SlurmOptions


def build_local(options: LocalOptions):
    from distillctl_plugins.schedulers.local import LocalScheduler

    return LocalScheduler(options)


def build_slurm(options: SlurmOptions):
    from distillctl_plugins.schedulers.slurm import SlurmScheduler

    return SlurmScheduler(options)


@hookimpl
def register_schedulers(register):
    register("local", build_local, options=LocalOptions,
             description="this machine: `workers` jobs at a time in a detached runner (default)")
    register("slurm", build_slurm, options=SlurmOptions,
             description="a SLURM cluster: sbatch scripts, job arrays, afterok chains, requeue on timeout")

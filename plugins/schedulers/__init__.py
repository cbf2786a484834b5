"""Built-in schedulers: ``local`` (the default: this machine, no service) and ``slurm`` (sbatch scripts).

Each scheduler class is its own factory: it is built from its validated options.
"""

from distillctl import hookimpl
from distillctl_plugins.schedulers.local import LocalOptions, LocalScheduler
from distillctl_plugins.schedulers.slurm import SlurmOptions, SlurmScheduler


@hookimpl
def register_schedulers(register):
    register("local", LocalScheduler, options=LocalOptions,
             description="this machine: `workers` jobs at a time in a detached runner (default)")
    register("slurm", SlurmScheduler, options=SlurmOptions,
             description="a SLURM cluster: sbatch scripts, job arrays, afterok chains, requeue on timeout")

"""Entry point of the local scheduler's detached runner: ``python -m distillctl_plugins.schedulers.local_runner STATE``.

A module of its own so that ``-m`` does not execute a module the package ``__init__`` already imported.
"""

import sys

from distillctl_plugins.schedulers.local import main

if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main())

"""The kinds of failure the CLI distinguishes (exit codes: 2 bad input, 1 run failed, 3 jobs cancelled).

Plugins raise :class:`UserError` (``from distillctl import UserError``) for anything the user must fix:
a missing file, an option that cannot work with this data or this student. The CLI prints its message
(``error: <line>`` per line) and exits 2, without a traceback unless ``--debug``. Any other exception
from a plugin (``ValueError`` included) is a failed run: exit 1.
"""


class UserError(Exception):
    """Bad input: a recipe, a file, a field or a plugin name. The CLI prints one line and exits 2."""


class RunError(Exception):
    """A run that started with valid input and then failed (NaN loss, a job failed). Exit 1."""

    #: the CLI's exit status for this failure
    exit_code = 1


class RunCancelled(RunError):
    """Jobs that were followed to the end (``submit --wait``) were cancelled before they finished, none
    failed. Exit 3, so a script can tell "stopped on purpose" from "failed" (1) and from success (0)."""

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; the message says where it stopped and the command that continues it.
    The CLI prints it and exits 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str = "", signal_name: str | None = None):
        super().__init__(message)
        self.signal_name = signal_name

"""The two kinds of failure the CLI distinguishes (exit codes: 2 bad input, 1 run failed).

Plugins raise :class:`UserError` (``from distillctl import UserError``) for anything the user must fix:
a missing file, an option that cannot work with this data or this student. The CLI prints its message
(``error: <line>`` per line) and exits 2, without a traceback unless ``--debug``. Any other exception
from a plugin (``ValueError`` included) is a failed run: exit 1.
"""


class UserError(Exception):
    """Bad input: a recipe, a file, a field or a plugin name. The CLI prints one line and exits 2."""


class RunError(Exception):
    """A run that started with valid input and then failed (NaN loss, a job failed). Exit 1."""

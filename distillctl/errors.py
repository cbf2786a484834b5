"""The two kinds of failure the CLI distinguishes (exit codes: 2 bad input, 1 run failed)."""


class UserError(Exception):
    """Bad input: a recipe, a file, a field or a plugin name. The CLI prints one line and exits 2."""


class RunError(Exception):
    """A run that started with valid input and then failed (NaN loss, a job failed). Exit 1."""

"""The built-in distillctl plugins, importable as ``distillctl_plugins``.

They register through the entry-point group ``distillctl`` (see pyproject.toml) exactly as a
third-party package would; nothing in ``distillctl`` imports them by name.
"""

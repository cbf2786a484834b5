"""distillctl: dataset distillation for NLP in the embedding space of a frozen sentence encoder.

This module stays light (no torch, no pydantic) so that `distillctl --help` answers at once.
Plugin authors need ``hookimpl`` and ``UserError`` from here and ``PluginOptions`` from
``distillctl.options``; the base class of each plugin kind is listed in ``distillctl.hookspecs``
and ``docs/plugins.md``.
"""

import pluggy

from distillctl.errors import RunError, UserError

__version__ = "0.1.0"

#: Decorator for plugin hook implementations, e.g. ``@hookimpl def register_students(register): ...``.
hookimpl = pluggy.HookimplMarker("distillctl")

__all__ = ["__version__", "hookimpl", "UserError", "RunError"]

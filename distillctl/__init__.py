"""distillctl: dataset distillation for NLP in the embedding space of a frozen sentence encoder.

This module stays light (no torch, no pydantic) so that `distillctl --help` answers at once.
Plugin authors need only `hookimpl` from here and `PluginOptions` from `distillctl.options`.
"""

import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations, e.g. ``@hookimpl def register_students(register): ...``.
hookimpl = pluggy.HookimplMarker("distillctl")

__all__ = ["__version__", "hookimpl"]

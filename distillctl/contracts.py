"""The plugin contract of every kind, in one table: which base class, which methods are required and
which are optional (with a working default in the base class).

- dataset (``register_datasets``): :class:`distillctl.textdata.DatasetSource`; required ``identity``, ``load``
- encoder (``register_encoders``): :class:`distillctl.encoding.Encoder`; required ``identity``, ``dim``, ``encode``
- student (``register_students``): a ``torch.nn.Module`` (:class:`distillctl.students.Student`); required ``forward``
- method (``register_methods``): :class:`distillctl.methods.Method`; required ``step``
- unroll (``register_unroll_strategies``): :class:`distillctl.unrolling.UnrollStrategy`; required ``plan``
- scheduler (``register_schedulers``): :class:`distillctl.scheduling.Scheduler`; required ``submit``, ``status``,
  ``cancel``
- tracker (``register_trackers``): :class:`distillctl.tracking.Tracker`; required ``start``, ``log_metrics``

:data:`CONTRACTS` has the optional members too.

What a factory returns is checked when a command builds it (:func:`conform`, through
:meth:`distillctl.plugins.PluginInfo.make`): a component that subclasses the base class and overrides
the required methods passes as it is; one that does not subclass it but has every required method
("duck typed") gets the base class's defaults for the optional ones it lacks; anything else is a
:class:`~distillctl.errors.UserError` naming the plugin, its package and what is missing. Students are
``torch.nn.Module`` s and are not wrapped (``torch.func.functional_call`` uses them as they are).

``tests/test_contracts.py`` keeps this table, the base classes and the hook docstrings of
:mod:`distillctl.hookspecs` in step: every public member of a base class is listed here, and every
hook docstring names its base class and each member with its signature.

This module imports nothing heavy: base classes are imported by name when a component is checked.
"""

from __future__ import annotations

import importlib
import inspect
import types
from dataclasses import dataclass, field
from typing import Any

from distillctl.errors import UserError


@dataclass(frozen=True)
class Contract:
    """What a factory of one kind must return."""

    kind: str
    hook: str
    base: str  # dotted path of the base class
    factory: str  # how the core calls the factory
    required: tuple[str, ...]
    optional: tuple[str, ...]
    #: a required member may be replaced by overriding another one (unroll: meta_gradient instead of plan)
    alternatives: dict[str, str] = field(default_factory=dict)
    #: whether :func:`conform` checks the factory's result (students are used as they are)
    checked: bool = True

    def base_class(self) -> type:
        module, _, name = self.base.rpartition(".")
        return getattr(importlib.import_module(module), name)


CONTRACTS: dict[str, Contract] = {
    c.kind: c
    for c in (
        Contract("dataset", "register_datasets", "distillctl.textdata.DatasetSource", "factory(options)",
                 required=("identity", "load"), optional=("describe", "name")),
        Contract("encoder", "register_encoders", "distillctl.encoding.Encoder", "factory(options)",
                 required=("identity", "dim", "encode"),
                 optional=("load", "describe", "pair_mode", "name", "max_tokens", "count_tokens",
                           "dim_from_config")),
        Contract("student", "register_students", "distillctl.students.Student",
                 "factory(input_dim, num_classes, options)", required=("forward",), optional=("features",),
                 checked=False),
        Contract("method", "register_methods", "distillctl.methods.Method", "factory(options)",
                 required=("step",), optional=("setup", "learned_inner_lr", "state_dict", "load_state_dict", "name")),
        Contract("unroll", "register_unroll_strategies", "distillctl.unrolling.UnrollStrategy", "factory(options)",
                 required=("plan",), optional=("meta_gradient", "name"), alternatives={"plan": "meta_gradient"}),
        Contract("scheduler", "register_schedulers", "distillctl.scheduling.Scheduler", "factory(options)",
                 required=("submit", "status", "cancel"),
                 optional=("preflight", "describe", "logs", "log_files", "name", "options", "poll_seconds")),
        Contract("tracker", "register_trackers", "distillctl.tracking.Tracker", "factory(options)",
                 required=("start", "log_metrics"), optional=("log_artifacts", "finish", "submission", "name", "options")),
    )
}

#: base-class attribute values that mean "not set": :func:`conform` replaces them by the plugin's name
_PLACEHOLDER_NAMES = {"", None, "method", "unroll", "scheduler", "dataset", "encoder", "tracker"}


def member_signature(cls: type, name: str) -> str:
    """How a hook docstring writes a member: ``submit(jobs, folder)``, ``encode(texts, pairs, *, batch_size,
    progress)``; a property or attribute is just its name."""
    value = inspect.getattr_static(cls, name, None)
    if not callable(value) or isinstance(value, (property, type)):
        return name
    params = list(inspect.signature(value).parameters.values())[1:]  # drop self
    parts: list[str] = []
    star = False
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.kind is p.KEYWORD_ONLY:
            if not star:
                parts.append("*")
                star = True
            parts.append(p.name)
        else:
            parts.append(p.name)
    return f"{name}({', '.join(parts)})"


def _overrides(obj: Any, base: type, name: str) -> bool:
    """Whether ``obj`` provides ``name`` itself (not only the base class's placeholder)."""
    mine = inspect.getattr_static(type(obj), name, None)
    if mine is None:
        return name in getattr(obj, "__dict__", {})
    return mine is not inspect.getattr_static(base, name, None)


def conform(info: Any, obj: Any) -> Any:
    """Check what ``info``'s factory returned against its kind's contract (see the module doc).

    ``info`` is the plugin's registry entry (a :class:`distillctl.plugins.PluginInfo`: its ``kind``, ``name``,
    ``package``, ``version`` and ``module`` name it in messages); this module does not import the registry,
    which imports it.
    """
    contract = CONTRACTS.get(info.kind)
    if contract is None or not contract.checked:
        return obj
    base = contract.base_class()
    plugin = f"{info.kind} plugin {info.name!r} (package {info.package} {info.version}, {info.module})"
    if obj is None:
        raise UserError(f"{plugin}: its factory returned None, not a {contract.base}")
    if isinstance(obj, base):
        missing = [r for r in contract.required
                   if not _overrides(obj, base, r)
                   and not (r in contract.alternatives and _overrides(obj, base, contract.alternatives[r]))]
    else:
        missing = [r for r in contract.required if not hasattr(obj, r)
                   and not (r in contract.alternatives and hasattr(obj, contract.alternatives[r]))]
        if not missing:
            _fill_defaults(obj, base, contract)
    if missing:
        what = ", ".join(f"{m}()" if callable(getattr(base, m, None)) else m for m in missing)
        raise UserError(f"{plugin}: {type(obj).__name__} does not implement {what}; subclass {contract.base} and "
                        f"implement {', '.join(contract.required)} (see docs/plugins.md)")
    _name(obj, info.name)
    return obj


def _fill_defaults(obj: Any, base: type, contract: Contract) -> None:
    """Give a duck-typed component the base class's default for each optional member it lacks."""
    for name in contract.optional:
        if hasattr(obj, name):
            continue
        value = inspect.getattr_static(base, name, None)
        if isinstance(value, (staticmethod, classmethod)):
            value = getattr(base, name)
        elif callable(value) and not isinstance(value, type):
            value = types.MethodType(value, obj)
        elif isinstance(value, property):
            continue
        try:
            setattr(obj, name, value)
        except (AttributeError, TypeError):  # __slots__ or a read-only object: the caller fails clearly later
            pass


def _name(obj: Any, name: str) -> None:
    """A component that does not name itself gets its plugin name (used in messages and ``describe()``)."""
    if getattr(obj, "name", None) in _PLACEHOLDER_NAMES:
        try:
            obj.name = name
        except (AttributeError, TypeError):
            pass

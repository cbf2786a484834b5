"""Plugin discovery: pluggy + the entry-point group ``distillctl``.

Each entry point names a module (or object) holding hook implementations. Every entry point is
loaded on its own, so one that fails to import is recorded as a :class:`PluginFailure` (and shown by
``distillctl plugins``) while everything else keeps working.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from distillctl import hookspecs
from distillctl.errors import UserError

ENTRY_POINT_GROUP = "distillctl"

#: recipe-facing kind name -> hook that registers it
KIND_HOOKS = {
    "dataset": "register_datasets",
    "encoder": "register_encoders",
    "student": "register_students",
    "unroll": "register_unroll_strategies",
    "scheduler": "register_schedulers",
}
KINDS = tuple(KIND_HOOKS)


@dataclass(frozen=True)
class PluginInfo:
    """One registered component (a dataset, an encoder, a student, ...)."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type  # a distillctl.options.PluginOptions subclass
    package: str
    version: str
    module: str
    description: str = ""

    def parse_options(self, values: dict) -> Any:
        """Validate a recipe section (without ``name``) against this plugin's options model."""
        return self.options.model_validate(values)

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "module": self.module,
            "description": self.description,
        }


@dataclass(frozen=True)
class PluginFailure:
    """An entry point (or one of its hooks) that could not be loaded."""

    entry_point: str
    package: str
    version: str
    error: str
    detail: str = ""

    def as_dict(self) -> dict:
        return {
            "kind": None,
            "name": self.entry_point,
            "package": self.package,
            "version": self.version,
            "error": self.error,
        }


@dataclass
class Registry:
    """Every plugin loaded, by kind and name, plus the entry points that failed."""

    plugins: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failures: list[PluginFailure] = field(default_factory=list)

    # -- lookup -------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> PluginInfo:
        """The plugin ``name`` of ``kind``; an unknown name is a :class:`UserError` listing known ones."""
        known = self.plugins[kind]
        if name in known:
            return known[name]
        listing = ", ".join(f"{n} ({p.package})" for n, p in sorted(known.items())) or "none installed"
        hint = ""
        broken = [f.entry_point for f in self.failures]
        if broken:
            hint = f"; failed to load: {', '.join(broken)} (see `distillctl plugins`)"
        raise UserError(f"unknown {kind} plugin {name!r}; known: {listing}{hint}")

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def all(self) -> list[PluginInfo]:
        return [p for kind in KINDS for _, p in sorted(self.plugins[kind].items())]

    def build(self, kind: str, section: Any, *args: Any) -> Any:
        """Call the factory of the plugin a resolved recipe section names.

        ``section`` is a :class:`distillctl.recipe.PluginSection`; ``args`` go before the options
        (students take ``input_dim, num_classes``).
        """
        return self.get(kind, section.name).factory(*args, section.options)

    # -- registration -------------------------------------------------------------------------
    def add(self, info: PluginInfo) -> None:
        existing = self.plugins[info.kind].get(info.name)
        if existing is not None:
            raise UserError(
                f"{info.kind} plugin name {info.name!r} is registered twice: by package "
                f"{existing.package} ({existing.module}) and by package {info.package} ({info.module})"
            )
        self.plugins[info.kind][info.name] = info


def _register_callback(registry: Registry, kind: str, package: str, version: str, module: str):
    from distillctl.options import PluginOptions

    def register(name: str, factory: Callable[..., Any], *, options: type = PluginOptions,
                 description: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{module}: plugin names must be non-empty strings, got {name!r}")
        if not (isinstance(options, type) and issubclass(options, PluginOptions)):
            raise TypeError(f"{module}: options for {kind} {name!r} must subclass PluginOptions")
        registry.add(PluginInfo(kind, name, factory, options, package, version, module, description))

    return register


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def load_registry(
    entry_points: Iterable[md.EntryPoint] | None = None,
    extra_plugins: Iterable[tuple[object, str, str]] = (),
) -> Registry:
    """Discover plugins and collect what each registers.

    ``entry_points`` defaults to the installed ones in group ``distillctl``; ``extra_plugins`` are
    ``(module_or_object, package, version)`` triples registered directly (used by tests).
    """
    if entry_points is None:
        entry_points = md.entry_points(group=ENTRY_POINT_GROUP)
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    origin: dict[str, tuple[str, str, str]] = {}  # pluggy plugin name -> (package, version, module)

    def _add(obj: object, plugin_name: str, package: str, version: str, label: str) -> None:
        try:
            pm.register(obj, name=plugin_name)
        except Exception as exc:  # e.g. a hook with a wrong signature
            registry.failures.append(PluginFailure(label, package, version, _one_line(exc)))
            return
        origin[plugin_name] = (package, version, getattr(obj, "__name__", label))

    seen: set[tuple[str, str]] = set()
    for ep in sorted(entry_points, key=lambda e: (e.dist.name if e.dist else "", e.name)):
        package = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if (package, ep.value) in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add((package, ep.value))
        label = f"{package}:{ep.name}"
        try:
            obj = ep.load()
        except Exception as exc:
            registry.failures.append(
                PluginFailure(label, package, version, _one_line(exc), traceback.format_exc())
            )
            continue
        _add(obj, label, package, version, label)
    for obj, package, version in extra_plugins:
        label = f"{package}:{getattr(obj, '__name__', repr(obj))}"
        _add(obj, label, package, version, label)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        registry.failures.append(PluginFailure("hook validation", "?", "?", _one_line(exc)))

    # Call each implementation on its own, so every registration is attributed to its package
    # and a hook that raises is reported without hiding the others.
    for kind, hook_name in KIND_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            package, version, module = origin[impl.plugin_name]
            register = _register_callback(registry, kind, package, version, module)
            try:
                impl.function(register=register)
            except UserError:
                raise  # a name clash: an error that names both packages
            except Exception as exc:
                registry.failures.append(
                    PluginFailure(f"{impl.plugin_name} ({hook_name})", package, version,
                                  _one_line(exc), traceback.format_exc())
                )
    return registry


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of installed plugins, loaded once per process."""
    return load_registry()

"""Plugin discovery: pluggy + the entry-point group ``distillctl``.

Each entry point names a module (or object) holding hook implementations. Every entry point is
loaded on its own, so one that fails to import is recorded as a :class:`PluginFailure` (and shown by
``distillctl plugins``) while everything else keeps working. Two packages registering the same name of
the same kind are a *clash*: also recorded, and only a command that uses that name fails (naming both
packages).

The registry the stages use is :func:`get_registry`: the installed plugins, loaded once per process,
unless a registry was switched in with :func:`using_registry` (a context manager) or :func:`set_registry`
(tests, embedding applications). Stage functions decorated with :func:`with_registry` also take an
explicit ``registry=`` argument.

``DISTILLCTL_LOAD_PLUGINS`` narrows discovery (as ``LLM_LOAD_PLUGINS`` does for llm): when it is set, only
distillctl's own entry points (the built-ins) plus those of the distributions it names (comma-separated)
are loaded; ``""`` loads the built-ins only. ``tests/conftest.py`` sets it to ``""`` so plugins installed on
the machine never leak into the test suite.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata as md
import os
import re
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import pluggy

from distillctl import hookspecs
from distillctl.contracts import conform
from distillctl.errors import UserError
from distillctl.options import describe_options, PluginOptions

ENTRY_POINT_GROUP = "distillctl"
#: the distribution whose entry points are the built-in plugins (always loaded)
BUILTIN_DISTRIBUTION = "distillctl"
#: unset: every installed plugin package; set: the built-ins plus the distributions it lists (comma-separated)
LOAD_PLUGINS_ENV = "DISTILLCTL_LOAD_PLUGINS"

#: recipe-facing kind name -> hook that registers it
KIND_HOOKS = {
    "dataset": "register_datasets",
    "encoder": "register_encoders",
    "student": "register_students",
    "method": "register_methods",
    "unroll": "register_unroll_strategies",
    "scheduler": "register_schedulers",
    "tracker": "register_trackers",
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

    def make(self, *args: Any) -> Any:
        """Call the factory with ``args`` (the options last) and check what it returns against the
        contract of its kind (:func:`distillctl.contracts.conform`): a component missing a required
        method is a :class:`UserError` naming the plugin; missing optional ones get the base-class
        defaults."""

        return conform(self, self.factory(*args))

    def options_table(self) -> list[dict]:
        """One row per option: ``name``, ``type``, ``default``, ``required``, ``description``."""

        return describe_options(self.options)

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
    """An entry point (or one of its hooks) that could not be loaded, or a name two packages register.

    For a clash ``kind`` is set, ``entry_point`` is the clashing name and ``package`` / ``version``
    list every package that registers it (comma-separated).
    """

    entry_point: str
    package: str
    version: str
    error: str
    detail: str = ""
    kind: str | None = None

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
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
    #: (kind, name) -> every registration of a name registered more than once (none of them is usable)
    clashes: dict[tuple[str, str], list[PluginInfo]] = field(default_factory=dict)
    #: installed plugin packages left out because DISTILLCTL_LOAD_PLUGINS does not name them
    skipped: list[str] = field(default_factory=list)

    # -- lookup -------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> PluginInfo:
        """The plugin ``name`` of ``kind``; an unknown name is a :class:`UserError` listing known ones,
        a clashing name one naming every package that registers it."""
        if kind not in self.plugins:
            raise UserError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        known = self.plugins[kind]
        if name in known:
            return known[name]
        if (kind, name) in self.clashes:
            raise UserError(clash_message(kind, name, self.clashes[(kind, name)]))
        listing = ", ".join(f"{n} ({p.package})" for n, p in sorted(known.items())) or "none installed"
        hint = ""
        broken = [f.entry_point for f in self.failures]
        if broken:
            hint = f"; failed to load: {', '.join(broken)} (see `distillctl plugins`)"
        if self.skipped:
            hint += f"; not loaded because {LOAD_PLUGINS_ENV} does not name them: {', '.join(self.skipped)}"
        raise UserError(f"unknown {kind} plugin {name!r}; known: {listing}{hint}")

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def all(self) -> list[PluginInfo]:
        return [p for kind in KINDS for _, p in sorted(self.plugins[kind].items())]

    def find(self, name: str, kind: str | None = None) -> list[PluginInfo]:
        """Every plugin called ``name`` (of ``kind`` when given), clashing registrations included."""
        kinds = [kind] if kind else list(KINDS)
        out = [self.plugins[k][name] for k in kinds if name in self.plugins.get(k, {})]
        for (k, n), infos in self.clashes.items():
            if n == name and k in kinds:
                out += infos
        return out

    def build(self, kind: str, section: Any, *args: Any) -> Any:
        """Build the component a resolved recipe section names, checked against its kind's contract.

        ``section`` is a :class:`distillctl.recipe.PluginSection`; ``args`` go before the options
        (students take ``input_dim, num_classes``).
        """
        return self.get(kind, section.name).make(*args, section.options)

    # -- registration -------------------------------------------------------------------------
    def add(self, info: PluginInfo) -> None:
        """Register ``info``; a name already taken in its kind becomes a clash (see :meth:`get`)."""
        key = (info.kind, info.name)
        existing = self.plugins[info.kind].pop(info.name, None)
        if existing is None and key not in self.clashes:
            self.plugins[info.kind][info.name] = info
            return
        infos = self.clashes.setdefault(key, [existing] if existing is not None else [])
        infos.append(info)
        self.failures = [f for f in self.failures if not (f.kind == info.kind and f.entry_point == info.name)]
        self.failures.append(PluginFailure(
            info.name, ", ".join(i.package for i in infos), ", ".join(i.version for i in infos),
            clash_message(info.kind, info.name, infos), kind=info.kind))


def clash_message(kind: str, name: str, infos: list[PluginInfo]) -> str:
    by = " and ".join(f"package {i.package} ({i.module})" for i in infos)
    return (f"{kind} plugin name {name!r} is registered {'twice' if len(infos) == 2 else f'{len(infos)} times'}: "
            f"by {by}; uninstall all but one of them (commands that do not use {name!r} are not affected)")


def _register_callback(registry: Registry, kind: str, package: str, version: str, module: str):
    def register(name: str, factory: Callable[..., Any], *, options: type = PluginOptions,
                 description: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{module}: plugin names must be non-empty strings, got {name!r}")
        if not (isinstance(options, type) and issubclass(options, PluginOptions)):
            raise TypeError(f"{module}: options for {kind} {name!r} must subclass PluginOptions")
        registry.add(PluginInfo(kind, name, factory, options, package, version, module, description))

    return register


def _dist_key(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Distillctl_Linear`` == ``distillctl-linear``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_entry_points() -> tuple[list[md.EntryPoint], list[str]]:
    """The entry points of group ``distillctl`` that :func:`load_registry` loads by default, and the
    distributions left out: every installed package is loaded, or, when ``DISTILLCTL_LOAD_PLUGINS`` is
    set, only distillctl's own entry points plus those of the distributions it names."""
    eps = list(md.entry_points(group=ENTRY_POINT_GROUP))
    wanted = os.environ.get(LOAD_PLUGINS_ENV)
    if wanted is None:
        return eps, []
    allowed = {_dist_key(BUILTIN_DISTRIBUTION)} | {_dist_key(n.strip()) for n in wanted.split(",") if n.strip()}
    keep = [ep for ep in eps if ep.dist is not None and _dist_key(ep.dist.name) in allowed]
    skipped = sorted({ep.dist.name if ep.dist else ep.value for ep in eps if ep not in keep})
    return keep, skipped


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def load_registry(
    entry_points: Iterable[md.EntryPoint] | None = None,
    extra_plugins: Iterable[tuple[object, str, str]] = (),
) -> Registry:
    """Discover plugins and collect what each registers.

    ``entry_points`` defaults to :func:`installed_entry_points` (the installed ones in group ``distillctl``,
    narrowed by ``DISTILLCTL_LOAD_PLUGINS``); ``extra_plugins`` are ``(module_or_object, package, version)``
    triples registered directly (used by tests).
    """
    registry = Registry()
    if entry_points is None:
        entry_points, registry.skipped = installed_entry_points()
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
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
            except Exception as exc:
                registry.failures.append(
                    PluginFailure(f"{impl.plugin_name} ({hook_name})", package, version,
                                  _one_line(exc), traceback.format_exc())
                )
    return registry


@functools.lru_cache(maxsize=1)
def installed_registry() -> Registry:
    """The registry of the installed plugins (entry points), loaded once per process."""
    return load_registry()


#: registries switched in by :func:`using_registry` (innermost last) and :func:`set_registry`
_SWITCHED: list[Registry] = []
_PROCESS: list[Registry] = []


def get_registry() -> Registry:
    """The registry every stage uses: the innermost :func:`using_registry`, else the one given to
    :func:`set_registry`, else the installed plugins (loaded once per process)."""
    if _SWITCHED:
        return _SWITCHED[-1]
    if _PROCESS:
        return _PROCESS[-1]
    return installed_registry()


get_registry.cache_clear = installed_registry.cache_clear  # type: ignore[attr-defined]


@contextlib.contextmanager
def using_registry(registry: Registry | None) -> Iterator[Registry]:
    """Within the block, :func:`get_registry` returns ``registry`` (``None``: leave it as it is)::

        with using_registry(load_registry(extra_plugins=[(my_module, "my-package", "1.0")])):
            embed(recipe)
    """
    if registry is None:
        yield get_registry()
        return
    _SWITCHED.append(registry)
    try:
        yield registry
    finally:
        for i in range(len(_SWITCHED) - 1, -1, -1):  # the innermost entry of this block
            if _SWITCHED[i] is registry:
                del _SWITCHED[i]
                break


def set_registry(registry: Registry | None) -> Registry | None:
    """Make ``registry`` the process-wide registry (``None``: back to the installed plugins); returns
    the previous one (``None`` when there was none). :func:`using_registry` blocks still take precedence."""
    previous = _PROCESS[-1] if _PROCESS else None
    _PROCESS.clear()
    if registry is not None:
        _PROCESS.append(registry)
    return previous


F = TypeVar("F", bound=Callable[..., Any])


def with_registry(fn: F) -> F:
    """Give a stage function an explicit ``registry=`` keyword: when given, the whole call (and
    everything it calls) runs under :func:`using_registry`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, registry: Registry | None = None, **kwargs: Any) -> Any:
        if registry is None:
            return fn(*args, **kwargs)
        with using_registry(registry):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

"""Base class for the options model every plugin declares."""

import json
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo
from pydantic_core import PydanticUndefined


class PluginOptions(BaseModel):
    """Options of one plugin: the keys of its recipe section other than ``name``.

    Unknown keys are errors (``extra="forbid"``), so a typo in a recipe never passes silently.
    Give every field a ``description`` (and the unit, where it has one): ``distillctl recipe schema``
    exports them for editors.
    """

    model_config = ConfigDict(extra="forbid")


def _resolve_recipe_path(value: str, info: ValidationInfo) -> str:
    """Relative paths are taken from the recipe file's directory (``context['base_dir']``)."""
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base:
        path = Path(base) / path
    return os.path.normpath(str(path)) if (base or path.is_absolute()) else str(path)


#: A file path in plugin options, resolved against the recipe file's directory.
RecipePath = Annotated[str, AfterValidator(_resolve_recipe_path)]


def type_name(annotation: Any) -> str:
    """A short, readable form of an option's type: ``int``, ``list[int]``, ``adam | sgd``, ``str | None``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def describe_options(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One row per field of an options model: ``name``, ``type``, ``default`` (JSON-able; ``None`` when
    required), ``required`` and ``description`` -- what ``distillctl plugins show NAME`` prints."""
    rows = []
    for name, f in model.model_fields.items():
        required = f.is_required()
        default: Any = None
        if not required:
            default = f.default_factory() if f.default_factory is not None else f.default
            if default is PydanticUndefined:
                default = None
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            try:
                json.dumps(default)
            except (TypeError, ValueError):
                default = repr(default)
        rows.append({"name": f.alias or name, "type": type_name(f.annotation), "default": default,
                     "required": required, "description": f.description or ""})
    return rows

"""Base class for the options model every plugin declares."""

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo


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

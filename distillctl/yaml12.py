"""YAML for recipes with the YAML 1.2 core schema's plain scalars (PyYAML implements YAML 1.1).

Under YAML 1.1 ``name: off`` is ``False``, ``0123`` is 83 (octal), ``1:30`` is 90 (base 60) and
``2024-01-01`` a date, while ``1e-3`` stays a string. A recipe means none of that, so recipes are read
with the 1.2 core schema: booleans are only ``true``/``false`` (any case form the spec lists), ``on``,
``off``, ``yes``, ``no``, ``y``, ``n`` are strings, integers are decimal (``0123`` is 123; octal and hex
only with ``0o`` / ``0x``), ``1e-3`` is a float, and dates and base-60 numbers are strings.

:func:`dump` writes YAML that reads back the same under both schemas: a string a YAML 1.1 *or* 1.2
reader would take for something else (``off``, ``1e3``, ``0o17``) is quoted.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# The YAML 1.2.2 core schema (https://yaml.org/spec/1.2.2/#1023-core-schema), tag by tag.
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the YAML 1.2 core schema's implicit types (and ``<<`` merge keys)."""


# Start from no implicit resolvers (a copy: SafeLoader's own table stays as it is), keep the merge key.
RecipeLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag == "tag:yaml.org,2002:merge"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""])


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # "0123" -> 123: a leading zero is not octal in YAML 1.2


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() == "true"


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(("inf", "nan")):
        return float(text.replace(".", ""))
    return float(text)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
RecipeLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
RecipeLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


class RecipeDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that also quotes strings the 1.2 core schema would read as numbers."""


RecipeDumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
# Added after the 1.1 resolvers: a string matching either set is not "plain-safe", so it gets quoted.
RecipeDumper.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
RecipeDumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))
RecipeDumper.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))


def load(text: str) -> Any:
    """Parse YAML text with the 1.2 core schema (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader


def dump(data: Any, **kwargs: Any) -> str:
    """YAML text of plain data that both YAML 1.1 and 1.2 readers read back unchanged."""
    return yaml.dump(data, Dumper=RecipeDumper, **kwargs)

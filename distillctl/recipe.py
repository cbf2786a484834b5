"""Recipes: YAML or TOML files validated by pydantic v2 (``extra="forbid"`` everywhere).

A recipe is validated in two passes. Pass 1 checks the core fields (``distill.outer.lr`` ...) and
that every plugin section has a ``name``; pass 2 looks each plugin up in the registry and validates
the rest of its section against the options model the plugin declared. Both passes report every
problem as one line ``FILE: FIELD.PATH: what is wrong (what is allowed)``.

Relative paths in plugin options (fields typed :data:`distillctl.options.RecipePath`) are resolved
against the directory of the recipe file, so a resolved recipe can be run from anywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from distillctl.errors import UserError


class RecipeError(UserError):
    """One or more problems in a recipe; ``str()`` is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PluginSection(BaseModel):
    """``{name: <plugin>, <that plugin's options>}``; ``options`` holds the validated options model."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(description="Name of the plugin (see `distillctl plugins`).")
    options: Any = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _split_options(cls, data: Any) -> Any:
        if isinstance(data, str):  # shorthand: `scheduler: local`
            return {"name": data, "options": {}}
        if isinstance(data, dict):
            data = dict(data)
            name = data.pop("name", None)
            out = {"options": data}
            if name is not None:
                out["name"] = name
            return out
        return data

    @model_serializer(mode="plain")
    def _flatten(self) -> dict:
        opts = self.options
        if isinstance(opts, BaseModel):
            opts = opts.model_dump(mode="json")
        return {"name": self.name, **(opts or {})}


# -- core sections ------------------------------------------------------------------------------

class EmbedSettings(Section):
    val_size: float = Field(
        0.1, gt=0,
        description="Validation rows carved from train when the dataset has no validation split: a "
        "fraction (0 < x < 1) or a row count (x >= 1). The split is stratified and seeded by `seed`.",
    )
    test_size: float = Field(
        0.2, gt=0,
        description="Test rows held out from train when the dataset has no test split (before `val` is "
        "carved): a fraction (0 < x < 1) or a row count (x >= 1); stratified, seeded by `seed`. They are "
        "only ever used for final scores.",
    )
    batch_size: int = Field(64, ge=1, description="Sentences per encoder forward pass.")
    dtype: Literal["float32", "float16"] = Field("float32", description="Storage type of the cached vectors.")
    device: str = Field("auto", description="Torch device for the encoder: `auto` (CUDA when torch sees it, else "
                        "CPU), `cpu`, `cuda`, `cuda:1`.")
    bad_rows: Literal["skip", "fail"] = Field(
        "skip", description="Rows with empty or non-text fields: skip them (the count is reported) or fail."
    )
    shard_size: int = Field(
        2048, ge=1, description="Rows per cache shard; an interrupted embed resumes at the last whole shard."
    )


class OptimizerSettings(Section):
    """The optimiser fields shared by the inner loop, the outer loop and the evaluated students."""

    optimizer: Literal["adam", "sgd"] = Field("adam", description="Optimiser: `adam` or `sgd` (with momentum).")
    lr: float = Field(0.001, gt=0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum when `optimizer` is sgd.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam (beta1, beta2).")


class InnerSettings(OptimizerSettings):
    """The student trained on the synthetic set inside an outer step (bptt; krr's pool; mtt's lr start)."""

    lr: float = Field(0.001, gt=0, description="Inner learning rate (initial value when `learn_lr` is set).")
    batch_per_class: Optional[int] = Field(
        None, ge=1, description="Synthetic rows per class in each inner step; null = the whole synthetic set."
    )
    population: int = Field(
        1, ge=1, description="Students trained at once in the inner loop (vmapped); the outer loss is their mean."
    )
    learn_lr: bool = Field(False, description="Learn the inner learning rate (log-parametrised) with the set.")


class OuterSettings(OptimizerSettings):
    """The optimiser of the synthetic tensors (shared by every method)."""

    lr: float = Field(0.001, gt=0, description="Outer learning rate.")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Outer learning-rate schedule over a stage's `iterations`: `constant`, or "
        "`cosine` (outer step t = 1..iterations uses lr x (1 + cos(pi (t - 1) / iterations)) / 2: the full lr "
        "first, near 0 at the end)."
    )
    iterations: int = Field(2000, ge=1, description="Outer (meta-gradient) steps per Boost-DD stage.")
    real_batch: int = Field(4096, ge=1, description="Real training rows scored per outer step.")
    clip: float = Field(
        2.0, ge=0, description="Clip the meta-gradient norm at clip x (EMA of past norms); 0 disables."
    )
    clip_ema: float = Field(0.9, ge=0, lt=1, description="Decay of the EMA of meta-gradient norms used by `clip`.")
    val_every: int = Field(100, ge=1, description="Outer steps between validations (fresh students, `val` split).")
    val_seeds: int = Field(3, ge=1, description="Fresh students per validation.")
    ckpt_every: int = Field(100, ge=1, description="Outer steps between checkpoints.")
    keep_checkpoints: int = Field(3, ge=1, description="Newest checkpoints kept per stage.")
    max_seconds: Optional[float] = Field(
        None, gt=0, description="Wall-clock budget per stage in seconds; null = no limit."
    )
    label_lr: Optional[float] = Field(
        None, gt=0, description="Outer learning rate of the soft-label logits; null = `lr`."
    )
    lr_lr: Optional[float] = Field(
        None, gt=0, description="Outer learning rate of the log inner learning rate (`inner.learn_lr`); null = `lr`."
    )


#: the one-line migration message for recipes written before methods were plugins (distillctl < 0.2)
MOVED_UNROLL = ("`distill.unroll` moved into the bptt method: write `distill.method: {name: bptt, unroll: "
                "{name: ratbptt, window: 40, total: 100}}` (and --set/--sweep distill.method.unroll.window=...)")


class BoostSettings(Section):
    beta: float = Field(
        0.3, ge=0, le=1,
        description="Boost-DD damping of updates to rows inherited from the previous stage "
        "(1 = plain warm start, 0 = frozen).",
    )


class DistillSettings(Section):
    ipc: list[int] = Field(
        [10], description="Instances per class: one value, or a strictly increasing Boost-DD chain [1, 5, 10]."
    )
    init: Literal["real", "mean", "random"] = Field(
        "real", description="Initialise synthetic rows from random real training vectors of each class (`real`), "
        "from means of random equal parts of each class (`mean`; the class mean at ipc 1), or at random (Gaussian "
        "with the training set's per-dimension mean and std).",
    )
    soft_labels: bool = Field(False, description="Learn soft labels (logits per synthetic row) with the vectors.")
    device: str = Field("auto", description="Torch device of the distillation: `auto` (CUDA when torch sees it, "
                        "else CPU), `cpu`, `cuda`, `cuda:1`.")
    method: PluginSection = Field(
        default_factory=lambda: PluginSection(name="bptt"),
        description="Distillation method and its options: `bptt` (with its `unroll` strategy), `krr`, `dm`, "
        "`mtt`, or a third-party method (see `distillctl plugins`).",
    )
    inner: InnerSettings = Field(default_factory=InnerSettings)
    outer: OuterSettings = Field(default_factory=OuterSettings)
    boost: BoostSettings = Field(default_factory=BoostSettings)

    @model_validator(mode="before")
    @classmethod
    def _moved_unroll(cls, data: Any) -> Any:
        if isinstance(data, dict) and "unroll" in data:
            raise ValueError(MOVED_UNROLL)
        return data

    @field_validator("ipc", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) else v

    @field_validator("ipc")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one value")
        if any(i < 1 for i in v):
            raise ValueError("values must be >= 1")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("a Boost-DD chain must be strictly increasing, e.g. [1, 5, 10]")
        return v


class EvalSettings(OptimizerSettings):
    """How every evaluated student is trained (distilled sets, baselines, validation inside distill)."""

    seeds: int = Field(10, ge=1, description="Fresh students (K seeds) per evaluated set; report mean ± std.")
    steps: int = Field(1000, ge=1, description="Optimiser steps per student (the same for every arm).")
    batch_size: int = Field(256, ge=1, description="Rows per step; sets smaller than this are used whole.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay of the evaluated students.")


class BaselineSettings(Section):
    kinds: list[Literal["random", "herding", "kcenter", "full", "majority"]] = Field(
        ["random", "full", "majority"], description="Baseline arms run by `submit` next to the distilled sets."
    )
    ipc: Optional[list[int]] = Field(None, description="IPC values for subset baselines; null = `distill.ipc`.")


class Recipe(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Recipe name; runs go to runs/<name>/<id>/.",
    )
    description: str = Field("", description="Free text shown in reports.")
    seed: int = Field(0, ge=0, description="Seed of every random choice (val split, init, batches, students).")
    dataset: PluginSection = Field(description="Dataset plugin and its options.")
    encoder: PluginSection = Field(
        default_factory=lambda: PluginSection(name="sentence-transformers"),
        description="Frozen encoder plugin and its options.",
    )
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    student: PluginSection = Field(
        default_factory=lambda: PluginSection(name="mlp"), description="Student network plugin and its options."
    )
    distill: DistillSettings = Field(default_factory=DistillSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    baseline: BaselineSettings = Field(default_factory=BaselineSettings)
    scheduler: PluginSection = Field(
        default_factory=lambda: PluginSection(name="local"), description="Job scheduler plugin for `submit`."
    )
    runs_dir: str = Field("runs", description="Root folder of run directories (relative to the working directory).")

    # -- helpers used by the stages -------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the recipe's core fields that differ from their defaults.

        Leaving defaults out keeps the fingerprint of a run stable when a later distillctl adds a field
        with a default (``--resume`` of an older run still matches); a value written out that equals
        the default fingerprints like an omitted one. Plugin sections count with all their options.
        """
        data = self.model_dump(mode="json", exclude_defaults=True)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


#: plugin sections of a recipe: (field path, plugin kind)
PLUGIN_SECTIONS = (
    ("dataset", "dataset"),
    ("encoder", "encoder"),
    ("student", "student"),
    ("distill.method", "method"),
    ("scheduler", "scheduler"),
)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _describe(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if err["type"] not in ("value_error", "assertion_error") and "input" in err:
        given = err["input"]
        if not isinstance(given, (dict, list)) or len(repr(given)) < 60:
            msg += f" (got {given!r})"
    return msg


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The field names of the (sub)model an ``extra_forbidden`` error points into."""
    for part in loc[:-1]:
        if part == "options" or isinstance(part, int):
            return None
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return [n for n in model.model_fields if n != "options"]


def read_recipe_file(path: str | Path) -> dict:
    """Parse a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict, safely."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"{path}: invalid YAML{where}: {problem}") from exc
    elif suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: invalid TOML: {exc}") from exc
    else:
        raise UserError(f"{path}: unknown recipe format {suffix!r}; use .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``60``, ``true``, ``[1, 5]``).

    Setting a plugin section's ``name`` to another plugin (``student.name=transformer``,
    ``distill.method.name=krr``) starts that section afresh from the new plugin's defaults: the old
    plugin's options would not be valid for it. Overrides after it in the list set the new plugin's options.
    """
    import copy

    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"{source} {item!r}: expected KEY.PATH=VALUE, e.g. distill.outer.lr=0.003")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise UserError(f"{source} {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str):
                child = node[part] = {"name": child}  # `scheduler: local` shorthand
            elif not isinstance(child, dict):
                raise UserError(f"{source} {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        if len(parts) > 1 and parts[-1] == "name" and "name" in node and node["name"] != value:
            node.clear()  # another plugin: the old one's options do not apply to it
        node[parts[-1]] = value
    return data


def validate_recipe(data: dict, *, source: str = "<recipe>", base_dir: str | Path | None = None,
                    registry=None) -> Recipe:
    """Validate a recipe dict (both passes). Raises :class:`RecipeError` listing every problem."""
    from distillctl.plugins import get_registry

    problems: list[str] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems += [
            _one_problem(source, err,
                         _allowed_fields(Recipe, err["loc"]) if err["type"] == "extra_forbidden" else None)
            for err in exc.errors()
        ]

    # Pass 2 works on the raw sections, so plugin problems are reported even when pass 1 failed.
    registry = registry or get_registry()
    context = {"base_dir": str(Path(base_dir).resolve()) if base_dir is not None else None}
    for path, kind in PLUGIN_SECTIONS:
        raw = _raw_section(data, path)
        if raw is None:  # absent: the default section of the core model (e.g. scheduler: local)
            if recipe is None:
                continue
            section = _get_path(recipe, path)
            raw = {"name": section.name, **(section.options or {})}
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            continue  # pass 1 already reported it
        raw = dict(raw)
        name = raw.pop("name")
        options = _plugin_options(kind, name, raw, path, registry, context, source, problems)
        if options is None:
            continue
        if recipe is not None:
            _get_path(recipe, path).options = options
    if problems:
        raise RecipeError(problems)
    return recipe


def nested_plugin_kind(field: Any) -> str | None:
    """The plugin kind of a plugin's option that is itself a plugin section (e.g. bptt's ``unroll``)."""
    extra = getattr(field, "json_schema_extra", None)
    return extra.get("plugin_kind") if isinstance(extra, dict) else None


def _plugin_options(kind: str, name: str, raw: dict, where: str, registry, context: dict, source: str,
                    problems: list[str]) -> BaseModel | None:
    """Validate one plugin section (``raw`` without ``name``) against the options its plugin declares,
    then its options that are plugin sections themselves (``Field(json_schema_extra={"plugin_kind": KIND})``,
    e.g. bptt's ``unroll``), in place. Appends one line per problem; None when the section is invalid."""
    try:
        info = registry.get(kind, name)
    except UserError as exc:
        problems.append(f"{source}: {where}.name: {exc}")
        return None
    try:
        options = info.options.model_validate(raw, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            allowed = list(info.options.model_fields) if err["type"] == "extra_forbidden" else None
            problems.append(_one_problem(source, err, allowed, prefix=where, plugin=f"{kind} {name!r}"))
        return None
    for fname, field in type(options).model_fields.items():
        nested_kind, section = nested_plugin_kind(field), getattr(options, fname, None)
        if nested_kind is None or not isinstance(section, PluginSection) or isinstance(section.options, BaseModel):
            continue  # not a plugin section, or already validated (a recipe validated twice)
        nested = _plugin_options(nested_kind, section.name, section.options or {}, f"{where}.{fname}", registry,
                                 context, source, problems)
        if nested is not None:
            section.options = nested
    return options


def _raw_section(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _one_problem(source: str, err: dict, allowed: list[str] | None, prefix: str = "",
                 plugin: str | None = None) -> str:
    loc = _loc(tuple(p for p in err["loc"] if p != "options"))
    field = ".".join(x for x in (prefix, loc) if x) or "(top level)"
    line = f"{source}: {field}: {_describe(err)}"
    if err["type"] == "extra_forbidden" and allowed is not None:
        owner = f" of {plugin}" if plugin else ""
        line += f" (allowed fields{owner}: {', '.join(allowed) or 'none'})"
    return line


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, registry=None) -> Recipe:
    """Read, override and validate a recipe file. Raises :class:`RecipeError` / :class:`UserError`."""
    path = Path(path)
    data = read_recipe_file(path)
    data = apply_overrides(data, list(overrides or []))
    return validate_recipe(data, source=str(path), base_dir=path.parent, registry=registry)


def recipe_json_schema(registry=None) -> dict:
    """One JSON Schema for recipes, with each plugin section a ``oneOf`` over installed plugins."""
    from pydantic import create_model

    from distillctl.plugins import get_registry

    registry = registry or get_registry()

    def union_for(kind: str):
        variants = []
        for name in registry.names(kind):
            info = registry.get(kind, name)
            model_name = f"{kind}_{name}".replace("-", "_").replace(".", "_")
            nested = {fname: (Optional[union_for(nested_plugin_kind(f))], Field(None, description=f.description))
                      for fname, f in info.options.model_fields.items() if nested_plugin_kind(f)}
            variants.append(create_model(
                model_name, __base__=info.options,
                name=(Literal[name], Field(description=info.description or f"{kind} plugin {name}")),
                **nested,
            ))
        if not variants:
            return dict
        return Union[tuple(variants)] if len(variants) > 1 else variants[0]

    distill_schema = create_model("DistillSettingsSchema", __base__=DistillSettings,
                                  method=(Optional[union_for("method")], Field(None, description="Distillation method.")))
    recipe_schema = create_model(
        "Recipe", __base__=Recipe,
        dataset=(union_for("dataset"), Field(description="Dataset plugin and its options.")),
        encoder=(Optional[union_for("encoder")], Field(None, description="Frozen encoder plugin.")),
        student=(Optional[union_for("student")], Field(None, description="Student network plugin.")),
        distill=(Optional[distill_schema], Field(None, description="Distillation settings.")),
        scheduler=(Optional[union_for("scheduler")], Field(None, description="Job scheduler plugin.")),
    )
    schema = recipe_schema.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "distillctl recipe"
    return schema

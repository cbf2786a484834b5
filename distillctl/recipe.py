"""Recipes: YAML or TOML files validated by pydantic v2 (``extra="forbid"`` everywhere).

A recipe is validated in two passes. Pass 1 checks the core fields (``distill.outer.lr`` ...) and
that every plugin section has a ``name``; pass 2 looks each plugin up in the registry and validates
the rest of its section against the options model the plugin declared. Both passes report every
problem as one line ``FILE: FIELD.PATH: what is wrong (what is allowed)``.

Relative paths in plugin options (fields typed :data:`distillctl.options.RecipePath`) are resolved
against the directory of the recipe file, so a resolved recipe can be run from anywhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from distillctl import yaml12
from distillctl.errors import UserError
from distillctl.plugins import get_registry


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
    level: Literal["vectors", "tokens"] = Field(
        "vectors", description="What the cache holds and the students read: `vectors` (one sentence vector per "
        "text from the frozen `encoder`) or `tokens` (token ids and attention masks from the student model's own "
        "tokenizer, for a student that fine-tunes a pretrained transformer, e.g. `finetune`; pairs encoded "
        "jointly). The student(s) must read this level.",
    )
    max_length: int = Field(
        64, ge=2, description="Token level only: tokens per text (a pair together), padded and truncated to it.",
    )
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
        "fail", description="Rows a file cannot give whole (malformed quoting, wrong number of fields, "
        "undecodable bytes, an empty or non-text field, no label): `fail` with the file, line and what was found, "
        "or `skip` them (counted per reason with their lines in the run's notes and summary)."
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

    lr: float = Field(
        0.001, gt=0, description="Inner learning rate (initial value when `learn_lr` is set). 1e-3 was chosen on "
        "`val` (BENCHMARKS.md, \"How the settings were chosen\": AG News MLP ipc 1, 87.82 % against 87.73 % with "
        "3e-3) and is the eval protocol's lr."
    )
    batch_per_class: Optional[int] = Field(
        10, ge=1, description="Synthetic rows per class in each inner step; null = the whole synthetic set. "
        "10 is the value of every shipped recipe tuned on `val` (not varied there); stages up to ipc 10 use "
        "the whole set either way."
    )
    population: int = Field(
        1, ge=1, description="Students trained at once in the inner loop (vmapped); the outer loss is their mean. "
        "1: for the MLP 4 students did not help on `val` (87.78 vs 87.82 % at ipc 1) at 4x the cost. The "
        "Transformer student needs more (its recipes use 4 and 12: 12 raised ipc-10 `val` from 74.6 to 77.1 %)."
    )
    learn_lr: bool = Field(
        False, description="Learn the inner learning rate (log-parametrised) with the set. Off: on `val` it did "
        "not help (AG News MLP ipc 1: 87.74 vs 87.82 %)."
    )


#: `distill.outer.patience` of a recipe that does not set it (validations without a better set before a stage
#: stops: early stopping on by default), and its measurement (BENCHMARKS.md, "Defaults that stop when done")
PATIENCE = 4
PATIENCE_WHY = (
    "A recipe that does not set it gets 4 (early stopping on by default; a resolved recipe records it): replayed on "
    "the validation curves of AG News with the MLP (BENCHMARKS.md, \"Defaults that stop when done\"), the default "
    "method's best sets came at step 100 (ipc 1) and 150 (ipc 10) of 400 and no later validation passed them, so "
    "any patience from 1 kept the same set (test 87.55 / 87.62 %, 99.67 / 99.75 % of the strongest full-data "
    "reference); 4 stops at step 300 / 350 and keeps a margin for bptt, whose ipc-10 stage of the shipped chain "
    "improved again after one flat validation. The shipped 400-step recipes set null: "
    "their ipc-5 stage found its best set at the last of 400 steps after 6 validations without one (88.04 vs "
    "88.01 % val), which any patience below 7 would have lost.")


class OuterSettings(OptimizerSettings):
    """The optimiser of the synthetic tensors (shared by every method)."""

    lr: float = Field(
        0.003, gt=0, description="Outer learning rate. 3e-3, chosen on `val` for every shipped recipe "
        "(BENCHMARKS.md, \"How the settings were chosen\"; 1e-2 gave 87.87 vs 87.82 % at AG News MLP ipc 1, "
        "within the ~0.2 pp noise of `val`, and 1e-3 needed 800 steps for 87.91 %)."
    )
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="Outer learning-rate schedule over a stage's `iterations`: `constant`, or "
        "`cosine` (outer step t = 1..iterations uses lr x (1 + cos(pi (t - 1) / iterations)) / 2: the full lr "
        "first, near 0 at the end). cosine was chosen on `val` (AG News MLP, RaT-BPTT 40/100: ipc 1 87.53 vs "
        "87.23 %, ipc 10 87.99 vs 87.84 % for constant)."
    )
    iterations: int = Field(
        400, ge=1, description="Outer (meta-gradient) steps per Boost-DD stage. 400, as in the recipes tuned on "
        "`val`: their best sets came at steps 100-400, and 800 steps did not pass the noise of `val` "
        "(BENCHMARKS.md). The Transformer chains use 100 steps per stage to bound their time."
    )
    real_batch: int = Field(
        2048, ge=1, description="Real training rows scored per outer step. 2,048, as chosen on `val`: 4,096 rows "
        "(87.43 vs 87.23 % at AG News MLP ipc 1, RaT-BPTT) and all 11,907 training rows (87.72 vs 87.82 %, full "
        "BPTT) did not help beyond noise. The Transformer recipes use 1,024."
    )
    clip: float = Field(
        2.0, ge=0, description="Clip the meta-gradient norm at clip x (EMA of past norms); 0 disables."
    )
    clip_ema: float = Field(0.9, ge=0, lt=1, description="Decay of the EMA of meta-gradient norms used by `clip`.")
    val_every: int = Field(
        50, ge=1, description="Outer steps between validations (fresh students, `val` split); the best set on "
        "`val` is kept. 50, as in every tuned recipe: the AG News MLP's ipc-1 stage had its best set at step "
        "100 of 400, and validating every 25 steps (6 students) found no better set (87.82 %)."
    )
    val_seeds: int = Field(
        3, ge=1, description="Fresh students per validation (3 in the MLP recipes; the Transformer recipe uses "
        "6, its students vary more)."
    )
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
    patience: Optional[int] = Field(
        None, ge=1, description="Early stopping: end a stage when this many validations in a row (every "
        "`val_every` steps) did not improve the best set on `val`; the stop and its reason are logged "
        "(metrics.jsonl event `stopped`) and kept in the set's sidecar; the saved set is the best on `val` either "
        "way. null = off (run all `iterations`). " + PATIENCE_WHY
    )


#: the one-line migration message for recipes written before methods were plugins (distillctl < 0.2)
MOVED_UNROLL = ("`distill.unroll` moved into the bptt method: write `distill.method: {name: bptt, unroll: "
                "{name: ratbptt, window: 40, total: 100}}` (and --set/--sweep distill.method.unroll.window=...)")


class BoostSettings(Section):
    beta: float = Field(
        1.0, ge=0, le=1,
        description="Boost-DD damping of updates to rows inherited from the previous stage "
        "(1 = plain warm start, 0 = frozen). 1 was chosen on `val` (AG News MLP chain 1 -> 5 -> 10: ipc 10 "
        "88.39 vs 88.08 % with 0.3, equal at ipc 1 and 5); the Transformer chains keep 0.3 (not tuned).",
    )


class TokenSettings(Section):
    """``distill.tokens``: how a token-level set (``embed.level: tokens``) is built and trained for."""

    init_seed: Optional[int] = Field(
        None, ge=0, description="Seed of the initial model the set is distilled for (the pretrained body with "
        "this seed's head); recorded in the set as `init_seed`, and `eval`'s `distilled-init` arm starts there. "
        "null = a seed derived from the recipe's (`seeds.token_init_seed`), never one of the eval seeds, so `eval`'s "
        "`distilled-heads` arm starts from heads the set has not seen.")
    head_pool: int = Field(
        1, ge=1, description="Heads the inner fine-tuning starts from: 1 = always the initial model (as Maekawa et "
        "al.); N > 1 = each outer step draws one of N head seeds (the initial model's first), so the set must "
        "fine-tune models it was not made for (validation: the mean over the first `outer.val_seeds` of them).")
    head_first: Literal["none", "sgd", "ridge"] = Field(
        "none", description="Fit the head alone on the whole set before the inner steps (linear probing, then "
        "fine-tuning): `sgd` = one plain SGD step of the head at the inner lr; `ridge` = the head replaced by the "
        "ridge-regression fit of the set's targets on the initial body's features (closed form), so the inner "
        "steps no longer depend on the head a model starts from; `none` = as Maekawa et al. The body's "
        "fine-tuning gradient passes through the head: from a random head it follows that head. Recorded in the "
        "set; `eval` replays it (`distilled-heads`: fresh heads).")
    mask: Literal["real", "full"] = Field(
        "real", description="Attention mask of the synthetic sequences: `real` = the masks of the real texts they "
        "start from (padding stays padding); `full` = every one of the T positions is attended and learned.")
    attention_labels: Literal["none", "cls", "all"] = Field(
        "none", description="Learn attention labels (Maekawa et al. 2023): target attention maps per layer and "
        "head that the inner loss pulls the model's attention towards; `cls` = the [CLS] query row only, "
        "`all` = every row (L*H*T*T numbers per sequence). They start at the initial model's own attention.")
    attention_weight: float = Field(
        1.0, ge=0, description="Weight of the attention-label KL term in the inner loss (the paper's lambda).")
    val_rows: Optional[int] = Field(
        1000, ge=1, description="Rows of `val` that choose the best set while distilling (a fixed random draw): "
        "each validation fine-tunes the model and runs it over them, ~20 s per 1,000 rows of 48 tokens for "
        "MiniLM on one CPU thread. The same draw chooses the steps of the token-level `full-earlystop` baseline. "
        "null = all of val. The final score is `eval` on test, never this.")


class DistillSettings(Section):
    ipc: list[int] = Field(
        [10], description="Instances per class: one value, or a strictly increasing Boost-DD chain [1, 5, 10]."
    )
    init: Literal["real", "mean", "random"] = Field(
        "real", description="Initialise synthetic rows from random real training vectors of each class (`real`), "
        "from means of random equal parts of each class (`mean`; the class mean at ipc 1), or at random (Gaussian "
        "with the training set's per-dimension mean and std).",
    )
    soft_labels: bool = Field(
        False, description="Learn soft labels (logits per synthetic row) with the vectors. Off for bptt: for the "
        "MLP they did not help it on `val` (87.72-87.80 vs 87.82 % at AG News ipc 1); the Transformer recipes "
        "learn them with `outer.label_lr: 0.1`. On (unless set) with the `mlp` student's default method, krr on "
        "the raw vectors, where they helped on `val` (AG News ipc 1: 88.17 vs 88.13 %; MRPC ipc 10: 74.02 vs "
        "70.67 %)."
    )
    device: str = Field("auto", description="Torch device of the distillation: `auto` (CUDA when torch sees it, "
                        "else CPU), `cpu`, `cuda`, `cuda:1`.")
    method: PluginSection = Field(
        default_factory=lambda: PluginSection(name="bptt"),
        description="Distillation method and its options: `bptt` (with its `unroll` strategy; default full "
        "BPTT through 100 inner steps), `krr`, `dm`, `mtt`, or a third-party method (see `distillctl plugins`). "
        "Default by student, per measurement (BENCHMARKS.md, \"Methods\"): for the `mlp` student "
        "`{name: krr, features: identity}` with `soft_labels: true`, which beat bptt on `val` at a fraction of "
        "its time (AG News ipc 1: 88.17 vs 87.89 %, best set after 6.4 vs 148 s; MRPC ipc 10: 74.02 vs "
        "71.81 %, 21 vs 735 s; AG News ipc 10: 88.05 vs 88.39 %, test 87.62 vs 87.67 %, 9.9 vs 173 s); for "
        "every other student (or `distill.students`) bptt, which leads for the Transformer (77.7 vs 67.6 % test "
        "at AG News ipc 10).",
    )
    students: Optional[list[PluginSection]] = Field(
        None, description="Distil for several student architectures at once, e.g. `[mlp, transformer]` (each "
        "a student section). Every outer step asks the method once per student (its own population, pool or "
        "experts: `inner.population` students per architecture) and follows the mean of their outer losses "
        "and meta-gradients; validation trains `outer.val_seeds` students of each and scores the mean of the "
        "architectures' val accuracies. The set records them as `distilled_with` (`mlp+transformer`). "
        "null = the recipe's `student`.",
    )
    inner: InnerSettings = Field(default_factory=InnerSettings)
    outer: OuterSettings = Field(default_factory=OuterSettings)
    boost: BoostSettings = Field(default_factory=BoostSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)

    @model_validator(mode="before")
    @classmethod
    def _moved_unroll(cls, data: Any) -> Any:
        if isinstance(data, dict) and "unroll" in data:
            raise ValueError(MOVED_UNROLL)
        return data

    @field_validator("students")
    @classmethod
    def _some_students(cls, v: Optional[list[PluginSection]]) -> Optional[list[PluginSection]]:
        if v is not None and not v:
            raise ValueError("needs at least one student section, e.g. [mlp, transformer] (or null for `student`)")
        return v

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
    device: str = Field(
        "auto", description="Torch device of token-level evaluation (fine-tuned students; `auto`: CUDA when torch "
        "sees it, else CPU; see `precision`). Vector students train where their embeddings are (CPU).",
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Number format of token-level evaluation: `auto` = bfloat16 autocast (float32 weights "
        "and optimiser) where the hardware multiplies bfloat16 natively: a GPU that supports it, a CPU with "
        "AVX512-BF16/AMX (there a fine-tuning step takes ~0.55x as long and scoring ~0.5x; replays of a set's own "
        "inner steps stay float32 on a CPU, as the distill ran them), float32 otherwise; `float32` = never; "
        "`bfloat16` = always (on a CPU without native support: scoring only). Each record names it (`device`).",
    )
    students: Optional[list[PluginSection]] = Field(
        None, description="Evaluate with several students (transfer), e.g. `[mlp, transformer, linear]` (each a "
        "student section): `eval` trains K of each on every set and `baseline` on every arm, each with this "
        "budget; `--students` overrides it. null = the recipe's `student`.",
    )

    @field_validator("students")
    @classmethod
    def _some_students(cls, v: Optional[list[PluginSection]]) -> Optional[list[PluginSection]]:
        if v is not None and not v:
            raise ValueError("needs at least one student section, e.g. [mlp, linear] (or null for `student`)")
        return v


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
    tracking: list[PluginSection] = Field(
        [], description="Experiment trackers every stage logs to, e.g. `[{name: mlflow}, {name: tensorboard}]` "
        "(see `distillctl plugins --kind tracker`); empty = none. Not part of the recipe's fingerprint.",
    )

    # -- helpers used by the stages -------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        # quoted where a YAML 1.1 or 1.2 reader would misread a string (`off`, `1e3`): reads back the same
        return yaml12.dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the recipe's core fields that differ from their defaults.

        Leaving defaults out keeps the fingerprint of a run stable when a later distillctl adds a field
        with a default (``--resume`` of an older run still matches); a value written out that equals
        the default fingerprints like an omitted one. Plugin sections count with all their options.
        """
        data = self.model_dump(mode="json", exclude_defaults=True)
        data.pop("tracking", None)  # where a run is logged does not change what it computes
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

#: lists of plugin sections of a recipe (each item validated like a plugin section): (field path, plugin kind)
PLUGIN_LIST_SECTIONS = (
    ("distill.students", "student"),
    ("eval.students", "student"),
    ("tracking", "tracker"),
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
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a recipe file (.yaml, .yml or .toml)"
                        + _recipes_in(path))
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the recipe file ({getattr(exc, 'strerror', None) or exc})") from exc
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml12.load(text)  # YAML 1.2 core schema: `off` stays a string, 0123 is 123
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"{path}: invalid YAML{where}: {problem}") from exc
    elif suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: invalid TOML: {exc}") from exc
    else:
        raise UserError(f"{path}: unknown recipe format {suffix!r}; use .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    return data


def _recipes_in(folder: Path) -> str:
    """`` (recipe files there: a.yaml, b.toml)`` for a folder given where a recipe file was expected."""
    try:
        found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml", ".toml"))
    except OSError:
        return ""
    if not found:
        return ""
    return f" (recipe files there: {', '.join(found[:5])}{', ...' if len(found) > 5 else ''})"


def _override_value(item: str, raw: str, source: str) -> Any:
    """The value of a ``KEY=VALUE`` override, parsed as YAML 1.2 (``60``, ``off``, ``[1, 5]``, ``{a: 1}``).

    Text that is not valid YAML is an error naming the item: taking it as a plain string would turn a
    typo such as ``{name: full, total`` into a plugin name that fails later with a misleading message.
    """
    if not raw.strip():
        return ""
    try:
        return yaml12.load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        where = f" at character {mark.column + 1}" if mark is not None and mark.line == 0 else ""
        raise UserError(f"{source} {item!r}: the value is not valid YAML ({problem}{where}); quote it to "
                        f"pass text as it is, e.g. {source} '{item.split('=', 1)[0]}=\"...\"'") from exc


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``key.path=value`` overrides; values are parsed as YAML 1.2 (``60``, ``true``, ``[1, 5]``);
    a value that is not valid YAML is a :class:`UserError` naming the item.

    Setting a plugin section's ``name`` to another plugin (``student.name=transformer``,
    ``distill.method.name=krr``) starts that section afresh from the new plugin's defaults: the old
    plugin's options would not be valid for it. Overrides after it in the list set the new plugin's options.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"{source} {item!r}: expected KEY.PATH=VALUE, e.g. distill.outer.lr=0.003")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise UserError(f"{source} {item!r}: empty key")
        value = _override_value(item, raw, source)
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


#: students for which a recipe that names no ``distill.method`` gets :data:`MEASURED_METHOD` (and soft labels,
#: unless it sets ``distill.soft_labels``) instead of the schema's bptt: where krr on the raw vectors with soft
#: labels beat bptt on `val` at a fraction of the time (BENCHMARKS.md, "Methods": AG News MLP ipc 1 88.17 vs
#: 87.89 % val in 6.4 vs 148 s to the best set; MRPC MLP ipc 10 74.02 vs 71.81 % in 21 vs 735 s; AG News MLP
#: ipc 10 88.05 vs 88.39 % val, test 87.62 vs 87.67 %, in 9.9 vs 173 s). Not the Transformer: there bptt leads
#: by 8-18 pp (77.7 % test against krr's 67.6 %).
MEASURED_METHOD_STUDENTS = ("mlp",)
MEASURED_METHOD = {"name": "krr", "features": "identity"}


def measured_defaults(data: Any) -> Any:
    """The recipe dict with the defaults that came from measurements filled in where the recipe is silent:

    - ``distill.outer.patience``: :data:`PATIENCE` (early stopping on);
    - a recipe whose student is in :data:`MEASURED_METHOD_STUDENTS`, with one student (no ``distill.students``)
      and no ``distill.method``: :data:`MEASURED_METHOD` and ``distill.soft_labels: true`` (unless it sets that).

    They are filled into the recipe rather than made schema defaults, so a resolved recipe written before them
    (``patience: null``, ``method: bptt``) still means, and fingerprints, what it did; the resolved recipe of a
    new run records them. Anything that is not a recipe dict is returned as it is."""
    if not isinstance(data, dict):
        return data
    student, distill = data.get("student", {"name": "mlp"}), data.get("distill")
    name = student if isinstance(student, str) else student.get("name") if isinstance(student, dict) else None
    if distill is None:
        distill = {}
    if not isinstance(distill, dict):
        return data
    filled = dict(distill)
    outer = filled.get("outer")
    if outer is None or isinstance(outer, dict):
        outer = dict(outer or {})
        outer.setdefault("patience", PATIENCE)
        filled["outer"] = outer
    if (name in MEASURED_METHOD_STUDENTS and distill.get("method") is None and distill.get("students") is None):
        filled["method"] = dict(MEASURED_METHOD)
        filled.setdefault("soft_labels", True)
    return dict(data, distill=filled)


def validate_recipe(data: dict, *, source: str = "<recipe>", base_dir: str | Path | None = None,
                    registry=None) -> Recipe:
    """Validate a recipe dict (both passes). Raises :class:`RecipeError` listing every problem."""

    problems: list[str] = []
    recipe = None
    registry = registry or get_registry()
    if registry.find(MEASURED_METHOD["name"], "method"):  # a registry without it keeps the schema's defaults
        data = measured_defaults(data)
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
    for path, kind in PLUGIN_LIST_SECTIONS:
        raw_list = _raw_section(data, path)
        if not isinstance(raw_list, list):
            continue  # absent (null: the default), or pass 1 already reported it
        for i, raw in enumerate(raw_list):
            raw = {"name": raw} if isinstance(raw, str) else raw
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                continue  # pass 1 already reported it
            raw = dict(raw)
            name = raw.pop("name")
            options = _plugin_options(kind, name, raw, f"{path}.{i}", registry, context, source, problems)
            if options is not None and recipe is not None:
                _get_path(recipe, path)[i].options = options
    if recipe is not None and not problems:
        problems += level_problems(recipe, registry, source)
    if recipe is not None and not problems:  # a method that cannot serve the recipe's level: before any write
        try:
            refuse_level(recipe.distill.method.name, getattr(recipe.embed, "level", "vectors"), registry)
        except UserError as exc:
            problems.append(f"{source}: {exc}")
    if problems:
        raise RecipeError(problems)
    return recipe


def embed_key(recipe: "Recipe") -> str:
    """What the embedding cache of a recipe depends on (dataset, encoder, embed, seed), as canonical JSON:
    one ``embed`` job per distinct key in a job graph, and the embedding tag of a tracked run."""
    d = recipe.to_dict()
    return json.dumps({k: d.get(k) for k in ("dataset", "encoder", "embed", "seed")}, sort_keys=True,
                      separators=(",", ":"), default=str)


def student_level(options_model: Any) -> str:
    """The data level a student plugin reads: its options model's ``level`` (default ``vectors``)."""
    return str(getattr(options_model, "level", "vectors"))


def method_levels(options_model: Any) -> tuple[str, ...]:
    """The levels a method plugin serves: ``levels`` on its options model (default: vectors only)."""
    return tuple(getattr(options_model, "levels", ("vectors",)))


def refuse_level(method: str, level: str, registry) -> None:
    """One line (exit 2) when ``method`` does not serve ``level``, naming the methods that do."""
    info = registry.get("method", method)
    if level in method_levels(info.options):
        return
    able = sorted(name for name in registry.names("method")
                  if level in method_levels(registry.get("method", name).options))
    serves = " and ".join(method_levels(info.options)) or "no level"
    raise UserError(f"distill.method: {method!r} works on {serves} only, not with embed.level: {level}; "
                    f"methods that do: {', '.join(able) or 'none installed'}")


def level_problems(recipe: Recipe, registry, source: str = "", students: list | None = None,
                   where: str | None = None) -> list[str]:
    """One line per student that does not read ``embed.level`` (``student``, ``distill.students``,
    ``eval.students``; or the given ``students`` sections named ``where[i]``), naming both fields and the
    students that would fit. At the token level, every token-level student must use ``student``'s model
    (the cache holds that model's token ids)."""
    level = recipe.embed.level
    if students is None:
        items = [("student", recipe.student)]
        for path, _ in PLUGIN_LIST_SECTIONS:
            items += [(f"{path}.{i}", s) for i, s in enumerate(_get_path(recipe, path) or [])]
    else:
        items = [(f"{where}[{i}]", s) for i, s in enumerate(students)]
    prefix = f"{source}: " if source else ""
    problems = []
    for field, section in items:
        try:
            info = registry.get("student", section.name)
        except UserError:
            continue  # reported by pass 2
        if student_level(info.options) == level:
            continue
        fits = sorted(n for n in registry.names("student") if student_level(registry.get("student", n).options) == level)
        fits_text = f" (students that read {level}: {', '.join(fits)})" if fits else ""
        problems.append(f"{prefix}embed.level: {level!r} does not fit {field}.name {section.name!r}, which reads "
                        f"{student_level(info.options)}; set embed.level: {student_level(info.options)} or choose "
                        f"another student{fits_text}")
    if level == "tokens" and not problems:
        base = recipe.student.options
        for field, section in items:
            opts = section.options
            if opts is base or opts is None or base is None:
                continue
            ident = lambda o: (getattr(o, "model", None), getattr(o, "revision", None))  # noqa: E731
            if ident(opts) != ident(base):
                problems.append(f"{prefix}{field}.model: {ident(opts)[0]!r} differs from student.model "
                                f"{ident(base)[0]!r}; at embed.level tokens the cache holds student.model's token "
                                "ids, so every student must use that model")
    return problems


def validate_plugin_section(kind: str, raw: Any, where: str, *, registry=None) -> PluginSection:
    """One plugin section given outside a recipe file (``--students mlp,{name: transformer, layers: 1}``):
    a name or ``{name: ..., <options>}``, validated like a recipe section. A :class:`UserError` (one line per
    problem, naming ``where``) when it is not valid."""

    raw = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise UserError(f"{where}: expected a {kind} name or a section {{name: ..., <options>}}, got {raw!r}")
    raw = dict(raw)
    name = raw.pop("name")
    problems: list[str] = []
    options = _plugin_options(kind, name, raw, where, registry or get_registry(), {"base_dir": None}, "", problems)
    if options is None:
        raise UserError("; ".join(p.removeprefix(": ") for p in problems))
    section = PluginSection(name=name)
    section.options = options  # the validated options model, as validate_recipe sets it
    return section


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
                                  method=(Optional[union_for("method")],
                                          Field(None, description="Distillation method.")),
                                  students=(Optional[list[union_for("student")]],
                                            Field(None, description=DistillSettings.model_fields["students"].description)))
    eval_schema = create_model("EvalSettingsSchema", __base__=EvalSettings,
                               students=(Optional[list[union_for("student")]],
                                         Field(None, description=EvalSettings.model_fields["students"].description)))
    recipe_schema = create_model(
        "Recipe", __base__=Recipe,
        dataset=(union_for("dataset"), Field(description="Dataset plugin and its options.")),
        encoder=(Optional[union_for("encoder")], Field(None, description="Frozen encoder plugin.")),
        student=(Optional[union_for("student")], Field(None, description="Student network plugin.")),
        distill=(Optional[distill_schema], Field(None, description="Distillation settings.")),
        eval=(Optional[eval_schema], Field(None, description="Evaluation protocol (every arm's students).")),
        scheduler=(Optional[union_for("scheduler")], Field(None, description="Job scheduler plugin.")),
        tracking=(Optional[list[union_for("tracker")]], Field(None, description=Recipe.model_fields["tracking"].description)),
    )
    schema = recipe_schema.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "distillctl recipe"
    return schema

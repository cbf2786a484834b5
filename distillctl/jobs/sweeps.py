"""Sweeps: ``--sweep KEY.PATH=V1,V2`` values, and the validated recipe of every point of their product.

A sweep of two keys with two values each has four points; each point gets a short directory name
(``window=40_lr=0.01``) inside the submission. A recipe with no sweep is one point named ``''``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distillctl.errors import UserError
from distillctl.recipe import apply_overrides, read_recipe_file, RecipeError, validate_recipe


def split_values(text: str) -> list[str]:
    """``1,5,[1, 5],{a: 1}`` -> ``['1', '5', '[1, 5]', '{a: 1}']``: commas inside brackets or quotes stay."""
    out, depth, cur, quote = [], 0, "", None
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_sweep(item: str) -> tuple[str, list[str]]:
    """``distill.unroll.window=20,40`` -> (``distill.unroll.window``, [``20``, ``40``])."""
    if "=" not in item:
        raise UserError(f"--sweep {item!r}: expected KEY.PATH=V1,V2,..., e.g. distill.unroll.window=20,40")
    key, raw = item.split("=", 1)
    key = key.strip()
    values = [v for v in split_values(raw)]
    if not key or not raw.strip() or any(v == "" for v in values):
        raise UserError(f"--sweep {item!r}: expected KEY.PATH=V1,V2,... with non-empty values")
    if len(set(values)) != len(values):
        raise UserError(f"--sweep {item!r}: a value is repeated")
    return key, values


def _slug(value: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", value).strip("-.")
    return s or "x"


@dataclass
class Point:
    """One configuration of a sweep (the recipe itself when there is no sweep)."""

    name: str  # directory name inside the submission ('' for a single recipe)
    values: dict[str, str]  # sweep key -> value (as typed)
    recipe: Any  # the validated Recipe


def expand_points(recipe_path: str | Path, overrides: Sequence[str] = (), sweeps: Sequence[str] = (),
                  scheduler: str | None = None, registry=None) -> list[Point]:
    """Validate the recipe with ``--set`` values and every point of the cartesian product of ``--sweep``s."""

    path = Path(recipe_path)
    base = read_recipe_file(path)
    # --scheduler first, then --set: `--scheduler slurm --set scheduler.partition=gpu` keeps the partition.
    if scheduler is not None:
        current = base.get("scheduler")
        name = current.get("name") if isinstance(current, dict) else current
        if name != scheduler:  # another scheduler's options would not validate: start from its defaults
            base["scheduler"] = {"name": scheduler}
    base = apply_overrides(base, list(overrides), "--set")
    parsed = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in parsed]
    if len(set(keys)) != len(keys):
        raise UserError(f"--sweep: key {next(k for k in keys if keys.count(k) > 1)!r} is swept twice; "
                        f"give all its values in one --sweep")
    for k in keys:
        if k.split(".")[0] in ("name", "runs_dir", "scheduler"):
            raise UserError(f"--sweep {k}: the name, runs_dir and scheduler are shared by every point of a sweep")
    # short labels: the last part of each key, unless two keys end the same
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [t if tails.count(t) == 1 else k for t, k in zip(tails, keys)]

    points: list[Point] = []
    problems: list[str] = []
    combos = list(itertools.product(*[vals for _, vals in parsed])) if parsed else [()]
    used: set[str] = set()
    for combo in combos:
        values = dict(zip(keys, combo))
        data = apply_overrides(base, [f"{k}={v}" for k, v in values.items()], "--sweep")
        label = "_".join(f"{lab}={_slug(v)}" for lab, v in zip(labels, combo))
        try:
            recipe = validate_recipe(data, source=str(path), base_dir=path.parent, registry=registry)
        except RecipeError as exc:
            where = f" (sweep point {', '.join(f'{k}={v}' for k, v in values.items())})" if values else ""
            problems += [p + where for p in exc.problems]
            continue
        name, n = label, 2
        while name in used:
            name, n = f"{label}-{n}", n + 1
        used.add(name)
        points.append(Point(name, values, recipe))
    if problems:
        raise RecipeError(problems)
    return points

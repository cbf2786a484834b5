"""The evaluation protocol every stage shares: eval, baseline, report and distill import it from here.

- the split every final score is computed on (:data:`TEST_SPLIT`) and the K student seeds of every
  arm (:func:`eval_seeds`);
- access to the splits of an embeddings object and the checks on them (:func:`split_of`,
  :func:`check_ipc_fits`), the majority-class line (:func:`majority_line`);
- the result record (:func:`result_record`) and the results files it is stored in
  (:func:`read_results`, :func:`store_results`), and notes on collapsed students (:func:`collapse_notes`);
- the distilled sets of a run directory (:func:`set_files`);
- the students an eval or baseline trains (:func:`parse_students`, :func:`student_sections`) and the
  student(s) a set was distilled with (:func:`distilled_with`).

A result record (:func:`result_record`) holds, besides the scores, ``student`` (the evaluating
student's name; ``"logreg"`` for the val-tuned logistic regression, None for ``majority``),
``student_options`` (its full section), ``distilled_with`` (the student name(s) of the recipe that made
the set, joined by ``+``; None for baselines) and ``labels`` (``"soft"`` or ``"hard"``: how the students
were trained; a soft-label set gives one record of each). A results file keeps the newest record per
(arm, ipc, student, labels) (:func:`record_key`).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from distillctl import seeds as seeding
from distillctl.errors import UserError
from distillctl.evaluation.training import majority_scores
from distillctl.recipe import PluginSection, validate_plugin_section
from distillctl.runs import append_jsonl, atomic_write_json
from distillctl.seeds import EVAL_SEED_STRIDE

#: the split every final score is computed on
TEST_SPLIT = "test"
#: eval seeds are recipe.seed * SEED_STRIDE + k, k = 0..K-1 (see distillctl.seeds)
SEED_STRIDE = EVAL_SEED_STRIDE
_SET_NAME = re.compile(r"^ipc(\d+)\.safetensors$")


def eval_seeds(recipe: Any, k: int | None = None) -> list[int]:
    """The K seeds of every arm: ``recipe.seed * 100000 + [0, K)`` (K defaults to ``eval.seeds``)."""
    k = recipe.eval.seeds if k is None else int(k)
    if k < 1:
        raise UserError(f"--seeds must be >= 1, got {k}")
    return seeding.eval_seeds(recipe.seed, k)


def fixed_val_rows(n: int, keep: int | None, seed: int) -> "torch.Tensor | None":
    """(keep,) sorted indices of a fixed random draw of ``keep`` of ``n`` val rows (seed ``seed``), or None for
    all of them: the rows that choose a token-level set while distilling and the steps of token-level
    ``full-earlystop`` (``distill.tokens.val_rows``), since running a transformer over all of val at every check
    would cost more than the training it chooses."""
    import torch

    if keep is None or keep >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


def split_of(embeddings: Any, name: str):
    """``embeddings.splits[name]``, or a :class:`UserError` naming the splits there are."""
    splits = getattr(embeddings, "splits", {}) or {}
    if name not in splits:
        raise UserError(f"the embeddings have no {name!r} split (splits: {', '.join(splits) or 'none'})")
    return splits[name]


def check_ipc_fits(embeddings: Any, ipc: int, field: str) -> None:
    """A :class:`UserError` when ``ipc`` rows per class exceed the training rows of the smallest class.

    ``field`` names where the ipc came from (``distill.ipc``, ``baseline.ipc``, ``--ipc``).
    """
    import torch

    C = int(embeddings.num_classes)
    counts = torch.bincount(split_of(embeddings, "train").y.long().cpu(), minlength=C)  # (C,)
    c = int(counts.argmin())
    if ipc > int(counts[c]):
        names = list(getattr(embeddings, "label_names", None) or [str(k) for k in range(C)])
        raise UserError(f"{field}: ipc {ipc} exceeds the training rows of the smallest class ({names[c]!r}: "
                        f"{int(counts[c])} rows); use at most {int(counts[c])}")


#: the fewest rows of each class a `val` or `test` split may hold: with one, that class scores 0 or 100 % (a 1-row
#: test split scored 0.0 and then crashed the report). 2 is a floor, not a recommendation: `val` picks the
#: distilled set and the steps of `full-earlystop`, `test` gives every final number, and both are noisy at a
#: few rows per class (the shipped recipes hold 400-1,900 per class); the bundled examples use 2-3 per class.
MIN_ROWS_PER_CLASS = 2
#: where each split's size is set, for the message
_SPLIT_SIZE_FIELDS = {"val": "embed.val_size (or a larger val file)", "test": "embed.test_size (or a larger test file)"}


def check_split_sizes(embeddings: Any, splits: tuple[str, ...] = ("val", TEST_SPLIT),
                      minimum: int = MIN_ROWS_PER_CLASS, *, recorded_only: tuple[str, ...] = ()) -> None:
    """A :class:`UserError` naming the split, its smallest classes and the minimum when a class of ``splits``
    has fewer than ``minimum`` rows. Every stage that scores (distill on val; eval, baseline on test and val)
    checks this before it writes anything. Splits in ``recorded_only`` are checked from the counts the
    embeddings record (``class_counts``), never by reading the split (distill never reads test)."""
    import torch

    C = int(embeddings.num_classes)
    names = list(getattr(embeddings, "label_names", None) or [str(k) for k in range(C)])
    recorded = getattr(embeddings, "class_counts", None) or {}
    for name in splits:
        if name in recorded:
            counts = list(recorded[name])
        elif name in recorded_only or name not in (getattr(embeddings, "splits", {}) or {}):
            continue
        else:
            counts = torch.bincount(split_of(embeddings, name).y.long().cpu(), minlength=C).tolist()  # (C,)
        short = [(names[c], n) for c, n in enumerate(counts) if n < minimum]
        if short:
            shown = ", ".join(f"{n} of {label!r}" for label, n in short[:5]) + (", …" if len(short) > 5 else "")
            raise UserError(f"the {name} split is too small: {sum(counts)} rows ({shown}); every class needs at least "
                            f"{minimum} rows in {name} for a score that means something; raise "
                            f"{_SPLIT_SIZE_FIELDS.get(name, 'its size')}")


def check_sets_fit(sets: list, embeddings: Any, *, level: str, width: int) -> None:
    """Each ``(file, set)`` of ``sets`` fits the recipe's embeddings: the same level (``vectors`` or
    ``tokens``), classes and row width (vector dims, or the student's input-embedding width), and, when both
    record one, the same embedding cache; else a :class:`UserError` naming the file."""
    C, fp = int(embeddings.num_classes), getattr(embeddings, "fingerprint", None)
    rows = "input embeddings" if level == "tokens" else "dims"
    for f, s in sets:
        if getattr(s, "level", "vectors") != level or (level == "tokens" and getattr(s, "mask", None) is None):
            other = "a sentence-vector set" if level == "tokens" else "a token-level set"
            raise UserError(f"{f}: {other}, but the recipe's embed.level is {level}; evaluate it with the recipe "
                            "it was distilled with")
        if s.num_classes != C or s.dim != width:
            raise UserError(f"{f}: set has {s.num_classes} classes x {s.dim} {rows}; the recipe's "
                            f"embeddings have {C} x {width}")
        set_fp = s.meta.get("embedding_fingerprint")
        if fp and set_fp and set_fp != fp:
            raise UserError(f"{f}: distilled from other embeddings (fingerprint {set_fp[:12]}, the recipe's "
                            f"cache is {fp[:12]}); evaluate it with the recipe it was distilled with")


def label_variants(syn: Any) -> list[tuple[str, "torch.Tensor"]]:
    """How every ``distilled`` arm trains on a set: a soft-label set with its (n, C) probabilities, then with
    their argmax (n,) (how much the soft labels carry); a hard-label set with its (n,) classes."""
    if syn.soft:
        return [("soft", syn.labels.float()), ("hard", syn.labels.float().argmax(-1))]
    return [("hard", syn.labels.long())]


def majority_line(embeddings: Any) -> dict:
    """Majority class of train (by counts) scored on test, and the chance level 1/C."""

    train, test = split_of(embeddings, "train"), split_of(embeddings, TEST_SPLIT)
    C = int(embeddings.num_classes)
    cls, scores = majority_scores(train.y, test.y, C)
    names = list(getattr(embeddings, "label_names", None) or [str(c) for c in range(C)])
    return {"class": names[cls], "class_index": cls, **scores, "chance": 1.0 / C}


def result_record(arm: str, ipc: int | None, recipe: Any, budget: Any, scores: Any, *, majority: dict,
                  n_test: int, student: Any = None, labels: str = "hard", distilled_with: str | None = None,
                  **extra: Any) -> dict:
    """One result record (the JSON shape of `eval`, `baseline` and `report`).

    ``student``: the section of the evaluating student (a :class:`~distillctl.recipe.PluginSection`, or a
    plain ``{"name": ..., ...}`` dict for a model that is not a student plugin, e.g. ``logreg``); default
    the recipe's ``student``. ``budget`` None with no ``student`` marks an arm that fits nothing
    (``majority``): its record has ``student`` and ``budget`` None and no ``student_options`` or ``time``.
    ``labels``: ``"soft"`` or ``"hard"``, how the students were trained.
    """
    if labels not in ("soft", "hard"):
        raise ValueError(f"labels must be 'soft' or 'hard', got {labels!r}")
    trained = budget is not None
    if student is None and trained:
        student = recipe.student
    fitted = student is not None
    options = (student.model_dump(mode="json") if hasattr(student, "model_dump") else dict(student)) if fitted else None
    rec = {
        "arm": arm,
        "ipc": ipc,
        "student": options["name"] if fitted else None,
        "distilled_with": distilled_with,
        "labels": labels,
        "seeds": list(scores.seeds),
        "budget": _plain(budget.as_dict()) if trained else None,
        **scores.metrics(),  # accuracy, macro_f1 (+ positive_f1)
        **({"classes_predicted": scores.classes_predicted} if fitted and scores.classes_predicted else {}),
        **({"student_options": _plain(options)} if fitted else {}),
        "split": TEST_SPLIT,
        "n_test": int(n_test),
        "majority": majority,
        "chance": majority["chance"],
        "seconds": round(scores.seconds, 3),
        **({"time": datetime.now(timezone.utc).isoformat(timespec="seconds")} if fitted else {}),
        **extra,
    }
    return rec


def _plain(obj: Any) -> Any:
    """``obj`` as JSON gives it back (tuples become lists), so a record in hand equals the stored one."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def set_files(run_dir: Path) -> list[Path]:
    """``distilled/ipc{N}.safetensors`` of a run, by increasing N (the Boost-DD stages in order)."""
    found = []
    for p in (run_dir / "distilled").glob("ipc*.safetensors"):
        m = _SET_NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def record_labels(rec: dict) -> str:
    """``rec["labels"]``; for a record written before that field: ``"soft"`` if it has ``soft_labels``
    true, else ``"hard"``."""
    return rec.get("labels") or ("soft" if rec.get("soft_labels") else "hard")


def record_key(rec: dict) -> tuple:
    """What a newer record replaces an older one by: (arm, ipc, student, labels)."""
    return (rec.get("arm"), rec.get("ipc"), rec.get("student"), record_labels(rec))


def distilled_with(recipe: Any) -> str:
    """The student(s) of the recipe that made a set: ``distill.students`` names joined by ``+`` when the
    recipe distils with several, else ``student.name``."""
    several = getattr(recipe.distill, "students", None)
    if several:
        return "+".join(s.name for s in several)
    return recipe.student.name


def parse_students(text: str) -> list:
    """The raw student sections of ``--students``: a YAML flow list without its brackets.

    ``mlp,transformer,linear`` -> ["mlp", "transformer", "linear"]; ``mlp,{name: transformer, layers: 1}``
    -> ["mlp", {"name": "transformer", "layers": 1}]. Each item is a name (default options) or a
    section as in a recipe. Validate them with :func:`student_sections`.
    """
    hint = ("expected comma-separated student names or recipe sections, e.g. "
            "'mlp,linear,{name: transformer, layers: 1}'")
    try:
        items = yaml.safe_load("[" + text + "]")
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise UserError(f"--students {text!r}: not parseable ({problem}); {hint}") from None
    if not items or any(not (isinstance(i, str) or (isinstance(i, dict) and isinstance(i.get("name"), str)))
                        for i in items):
        raise UserError(f"--students {text!r}: {hint}")
    return items


def student_sections(recipe: Any, students: Any = None) -> list:
    """The students an eval or baseline trains, as validated sections (:class:`~distillctl.recipe.PluginSection`).

    ``students``: a ``--students`` string (:func:`parse_students`), or a list of names, section dicts or
    sections; default ``eval.students`` of the recipe, else its ``student``. An unknown student or a bad
    option is one :class:`UserError` naming it and what would be valid. Duplicates are dropped.
    """

    if students is None:
        students, field = (recipe.eval.students or [recipe.student]), "eval.students"
    else:
        field = "--students"
        if isinstance(students, str):
            students = parse_students(students)
    out, seen = [], set()
    for i, item in enumerate(students):
        if isinstance(item, PluginSection):
            if item.options is None or isinstance(item.options, dict):
                item = {"name": item.name, **(item.options or {})}
            else:
                section = item
        if not isinstance(item, PluginSection):
            section = validate_plugin_section("student", item, f"{field}[{i}]")
        key = repr(section.model_dump(mode="json"))
        if key not in seen:
            seen.add(key)
            out.append(section)
    if not out:
        raise UserError(f"{field}: needs at least one student (see `distillctl plugins --kind student`)")
    if hasattr(recipe, "embed"):  # each must read the recipe's level (embed.level), before any data is loaded
        from distillctl.plugins import get_registry
        from distillctl.recipe import level_problems

        problems = level_problems(recipe, get_registry(), students=out, where=field)
        if problems:
            raise UserError("\n".join(problems))
    return out


def read_results(path: str | Path) -> list[dict]:
    """Records of a results file (``results.json`` or ``baseline-<kind>.json``); [] when absent."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    records = data.get("results") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise UserError(f"{path}: expected {{\"results\": [...]}}")
    return records


def store_results(path: str | Path, records: list[dict], *, history: str | Path | None = None) -> Path:
    """Merge ``records`` into ``path`` (a newer record replaces one with the same :func:`record_key`),
    atomically."""

    merged = {record_key(r): r for r in read_results(path)}
    for r in records:
        merged[record_key(r)] = r
    ordered = sorted(merged.values(), key=lambda r: (str(r.get("arm")), r.get("ipc") is None, r.get("ipc") or 0,
                                                     str(r.get("student")), record_labels(r) == "hard"))
    atomic_write_json(path, {"results": ordered, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if history is not None:
        for r in records:
            append_jsonl(history, r)
    return Path(path)


def collapse_notes(records: list[dict]) -> list[str]:
    """One line per result whose students (some or all) give every test row the same class.

    Such a cell can sit exactly on the majority line with no spread over seeds; the accuracy alone does not
    say that the students learned nothing but the class prior.
    """
    notes = []
    for r in records:
        counts = r.get("classes_predicted") or []
        single = sum(1 for c in counts if c == 1)
        if single:
            where = r["arm"] if r.get("ipc") is None else f"{r['arm']} ipc {r['ipc']}"
            notes.append(f"{where}: {single} of {len(counts)} students predict a single class for every test row")
    return notes

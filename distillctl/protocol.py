"""The evaluation protocol every stage shares: eval, baseline, report and distill import it from here.

- the split every final score is computed on (:data:`TEST_SPLIT`) and the K student seeds of every
  arm (:func:`eval_seeds`);
- access to the splits of an embeddings object and the checks on them (:func:`split_of`,
  :func:`check_ipc_fits`), the majority-class line (:func:`majority_line`);
- the result record (:func:`result_record`) and the results files it is stored in
  (:func:`read_results`, :func:`store_results`), and notes on collapsed students (:func:`collapse_notes`);
- the distilled sets of a run directory (:func:`set_files`).
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distillctl import seeds as seeding
from distillctl.errors import UserError
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


def majority_line(embeddings: Any) -> dict:
    """Majority class of train (by counts) scored on test, and the chance level 1/C."""
    from distillctl.training import majority_scores

    train, test = split_of(embeddings, "train"), split_of(embeddings, TEST_SPLIT)
    C = int(embeddings.num_classes)
    cls, scores = majority_scores(train.y, test.y, C)
    names = list(getattr(embeddings, "label_names", None) or [str(c) for c in range(C)])
    return {"class": names[cls], "class_index": cls, **scores, "chance": 1.0 / C}


def result_record(arm: str, ipc: int | None, recipe: Any, budget: Any, scores: Any, *, majority: dict,
                  n_test: int, **extra: Any) -> dict:
    """One result record (the JSON shape of `eval`, `baseline` and `report`).

    ``budget`` None marks an arm that trains no student (``majority``): its record has ``student`` and
    ``budget`` None and no ``student_options`` or ``time``.
    """
    trained = budget is not None
    rec = {
        "arm": arm,
        "ipc": ipc,
        "student": recipe.student.name if trained else None,
        "seeds": list(scores.seeds),
        "budget": _plain(budget.as_dict()) if trained else None,
        **scores.metrics(),  # accuracy, macro_f1 (+ positive_f1)
        **({"classes_predicted": scores.classes_predicted} if trained and scores.classes_predicted else {}),
        **({"student_options": recipe.student.model_dump(mode="json")} if trained else {}),
        "split": TEST_SPLIT,
        "n_test": int(n_test),
        "majority": majority,
        "chance": majority["chance"],
        "seconds": round(scores.seconds, 3),
        **({"time": datetime.now(timezone.utc).isoformat(timespec="seconds")} if trained else {}),
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


def _key(rec: dict) -> tuple:
    return (rec.get("arm"), rec.get("ipc"))


def read_results(path: str | Path) -> list[dict]:
    """Records of a results file (``results.json`` or ``baseline-<kind>.json``); [] when absent."""
    import json

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
    """Merge ``records`` into ``path`` (a newer record replaces one with the same arm and ipc), atomically."""
    from distillctl.runs import append_jsonl, atomic_write_json

    merged = {_key(r): r for r in read_results(path)}
    for r in records:
        merged[_key(r)] = r
    ordered = sorted(merged.values(), key=lambda r: (str(r.get("arm")), r.get("ipc") is None, r.get("ipc") or 0))
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

"""Scores and references the report states: which full-data reference a claim is made against, and the
DD-Ranking scores of a distilled set (HLR, IOR, LRS).

Everything here works on result records (the JSON of :func:`distillctl.evaluation.protocol.result_record`) and is
pure arithmetic on their stored means: nothing is retrained, and test is only read.

Definitions (accuracies as fractions in [0, 1]; DD-Ranking, Li et al. 2025):

- HLR, hard-label recovery = full-data accuracy - the set's accuracy, both with hard labels. The full-data
  accuracy is the evaluating student's *same-budget* ``full`` arm (DD-Ranking's convention: the same model
  trained the same way on all the real rows), so HLR measures what the rows themselves lose; lower is better.
- IOR, improvement over random = the set's accuracy - the accuracy of random real subsets of the same size,
  scored by the same evaluating student; higher is better.
- LRS, label-robust score: alpha = w*IOR - (1-w)*HLR with w = 0.5, LRS = (e^alpha - e^-1) / (e - e^-1), in
  [0, 1] for alpha in [-1, 1]; higher is better.
"""

from __future__ import annotations

import math
from typing import Iterable

#: the full-data arms, strongest-honest-reference candidates, and how the report names each
FULL_ARMS = ("full", "full-earlystop", "full-logreg")
REFERENCE_NAMES = {"full": "same budget", "full-earlystop": "steps chosen on val",
                   "full-logreg": "val-tuned logistic regression"}
#: DD-Ranking's weight of IOR against HLR in LRS
LRS_WEIGHT = 0.5


def labels_of(rec: dict) -> str:
    """``"soft"`` or ``"hard"``: the record's ``labels``; older records only say ``soft_labels``."""
    return rec.get("labels") or ("soft" if rec.get("soft_labels") else "hard")


def distilled_with(rec: dict) -> str | None:
    """The student(s) a distilled record's set was made with (older records: the evaluating student)."""
    return rec.get("distilled_with") or rec.get("student")


def record_key(rec: dict) -> tuple:
    return (rec.get("arm"), rec.get("ipc"), rec.get("student"), labels_of(rec), distilled_with(rec)
            if rec.get("arm") == "distilled" else None)


def newest(records: Iterable[dict]) -> list[dict]:
    """The newest record per (arm, ipc, evaluating student, labels[, distilled with]), in first-seen order.

    Records carry an ISO ``time`` (trained arms); without one, the later record in the list wins, as in
    the results files, where a newer record replaces the older one.
    """
    kept: dict[tuple, dict] = {}
    for r in records:
        k = record_key(r)
        old = kept.get(k)
        if old is None or str(r.get("time") or "") >= str(old.get("time") or ""):
            kept[k] = r
    return list(kept.values())


def mean(rec: dict | None, metric: str = "accuracy") -> float | None:
    summary = (rec or {}).get(metric)
    return None if not summary else float(summary["mean"])


def std(rec: dict | None, metric: str = "accuracy") -> float:
    summary = (rec or {}).get(metric)
    return float(summary.get("std") or 0.0) if summary else 0.0


def reference_label(rec: dict) -> str:
    """``full-earlystop (mlp, steps chosen on val: 400 steps)`` — which reference a number is."""
    arm = rec["arm"]
    what = REFERENCE_NAMES.get(arm, arm)
    if arm == "full-earlystop" and rec.get("chosen_steps") is not None:
        what += f": {rec['chosen_steps']} steps"
    if arm == "full-logreg" and rec.get("chosen_C") is not None:
        what += f": C = {rec['chosen_C']:g}"
    return f"{arm} ({rec.get('student') or 'logreg'}, {what})"


def best_reference(records: Iterable[dict], *, metric: str = "accuracy", student: str | None = None,
                   arms: tuple[str, ...] = FULL_ARMS) -> dict | None:
    """The full-data record with the highest mean ``metric``; with ``student`` only that student's.

    The strongest honest reference: a claim made against a weaker one (e.g. a same-budget arm trained for
    too few steps on many rows) would flatter the distilled set.
    """
    cands = [r for r in records if r.get("arm") in arms and mean(r, metric) is not None
             and (student is None or r.get("student") == student)]
    return max(cands, key=lambda r: mean(r, metric), default=None)


def gap_in_std(a: dict, b: dict, metric: str = "accuracy") -> float | None:
    """(mean a - mean b) / sqrt(std_a^2 + std_b^2): the gap in units of the seed spread of the two
    cells together (None when neither varies over seeds)."""
    spread = math.hypot(std(a, metric), std(b, metric))
    return None if spread == 0 else (mean(a, metric) - mean(b, metric)) / spread


def hlr(full_hard: float, set_hard: float) -> float:
    """Hard-label recovery: full-data accuracy minus the set's, both with hard labels (fractions)."""
    return full_hard - set_hard


def ior(set_acc: float, random_acc: float) -> float:
    """Improvement over random: the set's accuracy minus same-size random real subsets' (fractions)."""
    return set_acc - random_acc


def lrs(ior_value: float, hlr_value: float, w: float = LRS_WEIGHT) -> float:
    """DD-Ranking's label-robust score: alpha = w*IOR - (1-w)*HLR, (e^alpha - e^-1) / (e - e^-1)."""
    alpha = w * ior_value - (1 - w) * hlr_value
    return (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


def dd_scores(records: list[dict]) -> list[dict]:
    """One row per (evaluating student, ipc, labels the set was scored with) of the distilled sets.

    Each row: the set's accuracy, the random arm's and the hard-label numbers HLR needs, and HLR / IOR / LRS
    (None where a needed record is missing). A soft-label set scored both ways gets a row per labels:
    IOR and LRS with its own labels and without them (HLR is the same in both: hard labels by definition).
    """
    recs = newest(records)
    out = []
    for d in recs:
        if d.get("arm") != "distilled":
            continue
        student, ipc = d.get("student"), d.get("ipc")
        same = [r for r in recs if r.get("student") == student]
        rand = next((r for r in same if r.get("arm") == "random" and r.get("ipc") == ipc), None)
        full = next((r for r in same if r.get("arm") == "full"), None)
        hard = next((r for r in same if r.get("arm") == "distilled" and r.get("ipc") == ipc
                     and labels_of(r) == "hard" and distilled_with(r) == distilled_with(d)), None)
        acc = mean(d)
        h = hlr(mean(full), mean(hard)) if full and hard else None
        i = ior(acc, mean(rand)) if rand else None
        out.append({"student": student, "distilled_with": distilled_with(d), "ipc": ipc, "labels": labels_of(d),
                    "accuracy": acc, "random": mean(rand), "full_hard": mean(full), "set_hard": mean(hard),
                    "hlr": h, "ior": i, "lrs": lrs(i, h) if h is not None and i is not None else None})
    out.sort(key=lambda r: (r["ipc"], str(r["distilled_with"]), str(r["student"]), r["labels"] != "soft"))
    return out

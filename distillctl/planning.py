"""plan: what each job of a recipe's graph will need (wall time, peak memory) before it runs.

:func:`plan` builds the job graph ``submit`` would run (:mod:`distillctl.jobs.jobgraph`) and forecasts every
job as a sum of parts measured once on this machine (:mod:`distillctl.plan_measure`) and scaled by the recipe:

    startup      a real job that trains nothing, measured whole (``baseline --kind majority``: its start, loading
                 the rows, writing, exit), plus what torch's first training adds (every job pays it); without
                 the cache, the ``plan`` process's own start (or a probe's) and the rows' load estimated
    embed        cache hit: loading and verifying the cached rows; miss: a sample encoded (or tokenised),
                 scaled to every text
    distill      per Boost-DD stage: the measured outer step x ``iterations`` (+ the first step's warm-up and
                 the stage's set-up), and every validation: the students it trains (``outer.val_seeds`` x
                 ``eval.steps`` steps on the set) and the val rows they score
    eval         per student, set and labels (soft-label sets twice): K students x ``eval.steps`` steps on the
                 set, each scoring the test rows (token level: plus the ``distilled-init`` and ``distilled-heads`` replays)
    baseline     the same per arm and ipc (``full``: all training rows, ``full-earlystop`` with its val checks
                 and ``full-logreg``; ``herding``/``kcenter``: choosing the rows; ``majority``: nothing)
    report       measured as it is (it does not scale with the recipe)

A student's cost is measured once per (student, K seeds, batch rows) however many jobs train it: a training
step (K stacked students for vectors, one fine-tuned student at a time for tokens), building the students, and
scoring one row; the points of a sweep share what they have in common (data, students, eval). Peak memory is
the process's peak resident set (a fresh process with the rows loaded, plus the most any part of the job
holds on top).

``distill.outer.patience`` can end a stage early: forecasts take every iteration (an upper bound there), and
``distill.outer.max_seconds`` caps a stage. ``full-earlystop`` stops after ``EARLYSTOP_PATIENCE`` checks
without a better val score, which no measurement short of the run can tell: its forecast takes the steps an
earlier run of the same training took (any recipe's under ``runs_dir``), else, for vector students, the earliest
stop (the best at the first check, where the shipped recipes' MLPs and Transformers stopped) and, for
fine-tuned ones, EARLYSTOP_EXPECTED x ``eval.steps``; ``upper_seconds`` is its cap (10 x ``eval.steps``), which
SLURM's ``--time`` covers.

The measurement runs in a temporary folder with the recipe's embedding cache (it is filled by the embed job
otherwise: plan never embeds a whole dataset) and writes nothing else.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from distillctl.plan_measure import (MEASURE_STAGE_SECONDS, MEASURE_STEPS, TOKEN_VAL_ROWS, EmbedMeasure,  # noqa: F401
                                     PeakMemory, StageMeasure, Startup, StudentCost, batch_cost, own_peak_bytes,
                                     stage_times)

#: a missing cache's job probe on stand-in rows (2-3.5 s) runs while the plan waits for stages measured beside,
#: else beside the report's measurement where the sample is encoded by then; one left for the end of the plan
#: (beside the sample's child, which still encodes) runs only when the plan has taken less than this so far (its
#: own start included), so that plan stays within 30 s on 2 cores
STAND_IN_PROBE_BEFORE = 25.0
#: full-earlystop's forecast steps on a first run. Vector students: the earliest stop, the best at the first
#: check then EARLYSTOP_PATIENCE checks without a better one (1.25 x eval.steps of 1000): where 8 of the 10
#: full-earlystop trainings of the shipped vector recipes stopped (measured 2026-12-06; the default 2 x 512 MLP
#: stopped at 3 and the linear student at 3.75 eval budgets), as the budget made for a few synthetic rows is
#: many epochs of the whole training set. Fine-tuned students (an eval budget is under two epochs of the texts):
#: the best after EARLYSTOP_EPOCHS epochs of the training rows (at the next check), then the patience. Measured
#: with the 4-layer MiniLM at batch 32, 200-step budgets, 2026-12-06: AG News (11,907 texts) best at 650 steps
#: (1.75 epochs), stopped at 850; MRPC (3,668 pairs) best at 300 (2.6 epochs), stopped at 500. Two datasets:
#: the rule forecasts 950 and 450 steps. Without the training rows: EARLYSTOP_EXPECTED eval budgets
EARLYSTOP_EPOCHS = 2
EARLYSTOP_EXPECTED = 2
#: the margins ``submit`` adds to a forecast for SLURM's --time and --mem (a killed job costs more than a
#: bigger allocation): time x TIME_FACTOR + TIME_EXTRA_MIN minutes (at least a job's upper bound), memory x
#: MEM_FACTOR + MEM_EXTRA_MIB
TIME_FACTOR, TIME_EXTRA_MIN = 1.5, 5
MEM_FACTOR, MEM_EXTRA_MIB = 1.25, 512


@dataclass
class JobForecast:
    """One job: ``seconds`` of wall time, ``peak_bytes`` of resident memory, and where the time goes
    (``parts``: seconds per part, ``dominant``: the largest one, in words). ``upper_seconds``: the most it can
    take where that is more than the forecast (an early stop that may not come)."""

    id: str
    kind: str
    seconds: float
    peak_bytes: int
    parts: dict[str, float] = field(default_factory=dict)
    dominant: str = ""
    notes: list[str] = field(default_factory=list)
    upper_seconds: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """Every job's forecast, what was measured and how long the measurement took."""

    recipe: str
    device: str
    machine: str
    jobs: list[JobForecast]
    measured_seconds: float
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds the measurement spent per part
    threads: int | None = None  # torch threads the measurement (and each job) used

    def job(self, job_id: str) -> JobForecast:
        return next(j for j in self.jobs if j.id == job_id)

    @property
    def total_seconds(self) -> float:
        """Wall time of the jobs one after another (one worker)."""
        return sum(j.seconds for j in self.jobs)

    @property
    def peak_bytes(self) -> int:
        return max((j.peak_bytes for j in self.jobs), default=0)

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "device": self.device, "machine": self.machine, "threads": self.threads,
                "measured_seconds": round(self.measured_seconds, 2), "total_seconds": round(self.total_seconds, 1),
                "peak_bytes": self.peak_bytes, "jobs": [j.to_json() for j in self.jobs], "notes": self.notes,
                "measurement_phases": self.phases}


# -- what each job trains: the calls a forecast adds up ------------------------------------------------------

@dataclass
class Sizes:
    """Rows per split and classes: what scoring and the full-data arms scale with."""

    C: int
    train: int
    val: int
    test: int
    distill_val: int  # rows distill validates on (token level: ``distill.tokens.val_rows`` of val)


@dataclass
class Call:
    """One training of K students (one ``train_and_score`` / ``finetune_and_score``): ``steps`` steps on ``B``
    rows per step, each student then scoring ``rows`` rows (test, and val at every check)."""

    student: str  # key of the student section (its options as JSON)
    K: int
    B: int
    steps: int
    rows: int
    what: str
    lockstep: bool = False  # token level: the K students held at once (full-earlystop)
    scoring: int | None = None  # students that run over ``rows`` (None: all K); a ridge-first replay ends at
    #                             the model distilled-init already scored, so its K replays score none


def student_key(section: Any) -> str:
    return json.dumps(section.model_dump(mode="json"), sort_keys=True)


def _level(recipe: Any) -> str:
    return getattr(recipe.embed, "level", "vectors")


def _batch(rows: int, batch_size: int) -> int:
    """Rows per training step: the whole set when it fits one batch."""
    return rows if rows <= batch_size else batch_size


def _inner_steps(recipe: Any) -> int:
    """Inner steps of the method (the token level's distilled-init replays them): its ``inner_steps``, else its
    unroll's ``total``, else 1."""
    opts = recipe.distill.method.options
    steps = getattr(opts, "inner_steps", None)
    if steps is None:
        steps = getattr(getattr(getattr(opts, "unroll", None), "options", None), "total", None)
    return int(steps or 1)


def earlystop_steps(recipe: Any, ran: int | None = None, train_rows: int | None = None) -> tuple[int, int, int]:
    """(forecast steps, checks, cap) of full-earlystop: ``ran``, the steps an earlier run of the same arm took
    (:func:`earlier_earlystop`), else the first-run guess: vectors the earliest stop; fine-tuned students the
    best after EARLYSTOP_EPOCHS epochs of ``train_rows`` then the patience (EARLYSTOP_EXPECTED eval budgets
    without them)."""
    from distillctl.evaluation.subsets import EARLYSTOP_MAX_FACTOR, EARLYSTOP_PATIENCE, earlystop_every

    S = recipe.eval.steps
    cap = EARLYSTOP_MAX_FACTOR * S
    every = earlystop_every(S)
    earliest = every * (1 + EARLYSTOP_PATIENCE)
    if _level(recipe) != "tokens":
        guess = earliest
    elif train_rows:
        best = EARLYSTOP_EPOCHS * train_rows / max(1, min(recipe.eval.batch_size, train_rows))  # steps
        guess = max(earliest, math.ceil(best / every) * every + EARLYSTOP_PATIENCE * every)
    else:
        guess = EARLYSTOP_EXPECTED * S
    steps = min(cap, int(ran) if ran else guess)
    return steps, -(-steps // every), cap


def earlystop_guess(recipe: Any) -> str:
    """The first-run guess of :func:`earlystop_steps`, in words."""
    if _level(recipe) == "tokens":
        return f"the best after {EARLYSTOP_EPOCHS} epochs of the training texts, no earlier run of this training"
    return "the earliest stop: the best at the first check, no earlier run of this training"


#: what makes two runs' full-earlystop the same training: its rows, their features, its seeds and budget (and,
#: for the token level, the fixed draw of val it checks)
_SAME_ARM = ("seed", "dataset", "encoder", "embed", "eval")


def _same_arm_view(data: dict) -> dict:
    view = {k: data.get(k) for k in _SAME_ARM}
    view["val_rows"] = ((data.get("distill") or {}).get("tokens") or {}).get("val_rows")
    return view


def earlier_earlystop(recipe: Any) -> dict[str, tuple[int, str]]:
    """``student_key -> (steps run, run folder)`` of the newest ``full-earlystop`` record among the earlier runs
    under ``runs_dir`` (``<recipe>/<id>[/<point>]``, any recipe's: a user distils many recipes on the same data)
    whose seed, dataset, encoder, embed and eval sections equal this recipe's: the same training, so it stops at
    the same step (where it stops cannot be measured in a few steps). Runs that cannot be read are skipped."""
    from distillctl.errors import UserError
    from distillctl.recipe import read_recipe_file
    from distillctl.reporting.scores import newest
    from distillctl.reporting.sections import collect_results

    root = Path(recipe.runs_dir)
    if not root.is_dir():
        return {}
    want = _same_arm_view(recipe.model_dump(mode="json"))
    found: dict[str, tuple[str, int, str]] = {}  # key -> (time, steps, run)
    # only the runs with a full baseline: their resolved recipes are read, not every run's
    folders = sorted({f.parent.parent for pattern in ("*/*/eval/baseline-full.json", "*/*/*/eval/baseline-full.json")
                      for f in root.glob(pattern)})
    for folder in folders:
        try:
            data = read_recipe_file(folder / "recipe.resolved.yaml")
            if not isinstance(data, dict) or _same_arm_view(data) != want:
                continue
            for r in newest(collect_results(folder)):
                if r.get("arm") != "full-earlystop" or not r.get("steps_run") or not r.get("student_options"):
                    continue
                key = json.dumps(r["student_options"], sort_keys=True)
                seen = (str(r.get("time") or ""), int(r["steps_run"]), folder.relative_to(root).as_posix())
                if key not in found or seen[0] >= found[key][0]:
                    found[key] = seen
        except (OSError, UserError, ValueError, AttributeError, TypeError):  # results that cannot be read
            continue
    return {k: (steps, run) for k, (_, steps, run) in found.items()}


def _sections(recipe: Any) -> list:
    from distillctl.evaluation.protocol import student_sections

    return student_sections(recipe, None)


def _distill_sections(recipe: Any) -> list:
    return list(recipe.distill.students or [recipe.student])


def eval_calls(recipe: Any, ipc: int, z: Sizes) -> list[Call]:
    """Calls of ``eval`` on the set of stage ``ipc``."""
    ev, tokens = recipe.eval, _level(recipe) == "tokens"
    n_set = ipc * z.C
    B = _batch(n_set, ev.batch_size)
    variants = ("soft", "hard") if recipe.distill.soft_labels else ("hard",)
    calls = [Call(student_key(s), ev.seeds, B, ev.steps, z.test, f"{s.name} {v}")
             for s in _sections(recipe) for v in variants]
    if tokens:  # distilled-init (the initial model) and distilled-heads (K fresh heads): the inner steps it
        #         was distilled for
        per = recipe.distill.inner.batch_per_class
        rows = min(n_set, per * z.C) if per else n_set
        made_for = student_key(_distill_sections(recipe)[0])
        ridge = getattr(recipe.distill.tokens, "head_first", "none") == "ridge"
        calls.append(Call(made_for, 1, rows, _inner_steps(recipe), z.test, "distilled-init"))
        calls.append(Call(made_for, ev.seeds, rows, _inner_steps(recipe), z.test, "distilled-heads",
                          scoring=0 if ridge else None))
    return calls


def baseline_calls(recipe: Any, kind: str, z: Sizes, earlier: dict | None = None) -> list[Call]:
    """Calls of ``baseline --kind KIND`` (``earlier``: :func:`earlier_earlystop`)."""
    ev = recipe.eval
    if kind == "majority":
        return []
    if kind == "full":
        # token level: its checks score distill.tokens.val_rows' fixed draw of val (vectors: all of val)
        val = z.distill_val if _level(recipe) == "tokens" else z.val
        out = []
        for s in _sections(recipe):
            steps, checks, _ = earlystop_steps(recipe, (earlier or {}).get(student_key(s), (None,))[0], z.train)
            out.append(Call(student_key(s), ev.seeds, ev.batch_size, ev.steps, z.test, f"full {s.name}"))
            out.append(Call(student_key(s), ev.seeds, ev.batch_size, steps, z.test + checks * val,
                            f"full-earlystop {s.name}", lockstep=True))
        return out
    ipcs = list(recipe.baseline.ipc or recipe.distill.ipc)
    return [Call(student_key(s), ev.seeds, _batch(k * z.C, ev.batch_size), ev.steps, z.test, f"{kind} ipc {k} {s.name}")
            for s in _sections(recipe) for k in ipcs]


def validation_calls(recipe: Any, ipc: int, z: Sizes) -> list[Call]:
    """Calls of one vector-level validation of stage ``ipc`` (its students on the set, scored on val)."""
    ev = recipe.eval
    B = _batch(ipc * z.C, ev.batch_size)
    return [Call(student_key(s), recipe.distill.outer.val_seeds, B, ev.steps, z.distill_val, f"val {s.name}")
            for s in _distill_sections(recipe)]


def all_calls(recipe: Any, z: Sizes) -> list[Call]:
    """Every call any job of the recipe's graph makes (what the student primitives must cover)."""
    calls = [c for ipc in recipe.distill.ipc for c in eval_calls(recipe, ipc, z)]
    calls += [c for kind in recipe.baseline.kinds for c in baseline_calls(recipe, kind, z)]
    if _level(recipe) != "tokens":
        calls += [c for ipc in recipe.distill.ipc for c in validation_calls(recipe, ipc, z)]
    return calls


def call_seconds(c: Call, cost: StudentCost, tokens: bool) -> float:
    if tokens:  # K students one after another (or in lockstep: the same work), each built, trained, scoring
        scoring = c.K if c.scoring is None else c.scoring
        return c.K * (cost.setup.get(1, 0.0) + c.steps * cost.step.get((1, c.B), 0.0)) + scoring * c.rows * cost.row
    return cost.setup.get(c.K, 0.0) + c.steps * cost.step.get((c.K, c.B), 0.0) + c.K * c.rows * cost.row


def call_bytes(c: Call, cost: StudentCost, tokens: bool) -> int:
    """What the call holds on top of the loaded process at its peak."""
    if tokens:
        train = cost.peak.get((1, c.B), 0)
        if c.lockstep:  # K students and a snapshot of each one's trained weights at once
            train += (c.K - 1) * cost.state_bytes + c.K * cost.param_bytes
        elif c.K > 1:  # one after another: the next one is built while the last one is still held
            train += cost.state_bytes
        return max(train, cost.predict_peak)
    train = cost.peak.get((c.K, c.B), 0)
    scored = cost.scored_peak.get((c.K, c.B))
    if scored is None or not cost.scored_rows.get((c.K, c.B)):  # a measurement without it: each part alone
        return max(train, cost.predict_peak)
    # training, then scoring with the students still held: measured with scored_rows rows in one chunk, less
    # what each row fewer needs (scoring alone, per row) where the call scores fewer rows at a time
    fewer = max(0, cost.scored_rows[(c.K, c.B)] - c.rows)  # scored_rows is at most one chunk (EVAL_STUDENT_ROWS)
    per_row = cost.predict_peak / cost.predict_rows if cost.predict_rows else 0.0
    return max(train, int(scored - fewer * per_row))


# -- the measurement ---------------------------------------------------------------------------------------

@dataclass
class Measurement:
    """What one sweep point's measurement found (seconds and bytes), the input of :func:`forecast_job`."""

    startup: Startup
    embed: EmbedMeasure
    sizes: Sizes
    level: str = "vectors"
    stages: dict[int, StageMeasure] = field(default_factory=dict)
    students: dict[str, StudentCost] = field(default_factory=dict)
    coreset: dict[tuple[str, int], float] = field(default_factory=dict)  # (kind, ipc) -> seconds
    coreset_bytes: dict[str, int] = field(default_factory=dict)  # kind -> bytes its choice holds at its peak
    features_seconds: float = 0.0  # token level: herding/kcenter's pooled features of every training text
    logreg: tuple[float, int, float] = (0.0, 0, 0.0)  # full-logreg: seconds, bytes on top, upper bound seconds
    report: tuple[float, int] = (0.0, 0)
    job_seconds: float | None = None  # a whole job that trains nothing (pm.JobProbe), when measured
    embed_job_seconds: float | None = None  # the embed job on its cache (pm.JobProbe(embed=True)), when measured
    earlystop_runs: dict[str, tuple[int, str]] = field(default_factory=dict)  # earlier_earlystop()
    lib_bytes: int = 0  # token level: what loading a fine-tuned student's libraries adds to a process
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds the measurement spent per part


def _sizes(recipe: Any, emb: Any) -> Sizes:
    from distillctl.evaluation.protocol import split_of

    n = {s: len(split_of(emb, s).y) for s in ("train", "val", "test")}
    dv = n["val"]
    if _level(recipe) == "tokens" and recipe.distill.tokens.val_rows is not None:
        dv = min(dv, recipe.distill.tokens.val_rows)
    return Sizes(int(emb.num_classes), n["train"], n["val"], n["test"], dv)


def measure(recipe: Any, *, device: str | None = None, startup: Startup | None = None, threads: int = 1,
            cores: int = 1, shared: dict | None = None) -> Measurement:
    """Run the short measurement of one recipe (see :mod:`distillctl.plan_measure`) in a temporary folder.
    ``startup``: a job's start measured already (this process's own, or a probe's). ``threads`` per job on
    ``cores``: where a core is left over, a missing cache's sample is encoded there beside the rest.
    ``shared``: what earlier points of a sweep measured (rows, students, arms), reused where they have the
    same data and eval sections (a sweep over the method measures its students once)."""
    from distillctl import plan_measure as pm

    t_start = time.perf_counter()
    if device:
        recipe = pm.small(recipe, [f"distill.device={device}", f"embed.device={device}", f"eval.device={device}"])
    phases: dict[str, float] = {}
    shared = {} if shared is None else shared
    data = recipe.to_dict()
    ekey = json.dumps([data.get(k) for k in ("seed", "dataset", "encoder", "embed")]
                      + ([data.get("student")] if _level(recipe) == "tokens" else []), sort_keys=True, default=str)
    t0 = time.perf_counter()
    if ("emb", ekey) in shared:
        emb, em = shared[("emb", ekey)]
    else:
        emb, em = shared[("emb", ekey)] = pm.embeddings(recipe, beside=threads < cores)
    phases["embeddings"] = time.perf_counter() - t0
    # a whole job that trains nothing (its start, loading the rows, writing, exit), beside the rest when two
    # cores beyond the measurement's are idle, else after it (on 2 cores, beside a 1-thread measurement, the
    # probe took 10 s for a 2-s job: BENCHMARKS.md, "Plan accuracy"); only with the cache there (a missing
    # cache: the start measured plus loading)
    probe = pm.JobProbe(recipe) if em.cached and ("probe", ekey) not in shared else None
    # and the embed job itself (a cache hit: loading and verifying, fewer imports, nothing written), at the same
    # time as the first probe where there are two cores for the two (they are single-threaded starts)
    embed_probe = pm.JobProbe(recipe, embed=True) if probe is not None else None
    probe_beside = threads + 2 <= cores
    if probe is not None and probe_beside:
        probe.start()
    tokens = _level(recipe) == "tokens"
    z = _sizes(recipe, emb)
    m = Measurement(startup or Startup(0.0, 0), em, z, _level(recipe))
    if not em.cached:
        m.notes.append("embedding cache missing: the embed job is forecast from a sample of the texts, the other "
                       f"jobs measured on stand-in {'token rows' if tokens else 'random vectors'} of the same shape")
    def wants_stand_in_probe() -> bool:
        """A missing cache (vectors, the width known): a whole job that trains nothing is timed on a stand-in
        cache entry. This process's own start plus loading left out the job's writing and exit: the
        quickstart's 2-s majority job forecast at 1.5 s, agnews-mlp-defaults' at 1.8 s for 2.7."""
        return not em.cached and not tokens and bool(em.dim) and ("probe", ekey) not in shared

    def start_stand_in_probe() -> "pm.JobProbe | None":
        try:
            return pm.JobProbe(recipe, stand_in=em.dim, data=em.data).start()
        except OSError:  # no room for the stand-in entry: the job's start plus loading, as before
            return None

    if startup is None:
        pm.warm_up(recipe)  # torch's first training: in the start-up probe's footprint, not in a measured part
    if tokens:  # the libraries a fine-tuned student loads (transformers...): every job that builds one holds them
        t0 = time.perf_counter()
        m.lib_bytes = pm.student_libraries(recipe, emb)
        phases["libraries"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="distillctl-plan-") as tmp:
        # 1. the first and the last stage of the chain, a few outer steps each
        t0 = time.perf_counter()
        # beside the students' measurement when the recipe's jobs run two at a time and two fit the cores
        workers = getattr(getattr(recipe.scheduler, "options", None), "workers", None) or 1
        # (a missing cache: on stand-ins of the width the encoder's configuration gives, if it gives one)
        beside = (pm.StagesBeside(recipe, Path(tmp), threads, None if em.cached else emb)
                  if not tokens and (em.cached or em.dim) and workers >= 2 and 2 * threads <= cores else None)
        if beside is None:
            m.stages, run = pm.measure_stages(recipe, emb, Path(tmp))
            phases["distill"] = time.perf_counter() - t0
            em.go()  # a missing cache's sample encodes now, not beside the stages
        # 2. every student primitive any job needs, once
        t0 = time.perf_counter()
        sections = {student_key(s): s for s in _sections(recipe) + _distill_sections(recipe)}
        needs: dict[str, set] = {}
        scored_rows: dict[tuple[str, int, int], int] = {}
        for c in all_calls(recipe, z):
            needs.setdefault(c.student, set()).add(c.B if tokens else (c.K, c.B))
            if not tokens:  # the most rows a call of this (K, B) scores
                scored_rows[(c.student, c.K, c.B)] = max(scored_rows.get((c.student, c.K, c.B), 0), c.rows)
        if tokens:  # the distilled-for student's scoring prices the stages' validations: one step's student
            needs.setdefault(student_key(_distill_sections(recipe)[0]), set()).add(
                _batch(min(recipe.distill.ipc) * z.C, recipe.eval.batch_size))
        ev = json.dumps(data.get("eval"), sort_keys=True, default=str)
        for key, need in needs.items():
            cost = shared.setdefault(("student", ekey, ev, key), StudentCost())
            missing = {n for n in need if ((1, n) if tokens else n) not in cost.step}
            if missing:
                new = (pm.token_student(recipe, sections[key], emb, missing) if tokens
                       else pm.vector_student(recipe, sections[key], emb, missing,
                                              {(K, B): n for (k, K, B), n in scored_rows.items() if k == key}))
                for name in ("setup", "step", "peak", "scored_peak", "scored_rows"):
                    getattr(cost, name).update({k: v for k, v in getattr(new, name).items()
                                                if k not in getattr(cost, name)})
                cost.row = cost.row or new.row
                cost.predict_peak = cost.predict_peak or new.predict_peak
                cost.predict_rows = cost.predict_rows or new.predict_rows
                cost.state_bytes = cost.state_bytes or new.state_bytes
                cost.param_bytes = cost.param_bytes or new.param_bytes
            m.students[key] = cost
        phases["students"] = time.perf_counter() - t0
        if beside is not None and beside.succeeded():
            em.go()  # the stages are measured: a missing cache's sample may encode beside the arms
        # 3. what some arms add: choosing coresets, the logistic regression
        t0 = time.perf_counter()
        ipcs = list(recipe.baseline.ipc or recipe.distill.ipc)
        for kind in ("herding", "kcenter"):
            if kind in recipe.baseline.kinds and not tokens:
                top = max(ipcs)
                if ("coreset", ekey, kind, top) not in shared:
                    shared[("coreset", ekey, kind, top)] = pm.coreset_cost(emb, kind, top)
                seconds, m.coreset_bytes[kind] = shared[("coreset", ekey, kind, top)]
                for k in ipcs:  # greedy: one pick per row per class, each a pass over the class
                    m.coreset[(kind, k)] = seconds * k / top
        if tokens and {"herding", "kcenter"} & set(recipe.baseline.kinds):
            m.features_seconds = z.train * next(iter(m.students.values())).row
        if "full" in recipe.baseline.kinds and not tokens:
            if ("logreg", ekey) not in shared:
                seconds, extra, _, upper = pm.logreg(emb)
                shared[("logreg", ekey)] = (seconds, extra, upper)
            m.logreg = shared[("logreg", ekey)]
        phases["arms"] = time.perf_counter() - t0
        stand_in_probe = None
        if beside is not None and beside.running() and wants_stand_in_probe():
            # this process would only wait for the stages: a whole job on a stand-in entry runs on its core now,
            # not at the end beside the sample (where it kept the sample's largest batch to one thread)
            t0 = time.perf_counter()
            stand_in_probe = start_stand_in_probe()
            phases["job probe started (stand-in rows, beside the stages)"] = time.perf_counter() - t0
        if beside is not None:  # 1. again: the stages measured beside, or here if that child failed
            t0 = time.perf_counter()
            got = beside.result()
            m.stages, run = got if got is not None else pm.measure_stages(recipe, emb, Path(tmp))
            phases["distill (beside)" if got is not None else "distill"] = time.perf_counter() - t0
            em.go()
        if stand_in_probe is not None:  # (beside the sample now, as in the tail)
            t0 = time.perf_counter()
            shared[("probe", ekey)] = stand_in_probe.seconds()
            phases["job probe (stand-in rows, beside the stages)"] = time.perf_counter() - t0
        # 4. the report of the last measured stage's run; where the sample is encoded already (or was, before
        #    the rest: jobs that use every core), a whole job on a stand-in entry beside it: both are mostly one
        #    thread of Python, and at the end, alone, the probe added 2 s to the plan (mrpc-mlp-ratbptt's
        #    reached 27 s, past STAND_IN_PROBE_BEFORE, and its majority job was forecast from this process's start)
        report_probe = None
        if wants_stand_in_probe() and not em.encoding():
            report_probe = start_stand_in_probe()
        t0 = time.perf_counter()
        row = m.students[student_key(_distill_sections(recipe)[0])].row if tokens else 0.0
        m.report = pm.measure_report(recipe, run, emb, row)
        phases["report"] = time.perf_counter() - t0
        if report_probe is not None:
            t0 = time.perf_counter()
            shared[("probe", ekey)] = report_probe.seconds()
            phases["job probe (stand-in rows, beside the report)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if probe is not None:
        if probe.proc is None:
            probe.start()
        if cores >= 2:
            embed_probe.start()
            shared[("probe", ekey)], shared[("embed probe", ekey)] = pm.wait_probes([probe, embed_probe])
        else:
            shared[("probe", ekey)] = probe.seconds()
            shared[("embed probe", ekey)] = embed_probe.start().seconds()
        phases["job probe (beside)" if probe_beside else "job probes"] = time.perf_counter() - t0
    so_far = pm.process_age() if startup is not None and startup.how == "this process" else None
    so_far = so_far if so_far is not None else time.perf_counter() - t_start
    if wants_stand_in_probe() and so_far < STAND_IN_PROBE_BEFORE:
        # while the sample's child still encodes on the other core (this process waits for it anyway), else
        # alone (a probe that could not start beside the report)
        t0 = time.perf_counter()
        beside_sample = em.encoding()
        em.go()
        probe_now = start_stand_in_probe()
        shared[("probe", ekey)] = None if probe_now is None else probe_now.seconds()
        phases["job probe (stand-in rows" + (", beside the sample)" if beside_sample else ")")] = \
            time.perf_counter() - t0
    m.job_seconds = shared.get(("probe", ekey))
    m.embed_job_seconds = shared.get(("embed probe", ekey))
    t0 = time.perf_counter()
    em.finish()  # the sample's child, if it is still encoding
    if not em.cached:
        phases["embed sample (beside)" if threads < cores else "embed sample"] = time.perf_counter() - t0
    m.phases = phases
    m.seconds = time.perf_counter() - t_start
    return m


# -- forecasting -----------------------------------------------------------------------------------------

def _validations(iterations: int, val_every: int) -> int:
    """Validations of a stage: at step 0, every val_every steps, and after the last step."""
    return 1 + iterations // val_every + (1 if iterations % val_every else 0)


def _dominant(parts: dict[str, float]) -> str:
    total = sum(parts.values()) or 1.0
    name, seconds = max(parts.items(), key=lambda kv: kv[1])
    return f"{name} ({100 * seconds / total:.0f} %)"


def _calls_part(calls: list[Call], m: Measurement) -> tuple[float, int, str]:
    """(seconds, peak bytes on top, a label) of a list of calls."""
    tokens = m.level == "tokens"
    seconds = sum(call_seconds(c, m.students[c.student], tokens) for c in calls)
    peak = max((call_bytes(c, m.students[c.student], tokens) for c in calls), default=0)
    return seconds, peak, ""


def _students_label(calls: list[Call], recipe: Any) -> str:
    """``2 x 5 students x 200 steps`` (the trainings under the eval budget), ``+ 2 replays`` of a token-level
    set's own inner steps (distilled-init, distilled-heads) when there are any."""
    replays = [c for c in calls if c.what in ("distilled-init", "distilled-heads")]
    budget = [c for c in calls if c not in replays]
    K = max((c.K for c in budget), default=0)
    label = f"{len(budget)} x {K} students x {recipe.eval.steps} steps" if budget else "students"
    return label + (f" + {len(replays)} replays of the set's inner steps" if replays else "")


def val_seconds(recipe: Any, ipc: int, m: Measurement) -> float:
    """One validation of stage ``ipc`` at the recipe's budget."""
    if m.level == "tokens":  # measured on TOKEN_VAL_ROWS val rows: the rest of the rows scored at the same cost
        s = m.stages[ipc]
        heads = max(1, min(recipe.distill.outer.val_seeds, recipe.distill.tokens.head_pool))
        cost = m.students[student_key(_distill_sections(recipe)[0])]
        return s.val_seconds + max(0, m.sizes.distill_val - TOKEN_VAL_ROWS) * cost.row * heads
    return sum(call_seconds(c, m.students[c.student], False) for c in validation_calls(recipe, ipc, m.sizes))


def forecast_job(job: Any, recipe: Any, m: Measurement) -> JobForecast:
    """One job of the graph from its point's measurement, scaled by the recipe."""
    eval_steps = recipe.eval.steps
    notes: list[str] = []
    upper = None
    loaded = m.startup.peak_bytes + m.embed.base_bytes + m.lib_bytes  # a fresh process with the rows loaded
    if m.job_seconds is not None:  # a real job's start, loading, writing and exit, measured whole
        cold_start, load = {"startup, rows, exit": m.job_seconds}, {}
    else:
        cold_start = {"startup": m.startup.cold_seconds if m.startup.cold_seconds is not None else m.startup.seconds}
        load = {"load rows": m.embed.load_seconds}
    start = {**cold_start, "first training": m.startup.warm_seconds}
    if job.kind == "embed" and m.embed_job_seconds is not None:  # the embed job itself, measured whole
        parts = {"startup, load + verify cached rows, exit": m.embed_job_seconds}
        peak = (m.startup.cold_bytes or m.startup.peak_bytes) + m.embed.peak
    elif job.kind == "embed" and not m.embed.cached:  # a process's start, then the whole build (measured on a sample)
        parts = {"startup": m.startup.cold_seconds if m.startup.cold_seconds is not None else m.startup.seconds,
                 "encode every text": m.embed.seconds}
        peak = (m.startup.cold_bytes or m.startup.peak_bytes) + m.embed.peak
    elif job.kind == "embed":  # trains nothing: a process's start without torch's first training
        parts = {**cold_start, "load + verify cached rows": 0.0 if m.job_seconds is not None else m.embed.seconds}
        peak = (m.startup.cold_bytes or m.startup.peak_bytes) + m.embed.peak
    elif job.kind == "distill":
        ipc = _stage_of(job)
        s = m.stages[ipc]
        ds = recipe.distill
        iters = ds.outer.iterations
        n_val = _validations(iters, ds.outer.val_every)
        val_one = val_seconds(recipe, ipc, m)
        steps_s = iters * s.step_seconds + s.warmup_seconds
        if ds.outer.max_seconds:
            if steps_s + n_val * val_one > ds.outer.max_seconds:
                notes.append(f"capped by distill.outer.max_seconds ({ds.outer.max_seconds:g} s)")
                # the stage stops at the first step past the cap: its validations so far, then the last one
                per_val = ds.outer.val_every * s.step_seconds + val_one
                done = min(n_val - 1, int(ds.outer.max_seconds // max(1e-9, per_val)))
                steps_s = min(steps_s, max(0.0, ds.outer.max_seconds - done * val_one))
                n_val = done + 1
        if ds.outer.patience:
            notes.append("distill.outer.patience may stop the stage earlier (forecast: every iteration)")
        if not s.measured:
            notes.append("outer step not measured: scaled from the measured stages" + (
                " by the cost of its inner step" if m.level == "tokens" else " by its inner-batch rows"))
        parts = {**start, **load, "set-up": s.overhead_seconds,
                 f"{iters} outer steps x {s.step_seconds:.3f} s": steps_s,
                 f"{n_val} validations x {val_one:.2f} s": n_val * val_one}
        # the stage was measured validating on a few val rows: a validation's students and its scoring of every
        # val row are the student primitives' (on top of the loaded rows, as the stage's graph is freed by then)
        val_peak = 0 if m.level == "tokens" else max(
            (call_bytes(c, m.students[c.student], False) for c in validation_calls(recipe, ipc, m.sizes)), default=0)
        peak = loaded + max(s.peak_bytes, val_peak)
    elif job.kind == "eval":
        calls = eval_calls(recipe, _stage_of(job), m.sizes)
        seconds, extra, _ = _calls_part(calls, m)
        parts = {**start, **load, _students_label(calls, recipe): seconds}
        peak = loaded + extra
    elif job.kind == "baseline":
        kind = job.argv[job.argv.index("--kind") + 1]
        calls = baseline_calls(recipe, kind, m.sizes, m.earlystop_runs)
        seconds, extra, _ = _calls_part(calls, m)
        parts = {**start, **load}
        if kind == "full":
            es = [(c, _calls_part([c], m)[0]) for c in calls if c.lockstep]  # (call, seconds) per student
            es_s = sum(c_s for _, c_s in es)
            parts[f"full x {eval_steps} steps"] = seconds - es_s
            lo, hi = min((c.steps for c, _ in es), default=0), max((c.steps for c, _ in es), default=0)
            steps = str(lo) if lo == hi else f"{lo}-{hi}"
            _, _, cap = earlystop_steps(recipe)
            parts[f"full-earlystop x {steps} steps"] = es_s
            if m.level != "tokens":
                parts["full-logreg"] = m.logreg[0]
                extra = max(extra, m.logreg[1])
            upper = sum(parts.values()) + sum(c_s * (cap / c.steps - 1) for c, c_s in es)
            if m.level != "tokens" and not m.embed.cached:
                # lbfgs's iterations depend on the real vectors, which do not exist yet: the bound (every C at
                # its iteration cap) is what the forecast can promise, and what submit's --time covers
                upper += max(0.0, m.logreg[2] - m.logreg[0])
                notes.append(f"full-logreg measured on stand-in random vectors (the embedding cache is missing): "
                             f"its solver's iterations depend on the real vectors (agnews-mlp-defaults: 21 s on "
                             f"them, 3 s on stand-ins), at most {m.logreg[2]:.0f} s (every C at its iteration cap, "
                             f"in the upper bound); plan again after `embed` to measure it on them")
            runs = sorted({m.earlystop_runs[c.student][1] for c, _ in es if c.student in m.earlystop_runs})
            why = (f"as it ran in {', '.join(runs)} (the same rows, seeds and budget)" if runs
                   else earlystop_guess(recipe))
            notes.append(f"full-earlystop forecast at {steps} steps ({why}); it stops when val stops improving, "
                         f"at most {cap} steps (upper bound {upper:.0f} s)")
        elif kind in ("herding", "kcenter"):
            parts[f"choose {kind} rows"] = (m.features_seconds if m.level == "tokens"
                                            else sum(v for (k, _), v in m.coreset.items() if k == kind))
            extra = max(extra, m.coreset_bytes.get(kind, 0))  # chosen before the students train, then freed
            parts[_students_label(calls, recipe)] = seconds
        elif kind == "majority":
            parts = {**cold_start, **load, "count classes": 0.0}
        else:
            parts[_students_label(calls, recipe)] = seconds
        peak = ((m.startup.cold_bytes or m.startup.peak_bytes) + m.embed.base_bytes if kind == "majority"
                else loaded + extra)
    else:  # report (and a sweep's comparison): tables and plots of the run
        seconds, extra = m.report
        parts = {**cold_start, **load, "tables and plots": seconds}
        peak = (m.startup.cold_bytes or m.startup.peak_bytes) + m.embed.base_bytes + m.lib_bytes + extra  # no training
    return JobForecast(job.id, job.kind, round(sum(parts.values()), 2), int(peak),
                       {k: round(v, 3) for k, v in parts.items()}, _dominant(parts), notes,
                       None if upper is None else round(upper, 1))


def _stage_of(job: Any) -> int:
    return int(re.search(r"ipc(\d+)$", job.id).group(1))


def machine() -> str:
    import os
    import platform

    return f"{platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()})"


def job_threads(recipe: Any, environ: dict | None = None) -> int:
    """Torch threads one job of the recipe gets, as its scheduler starts it: the local scheduler's ``threads``
    (exported over any ``OMP_NUM_THREADS``), slurm's ``cpus`` (the job's ``OMP_NUM_THREADS``), else an
    ``OMP_NUM_THREADS`` the user exported, else this machine's cores shared by ``workers``. A count the CLI
    derived from the machine for this process (``MACHINE_VARIABLE`` beside it) is not the jobs': the local
    scheduler drops it (a plain ``distillctl plan`` on a quiet 2-core machine measured 2 threads for a recipe
    whose jobs run 1, and forecast its evals up to 45 % short)."""
    import os

    from distillctl.threads import JOBS_VARIABLE, exported_threads, machine_threads

    env = dict(os.environ if environ is None else environ)
    opts = getattr(recipe.scheduler, "options", None)
    for name in ("threads", "cpus"):
        if getattr(opts, name, None):
            return int(getattr(opts, name))
    given = exported_threads(env)  # not the CLI's own machine-derived count: the local scheduler drops that
    if given:
        return given
    workers = getattr(opts, "workers", None) or 1
    return machine_threads({**env, JOBS_VARIABLE: str(workers)})[0]


def plan(recipe_path: str | Path, *, overrides: Sequence[str] = (), sweeps: Sequence[str] = (),
         device: str | None = None, quiet: bool | None = None, points: Sequence[Any] | None = None,
         jobs: Sequence[Any] | None = None) -> Plan:
    """Forecast every job of the graph ``submit`` would run for the recipe (and sweeps): wall time, peak
    resident memory, what dominates. ``device`` measures there (``cpu``, ``cuda``) instead of the recipe's
    devices. ``points`` / ``jobs``: an already expanded sweep and its graph (``submit`` passes them)."""
    from distillctl import plan_measure as pm
    from distillctl.console import info, is_quiet
    from distillctl.jobs.jobgraph import build_graph
    from distillctl.jobs.sweeps import expand_points

    fresh = pm.fresh_process()  # before anything imports torch: this process's start is a job's start
    quiet = is_quiet() if quiet is None else quiet
    t0 = time.perf_counter()
    if points is None:
        points = expand_points(recipe_path, list(overrides), list(sweeps), None)
    if jobs is None:
        jobs = build_graph(points, Path(tempfile.gettempdir()) / "distillctl-plan").jobs
    threads = job_threads(points[0].recipe)
    from distillctl.threads import allowed_cores, busy_cores

    # cores free for the measurement: a missing cache's sample is encoded beside it only on a core left idle
    cores = allowed_cores(__import__("os").environ)[0] - (busy_cores() or 0)
    if fresh:
        import os

        from distillctl.threads import THREAD_VARIABLES

        for name in THREAD_VARIABLES:  # before torch starts its thread pool
            os.environ[name] = str(threads)
    startup = pm.startup_here(points[0].recipe) if fresh else None
    import torch

    torch.set_num_threads(threads)
    single = len(points) == 1 and not points[0].values
    forecasts: list[JobForecast] = []
    measured: dict[str, Measurement] = {}
    shared: dict = {}  # what the points of a sweep share (their rows, students, arms)
    notes: list[str] = []
    # the BLAS and OpenMP pools numpy / scikit-learn started before (at the CLI's own count: the logistic
    # regression measured 3x slow at 2 BLAS threads beside a 1-thread stage child on 2 cores) get the jobs' count
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        for p in points:
            if not quiet:
                info(f"plan: measuring {p.name or p.recipe.name} on {device or 'the recipe devices'} ({threads} "
                     f"thread{'s' if threads > 1 else ''} per job) ...")
            measured[p.name] = measure(p.recipe, device=device, startup=startup, threads=threads, cores=cores,
                                       shared=shared)
            measured[p.name].earlystop_runs = earlier_earlystop(p.recipe)
            notes += [n for n in measured[p.name].notes if n not in notes]
    if startup is None:  # alone, after the measurement: a probe beside it would slow both
        t_probe = time.perf_counter()
        startup = pm.startup_probe(points[0].recipe)
        for m in measured.values():
            m.startup = startup
            m.phases["startup"] = time.perf_counter() - t_probe
    else:
        for m in measured.values():
            m.phases["startup (this process)"] = startup.seconds
    for job in jobs:
        point = _point_of(job, points, single)
        forecasts.append(forecast_job(job, point.recipe, measured[point.name]))
    from distillctl.devices import describe_device

    dev = describe_device(device or points[0].recipe.distill.device)
    plan_ = Plan(recipe=points[0].recipe.name, device=str(dev.get("name", dev) if isinstance(dev, dict) else dev),
                 machine=machine(), jobs=forecasts, measured_seconds=time.perf_counter() - t0, notes=notes,
                 threads=threads)
    if fresh:  # the whole command, its own start included
        plan_.measured_seconds = pm.process_age() or plan_.measured_seconds
    phases: dict[str, float] = {}
    for m in measured.values():  # summed over the points of a sweep
        for k, v in m.phases.items():
            phases[k] = phases.get(k, 0.0) + v
    plan_.phases = {k: round(v, 2) for k, v in phases.items()}
    return plan_


def _point_of(job: Any, points: Sequence[Any], single: bool) -> Any:
    if single or "/" not in job.id:
        owner = next((p for p in points if job.cwd.rstrip("/").endswith("/" + p.name)), None)
        return owner or points[0]
    name = job.id.split("/", 1)[0]
    return next(p for p in points if p.name == name)


# -- what submit does with a plan ----------------------------------------------------------------------------

def slurm_limits(f: JobForecast) -> tuple[int, str]:
    """(--time minutes, --mem) for a forecast, with the stated margins; --time covers the job's upper bound
    where it has one (full-earlystop's cap)."""
    minutes = math.ceil(max(f.seconds * TIME_FACTOR, f.upper_seconds or 0.0) / 60) + TIME_EXTRA_MIN
    mib = math.ceil(f.peak_bytes * MEM_FACTOR / 2**20) + MEM_EXTRA_MIB
    return minutes, f"{mib}M"


def margin_text() -> str:
    return (f"forecast x {TIME_FACTOR:g} + {TIME_EXTRA_MIN} min for --time (at least a job's upper bound + "
            f"{TIME_EXTRA_MIN} min), peak memory x {MEM_FACTOR:g} + {MEM_EXTRA_MIB} MiB for --mem")


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan_text(p: Plan) -> str:
    """The plan as a table (``distillctl plan`` without ``--json``)."""
    from distillctl.scheduling import format_seconds

    width = max([len(j.id) for j in p.jobs] + [3])
    lines = [f"plan for {p.recipe} on {p.machine}, device {p.device}, "
             f"{p.threads or '?'} thread{'' if p.threads == 1 else 's'} per job (measured in {p.measured_seconds:.1f} s)", "",
             f"{'job':<{width}}  {'wall':>8}  {'peak memory':>11}  dominated by"]
    for j in p.jobs:
        lines.append(f"{j.id:<{width}}  {format_seconds(j.seconds):>8}  {format_bytes(j.peak_bytes):>11}  {j.dominant}")
        lines += [f"{'':<{width}}  {'':>8}  {'':>11}  note: {n}" for n in j.notes]
    lines += ["", f"all jobs one after another: {format_seconds(p.total_seconds)}; largest peak "
              f"{format_bytes(p.peak_bytes)}"]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines) + "\n"


PLANNED = ("time", "mem")


def _set_by_recipe(options: Any, kind: str) -> set[str]:
    """Which of --time / --mem the recipe's scheduler section sets for a job of ``kind`` (itself or ``stages``)."""
    given = set(getattr(options, "model_fields_set", set())) & set(PLANNED)
    stage = (getattr(options, "stages", None) or {}).get(kind)
    if stage is not None:
        given |= {f for f in PLANNED if getattr(stage, f, None) is not None}
    return given


def apply_plan(points: Sequence[Any], jobs: Sequence[Any], options: Any, *, quiet: bool | None = None) -> list[str]:
    """Set ``resources["time"]`` (minutes) and ``resources["mem"]`` of every job whose scheduler takes them
    (its options have ``time`` and ``mem`` fields, as SLURM's) and whose recipe does not set them, from
    :func:`plan` with the margins of :func:`slurm_limits`; the jobs of one group (a job array) get the
    largest of their forecasts. Returns the lines ``submit`` says about it (empty: nothing to plan)."""
    fields = getattr(type(options), "model_fields", {})
    if not all(f in fields for f in PLANNED):
        return []
    need = {j.id: [f for f in PLANNED if f not in _set_by_recipe(options, j.kind)] for j in jobs}
    if not any(need.values()):
        return ["--time and --mem: from the recipe's scheduler section for every job (no plan)"]
    p = plan(None, points=points, jobs=jobs, quiet=quiet)
    by_group: dict[str, tuple[int, str]] = {}
    for j in jobs:
        minutes, mem = slurm_limits(p.job(j.id))
        signal = getattr(options, "signal_seconds", 0) or 0
        minutes = max(minutes, math.ceil(signal / 60) + 1)
        key = j.group or j.id
        old = by_group.get(key)
        if old is None or minutes > old[0] or int(mem[:-1]) > int(old[1][:-1]):
            by_group[key] = (max(minutes, old[0] if old else 0),
                             f"{max(int(mem[:-1]), int(old[1][:-1]) if old else 0)}M")
    lines = [f"--time and --mem from `distillctl plan` ({margin_text()}), measured in {p.measured_seconds:.0f} s on "
             f"{p.machine}, device {p.device}; the recipe's scheduler.time / scheduler.mem / scheduler.stages "
             f"override them:"]
    from distillctl.scheduling import format_seconds

    gpus = [k for k, st in (getattr(options, "stages", None) or {}).items() if getattr(st, "gpus", None)]
    if (getattr(options, "gpus", 0) or gpus) and p.device == "cpu":
        lines.append(f"  note: the jobs ask for GPUs ({', '.join(gpus) or 'every stage'}) but this plan measured on "
                     f"the CPU: their --time is generous; set scheduler.time per stage to tighten it")
    for j in jobs:
        minutes, mem = by_group[j.group or j.id]
        f = p.job(j.id)
        set_ = []
        if "time" in need[j.id]:
            j.resources["time"] = minutes
            set_.append(f"--time={minutes}")
        if "mem" in need[j.id]:
            j.resources["mem"] = mem
            set_.append(f"--mem={mem}")
        given = [x for x in PLANNED if x not in need[j.id]]
        lines.append(f"  {j.id}: forecast {format_seconds(f.seconds)}, {format_bytes(f.peak_bytes)} -> "
                     f"{' '.join(set_) or 'nothing'}" + (f" ({', '.join(given)} from the recipe)" if given else ""))
    return lines

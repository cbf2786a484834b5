"""plan: what each job of a recipe's graph will need (wall time, peak memory) before it runs.

:func:`plan` builds the job graph ``submit`` would run (:mod:`distillctl.jobs.jobgraph`) and forecasts every
job from a short measurement of the real stage functions on this machine, scaled by the recipe::

    startup      a fresh ``python`` importing torch and distillctl (every job pays it)
    embed        cache hit: loading and verifying the cached vectors; miss: encoding a sample of the texts,
                 scaled to every row, plus loading the dataset and the encoder
    distill      per Boost-DD stage: ``distill --stage IPC`` for MEASURE_STEPS outer steps (the recipe's method,
                 population, unroll, students, real batch, ipc), validating with a short eval budget; the
                 steady step time x ``iterations``, validations x the time of one at the full eval budget
    eval         ``eval`` of each stage's set with two short budgets (fixed + per-step cost) -> ``eval.steps``
    baseline     each arm the same way (``full``'s early-stopping budget scales with ``eval.steps`` too)
    report       measured as it is (it does not scale with the recipe)

Peak memory is the peak resident set of the measuring process over each step (Linux ``VmHWM``, reset before
each; the job's own process holds the same imports and vectors), so a job's forecast includes torch and the
vectors it loads. Forecasts are for the device measured on: this machine's (``auto``), or ``device``.

``distill.outer.patience`` can end a stage early and full-earlystop's patience its training: forecasts take the
full budget (an upper bound there). ``distill.outer.max_seconds`` caps a stage's forecast.

The measurement runs in a temporary folder with the recipe's embedding cache (it is filled by the embed job
otherwise: plan never embeds a whole dataset) and writes nothing else.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

#: outer steps measured per Boost-DD stage (the first is a warm-up; steps 2..N give the steady step time)
MEASURE_STEPS = 4
#: each stage's measured steps stop after this many seconds (a slow Transformer population: fewer steps)
MEASURE_STAGE_SECONDS = 6.0
#: the two short eval budgets (optimiser steps) that separate a student's fixed cost from its per-step cost
SHORT_STEPS = (20, 100)
#: texts encoded to time the encoder when the embedding cache is missing, in batches of SAMPLE_BATCH
EMBED_SAMPLE, SAMPLE_BATCH = 64, 16
#: the margins ``submit`` adds to a forecast for SLURM's --time and --mem (a killed job costs more than a
#: bigger allocation): time x TIME_FACTOR + TIME_EXTRA_MIN minutes, memory x MEM_FACTOR + MEM_EXTRA_MIB
TIME_FACTOR, TIME_EXTRA_MIN = 1.5, 5
MEM_FACTOR, MEM_EXTRA_MIB = 1.25, 512


@dataclass
class JobForecast:
    """One job: ``seconds`` of wall time, ``peak_bytes`` of resident memory, and where the time goes
    (``parts``: seconds per part, ``dominant``: the largest one, in words)."""

    id: str
    kind: str
    seconds: float
    peak_bytes: int
    parts: dict[str, float] = field(default_factory=dict)
    dominant: str = ""
    notes: list[str] = field(default_factory=list)

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
    phases: dict[str, float] = field(default_factory=dict)  # seconds the measurement spent per stage

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
        return {"recipe": self.recipe, "device": self.device, "machine": self.machine,
                "measured_seconds": round(self.measured_seconds, 2), "total_seconds": round(self.total_seconds, 1),
                "peak_bytes": self.peak_bytes, "jobs": [j.to_json() for j in self.jobs], "notes": self.notes,
                "measurement_phases": self.phases}


# -- measuring ---------------------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int | None:
    try:
        m = re.search(rf"{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def own_peak_bytes() -> int:
    """This process's peak resident set since its ``exec``: ``VmHWM`` (``ru_maxrss`` where there is no /proc,
    which also counts a forked parent's pages)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * 1024


class PeakMemory:
    """The peak resident set over a block: ``VmHWM`` reset at the start (Linux ``clear_refs``); elsewhere
    the process's peak so far (``ru_maxrss``, an upper bound). ``extra`` is the peak above the resident set
    at the start: what the block itself needed on top of what the process already held."""

    def __enter__(self) -> "PeakMemory":
        _trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.start = (_status_kib("VmRSS") or 0) * 1024
        self.peak = 0
        self.extra = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        kib = _status_kib("VmHWM")
        if kib is None:
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS: upper bound)
        self.peak = int(kib) * 1024
        self.extra = max(0, self.peak - self.start)


def _trim() -> None:
    """Give freed memory back to the OS (gc, then glibc's malloc_trim), so a step's peak is not inflated by
    what an earlier step of the measurement left in the heap."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: the child does what every job does before its work: start Python, import torch and the stages, load the plugins,
#: read the recipe and (when cached) load and verify the vectors; it prints its peak resident set (KiB, VmHWM: its
#: own, unlike ru_maxrss, which counts the pages of the parent it was forked from), the seconds since the parent
#: started it (argv[1]) and whether it loaded the vectors
_STARTUP_CODE = ("import sys, time, torch, distillctl.cli, distillctl.distillation.distill, "
                 "distillctl.evaluation.evaluate; from distillctl.plugins import get_registry; get_registry();"
                 "from distillctl.planning import _startup_child; _startup_child(float(sys.argv[1]), sys.argv[2:])")


def _startup_child(started: float, argv: list[str]) -> None:
    loaded = False
    if argv:
        try:
            from distillctl.data import embed as embed_mod
            from distillctl.recipe import load_recipe

            recipe = load_recipe(argv[0])
            _, _, _, _, key = embed_mod._identities(recipe)
            if embed_mod._read_verified(embed_mod.entry_dir(key), key)[0] is not None:
                embed_mod.load_embeddings(recipe, quiet=True)
                loaded = True
        except Exception:  # a plugin only the parent has (tests): the imports alone
            recipe = None
    cold = own_peak_bytes()  # before any training: what embed and the majority arm need
    try:
        if argv and recipe is not None:
            warm_up(recipe)
    except Exception:
        pass
    print(own_peak_bytes() // 1024, time.time() - started, int(loaded), cold // 1024)


def warm_up(recipe: Any) -> None:
    """Train two tiny students of the recipe's kind for two steps: what torch sets up the first time a process
    trains (allocator pools, vmapped autograd), which every stage job pays once. The start-up probe pays it
    (its peak holds it) and the measuring process pays it before its first measured step (so no step counts it)."""
    import dataclasses

    import torch

    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score

    C, d = 2, 16
    build = student_builder(recipe, d, C, recipe.student)
    x, y = torch.randn(8, d), torch.arange(8) % C  # (8, d), (8,)
    budget = dataclasses.replace(TrainBudget.from_eval(recipe.eval), steps=2)
    train_and_score(build, x, y, x, y, seeds=[0, 1], budget=budget, num_classes=C, quiet=True)


@dataclass
class _Startup:
    seconds: float
    peak_bytes: int
    loaded: bool = False  # the probe loaded the cached vectors (its time and peak include them)
    cold_bytes: int = 0  # its peak before training anything (jobs that train no student: embed, majority)


#: the imports-only probe, measured once per process
_STARTUP: list[_Startup] = []


def measure_startup(recipe: Any = None) -> _Startup:
    """A job's fixed cost in a fresh interpreter (see ``_STARTUP_CODE``); without a recipe, the imports alone
    (measured once per process)."""
    cache_key = None if recipe is None else recipe.fingerprint()
    if cache_key is None and _STARTUP:
        return _STARTUP[0]
    with tempfile.TemporaryDirectory(prefix="distillctl-plan-") as tmp:
        args = []
        if recipe is not None:
            path = Path(tmp) / "recipe.yaml"
            path.write_text(recipe.to_yaml(), encoding="utf-8")
            args = [str(path)]
        out = subprocess.run([sys.executable, "-c", _STARTUP_CODE, repr(time.time()), *args], capture_output=True,
                             text=True, timeout=600)
    try:
        kib, seconds, loaded, cold = out.stdout.strip().splitlines()[-1].split()
        result = _Startup(float(seconds), int(kib) * 1024, loaded == "1", int(cold) * 1024)
    except (ValueError, IndexError):
        result = _Startup(0.0, 0)
    if recipe is None:
        _STARTUP.append(result)
    return result


def _small(recipe: Any, steps: int, **distill_outer: Any) -> Any:
    """A copy of ``recipe`` with eval.steps = ``steps`` (and outer settings), validated again."""
    from distillctl.recipe import apply_overrides, validate_recipe

    data = recipe.to_dict()
    data["tracking"] = []
    sets = [f"eval.steps={steps}"] + [f"distill.outer.{k}={'null' if v is None else v}" for k, v in distill_outer.items()]
    return validate_recipe(apply_overrides(data, sets), source="plan")


def _fit(short: tuple[float, float]) -> tuple[float, float]:
    """(fixed seconds, seconds per step) through the two short budgets' times."""
    (s1, s2), (t1, t2) = SHORT_STEPS, short
    b = max(0.0, (t2 - t1) / (s2 - s1))
    return max(0.0, t1 - b * s1), b


@dataclass
class _StageMeasure:
    ipc: int
    step_seconds: float
    warmup_seconds: float
    overhead_seconds: float
    val_seconds_short: float  # one validation at SHORT_STEPS[1]
    steps_measured: int
    peak_bytes: int  # above a fresh process with the vectors loaded


def _stage_times(records: list[dict], ipc: int) -> tuple[float, float, float, float, int]:
    """(steady step s, warm-up extra s, one validation s, stage elapsed s, steps) from a stage's metrics."""
    rows = [r for r in records if r.get("ipc") == ipc]
    steps = sorted((r for r in rows if "loss" in r), key=lambda r: r["step"])
    vals = [r for r in rows if "val_accuracy" in r]
    val_total = max((r.get("val_seconds") or 0.0) for r in vals) if vals else 0.0
    n_val = max(1, len(vals))
    first_val = min(vals, key=lambda r: r["step"]).get("val_seconds", 0.0) if vals else 0.0
    end = max((r.get("elapsed") or 0.0) for r in rows) if rows else 0.0
    plain = [r for r in steps if "val_accuracy" not in r]  # steps without a validation in their elapsed
    if len(plain) >= 2:
        a, b = plain[0], plain[-1]
        step = (b["elapsed"] - a["elapsed"]) / max(1, b["step"] - a["step"])
        warm = max(0.0, a["elapsed"] - first_val - step * a["step"])
    elif steps:
        step = max(0.0, (end - val_total) / len(steps))
        warm = 0.0
    else:
        step, warm = 0.0, 0.0
    return step, warm, val_total / n_val, end, len(steps)


@dataclass
class Measurement:
    """What one sweep point's measurement found (seconds and bytes), the input of :func:`forecast`."""

    startup: _Startup
    cached: bool
    embed_seconds: float  # the embed job's work (load + verify on a hit; encode everything on a miss)
    embed_peak: int  # bytes above a fresh process (startup) the embed job needs
    load_seconds: float  # loading the vectors in a later job
    base_bytes: int  # bytes above a fresh process that loading the vectors needs
    stages: dict[int, _StageMeasure] = field(default_factory=dict)
    eval_fit: dict[int, tuple[float, float, int]] = field(default_factory=dict)  # ipc -> (fixed, per step, peak)
    baseline_fit: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    report: tuple[float, int] = (0.0, 0)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds the measurement spent per stage


def _embeddings(recipe: Any) -> tuple[Any, bool, float, int, float, int]:
    """(embeddings, cached, embed job seconds, embed job peak bytes, load seconds, peak after loading).

    A cache hit is loaded (what every later job does). A miss encodes EMBED_SAMPLE texts to time the encoder
    (:func:`_sample_embed`; the encoder is dropped and the heap trimmed after it) and stands in random vectors
    of the real shape for the other measurements.
    """
    from distillctl.data import embed as embed_mod
    from distillctl.data.embed import _load_dataset

    source, encoder, _, _, key = embed_mod._identities(recipe)
    manifest, _, _ = embed_mod._read_verified(embed_mod.entry_dir(key), key)
    if manifest is not None:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            emb = embed_mod.load_embeddings(recipe, quiet=True)
            load = time.perf_counter() - t0
        return emb, True, load, mem.extra, load, mem.extra
    t0 = time.perf_counter()
    data = _load_dataset(source, recipe.embed.bad_rows)
    t_data = time.perf_counter() - t0
    n_rows = sum(len(sp) for sp in data.splits.values())
    child = _sample_embed_child(recipe)
    if child is not None:  # a fresh process, as the embed job: its own peak, no libraries left in this one
        seconds, peak, dim = child
        extra = max(0, peak - measure_startup().peak_bytes) + 2 * n_rows * dim * 4
    else:  # plugins this process has but a child would not (tests, embedding applications)
        seconds, extra, dim = _sample_embed(recipe, encoder, data, t_data, n_rows)
    del encoder, source
    emb = _stand_in(data, dim, recipe)
    vectors = n_rows * dim * 4
    load = vectors / 200e6  # reading and checksumming the cached vectors: ~200 MB/s
    return emb, False, seconds, extra, load, vectors


def _sample_embed_child(recipe: Any) -> tuple[float, int, int] | None:
    """:func:`_sample_embed` in a fresh interpreter (the recipe as a resolved YAML file): (seconds, its peak
    resident bytes, output width); None when the child cannot (a plugin only this process has)."""
    import json

    with tempfile.TemporaryDirectory(prefix="distillctl-plan-") as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(recipe.to_yaml(), encoding="utf-8")
        code = "import sys; from distillctl.planning import _embed_child; _embed_child(sys.argv[1])"
        try:
            out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=900)
            data = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            data = None
    return (data["seconds"], data["peak"], data["dim"]) if data else None


def _embed_child(recipe_file: str) -> None:
    """The child of :func:`_sample_embed_child`: prints one JSON line."""
    import json

    from distillctl.data import embed as embed_mod
    from distillctl.data.embed import _load_dataset
    from distillctl.recipe import load_recipe
    from distillctl.threads import configure_threads

    configure_threads(None)
    recipe = load_recipe(recipe_file)
    source, encoder, _, _, _ = embed_mod._identities(recipe)
    t0 = time.perf_counter()
    data = _load_dataset(source, recipe.embed.bad_rows)
    t_data = time.perf_counter() - t0
    n_rows = sum(len(sp) for sp in data.splits.values())
    seconds, _, dim = _sample_embed(recipe, encoder, data, t_data, n_rows)
    print(json.dumps({"seconds": seconds, "peak": own_peak_bytes(), "dim": dim}))


def _tokens(text: str, cap: int | None) -> float:
    """A text's tokens, estimated from its characters (~4 per token for English) and capped where the encoder
    stops reading; what a batch costs is its size x its longest text (padding)."""
    n = len(text) / 4 + 2
    return min(n, cap) if cap else n


def batch_cost(lengths: Sequence[float], batch_size: int) -> float:
    """Sum over batches of (rows x longest row) when texts are encoded sorted by length, as the embed stage does."""
    ls = sorted(lengths)
    return sum(len(ls[i:i + batch_size]) * ls[i:i + batch_size][-1] for i in range(0, len(ls), batch_size))


def _sample_embed(recipe: Any, encoder: Any, data: Any, t_data: float, n_rows: int) -> tuple[float, int, int]:
    """(embed job seconds, bytes the embed job needs above a fresh process, output width) from EMBED_SAMPLE
    texts encoded (the encoder's weights and libraries, the texts, and every vector, held twice while saved).

    The sample is spread over the length distribution (evenly spaced in the sorted texts) and encoded in sorted
    batches of SAMPLE_BATCH; seconds per unit of :func:`batch_cost` then scale to every text of every split in
    batches of ``embed.batch_size`` (second sentences of pairs are texts too)."""
    from distillctl.devices import resolve_device
    from distillctl.encoding import output_dim

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        encoder.load(str(resolve_device(recipe.embed.device, field="embed.device")))
        t_load = time.perf_counter() - t0
        cap = getattr(encoder, "max_tokens", None)
        train = data.splits["train"]
        order = sorted(range(len(train.texts)), key=lambda i: len(train.texts[i]))
        k = min(EMBED_SAMPLE, len(order))
        pick = [order[round(j * (len(order) - 1) / max(1, k - 1))] for j in range(k)]
        texts = [train.texts[i] for i in pick]
        pairs = None if train.pairs is None else [train.pairs[i] for i in pick]
        encoder.encode(texts[:4], None if pairs is None else pairs[:4], batch_size=SAMPLE_BATCH)  # warm-up
        t0 = time.perf_counter()
        encoder.encode(texts, pairs, batch_size=SAMPLE_BATCH)
        seconds = time.perf_counter() - t0
    sample_lengths = [_tokens(t, cap) for t in texts + (pairs or [])]
    all_lengths = [_tokens(t, cap) for sp in data.splits.values() for t in list(sp.texts) + list(sp.pairs or [])]
    per_unit = seconds / max(1e-9, batch_cost(sample_lengths, SAMPLE_BATCH))
    encode = per_unit * batch_cost(all_lengths, recipe.embed.batch_size)
    dim = output_dim(encoder, pairs is not None)
    return t_data + t_load + encode, mem.extra + 2 * n_rows * dim * 4, dim


class _Split:
    def __init__(self, X, y):
        self.X, self.y = X, y


class _StandIn:
    """Random vectors with the shape and class balance of the recipe's data (embedding cache missing)."""

    def __init__(self, splits, label_names, dim):
        self.splits, self.label_names, self.num_classes, self.dim = splits, label_names, len(label_names), dim
        self.fingerprint = "plan-stand-in"
        self.notes: list[str] = []

    def texts(self, split):
        return [f"{split} {i}" for i in range(len(self.splits[split].y))]


def _stand_in(data: Any, dim: int, recipe: Any) -> _StandIn:
    import torch

    g = torch.Generator().manual_seed(0)
    splits = {}
    labels = {name: torch.as_tensor(list(s.labels)) for name, s in data.splits.items() if len(s) > 0}
    if "test" not in labels:
        n = len(labels["train"])
        cut = int(recipe.embed.test_size if recipe.embed.test_size >= 1 else recipe.embed.test_size * n)
        labels["test"], labels["train"] = labels["train"][:cut], labels["train"][cut:]
    if "val" not in labels:
        n = len(labels["train"])
        cut = int(recipe.embed.val_size if recipe.embed.val_size >= 1 else recipe.embed.val_size * n)
        labels["val"], labels["train"] = labels["train"][:cut], labels["train"][cut:]
    for name, y in labels.items():
        splits[name] = _Split(torch.randn(len(y), dim, generator=g), y.long())
    return _StandIn(splits, list(data.label_names), dim)


def measure(recipe: Any, *, device: str | None = None, quiet: bool = True) -> Measurement:
    """Run the short measurement of one recipe (see the module doc) in a temporary folder."""
    from distillctl.distillation.distill import distill
    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.reporting.report import report
    from distillctl.runs import read_jsonl

    t_start = time.perf_counter()
    if device:
        from distillctl.recipe import apply_overrides, validate_recipe

        recipe = validate_recipe(apply_overrides(recipe.to_dict(), [f"distill.device={device}",
                                                                    f"embed.device={device}"]), source="plan")
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    emb, cached, embed_s, embed_peak, load_s, base = _embeddings(recipe)
    phases["embeddings"] = time.perf_counter() - t0
    m = Measurement(_Startup(0.0, 0), cached, embed_s, embed_peak, load_s, base)
    if not cached:
        m.notes.append(f"embedding cache missing: the embed job is forecast from {EMBED_SAMPLE} texts encoded, the "
                       "other jobs on random vectors of the same shape")
    chain = list(recipe.distill.ipc)
    warm_up(recipe)  # torch's first-training set-up: in the start-up probe's footprint, not in a measured step
    with tempfile.TemporaryDirectory(prefix="distillctl-plan-") as tmp:
        run = Path(tmp) / "run"
        # 1. distill: each stage for MEASURE_STEPS outer steps (or MEASURE_STAGE_SECONDS), validating at the
        #    start and the end with the second short eval budget.
        small = _small(recipe, SHORT_STEPS[1], iterations=MEASURE_STEPS, val_every=MEASURE_STEPS,
                       ckpt_every=MEASURE_STEPS, patience=None, max_seconds=MEASURE_STAGE_SECONDS)
        t_distill = time.perf_counter()
        for i, ipc in enumerate(chain):
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                distill(small, run_dir=None if i else run, resume=run if i else None,
                        stage=ipc if len(chain) > 1 else None, embeddings=emb, quiet=True)
                wall = time.perf_counter() - t0
            step, warm, val_one, elapsed, n = _stage_times(read_jsonl(run / "metrics.jsonl"), ipc)
            m.stages[ipc] = _StageMeasure(ipc, step, warm, max(0.0, wall - elapsed), val_one, n, mem.extra)
        phases["distill"] = time.perf_counter() - t_distill
        # 2. eval of each stage's set at the second short budget; the largest stage's set also at the first,
        #    which splits a student's time into fixed and per-step parts (the same split for every stage).
        t0 = time.perf_counter()
        short: dict[int, float] = {}
        for ipc in chain:
            with PeakMemory() as mem:
                t1 = time.perf_counter()
                evaluate(run / "distilled" / f"ipc{ipc}.safetensors", _small(recipe, SHORT_STEPS[1]), embeddings=emb,
                         quiet=True)
                short[ipc] = time.perf_counter() - t1
            m.eval_fit[ipc] = (0.0, 0.0, mem.extra)
        t1 = time.perf_counter()
        evaluate(run / "distilled" / f"ipc{chain[-1]}.safetensors", _small(recipe, SHORT_STEPS[0]), embeddings=emb,
                 quiet=True)
        fixed, per_step = _fit((time.perf_counter() - t1, short[chain[-1]]))
        at_short = fixed + per_step * SHORT_STEPS[1] or 1e-9
        for ipc in chain:  # each stage's time in the largest stage's proportions
            scale = short[ipc] / at_short
            m.eval_fit[ipc] = (fixed * scale, per_step * scale, m.eval_fit[ipc][2])
        phases["eval"] = time.perf_counter() - t0
        # 3. each baseline arm at both short budgets; 4. the report.
        t_base = time.perf_counter()
        for kind in recipe.baseline.kinds:
            # `full` has large fixed costs of its own (the logistic-regression reference, early-stopping checks):
            # both short budgets; subset arms train like eval (its split of fixed and per-step time); majority
            # trains nothing (one run, no per-step part).
            budgets = SHORT_STEPS if kind == "full" else SHORT_STEPS[1:]
            times, peak = [], 0
            for steps in budgets:
                r = _small(recipe, steps)
                with PeakMemory() as mem:
                    t1 = time.perf_counter()
                    baseline(r, kind, embeddings=emb, quiet=True, run_dir=run if steps == SHORT_STEPS[1] else None)
                    times.append(time.perf_counter() - t1)
                peak = max(peak, mem.extra)
            if kind == "full":
                m.baseline_fit[kind] = (*_fit(tuple(times)), peak)
            elif kind == "majority":
                m.baseline_fit[kind] = (times[0], 0.0, peak)
            else:
                scale = times[0] / at_short
                m.baseline_fit[kind] = (fixed * scale, per_step * scale, peak)
        phases["baseline"] = time.perf_counter() - t_base
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            report(run, quiet=True, embeddings=emb)  # the report's PCA: the vectors already in memory
            m.report = (time.perf_counter() - t0, mem.extra)
        phases["report"] = m.report[0]
    t0 = time.perf_counter()
    m.startup = measure_startup(recipe)  # alone: a probe beside the measurement would slow both
    if m.startup.loaded:  # its time and peak include loading the cached vectors, as a job's start does
        m.load_seconds, m.base_bytes = 0.0, 0
    phases["startup"] = time.perf_counter() - t0
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


def forecast_job(job: Any, recipe: Any, m: Measurement) -> JobForecast:
    """One job of the graph from its point's measurement, scaled by the recipe."""
    start = {"startup": m.startup.seconds}
    eval_steps = recipe.eval.steps
    notes: list[str] = []
    loaded = m.startup.peak_bytes + m.base_bytes  # a fresh process with the vectors loaded
    if job.kind == "embed":
        parts = {**start, ("load + verify cached vectors" if m.cached else "encode every text"): m.embed_seconds}
        peak = (m.startup.cold_bytes or m.startup.peak_bytes) + m.embed_peak
    elif job.kind == "distill":
        ipc = _stage_of(job)
        s = m.stages[ipc]
        ds = recipe.distill
        iters = ds.outer.iterations
        n_val = _validations(iters, ds.outer.val_every)
        fixed, per_step = _val_scale(m)
        val_one = s.val_seconds_short * (fixed + per_step * eval_steps) / max(1e-9, fixed + per_step * SHORT_STEPS[1])
        steps_s = iters * s.step_seconds + s.warmup_seconds
        if ds.outer.max_seconds:
            if steps_s + n_val * val_one > ds.outer.max_seconds:
                notes.append(f"capped by distill.outer.max_seconds ({ds.outer.max_seconds:g} s)")
            steps_s = min(steps_s, ds.outer.max_seconds)
            n_val = min(n_val, 2 + int(ds.outer.max_seconds // max(1e-9, val_one + ds.outer.val_every * s.step_seconds)))
        if ds.outer.patience:
            notes.append("distill.outer.patience may stop the stage earlier (forecast: every iteration)")
        parts = {**start, "load vectors": m.load_seconds, "set-up": s.overhead_seconds,
                 f"{iters} outer steps x {s.step_seconds:.3f} s": steps_s,
                 f"{n_val} validations x {val_one:.2f} s": n_val * val_one}
        peak = loaded + s.peak_bytes
    elif job.kind == "eval":
        ipc = _stage_of(job)
        fixed, per_step, extra = m.eval_fit[ipc]
        parts = {**start, "load vectors": m.load_seconds,
                 f"students x {eval_steps} steps": fixed + per_step * eval_steps}
        peak = loaded + extra
    elif job.kind == "baseline":
        kind = job.argv[job.argv.index("--kind") + 1]
        fixed, per_step, extra = m.baseline_fit[kind]
        parts = {**start, "load vectors": m.load_seconds, f"{kind} students x {eval_steps} steps": fixed + per_step * eval_steps}
        if kind == "full":
            notes.append("full-earlystop's patience may stop it earlier (forecast: its whole step budget)")
        peak = (m.startup.cold_bytes or m.startup.peak_bytes) + m.base_bytes + extra if kind == "majority" \
            else loaded + extra
    else:  # report (and a sweep's comparison): its PCA plot loads the vectors
        seconds, extra = m.report
        parts = {**start, "load vectors": m.load_seconds, "tables and plots": seconds}
        peak = loaded + extra
    return JobForecast(job.id, job.kind, round(sum(parts.values()), 2), int(peak),
                       {k: round(v, 3) for k, v in parts.items()}, _dominant(parts), notes)


def _stage_of(job: Any) -> int:
    return int(re.search(r"ipc(\d+)$", job.id).group(1))


def _val_scale(m: Measurement) -> tuple[float, float]:
    """(fixed, per step) seconds of training and scoring students: eval's fit (the same code validates)."""
    if not m.eval_fit:
        return 0.0, 1.0
    fixed = sum(f for f, _, _ in m.eval_fit.values()) / len(m.eval_fit)
    per_step = sum(b for _, b, _ in m.eval_fit.values()) / len(m.eval_fit)
    return (fixed, per_step) if per_step > 0 else (0.0, 1.0)


def machine() -> str:
    import os
    import platform

    return f"{platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()})"


def plan(recipe_path: str | Path, *, overrides: Sequence[str] = (), sweeps: Sequence[str] = (),
         device: str | None = None, quiet: bool | None = None, points: Sequence[Any] | None = None,
         jobs: Sequence[Any] | None = None) -> Plan:
    """Forecast every job of the graph ``submit`` would run for the recipe (and sweeps): wall time, peak
    resident memory, what dominates. ``device`` measures there (``cpu``, ``cuda``) instead of the recipe's
    devices. ``points`` / ``jobs``: an already expanded sweep and its graph (``submit`` passes them)."""
    from distillctl.console import info, is_quiet
    from distillctl.jobs.jobgraph import build_graph
    from distillctl.jobs.sweeps import expand_points
    from distillctl.threads import configure_threads

    configure_threads(None)
    quiet = is_quiet() if quiet is None else quiet
    t0 = time.perf_counter()
    if points is None:
        points = expand_points(recipe_path, list(overrides), list(sweeps), None)
    if jobs is None:
        jobs = build_graph(points, Path(tempfile.gettempdir()) / "distillctl-plan").jobs
    single = len(points) == 1 and not points[0].values
    forecasts: list[JobForecast] = []
    measured: dict[str, Measurement] = {}
    notes: list[str] = []
    for p in points:
        if not quiet:
            info(f"plan: measuring {p.name or p.recipe.name} on {device or 'the recipe devices'} ...")
        measured[p.name] = measure(p.recipe, device=device)
        notes += [n for n in measured[p.name].notes if n not in notes]
    for job in jobs:
        point = _point_of(job, points, single)
        forecasts.append(forecast_job(job, point.recipe, measured[point.name]))
    from distillctl.devices import describe_device

    dev = describe_device(device or points[0].recipe.distill.device)
    plan_ = Plan(recipe=points[0].recipe.name, device=str(dev.get("name", dev) if isinstance(dev, dict) else dev),
                 machine=machine(), jobs=forecasts, measured_seconds=time.perf_counter() - t0, notes=notes)
    plan_.phases = {k: round(v, 2) for m in measured.values() for k, v in m.phases.items()}
    return plan_


def _point_of(job: Any, points: Sequence[Any], single: bool) -> Any:
    if single or "/" not in job.id:
        owner = next((p for p in points if job.cwd.rstrip("/").endswith("/" + p.name)), None)
        return owner or points[0]
    name = job.id.split("/", 1)[0]
    return next(p for p in points if p.name == name)


# -- what submit does with a plan ----------------------------------------------------------------------------

def slurm_limits(f: JobForecast) -> tuple[int, str]:
    """(--time minutes, --mem) for a forecast, with the stated margins."""
    minutes = math.ceil(f.seconds * TIME_FACTOR / 60) + TIME_EXTRA_MIN
    mib = math.ceil(f.peak_bytes * MEM_FACTOR / 2**20) + MEM_EXTRA_MIB
    return minutes, f"{mib}M"


def margin_text() -> str:
    return (f"forecast x {TIME_FACTOR:g} + {TIME_EXTRA_MIN} min for --time, peak memory x {MEM_FACTOR:g} + "
            f"{MEM_EXTRA_MIB} MiB for --mem")


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan_text(p: Plan) -> str:
    """The plan as a table (``distillctl plan`` without ``--json``)."""
    from distillctl.scheduling import format_seconds

    width = max([len(j.id) for j in p.jobs] + [3])
    lines = [f"plan for {p.recipe} on {p.machine}, device {p.device} (measured in {p.measured_seconds:.1f} s)", "",
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

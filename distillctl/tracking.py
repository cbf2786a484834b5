"""Experiment trackers: see every run in MLflow, TensorBoard or a third party's tracker.

A recipe lists its trackers (empty by default)::

    tracking:
      - {name: mlflow}                                  # ./runs/mlruns, or MLFLOW_TRACKING_URI
      - {name: tensorboard}                             # RUN/tensorboard

A tracker plugin (``register_trackers``) returns a :class:`Tracker`. The core drives the trackers of a
stage (``distill``, ``eval``, ``baseline``, ``report``) through a :class:`TrackingSession`:

1. ``start(run)`` once, with a :class:`TrackedRun` (experiment = recipe name, the resolved recipe flattened
   as params, its fingerprints as tags, the run directory);
2. ``log_metrics(metrics, step)`` for every record of ``metrics.jsonl`` as it is written
   (:meth:`distillctl.runs.RunDir.log` is the one place that publishes them; keys ``ipc5/loss``) and for the
   result records of eval and baseline (``eval/ipc5/mlp/hard/accuracy``);
3. ``log_artifacts(paths, run_dir)`` with the files the stage wrote (sets, results, report, plots);
4. ``finish(status)`` (``FINISHED`` or ``FAILED``).

Trackers never fail or slow a run: each has its own background thread fed by a bounded queue; a full queue
drops events (counted), the first error of a tracker (an unreachable store) is one warning and the tracker
is switched off for the rest of the stage, and closing waits at most ``CLOSE_SECONDS``.

A ``submit`` asks each tracker for :meth:`Tracker.submission` first: the MLflow tracker makes a parent run
with a child per sweep point there and returns, per point, the environment that makes every job of the
point log into its child run.

This module imports nothing heavy.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

#: events a tracker's queue holds before new ones are dropped (a distill step is one event)
QUEUE_SIZE = 10_000
#: seconds closing a session waits for each tracker to send what it holds
CLOSE_SECONDS = 30.0

#: the sessions open in this process (innermost last); RunDir.log publishes to them
_ACTIVE: list["TrackingSession"] = []


@dataclass
class TrackedRun:
    """What a tracker is told when a stage starts.

    ``experiment`` is the recipe name; ``name`` a run name (``distill 20261206-0512-ab12``); ``params`` the
    resolved recipe flattened to ``{"distill.outer.lr": "0.003", ...}``; ``tags`` the fingerprints, stage,
    run directory and git commit; ``run_dir`` the run directory (None for a set file outside one);
    ``stage`` one of ``distill``, ``eval``, ``baseline``, ``report``.
    """

    stage: str
    experiment: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    run_dir: Path | None = None


@dataclass
class SubmissionPoint:
    """One point of a submission, as :meth:`Tracker.submission` sees it: its name (``""`` for a single
    recipe), sweep values, run directory, flattened params and tags."""

    name: str
    values: dict[str, Any]
    run_dir: Path
    params: dict[str, str]
    tags: dict[str, str]


class Tracker:
    """Base class of tracker plugins (``factory(options) -> Tracker``; a class taking its options is its own
    factory).

    Required: :meth:`start` and :meth:`log_metrics`. Optional, with working defaults here: :attr:`name`,
    :attr:`options`, :meth:`log_artifacts`, :meth:`finish`, :meth:`submission`. Every method but
    :meth:`submission` runs on the tracker's own background thread; an exception there is one warning and
    switches the tracker off for the rest of the stage (the run goes on). A missing optional package is a
    :class:`distillctl.errors.UserError` raised by the factory (the command exits 2 before anything runs).
    """

    #: the name used in messages; defaults to the plugin name
    name: str = "tracker"
    #: the validated options (a PluginOptions model) the tracker was built with
    options: Any = None

    def __init__(self, options: Any = None):
        self.options = options

    def start(self, run: TrackedRun) -> None:
        """Open a run of the tracker for one stage (called once, before any other method)."""
        raise NotImplementedError(f"tracker {self.name!r} does not implement start()")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record numbers (``{"ipc5/loss": 0.41, ...}``) at one step (the outer step of distill; 0 for results)."""
        raise NotImplementedError(f"tracker {self.name!r} does not implement log_metrics()")

    def log_artifacts(self, paths: list[Path], run_dir: Path | None) -> None:
        """Optional: keep files the stage wrote (sets, results, report, plots); ``run_dir`` is what their
        paths are relative to in the run (None outside a run). Default: nothing."""

    def finish(self, status: str) -> None:
        """Optional: close the run; ``status`` is ``FINISHED`` or ``FAILED``. Default: nothing."""

    def submission(self, experiment: str, name: str, points: list[SubmissionPoint]) -> dict[str, dict[str, str]]:
        """Optional: called by ``submit`` (in the submitting process, before the jobs start) with every point
        of the submission; returns ``{point name: {ENV_VAR: value}}`` that the point's jobs get (e.g. the id
        of a run to log into). Default: ``{}`` (each job opens its own run)."""
        return {}


# -- turning what the stages write into metrics ----------------------------------------------------------

def flatten(obj: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": [1, 2]}`` (lists stay values)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}{sep}{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key, sep))
            else:
                out[key] = v
    else:
        out[prefix] = obj
    return out


def recipe_params(recipe: Any) -> dict[str, str]:
    """The resolved recipe as flat string params (``distill.outer.lr`` -> ``"0.003"``); lists as JSON."""
    data = recipe.to_dict()
    data.pop("tracking", None)  # where the run is logged is not a parameter of the run
    return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in flatten(data).items()}


def recipe_tags(recipe: Any, stage: str, run_dir: Path | None) -> dict[str, str]:
    """Tags of a tracked run: the recipe and embedding fingerprints, stage, run directory, distillctl version."""
    from distillctl import __version__
    from distillctl.recipe import embed_key
    import hashlib

    tags = {
        "distillctl.stage": stage,
        "distillctl.recipe_name": recipe.name,
        "distillctl.recipe_fingerprint": recipe.fingerprint(),
        "distillctl.embedding_key": hashlib.sha256(embed_key(recipe).encode()).hexdigest()[:16],
        "distillctl.version": __version__,
    }
    if run_dir is not None:
        tags["distillctl.run_dir"] = str(run_dir)
    job = os.environ.get("DISTILLCTL_JOB_ID")
    if job:
        tags["distillctl.job_id"] = job
    return tags


def _numbers(record: dict, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in flatten(record).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[f"{prefix}{k}"] = float(v)
    return out


#: fields of a metrics.jsonl record that say where it belongs rather than what was measured
_WHERE = ("time", "stage", "ipc", "step")


def metrics_of_record(record: dict) -> tuple[dict[str, float], int]:
    """``(metrics, step)`` of one ``metrics.jsonl`` record: every number but ``time``/``stage``/``ipc``/``step``,
    keyed ``ipc<N>/<field>`` (steps restart at each Boost-DD stage), nested ones ``ipc1/val_by_student.mlp``."""
    prefix = f"ipc{record['ipc']}/" if record.get("ipc") is not None else ""
    body = {k: v for k, v in record.items() if k not in _WHERE}
    return _numbers(body, prefix), int(record.get("step") or 0)


def metrics_of_results(records: Iterable[dict]) -> dict[str, float]:
    """The means of eval / baseline result records: ``eval/ipc5/mlp/hard/accuracy``,
    ``baseline/random/ipc5/mlp/accuracy``, ``baseline/full/mlp/macro_f1`` (and ``..._std``)."""
    out: dict[str, float] = {}
    for r in records:
        arm = r.get("arm")
        parts = ["eval" if arm == "distilled" else f"baseline/{arm}"]
        if r.get("ipc") is not None:
            parts.append(f"ipc{r['ipc']}")
        if r.get("student"):
            parts.append(str(r["student"]))
        if arm == "distilled" and r.get("labels"):
            parts.append(str(r["labels"]))
        key = "/".join(parts)
        for name in ("accuracy", "macro_f1", "positive_f1"):
            summary = r.get(name)
            if isinstance(summary, dict) and summary.get("mean") is not None:
                out[f"{key}/{name}"] = float(summary["mean"])
                if summary.get("std") is not None:
                    out[f"{key}/{name}_std"] = float(summary["std"])
        if isinstance(r.get("seconds"), (int, float)):
            out[f"{key}/seconds"] = float(r["seconds"])
    return out


# -- the session: one background worker per tracker ----------------------------------------------------

class _Worker:
    """One tracker on its own daemon thread, fed by a bounded queue."""

    def __init__(self, tracker: Tracker, warn: Callable[[str], None]):
        self.tracker = tracker
        self.warn = warn
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self.dropped = 0
        self.failed = False
        self.thread = threading.Thread(target=self._loop, name=f"distillctl-tracker-{tracker.name}", daemon=True)
        self.thread.start()

    def put(self, method: str, *args: Any) -> None:
        if self.failed:
            return
        try:
            self.queue.put_nowait((method, args))
        except queue.Full:
            if not self.dropped:
                self.warn(f"tracker {self.tracker.name!r} is behind: dropping events (the run goes on)")
            self.dropped += 1

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.failed:
                continue
            method, args = item
            try:
                getattr(self.tracker, method)(*args)
            except Exception as exc:  # never let a tracker fail the run: one warning, then off
                self.failed = True
                first = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                self.warn(f"tracker {self.tracker.name!r} stopped logging ({method}: {first}); the run goes on "
                          f"without it")

    def close(self, deadline: float) -> None:
        try:
            self.queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            self.warn(f"tracker {self.tracker.name!r}: gave up waiting after {CLOSE_SECONDS:g} s "
                      f"({self.queue.qsize()} events not sent)")
        elif self.dropped:
            self.warn(f"tracker {self.tracker.name!r}: {self.dropped} events were dropped (queue full)")


def _warn(message: str) -> None:
    """One line on stderr, even with --quiet: a tracker that stopped logging is worth knowing about."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


class TrackingSession:
    """The trackers of one stage; :meth:`metrics` / :meth:`results` / :meth:`artifacts` never block on them."""

    def __init__(self, trackers: Sequence[Tracker], run: TrackedRun, warn: Callable[[str], None] = _warn):
        self.run = run
        self.workers = [_Worker(t, warn) for t in trackers]
        self.started = False
        if run.run_dir is not None:
            self.start()

    def start(self, run_dir: Path | None = None) -> None:
        """Queue ``start`` for every tracker, once; a stage that decides its run directory itself (a new
        distill run) binds it here, from its first metrics record."""
        if self.started:
            return
        if self.run.run_dir is None and run_dir is not None:
            self.run.run_dir = Path(run_dir).resolve()
            self.run.tags["distillctl.run_dir"] = str(self.run.run_dir)
            self.run.name = _stage_run_name(self.run.stage, str(self.run.run_dir))
        self.started = True
        for w in self.workers:
            w.put("start", self.run)

    def metrics(self, record: dict, run_dir: Path | None = None) -> None:
        """One ``metrics.jsonl`` record (called by :meth:`distillctl.runs.RunDir.log`)."""
        self.start(run_dir)
        values, step = metrics_of_record(record)
        if values:
            for w in self.workers:
                w.put("log_metrics", values, step)

    def results(self, records: Iterable[dict], run_dir: Path | None = None) -> None:
        self.start(run_dir)
        values = metrics_of_results(records)
        if values:
            for w in self.workers:
                w.put("log_metrics", values, 0)

    def artifacts(self, paths: Iterable[Path], run_dir: Path | None) -> None:
        self.start(run_dir)
        run_dir = self.run.run_dir or run_dir
        files = [Path(p) for p in paths if Path(p).is_file()]
        if files:
            for w in self.workers:
                w.put("log_artifacts", files, run_dir)

    def close(self, status: str = "FINISHED") -> None:
        self.start()
        deadline = time.monotonic() + CLOSE_SECONDS
        for w in self.workers:
            w.put("finish", status)
        for w in self.workers:
            w.close(deadline)


def publish(run_path: Path, record: dict) -> None:
    """Send one ``metrics.jsonl`` record of ``run_path`` to the open sessions of that run (cheap when none)."""
    for session in _ACTIVE:
        if session.run.run_dir is None or Path(session.run.run_dir) == Path(run_path).resolve():
            session.metrics(record, run_path)


def build_trackers(recipe: Any) -> list[Tracker]:
    """The trackers a recipe's ``tracking`` list names (built now: a missing package fails before the run)."""
    from distillctl.plugins import get_registry

    sections = list(getattr(recipe, "tracking", None) or [])
    registry = get_registry()
    return [registry.build("tracker", section) for section in sections]


@functools.lru_cache(maxsize=None)
def _stage_run_name(stage: str, run_dir: str | None) -> str:
    folder = Path(run_dir).name if run_dir else "no run directory"
    return f"{stage} {folder}"


def open_session(recipe: Any, stage: str, run_dir: Path | None, *, name: str | None = None) -> TrackingSession | None:
    """A session for ``stage`` of ``recipe`` (None when the recipe tracks nothing), made active so
    :func:`publish` reaches it; close it with :func:`close_session`."""
    trackers = build_trackers(recipe)
    if not trackers:
        return None
    run_dir = Path(run_dir).resolve() if run_dir is not None else None
    run = TrackedRun(stage=stage, experiment=recipe.name,
                     name=name or _stage_run_name(stage, str(run_dir) if run_dir else None),
                     params=recipe_params(recipe), tags=recipe_tags(recipe, stage, run_dir), run_dir=run_dir)
    session = TrackingSession(trackers, run)
    _ACTIVE.append(session)
    return session


def close_session(session: TrackingSession | None, status: str = "FINISHED") -> None:
    if session is None:
        return
    if session in _ACTIVE:
        _ACTIVE.remove(session)
    session.close(status)


def tracked(stage: str, locate: Callable[[tuple, dict], tuple[Any, Path | None]],
            outputs: Callable[[Any, Path | None, tuple, dict], tuple[list[dict], list[Path]]]) -> Callable:
    """Decorator of a stage function: a :class:`TrackingSession` around the call when the recipe tracks.

    ``locate(args, kwargs)`` -> ``(recipe, run directory or None)`` before the call; ``outputs(result,
    run_dir, args, kwargs)`` -> ``(result records, artifact files)`` after it. A failed call finishes the
    tracked run as ``FAILED`` and re-raises.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            recipe, run_dir = locate(args, kwargs)
            if recipe is None or not getattr(recipe, "tracking", None):
                return fn(*args, **kwargs)
            session = open_session(recipe, stage, run_dir)
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                close_session(session, "FAILED")
                raise
            try:
                run_dir = run_dir or session.run.run_dir or _resolved(getattr(result, "run_dir", None))
                records, files = outputs(result, run_dir, args, kwargs)
                session.results(records, run_dir)
                session.artifacts(files, run_dir)
            finally:
                close_session(session, "FINISHED")
            return result

        return wrapper

    return decorate


# -- submit: a parent run and a child per point -------------------------------------------------------------

def submission_env(points: Sequence[Any], run_dirs: dict[str, Path], experiment: str, name: str) -> dict[str, dict[str, str]]:
    """Ask every tracker of the submission's recipe (the first point's) for the environment of each point's
    jobs (:meth:`Tracker.submission`); ``{point name: {VAR: value}}``, ``{}`` when nothing is tracked.

    A tracker that fails here warns and is left out: its jobs then open their own runs.
    """
    recipe = points[0].recipe
    trackers = build_trackers(recipe)
    if not trackers:
        return {}
    sub_points = [SubmissionPoint(p.name, dict(p.values), run_dirs[p.name], recipe_params(p.recipe),
                                  recipe_tags(p.recipe, "submit", run_dirs[p.name])) for p in points]
    env: dict[str, dict[str, str]] = {}
    for t in trackers:
        try:
            got = t.submission(experiment, name, sub_points) or {}
        except Exception as exc:
            _warn(f"tracker {t.name!r} could not open the submission's runs ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:200]}); each job opens its own run")
            continue
        for point, values in got.items():
            env.setdefault(point, {}).update({str(k): str(v) for k, v in values.items()})
    return env


# -- the stages that are tracked: what each call is about and what it wrote ---------------------------------

def _resolved(path: Any) -> Path | None:
    return Path(path).resolve() if path is not None else None


def _distill_locate(args: tuple, kwargs: dict) -> tuple[Any, Path | None]:
    # a new run without run_dir: distill decides its folder; the session binds it from the first record
    return (args[0] if args else kwargs.get("recipe")), _resolved(kwargs.get("resume") or kwargs.get("run_dir"))


def _distill_outputs(result: Any, run_dir: Path | None, args: tuple, kwargs: dict) -> tuple[list, list]:
    """Each set file and its sidecar (``ipc5.json``: what ``load_set`` reads besides the tensors)."""
    sets = [Path(s["path"]) for s in result.sets]
    return [], [f for p in sets for f in (p, p.with_suffix(".json")) if f.exists()]


def _baseline_locate(args: tuple, kwargs: dict) -> tuple[Any, Path | None]:
    return (args[0] if args else kwargs.get("recipe")), _resolved(kwargs.get("run_dir"))


def _baseline_outputs(result: Any, run_dir: Path | None, args: tuple, kwargs: dict) -> tuple[list, list]:
    kind = args[1] if len(args) > 1 else kwargs.get("kind")
    return list(result), ([run_dir / "eval" / f"baseline-{kind}.json"] if run_dir is not None else [])


def _report_locate(args: tuple, kwargs: dict) -> tuple[Any, Path | None]:
    """The run's recipe; for a sweep's submission folder, the first point's (the trackers are the same)."""
    from distillctl.recipe import load_recipe

    folder = Path(args[0] if args else kwargs["run_dir"])
    recipe_file = folder / "recipe.resolved.yaml"
    if not recipe_file.exists():
        try:
            points = json.loads((folder / "submission.json").read_text(encoding="utf-8")).get("points") or []
            recipe_file = Path(points[0]["run_dir"]) / "recipe.resolved.yaml"
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            return None, None
    if not recipe_file.exists():
        return None, None
    return load_recipe(recipe_file), folder.resolve()


def _report_outputs(result: Any, run_dir: Path | None, args: tuple, kwargs: dict) -> tuple[list, list]:
    """report.md / .json, its plots, and the result files it summarised with their records (report.json's
    ``results``): a sweep point's baselines are one job shared by the points (its folder links to the owner's
    files), so the report of every point logs them into that point's run too."""
    md = Path(result)
    base = md.parent
    try:
        data = json.loads(md.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    plots = list((data.get("plots") or {}).values()) or ([data["plot"]] if data.get("plot") else [])
    files = [md, md.with_suffix(".json"), *sorted((base / "eval").glob("*.json"))]
    files += [p if Path(p).is_absolute() else base / p for p in map(Path, plots)]
    return list(data.get("results") or []), files


track_distill = tracked("distill", _distill_locate, _distill_outputs)
track_baseline = tracked("baseline", _baseline_locate, _baseline_outputs)
track_report = tracked("report", _report_locate, _report_outputs)

"""The ``mlflow`` tracker: the real MLflow client (``MlflowClient``) against any tracking URI.

Default store: ``MLFLOW_TRACKING_URI`` when set, else sqlite in ``<runs_dir>/mlflow.db`` (works offline;
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` shows it; MLflow 3 refuses new file stores). The experiment is the recipe name. A stage run on its
own is one MLflow run: the flattened resolved recipe as params, the fingerprints as tags, every metrics.jsonl
record as metrics at its outer step, the files the stage wrote as artifacts (``distilled/ipc5.safetensors``,
``eval/results.json``, ``report.md``, ``plots/*.png``). ``submit`` opens the runs first (:meth:`submission`):
one run for a single recipe, a parent run with a child per sweep point otherwise; every job of a point logs
into its point's run (``DISTILLCTL_MLFLOW_RUN_ID``), the sweep's comparison report into the parent.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Optional

from pydantic import Field

from distillctl.errors import UserError
from distillctl.options import PluginOptions
from distillctl.tracking import SubmissionPoint, TrackedRun, Tracker

#: the run a job logs into (set by ``submit`` for every job of a point)
ENV_RUN_ID = "DISTILLCTL_MLFLOW_RUN_ID"
#: the tracking URI of the submission (absolute: jobs run in their run directories)
ENV_URI = "DISTILLCTL_MLFLOW_TRACKING_URI"
#: MLflow's limits per log_batch call
MAX_METRICS, MAX_PARAMS = 1000, 100
#: MLflow's longest param value (longer ones are cut, with a marker)
MAX_PARAM_CHARS = 6000


def key(text: str) -> str:
    """A metric / tag name MLflow accepts (alphanumerics, ``_ - . space : /``): ``window=2/eval`` -> ``window_2/eval``."""
    return re.sub(r"[^\w\-. :/]", "_", text)


class MlflowOptions(PluginOptions):
    tracking_uri: Optional[str] = Field(
        None, description="MLflow tracking URI (http://host:5000, file:///path/mlruns, sqlite:///mlflow.db, "
        "databricks); null = MLFLOW_TRACKING_URI when set, else sqlite:///<runs_dir>/mlflow.db.")
    experiment: Optional[str] = Field(None, description="Experiment name; null = the recipe name.")
    artifacts: bool = Field(True, description="Upload the sets, results, report and plots as artifacts.")


def require(package: str, extra: str) -> None:
    """A :class:`UserError` naming the pip command when an optional package is missing."""
    if importlib.util.find_spec(package) is None:
        raise UserError(f"tracker {extra!r} needs the {package} package: pip install 'distillctl[{extra}]'")


def default_uri(options: MlflowOptions | None, runs_root: Path) -> str:
    if options is not None and options.tracking_uri:
        return options.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = Path(runs_root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, options: MlflowOptions | None = None):
        super().__init__(options or MlflowOptions())
        require("mlflow", "mlflow")
        # an unreachable server: fail within seconds (on the tracker's thread), not after minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = None
        self.run_id: str | None = None
        self.resumed = False
        self.stage = ""

    # -- helpers ---------------------------------------------------------------------------------------
    def _client(self, uri: str):
        import warnings

        from mlflow.tracking import MlflowClient

        warnings.filterwarnings("ignore", module="mlflow")  # the file store's deprecation notice, per call
        return MlflowClient(tracking_uri=uri)

    def _experiment_id(self, client, name: str) -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # another job created it a moment ago
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _new_run(self, client, experiment: str, name: str, params: dict, tags: dict, parent: str | None = None) -> str:
        from mlflow.entities import Param

        tags = dict(tags)
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = client.create_run(self._experiment_id(client, experiment), run_name=name, tags=tags)
        rid = run.info.run_id
        items = [Param(k, v if len(v) <= MAX_PARAM_CHARS else v[: MAX_PARAM_CHARS - 3] + "...")
                 for k, v in sorted(params.items())]
        for i in range(0, len(items), MAX_PARAMS):
            client.log_batch(rid, params=items[i: i + MAX_PARAMS])
        return rid

    # -- the Tracker interface ------------------------------------------------------------------------
    def start(self, run: TrackedRun) -> None:
        runs_root = Path(run.params.get("runs_dir", "runs"))
        uri = os.environ.get(ENV_URI) or default_uri(self.options, runs_root)
        self.client = self._client(uri)
        self.stage = run.stage
        self.resumed = bool(os.environ.get(ENV_RUN_ID))
        if self.resumed:  # a job of a submission: its point's run, opened by `submit`
            self.run_id = os.environ[ENV_RUN_ID]
            self.client.set_tag(self.run_id, key(f"distillctl.job.{os.environ.get('DISTILLCTL_JOB_ID', run.stage)}"),
                                "started")
            return
        self.run_id = self._new_run(self.client, self.options.experiment or run.experiment, run.name, run.params,
                                    run.tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=items[i: i + MAX_METRICS])

    def log_artifacts(self, paths: list[Path], run_dir: Path | None) -> None:
        if not self.options.artifacts:
            return
        for p in paths:
            folder = None
            if run_dir is not None:
                try:
                    # the folder resolved, not the file: a point's shared baseline is a link to its owner's
                    rel = Path(p).parent.resolve().relative_to(Path(run_dir).resolve()).as_posix()
                    folder = None if rel == "." else rel
                except ValueError:
                    folder = None
            self.client.log_artifact(self.run_id, str(p), folder)

    def finish(self, status: str) -> None:
        if self.run_id is None:
            return
        if self.resumed:
            job = os.environ.get("DISTILLCTL_JOB_ID", self.stage)
            self.client.set_tag(self.run_id, key(f"distillctl.job.{job}"), status.lower())
            # the point's run ends with its report (the last job of a point) or with a failed job
            if status != "FINISHED" or self.stage == "report":
                self.client.set_terminated(self.run_id, status)
            return
        self.client.set_terminated(self.run_id, status)

    def submission(self, experiment: str, name: str, points: list[SubmissionPoint]) -> dict[str, dict[str, str]]:
        """One run for a single recipe; a parent run (``name``) and a child run per sweep point otherwise."""
        if not points:
            return {}
        runs_root = Path(points[0].params.get("runs_dir", "runs"))
        uri = default_uri(self.options, runs_root)
        client = self._client(uri)
        experiment = self.options.experiment or experiment
        env: dict[str, dict[str, str]] = {}
        if len(points) == 1 and not points[0].values:
            p = points[0]
            rid = self._new_run(client, experiment, name, p.params, p.tags)
            return {p.name: {ENV_RUN_ID: rid, ENV_URI: uri}}
        swept = sorted({k for p in points for k in p.values})
        common = {k: v for k, v in points[0].params.items() if all(q.params.get(k) == v for q in points)}
        parent = self._new_run(client, experiment, name, common,
                               {**{k: v for k, v in points[0].tags.items() if k != "distillctl.run_dir"},
                                "distillctl.stage": "submit", "distillctl.swept": ",".join(swept),
                                "distillctl.run_dir": str(Path(points[0].run_dir).parent)})
        env["__parent__"] = {ENV_RUN_ID: parent, ENV_URI: uri}
        for p in points:
            rid = self._new_run(client, experiment, p.name, p.params, p.tags, parent=parent)
            env[p.name] = {ENV_RUN_ID: rid, ENV_URI: uri}
        return env

"""Trackers: the real MLflow and TensorBoard packages against a temporary store, read back.

Every test runs the real stage functions on the fake Gaussian "embeddings" with ``tracking`` set, then reads
what was logged with MLflow's own client (``search_runs``, ``get_metric_history``, ``list_artifacts``) and
TensorBoard's ``EventAccumulator``, and compares it with the run folder (``metrics.jsonl``, the results files).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import yaml

from fakes import distill as distill_fakes  # noqa: F401
from fakes import evaluation as eval_fakes
from distillctl import tracking
from distillctl.jobs import submit as sm
from distillctl.recipe import validate_recipe
from distillctl.runs import read_jsonl
from fakes.submit import env  # noqa: F401 - fixture

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TESTS = Path(__file__).parent
PY = sys.executable


def same(got, want) -> bool:
    """[(step, value)] lists equal: the steps exactly, the values to float32 precision (what TensorBoard keeps)."""
    return [s for s, _ in got] == [s for s, _ in want] and \
        [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file under ``logdir``: tag -> [(step, value)] sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def tb_images(logdir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in logdir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    return tags


@pytest.fixture
def stages(monkeypatch, tmp_path):
    """distill / eval / baseline / report on the fake data, in-process; tracking to a sqlite store in tmp_path."""
    emb = eval_fakes.embeddings()
    registry, _ = eval_fakes.install(monkeypatch, emb)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = eval_fakes.recipe_data()
    data["distill"] = {"ipc": [1, 2], "method": {"name": "bptt", "unroll": {"name": "ratbptt", "window": 3, "total": 6}},
                       "inner": {"optimizer": "adam", "lr": 0.01},
                       "outer": {"lr": 0.01, "iterations": 6, "real_batch": 48, "val_every": 3, "ckpt_every": 3,
                                 "val_seeds": 2}}
    data["tracking"] = [{"name": "mlflow", "tracking_uri": uri}, {"name": "tensorboard"}]
    recipe = validate_recipe(data, registry=registry)
    return recipe, uri, tmp_path


def test_distill_eval_baseline_report_are_logged_and_match_the_run_folder(stages):
    from distillctl.distillation.distill import distill
    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.reporting.report import report

    recipe, uri, tmp = stages
    run_dir = tmp / "run"
    result = distill(recipe, run_dir=run_dir, quiet=True)
    records = evaluate(run_dir, quiet=True)
    base = baseline(recipe, "random", run_dir=run_dir, quiet=True)
    report(run_dir, quiet=True)

    c = client(uri)
    exp = c.get_experiment_by_name("tiny")
    runs = {r.data.tags["distillctl.stage"]: r for r in c.search_runs([exp.experiment_id])}
    assert set(runs) == {"distill", "eval", "baseline", "report"}
    assert all(r.info.status == "FINISHED" for r in runs.values())

    # distill: params = the flattened resolved recipe, tags = fingerprints, every metric of metrics.jsonl by step
    d = runs["distill"]
    assert d.data.params["distill.outer.lr"] == "0.01" and d.data.params["student.hidden"] == "[16]"
    assert "tracking" not in " ".join(d.data.params)
    assert d.data.tags["distillctl.recipe_fingerprint"] == recipe.fingerprint()
    assert d.data.tags["distillctl.run_dir"] == str(run_dir.resolve())
    lines = read_jsonl(run_dir / "metrics.jsonl")
    for ipc in (1, 2):
        want = [(r["step"], r["loss"]) for r in lines if r["ipc"] == ipc and "loss" in r]
        got = sorted((m.step, m.value) for m in c.get_metric_history(d.info.run_id, f"ipc{ipc}/loss"))
        assert same(got, want) and len(want) == 6
        want_val = [(r["step"], r["val_accuracy"]) for r in lines if r["ipc"] == ipc and "val_accuracy" in r]
        got_val = sorted((m.step, m.value) for m in c.get_metric_history(d.info.run_id, f"ipc{ipc}/val_accuracy"))
        assert same(got_val, want_val) and [s for s, _ in want_val] == [0, 3, 6]
    arts = {a.path for a in c.list_artifacts(d.info.run_id, "distilled")}
    assert arts == {"distilled/ipc1.safetensors", "distilled/ipc1.json", "distilled/ipc2.safetensors",
                    "distilled/ipc2.json"}  # each set with its sidecar
    local = Path(c.download_artifacts(d.info.run_id, "distilled/ipc2.safetensors", str(tmp / "dl")))
    assert local.read_bytes() == Path(result.sets[1]["path"]).read_bytes()

    # eval and baseline: the means of their result records, and the results files
    e = runs["eval"]
    for r in records:
        key = f"eval/ipc{r['ipc']}/{r['student']}/{r['labels']}/accuracy"
        assert e.data.metrics[key] == pytest.approx(r["accuracy"]["mean"])
    assert {a.path for a in c.list_artifacts(e.info.run_id, "eval")} == {"eval/results.json"}
    b = runs["baseline"]
    for r in base:
        assert b.data.metrics[f"baseline/random/ipc{r['ipc']}/mlp/accuracy"] == pytest.approx(r["accuracy"]["mean"])
    # report: report.md, report.json and the plots
    rep = runs["report"]
    top = {a.path for a in c.list_artifacts(rep.info.run_id)}
    assert {"report.md", "report.json", "plots"} <= top
    assert "plots/accuracy_vs_ipc.png" in {a.path for a in c.list_artifacts(rep.info.run_id, "plots")}

    # TensorBoard: the same scalars by step under RUN/tensorboard, the plots as images
    scalars = tb_scalars(run_dir / "tensorboard")
    want = [(r["step"], r["loss"]) for r in lines if r["ipc"] == 2 and "loss" in r]
    assert same(scalars["ipc2/loss"], want)
    assert scalars["eval/ipc1/mlp/hard/accuracy"][0][1] == pytest.approx(records[0]["accuracy"]["mean"])
    assert "plots/accuracy_vs_ipc.png" in tb_images(run_dir / "tensorboard")


def test_tracking_is_not_part_of_the_fingerprint_and_options_are_validated(env, cli):
    data = env.recipe_data()
    plain = validate_recipe(data, registry=env.registry)
    tracked = validate_recipe({**data, "tracking": [{"name": "tensorboard", "logdir": "tb"}]}, registry=env.registry)
    assert plain.fingerprint() == tracked.fingerprint()
    assert tracked.tracking[0].options.logdir == "tb"
    path = env.write(tracking=[{"name": "mlflow", "uri": "x"}])
    r = cli("recipe", "validate", str(path))
    assert r.code == 2 and "tracking.0.uri: unknown field" in r.err and "tracking_uri" in r.err, r.err
    r = cli("recipe", "validate", str(env.write(tracking=[{"name": "wandb"}])))
    assert r.code == 2 and "tracking.0.name: unknown tracker plugin 'wandb'" in r.err and "mlflow" in r.err, r.err
    r = cli("plugins", "show", "mlflow")
    assert r.code == 0 and "tracking_uri" in r.out


def test_a_missing_package_is_exit_2_naming_the_pip_install(env, cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    path = env.write(tracking=[{"name": "mlflow"}])
    r = cli("distill", str(path))
    assert r.code == 2 and "pip install 'distillctl[mlflow]'" in r.err and "Traceback" not in r.err, r.err


def test_an_unreachable_store_warns_once_and_the_run_goes_on(stages, capsys):
    from distillctl.distillation.distill import distill

    recipe, _, tmp = stages
    recipe.tracking = recipe.tracking[:1]
    recipe.tracking[0].options.tracking_uri = "http://127.0.0.1:9"  # nothing listens on the discard port
    result = distill(recipe, run_dir=tmp / "run", quiet=True)
    assert [s["ipc"] for s in result.sets] == [1, 2]
    err = capsys.readouterr().err
    assert err.count("tracker 'mlflow' stopped logging") == 1, err


class Stuck(tracking.Tracker):
    """A tracker whose store never answers: log_metrics blocks until released."""

    def __init__(self):
        self.release = threading.Event()
        self.seen = []

    def start(self, run):
        pass

    def log_metrics(self, metrics, step):
        self.release.wait()
        self.seen.append(step)


def test_a_stuck_tracker_never_blocks_the_run_and_drops_beyond_its_queue(monkeypatch):
    monkeypatch.setattr(tracking, "QUEUE_SIZE", 3)
    monkeypatch.setattr(tracking, "CLOSE_SECONDS", 0.5)
    warnings = []
    t = Stuck()
    session = tracking.TrackingSession([t], tracking.TrackedRun("distill", "x", "x"), warn=warnings.append)
    for step in range(20):  # the worker holds one, the queue three: the rest are dropped, none blocks
        session.metrics({"ipc": 1, "step": step, "loss": 1.0})
    session.close()
    assert any("gave up waiting" in w for w in warnings) and any("dropping events" in w for w in warnings)
    assert session.workers[0].dropped >= 20 - 1 - 3 - 1
    t.release.set()


def test_metric_keys_of_records_and_results():
    values, step = tracking.metrics_of_record({"time": 1.0, "stage": 0, "ipc": 5, "step": 7, "loss": 0.5,
                                               "event": "stopped", "val_by_student": {"mlp": 0.8}})
    assert (values, step) == ({"ipc5/loss": 0.5, "ipc5/val_by_student.mlp": 0.8}, 7)
    res = tracking.metrics_of_results([{"arm": "full", "ipc": None, "student": "mlp",
                                        "accuracy": {"mean": 0.9, "std": 0.01}, "seconds": 2.0}])
    assert res == {"baseline/full/mlp/accuracy": 0.9, "baseline/full/mlp/accuracy_std": 0.01,
                   "baseline/full/mlp/seconds": 2.0}


@pytest.mark.slow  # real local-scheduler jobs (processes importing torch and mlflow)
def test_a_sweep_submission_is_a_parent_run_with_a_child_per_point(env, monkeypatch):
    uri = f"sqlite:///{env.tmp / 'mlflow.db'}"
    path = env.write(tracking=[{"name": "mlflow", "tracking_uri": uri}],
                     distill={**env.recipe_data()["distill"], "ipc": [1]}, baseline={"kinds": ["random"]})
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the jobs run `python -m fakes.cli ...`
    sub = sm.submit(path, sweeps=["distill.method.unroll.window=2,3"], exe=[PY, "-m", "fakes.cli"], wait=True,
                    quiet=True)
    assert sub.state == "done"
    c = client(uri)
    exp = c.get_experiment_by_name("tiny")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 3, [r.info.run_name for r in runs]
    parent = parents[0]
    assert parent.data.tags["distillctl.swept"] == "distill.method.unroll.window"
    assert "distill.method.unroll.window" not in parent.data.params  # only what every point shares
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"comparison.md", "comparison.json"}
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["window=2", "window=3"]
    for name, child in children.items():
        run_dir = Path(sub.path) / name
        assert child.info.status == "FINISHED"
        assert child.data.params["distill.method.unroll.window"] == name.split("=")[1]
        want = [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
        got = sorted((m.step, m.value) for m in c.get_metric_history(child.info.run_id, "ipc1/loss"))
        assert same(got, want) and want
        results = json.loads((run_dir / "eval" / "results.json").read_text())["results"]
        assert child.data.metrics["eval/ipc1/mlp/hard/accuracy"] == pytest.approx(results[0]["accuracy"]["mean"])
        top = {a.path for a in c.list_artifacts(child.info.run_id)}
        assert {"report.md", "distilled", "eval", "plots"} <= top, top
    # the baseline arm is shared by both points (one job logging into the point that owns it; the other point's
    # folder links to its file): each point's report logs the results it summarised, so both children have it
    for name, child in children.items():
        base = json.loads((Path(sub.path) / name / "eval" / "baseline-random.json").read_text())["results"]
        assert child.data.metrics["baseline/random/ipc1/mlp/accuracy"] == pytest.approx(base[0]["accuracy"]["mean"])
        assert "eval/baseline-random.json" in {a.path for a in c.list_artifacts(child.info.run_id, "eval")}
    # the jobs carried the run ids; status/retry keep them
    stored = json.loads((Path(sub.path) / "submission.json").read_text())
    assert all("DISTILLCTL_MLFLOW_RUN_ID" in j["env"] for j in stored["jobs"] if j["kind"] != "embed")


def test_the_docs_example_tracker_receives_every_stage_event(tmp_path):
    """The `jsonlog` tracker of docs/plugins.md, driven by a TrackingSession as a stage drives it."""
    import re

    guide = (TESTS.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = guide[guide.index("## Tracker: `jsonlog`"):]
    code = re.search(r"```python\n(.*?)\n```", section, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), ns)
    t = ns["JsonLogTracker"]()
    session = tracking.TrackingSession([t], tracking.TrackedRun("distill", "tiny", "run", {"seed": "0"}, {},
                                                                tmp_path))
    session.metrics({"time": 0.0, "stage": 0, "ipc": 1, "step": 3, "loss": 0.5})
    session.close()
    events = [json.loads(line) for line in (tmp_path / "tracking.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "metrics", "finish"]
    assert events[1]["metrics"] == {"ipc1/loss": 0.5} and events[1]["step"] == 3 and events[2]["status"] == "FINISHED"

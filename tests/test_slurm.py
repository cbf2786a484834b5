"""The slurm scheduler: golden batch scripts, array/dependency planning, and real jobs on a cluster.

The tests marked ``slurm`` submit real jobs. Without a cluster they skip with the reason; with
``DISTILLCTL_REQUIRE_SLURM=1`` (CI, after ../shared/slurm/up.sh) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillctl import errors
from distillctl.jobs import jobgraph, submission, sweeps, submit as sm
from distillctl.scheduling import Job
from distillctl_plugins.schedulers.slurm import (SlurmOptions, dependency_arg, expand_array_id, map_state, plan,
                                                  render_script, sbatch_calls)
from fakes.submit import env  # noqa: F401 - fixture

GOLDEN = Path(__file__).parent / "golden" / "slurm"
PY = sys.executable
SLURM_OPTIONS = {"name": "slurm", "partition": "gpu", "time": 120, "cpus": 4, "mem": "16G", "account": "proj42",
                 "qos": "normal", "array_parallelism": 2, "extra": ["--constraint=a100", "#SBATCH --exclusive"],
                 "setup": ["module load cuda/12.1", "source /opt/venvs/distillctl/bin/activate"],
                 "signal_seconds": 300, "stages": {"distill": {"gpus": 1, "time": 240}, "report": {"cpus": 1}}}


# -- golden scripts ---------------------------------------------------------------------------------------

def golden_texts(env) -> dict[str, str]:
    path = env.write(scheduler=SLURM_OPTIONS)
    points = sweeps.expand_points(path, sweeps=["distill.method.unroll.window=2,3"])
    graph = jobgraph.build_graph(points, Path("/runs/tiny/ID"))
    options = points[0].recipe.scheduler.options
    folder = Path("/runs/tiny/ID/slurm/SUBMIT")
    groups = plan(graph.jobs, options)
    texts = {f"{g.name}.sbatch": render_script(g, options, folder) for g in groups}
    texts["submit.sh"] = sbatch_calls(groups, folder)
    return texts


def test_golden_sbatch_scripts(env):
    texts = golden_texts(env)
    if os.environ.get("DISTILLCTL_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.iterdir():
            old.unlink()
        for name, text in texts.items():
            (GOLDEN / name).write_text(text)
    expected = {p.name: p.read_text() for p in GOLDEN.iterdir()}
    assert sorted(texts) == sorted(expected), "set DISTILLCTL_UPDATE_GOLDEN=1 to regenerate after a deliberate change"
    for name in texts:
        assert texts[name] == expected[name], f"{name} differs from tests/golden/slurm/{name}"


def test_golden_scripts_say_what_they_should(env):
    texts = golden_texts(env)
    d0 = texts["distill-0.sbatch"]
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --gres=gpu:1", "#SBATCH --time=240", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --constraint=a100", "#SBATCH --exclusive",
                 "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --account=proj42", "#SBATCH --qos=normal",
                 "#SBATCH --mem=16G", "module load cuda/12.1", "trap on_usr1 USR1", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in d0, line
    assert "--resume /runs/tiny/ID/window=3 --stage 1" in d0
    rep = texts["report.sbatch"]
    assert "#SBATCH --cpus-per-task=1" in rep and "--signal" not in rep and "gres" not in rep and "trap" not in rep
    assert "aftercorr:$eval_0,aftercorr:$eval_1,afterok:$baseline_random" in texts["submit.sh"]
    # the scripts are valid bash
    for name, text in texts.items():
        if name.endswith(".sbatch"):
            assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, name


def _job(jid, deps=(), group=""):
    return Job(id=jid, argv=["true"], cwd="/w", log=f"/w/{jid}.log", depends_on=list(deps), group=group)


def test_planning_falls_back_to_single_jobs_when_an_array_cannot_express_the_dependencies():
    opts = SlurmOptions(setup=[])
    # b1 needs a1 and a2, b2 only a2: neither afterok on all nor aftercorr
    jobs = [_job("a1", group="a"), _job("a2", group="a"), _job("b1", ["a1", "a2"], "b"), _job("b2", ["a2"], "b")]
    groups = {g.name: g for g in plan(jobs, opts)}
    assert set(groups) == {"a", "b1", "b2"}
    ids = {"a": "7"}
    assert dependency_arg(groups["b1"].depends, ids) == "afterok:7"
    assert dependency_arg(groups["b2"].depends, ids) == "afterok:7_1"
    # a chain inside one group is never an array; dependencies outside the batch are ignored (retries)
    groups = plan([_job("x", group="g"), _job("y", ["x", "done-before"], "g")], opts)
    assert [g.name for g in groups] == ["x", "y"] and dependency_arg(groups[1].depends, {"x": "9"}) == "afterok:9"
    # different resources split a group
    j1, j2 = _job("p", group="g"), _job("q", group="g")
    j2.resources = {"gpus": 2}
    assert len(plan([j1, j2], opts)) == 2


def test_state_parsing_helpers():
    assert expand_array_id("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_array_id("12_3") == ["12_3"] and expand_array_id("12") == ["12"]
    assert [map_state(s) for s in ("PENDING", "RUNNING", "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED by 0",
                                   "OUT_OF_MEMORY", "REQUEUED", "COMPLETING")] == \
        ["pending", "running", "done", "failed", "failed", "cancelled", "failed", "pending", "running"]


def test_options_are_validated(env, cli):
    for bad, message in ((dict(mem="lots"), "memory like 8G"), (dict(extra=["constraint=a100"]), "not an sbatch option"),
                         (dict(time=1, signal_seconds=60), "must be shorter than the time limit"),
                         (dict(stages={"distil": {"gpus": 1}}), "scheduler.stages")):
        path = env.write(scheduler={"name": "slurm", **bad})
        r = cli("submit", path, "--dry-run")
        assert r.code == 2 and message in r.err, (bad, r.err)


def test_missing_slurm_commands_fail_before_anything_is_written(env, cli, monkeypatch):
    path = env.write(scheduler=SLURM)
    monkeypatch.setenv("PATH", str(env.tmp / "empty"))
    r = cli("submit", path)
    assert r.code == 2 and "sbatch" in r.err and "not found on PATH" in r.err
    assert not (env.tmp / "runs").exists()


# -- a real cluster ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    reason = None
    if shutil.which("sbatch") is None:
        reason = "no SLURM client commands (sbatch) on PATH"
    else:
        try:
            ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
            answer = (ping.stdout.strip() or ping.stderr.strip() or "no answer").splitlines()[0]
        except subprocess.TimeoutExpired:
            ping, answer = None, "no answer within 60 s"
        if ping is None or "is UP" not in ping.stdout:
            reason = f"no SLURM controller answers (`scontrol ping`: {answer})"
    if reason:
        reason += "; start one with ../shared/slurm/up.sh (as root)"
        if os.environ.get("DISTILLCTL_REQUIRE_SLURM") == "1":
            pytest.fail("DISTILLCTL_REQUIRE_SLURM=1 but " + reason)
        pytest.skip(reason)
    return True


def pyjob(folder: Path, jid: str, code: str, deps=(), group="", **kw) -> Job:
    trace = folder / "trace"
    wrapped = f"import time; t0 = time.time()\n{code}\nopen({str(trace)!r}, 'a').write('{jid} %r %r\\n' % (t0, time.time()))"
    return Job(id=jid, argv=[PY, "-c", wrapped], cwd=str(folder / "work"),
               log=str(folder / "logs" / (jid.replace("/", "__") + ".log")), depends_on=list(deps), group=group,
               kind="test", **kw)


def trace(folder: Path) -> dict[str, tuple[float, float]]:
    return {a: (float(b), float(c)) for a, b, c in (x.split() for x in (folder / "trace").read_text().splitlines())}


SLURM = {"name": "slurm", "time": 5, "setup": [], "signal_seconds": 60}


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_goes_out_as_arrays_and_chains_wait_for_their_stage(cluster, tmp_path, cli):
    jobs = [pyjob(tmp_path, "embed", "pass", group="embed")]
    for p in ("p0", "p1", "p2"):
        jobs.append(pyjob(tmp_path, f"{p}/stage1", "time.sleep(0.5)", ["embed"], "stage1"))
        jobs.append(pyjob(tmp_path, f"{p}/stage2", "pass", [f"{p}/stage1"], "stage2"))
    jobs.append(pyjob(tmp_path, "report", "pass", [f"{p}/stage2" for p in ("p0", "p1", "p2")], "report"))
    sub = sm.submit_jobs(jobs, tmp_path / "sub", scheduler=SLURM, wait=True, quiet=True)
    assert sub.state == "done"
    ids = {k: h.scheduler_id for k, h in sub.handles.items()}
    base = {k: v.split("_")[0] for k, v in ids.items()}
    assert base["p0/stage1"] == base["p1/stage1"] == base["p2/stage1"] and ids["p2/stage1"].endswith("_2")
    assert base["p0/stage2"] == base["p2/stage2"] != base["p0/stage1"]
    assert "_" not in ids["embed"] and "_" not in ids["report"]
    t = trace(tmp_path)
    for p in ("p0", "p1", "p2"):
        assert t[f"{p}/stage1"][0] >= t["embed"][1] and t[f"{p}/stage2"][0] >= t[f"{p}/stage1"][1]
    assert t["report"][0] >= max(v[1] for k, v in t.items() if k != "report")
    r = cli("status", tmp_path / "sub", "--json")
    st = json.loads(r.out)
    assert r.code == 0 and st["state"] == "done" and st["scheduler"] == "slurm"
    assert all(j["elapsed"] is not None for j in st["jobs"])
    assert "# distillctl job p1/stage2: SLURM job" in Path(jobs[4].log).read_text()


@pytest.mark.slurm
@pytest.mark.slow
def test_failed_job_cancels_dependents_and_retry_failed_finishes(cluster, tmp_path, cli):
    flag = tmp_path / "flag"
    jobs = [pyjob(tmp_path, f"{p}/s1", (f"import sys, os\nif {p == 'p1'} and not os.path.exists({str(flag)!r}): "
                                        f"print('p1 fails'); sys.exit(5)"), group="s1") for p in ("p0", "p1")]
    jobs += [pyjob(tmp_path, f"{p}/s2", "pass", [f"{p}/s1"], "s2") for p in ("p0", "p1")]
    folder = tmp_path / "sub"
    with pytest.raises(errors.RunError, match="1 job\\(s\\) failed, 1 skipped"):
        sm.submit_jobs(jobs, folder, scheduler=SLURM, wait=True, quiet=True)
    r = cli("status", folder, "--json")
    st = {j["id"]: j for j in json.loads(r.out)["jobs"]}
    assert [st[k]["state"] for k in ("p0/s1", "p0/s2", "p1/s1", "p1/s2")] == ["done", "done", "failed", "cancelled"]
    assert st["p1/s1"]["exit_code"] == 5 and "p1 fails" in st["p1/s1"]["log_tail"]
    flag.write_text("now it works")
    r = cli("submit", "--retry-failed", folder, "--wait")
    assert r.code == 0, r
    sub = sm.status(folder)
    assert sub.state == "done" and sub.handles["p0/s1"].attempt == 1 and sub.handles["p1/s2"].attempt == 2
    assert sorted(trace(tmp_path)) == ["p0/s1", "p0/s2", "p1/s1", "p1/s2"]


@pytest.mark.slurm
@pytest.mark.slow
def test_cancel_stops_running_and_pending_jobs(cluster, tmp_path, cli):
    jobs = [pyjob(tmp_path, "sleeper", "time.sleep(300)"), pyjob(tmp_path, "after", "pass", ["sleeper"])]
    folder = tmp_path / "sub"
    sub = sm.submit_jobs(jobs, folder, scheduler=SLURM)
    deadline = time.time() + 60
    while sm.status(folder).handles["sleeper"].state != "running":
        assert time.time() < deadline
        time.sleep(0.3)
    r = cli("cancel", folder, "--json")
    assert r.code == 0, r
    states = {j["id"]: j["state"] for j in json.loads(r.out)["jobs"]}
    assert states == {"sleeper": "cancelled", "after": "cancelled"}
    q = subprocess.run(["squeue", "-h", "-j", ",".join(h.scheduler_id for h in sub.handles.values())],
                       capture_output=True, text=True)
    assert q.stdout.strip() == ""


TESTS = Path(__file__).parent


@pytest.mark.slurm
@pytest.mark.slow
def test_recipe_sweep_runs_as_arrays_with_stage_chains(cluster, env, monkeypatch):
    """The real graph (every stage the real CLI, on the fake Gaussian data) of a 2-point sweep."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # jobs run `python -m fakes.cli ...`; sbatch exports the env
    path = env.write(scheduler=SLURM, baseline={"kinds": ["random", "majority"]})
    sub = sm.submit(path, sweeps=["distill.method.unroll.window=2,3"], exe=[PY, "-m", "fakes.cli"], wait=True, quiet=True)
    assert sub.state == "done", submission.status_text(sub)
    ids = {k: h.scheduler_id for k, h in sub.handles.items()}
    for stage in ("distill-ipc1", "distill-ipc2", "eval-ipc1", "eval-ipc2", "report"):
        a, b = ids[f"window=2/{stage}"], ids[f"window=3/{stage}"]
        assert a.split("_")[0] == b.split("_")[0] and (a[-2:], b[-2:]) == ("_0", "_1"), (stage, a, b)
    for point in ("window=2", "window=3"):
        run = sub.path / point
        assert (run / "report.md").exists() and (run / "distilled" / "ipc2.safetensors").exists()
        assert json.loads((run / "eval" / "baseline-random.json").read_text())["results"][0]["arm"] == "random"
    assert (sub.path / "window=3" / "eval" / "baseline-random.json").is_symlink()  # one baseline job, shared
    assert [r["ipc"] for r in sub.summary()] == [1, 2, 1, 2]


@pytest.mark.slurm
@pytest.mark.slow
def test_timeout_requeues_distill_and_it_resumes_from_its_checkpoint(cluster, env, monkeypatch):
    """Time limit 1 min, USR1 50 s before it: `distillctl distill --resume` is stopped, requeued, and
    continues from its newest checkpoint (about 1 min; max_seconds ends the stage)."""
    from distillctl.runs import create_run_dir
    from distillctl.distillation.synthetic import SyntheticSet

    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    path = env.write(scheduler={**SLURM, "time": 1, "signal_seconds": 50},
                     distill={**env.recipe_data()["distill"], "ipc": [2],
                              "outer": {"lr": 0.01, "iterations": 10_000_000, "real_batch": 48, "val_every": 1000,
                                        "ckpt_every": 100, "val_seeds": 1, "max_seconds": 45,
                                        "patience": None}})  # on a quiet machine patience ended it first
    recipe = sweeps.expand_points(path)[0].recipe
    run = create_run_dir(recipe, stage="test", run_dir=env.tmp / "run").path
    job = Job(id="distill-ipc2", argv=[PY, "-m", "fakes.cli", "distill", str(run / "recipe.resolved.yaml"),
                                       "--resume", str(run)],
              cwd=str(run), log=str(run / "logs" / "distill-ipc2.log"), kind="distill", requeue=True,
              env={"DISTILLCTL_QUIET": "0"})
    sub = sm.submit_jobs([job], env.tmp / "sub", scheduler={**SLURM, "time": 1, "signal_seconds": 50})
    sid = sub.handles[job.id].scheduler_id
    deadline = time.time() + 300
    held_since = None
    while True:
        h = sm.status(env.tmp / "sub").handles[job.id]
        if h.final:
            break
        assert time.time() < deadline, h
        q = subprocess.run(["squeue", "-h", "-j", sid, "-o", "%T|%r"], capture_output=True, text=True).stdout
        held_since = (held_since or time.time()) if "BeginTime" in q else None
        if held_since and time.time() - held_since > 5:
            # SLURM holds a requeued job ~2 min before it may start again; the test waits 5 s (the node
            # must finish the previous run first, or the launch fails with "credential revoked")
            subprocess.run(["scontrol", "update", f"JobId={sid}", "StartTime=now"], check=True)
            held_since = None
        time.sleep(0.5)
    log = Path(job.log).read_text()
    assert h.state == "done", log
    assert "restart 0" in log and "restart 1" in log and "time limit near" in log and "requeueing" in log
    resumed = [int(x.split("resuming at outer step ")[1].split()[0]) for x in log.splitlines()
               if "resuming at outer step" in x]
    assert resumed and resumed[0] >= 100, "the requeued run continued from a checkpoint"
    final = SyntheticSet.load(run / "distilled" / "ipc2.safetensors")
    assert final.meta["complete"] and final.meta["outer_steps_run"] > resumed[-1]


def test_every_path_in_a_script_is_quoted_and_survives_spaces(tmp_path, monkeypatch):
    """--output, the venv's activate line, CWD/LOG/MARK and the submit lines: quoted even when plain
    (a path with a space or a quote must not split)."""
    import distillctl_plugins.schedulers.slurm as slurm_mod

    folder = tmp_path / "my runs" / "it's here"
    venv = tmp_path / "my venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("export ACTIVATED=1\n")
    monkeypatch.setattr(slurm_mod.sys, "prefix", str(venv))
    job = Job(id="embed", argv=["echo", "hi there"], cwd=str(folder / "work dir"), log=str(folder / "logs" / "e.log"),
              kind="embed")
    opts = SlurmOptions()
    groups = plan([job], opts)
    text = render_script(groups[0], opts, folder)
    assert f"#SBATCH --output='{tmp_path}/my runs/it'\"'\"'s here/embed-%j.out'" in text
    assert f"source '{venv}/bin/activate'" in text
    q = slurm_mod.quote_path
    assert q(folder / "x") == f"'{tmp_path}/my runs/it'\"'\"'s here/x'"
    assert f"     CWD={q(folder / 'work dir')}" in text and f"LOG={q(folder / 'logs' / 'e.log')}" in text
    assert f"{q(folder / 'embed.sbatch')})" in sbatch_calls(groups, folder)
    # bash reads the quoted values back as the paths themselves
    head = text.split("mkdir -p", 1)[0]  # the case statement that sets JOB, CWD, LOG, MARK, CMD
    out = subprocess.run(["bash", "-c", head + 'printf "%s\\n" "$CWD" "$LOG"'], capture_output=True, text=True)
    assert out.stdout.splitlines() == [str(folder / "work dir"), str(folder / "logs" / "e.log")], out.stderr


@pytest.mark.slurm
@pytest.mark.slow
def test_paths_with_spaces_and_quotes_run_on_the_cluster(cluster, tmp_path):
    """sbatch itself honours the quoted #SBATCH --output (SLURM's own parser, not bash's)."""
    folder = tmp_path / "a run dir" / "it's"
    jobs = [pyjob(folder, "job one", "print('ran')")]
    sub = sm.submit_jobs(jobs, folder / "sub", scheduler=SLURM, wait=True, quiet=True)
    h = sub.handles["job one"]
    assert h.state == "done", submission.status_text(sub)
    assert "ran" in Path(jobs[0].log).read_text()
    assert Path(h.extra["slurm_out"]).exists(), "SLURM wrote its output file at the quoted path"

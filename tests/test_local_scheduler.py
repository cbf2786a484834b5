"""The local scheduler: dependencies, workers, failures that stop only their dependents, cancel,
retry, and state that a new process can read. Jobs are cheap Python one-liners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distillctl import errors
from distillctl.jobs import submission, submit as sm
from distillctl.scheduling import Job, JobHandle, downstream, pid_alive, topological_order
from distillctl_plugins.schedulers.local import LocalOptions, LocalScheduler
from fakes.submit import env  # noqa: F401 - fixture

PY = sys.executable


def pyjob(folder: Path, jid: str, code: str, deps=(), **kw) -> Job:
    """A job running ``python -c CODE`` that appends '<jid> <start> <end>' to folder/trace."""
    trace = folder / "trace"
    wrapped = (f"import time; t0 = time.time()\n{code}\n"
               f"open({str(trace)!r}, 'a').write('{jid} %r %r\\n' % (t0, time.time()))")
    return Job(id=jid, argv=[PY, "-c", wrapped], cwd=str(folder / "work"), log=str(folder / "logs" / f"{jid}.log"),
               depends_on=list(deps), **kw)


def trace(folder: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for line in (folder / "trace").read_text().splitlines():
        jid, a, b = line.split()
        out[jid] = (float(a), float(b))
    return out


def wait_final(sched, handles, timeout=60.0):
    deadline = time.time() + timeout
    while True:
        handles = sched.status(handles)
        if all(h.final for h in handles):
            return {h.job_id: h for h in handles}
        assert time.time() < deadline, [(h.job_id, h.state) for h in handles]
        time.sleep(0.1)


@pytest.mark.slow
def test_dependencies_run_in_order_and_workers_run_in_parallel(tmp_path):
    jobs = [pyjob(tmp_path, "a", "time.sleep(0.6)"), pyjob(tmp_path, "b", "time.sleep(0.6)"),
            pyjob(tmp_path, "c", "pass", deps=["a", "b"])]
    sched = LocalScheduler(LocalOptions(workers=2, threads=1))
    hs = wait_final(sched, sched.submit(jobs, tmp_path))
    assert {h.state for h in hs.values()} == {"done"}
    t = trace(tmp_path)
    assert t["a"][0] < t["b"][1] and t["b"][0] < t["a"][1], "two workers: a and b overlap"
    assert t["c"][0] >= max(t["a"][1], t["b"][1]), "c starts after both of its dependencies ended"
    # the job saw the thread setting and the job id
    env = pyjob(tmp_path / "env", "env", "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['DISTILLCTL_JOB_ID'])")
    h = wait_final(sched, sched.submit([env], tmp_path / "env"))["env"]
    log = Path(h.log).read_text()
    assert "1 env" in log and "# command:" in log and "# exit code 0" in log


def test_jobs_get_one_thread_by_default_and_null_gives_them_the_cores(monkeypatch, tmp_path):
    """threads defaults to 1 (distillctl.threads says why); null keeps the old cores // workers."""
    from distillctl.recipe import validate_recipe

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert LocalScheduler().threads == 1
    assert LocalScheduler(LocalOptions(workers=1)).threads == 1
    assert LocalScheduler(LocalOptions(workers=2, threads=None)).threads == 4
    assert LocalScheduler(LocalOptions(workers=2, threads=3)).threads == 3
    recipe = validate_recipe({"name": "r", "dataset": {"name": "agnews", "source": "sample"},
                              "scheduler": {"name": "local", "workers": 2}})
    assert recipe.scheduler.options.threads == 1
    assert "1 thread(s) each" in LocalScheduler(recipe.scheduler.options).describe([], tmp_path)


@pytest.mark.slow
def test_one_worker_runs_one_job_at_a_time(tmp_path):
    jobs = [pyjob(tmp_path, x, "time.sleep(0.3)") for x in "abc"]
    sched = LocalScheduler(LocalOptions(workers=1))
    wait_final(sched, sched.submit(jobs, tmp_path))
    spans = sorted(trace(tmp_path).values())
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:]))


@pytest.mark.slow
def test_failure_cancels_dependents_only_and_keeps_other_results(tmp_path):
    jobs = [pyjob(tmp_path, "a", "pass"),
            pyjob(tmp_path, "bad", "import sys; print('boom on stderr', file=sys.stderr); sys.exit(3)", deps=["a"]),
            pyjob(tmp_path, "after_bad", "pass", deps=["bad"]),
            pyjob(tmp_path, "grandchild", "pass", deps=["after_bad", "a"]),
            pyjob(tmp_path, "ok", "time.sleep(0.3)", deps=["a"]),
            pyjob(tmp_path, "after_ok", "pass", deps=["ok"])]
    sched = LocalScheduler(LocalOptions(workers=2))
    hs = wait_final(sched, sched.submit(jobs, tmp_path))
    assert hs["bad"].state == "failed" and hs["bad"].exit_code == 3 and "exit code 3" in hs["bad"].reason
    assert hs["after_bad"].state == "cancelled" and "dependency bad failed" in hs["after_bad"].reason
    assert hs["grandchild"].state == "cancelled"
    assert [hs[x].state for x in ("a", "ok", "after_ok")] == ["done"] * 3
    assert set(trace(tmp_path)) == {"a", "ok", "after_ok"}  # the skipped jobs never ran
    assert "boom on stderr" in sched.logs(hs["bad"])


@pytest.mark.slow
def test_submit_returns_while_jobs_run_and_status_works_from_a_new_process(tmp_path):
    # "slow" cannot end before this test creates `go`: submit returning at all shows that it is detached
    go = tmp_path / "go"
    wait_for_go = f"import os\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)"
    jobs = [pyjob(tmp_path, "slow", wait_for_go), pyjob(tmp_path, "next", "pass", deps=["slow"])]
    sched = LocalScheduler(LocalOptions())
    hs = sched.submit(jobs, tmp_path)
    states = {h.job_id: h.state for h in sched.status(hs)}
    assert states["next"] == "pending" and states["slow"] in ("pending", "running")
    go.write_text("")
    blob = json.dumps([h.to_dict() for h in hs])
    code = ("import json, sys, time\n"
            "from distillctl.scheduling import JobHandle\n"
            "from distillctl_plugins.schedulers.local import LocalScheduler\n"
            "hs = [JobHandle.from_dict(d) for d in json.loads(sys.argv[1])]\n"
            "s = LocalScheduler()\n"
            "while not all(h.final for h in hs):\n"
            "    time.sleep(0.1); hs = s.status(hs)\n"
            "print(json.dumps({h.job_id: [h.state, h.exit_code] for h in hs}))\n")
    out = subprocess.run([PY, "-c", code, blob], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"slow": ["done", 0], "next": ["done", 0]}


@pytest.mark.slow
def test_cancel_kills_the_running_job_and_skips_the_rest(tmp_path):
    jobs = [pyjob(tmp_path, "sleeper",  # pid written then renamed: the test never reads a half-written file
                  "import os; open('pid.tmp', 'w').write(str(os.getpid())); os.replace('pid.tmp', 'pid');"
                  " time.sleep(60)"),
            pyjob(tmp_path, "later", "pass", deps=["sleeper"])]
    sched = LocalScheduler(LocalOptions())
    hs = sched.submit(jobs, tmp_path)
    pidfile = tmp_path / "work" / "pid"
    deadline = time.time() + 30
    while not pidfile.exists():
        assert time.time() < deadline
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    sched.cancel(sched.status(hs))
    final = {h.job_id: h for h in sched.status(hs)}
    assert final["sleeper"].state == "cancelled" and final["later"].state == "cancelled"
    time.sleep(0.2)
    assert not pid_alive(pid), "the job's process was killed"
    assert not (tmp_path / "trace").exists()


@pytest.mark.slow
def test_cancelling_one_job_leaves_the_other_branches_running(tmp_path):
    jobs = [pyjob(tmp_path, "slow", "time.sleep(60)"), pyjob(tmp_path, "after_slow", "pass", deps=["slow"]),
            pyjob(tmp_path, "other", "time.sleep(1.0)")]
    sched = LocalScheduler(LocalOptions(workers=2))
    hs = sched.submit(jobs, tmp_path)
    assert [h.job_id for h in hs] == ["slow", "after_slow", "other"]
    while sched.status(hs)[0].state != "running":
        time.sleep(0.05)
    sched.cancel([hs[0]])
    now = {h.job_id: h for h in sched.status(hs)}
    assert now["slow"].state == "cancelled" and now["other"].state in ("running", "done")
    final = wait_final(sched, hs)
    assert final["after_slow"].state == "cancelled" and "dependency slow cancelled" in final["after_slow"].reason
    assert final["other"].state == "done" and set(trace(tmp_path)) == {"other"}


@pytest.mark.slow
def test_a_dead_runner_is_reported_not_hidden(tmp_path):
    jobs = [pyjob(tmp_path, "long", "time.sleep(60)"), pyjob(tmp_path, "after", "pass", deps=["long"])]
    sched = LocalScheduler(LocalOptions())
    hs = sched.submit(jobs, tmp_path)
    while sched.status(hs)[0].state != "running":
        time.sleep(0.05)
    state = json.loads(Path(hs[0].extra["state_file"]).read_text())
    runner, job_pid = state["runner"]["pid"], state["states"]["long"]["pid"]
    os.kill(runner, 9)
    os.killpg(job_pid, 9)  # as if the machine had restarted
    while pid_alive(runner) or pid_alive(job_pid):
        time.sleep(0.05)
    now = {h.job_id: h for h in sched.status(hs)}
    assert now["long"].state == "failed" and "runner process ended" in now["long"].reason
    assert now["after"].state == "cancelled"


@pytest.mark.slow
def test_command_not_found_fails_the_job(tmp_path):
    job = Job(id="nope", argv=["distillctl-no-such-command-xyz"], cwd=str(tmp_path), log=str(tmp_path / "nope.log"))
    sched = LocalScheduler()
    h = wait_final(sched, sched.submit([job], tmp_path))["nope"]
    assert h.state == "failed" and h.exit_code == 127 and "command not found" in h.reason


# -- submissions: retry, status and cancel through the library and the CLI --------------------------------

@pytest.mark.slow
def test_retry_failed_reruns_failed_jobs_and_dependents_only(tmp_path, cli):
    flag = tmp_path / "flag"
    jobs = [pyjob(tmp_path, "first", "pass"),
            pyjob(tmp_path, "flaky", f"import os, sys\nif not os.path.exists({str(flag)!r}): sys.exit(4)",
                  deps=["first"]),
            pyjob(tmp_path, "needs_flaky", "pass", deps=["flaky"]),
            pyjob(tmp_path, "side", "pass", deps=["first"])]
    folder = tmp_path / "sub"
    with pytest.raises(errors.RunError, match="(?s)1 job\\(s\\) failed.*retry-failed"):
        sm.submit_jobs(jobs, folder, scheduler={"name": "local", "workers": 2}, wait=True, quiet=True)

    r = cli("status", folder, "--json")
    assert r.code == 0, r
    st = json.loads(r.out)
    states = {j["id"]: j["state"] for j in st["jobs"]}
    assert states == {"first": "done", "flaky": "failed", "needs_flaky": "cancelled", "side": "done"}
    flaky = next(j for j in st["jobs"] if j["id"] == "flaky")
    assert flaky["exit_code"] == 4 and "# exit code 4" in flaky["log_tail"] and st["state"] == "failed"
    r = cli("status", folder)
    assert r.code == 0 and "flaky" in r.out and "retry-failed" in r.out

    flag.write_text("ok")
    r = cli("submit", "--retry-failed", folder, "--wait")
    assert r.code == 0, r
    sub = sm.status(folder)
    assert sub.state == "done"
    assert {h.job_id: h.attempt for h in sub.handles.values()} == {"first": 1, "flaky": 2, "needs_flaky": 2, "side": 1}
    runs = [line.split()[0] for line in (tmp_path / "trace").read_text().splitlines()]
    assert sorted(runs) == ["first", "flaky", "needs_flaky", "side"], "done jobs were not run again"
    assert Path(jobs[1].log).read_text().count("# distillctl job flaky") == 2, "the first attempt's log is kept"

    r = cli("submit", "--retry-failed", folder)
    assert r.code == 2 and "nothing to retry" in r.err


@pytest.mark.slow
def test_cli_cancel_and_retry_refused_while_running(tmp_path, cli):
    jobs = [pyjob(tmp_path, "sleeper", "time.sleep(60)"), pyjob(tmp_path, "after", "pass", deps=["sleeper"])]
    folder = tmp_path / "sub"
    sm.submit_jobs(jobs, folder)
    r = cli("submit", "--retry-failed", folder)
    assert r.code == 2 and "still pending or running" in r.err
    r = cli("cancel", folder, "--json")
    assert r.code == 0, r
    assert {j["id"]: j["state"] for j in json.loads(r.out)["jobs"]} == {"sleeper": "cancelled", "after": "cancelled"}
    r = cli("status", tmp_path / "nowhere")
    assert r.code == 2 and "no such submission" in r.err
    r = cli("status", tmp_path)
    assert r.code == 2 and "not a submission" in r.err


def test_graph_helpers():
    def j(i, deps=()):
        return Job(id=i, argv=["true"], cwd=".", log="x", depends_on=list(deps))

    jobs = [j("c", ["b"]), j("b", ["a"]), j("a"), j("d", ["a", "outside"])]
    order = [x.id for x in topological_order(jobs)]
    assert order.index("a") < order.index("b") < order.index("c") and order.index("a") < order.index("d")
    assert downstream(jobs, ["b"]) == {"b", "c"}
    assert downstream(jobs, ["a"]) == {"a", "b", "c", "d"}
    with pytest.raises(errors.UserError, match="cycle"):
        topological_order([j("x", ["y"]), j("y", ["x"])])
    h = JobHandle("x", "local", started=10.0, ended=12.5)
    assert JobHandle.from_dict(h.to_dict()) == h and h.elapsed() == 2.5


# -- the real graph: every stage is the real CLI (fake Gaussian data instead of an encoder) ----------------

TESTS = Path(__file__).parent


@pytest.mark.slow
def test_recipe_pipeline_end_to_end_through_the_local_scheduler(env, monkeypatch, cli):
    from distillctl.runs import read_jsonl

    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the jobs run `python -m fakes.cli ...`
    path = env.write(baseline={"kinds": ["random", "full", "majority"]})
    sub = sm.submit(path, exe=[PY, "-m", "fakes.cli"], wait=True, quiet=True)
    run = sub.path
    assert sub.state == "done", submission.status_text(sub)
    assert run.parent == env.tmp / "runs" / "tiny"
    # every stage left its files in the one run directory
    for f in ("recipe.resolved.yaml", "submission.json", "distilled/ipc1.safetensors", "distilled/ipc2.safetensors",
              "eval/results.json", "eval/baseline-random.json", "eval/baseline-full.json",
              "eval/baseline-majority.json", "report.md", "report.json", "plots/accuracy_vs_ipc.png"):
        assert (run / f).exists(), f
    # ... and each reads back as what it claims to be
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.protocol import read_results

    assert yaml.safe_load((run / "recipe.resolved.yaml").read_text())["name"] == "tiny"
    for ipc in (1, 2):
        syn = SyntheticSet.load(run / "distilled" / f"ipc{ipc}.safetensors")
        assert syn.x.shape == (3 * ipc, 8) and syn.ipc == ipc
    for kind in ("random", "full", "majority"):
        assert {r["arm"].split("-")[0] for r in read_results(run / "eval" / f"baseline-{kind}.json")} == {kind}
    assert (run / "plots" / "accuracy_vs_ipc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ipc" in (run / "report.md").read_text().lower()
    results = json.loads((run / "eval" / "results.json").read_text())["results"]
    assert sorted((r["arm"], r["ipc"]) for r in results) == [("distilled", 1), ("distilled", 2)]
    table = json.loads((run / "report.json").read_text())["tables"]["accuracy"]
    assert [(row["ipc"], bool(row["distilled"]), bool(row["random"])) for row in table] == [(1, True, True),
                                                                                          (2, True, True)]
    # the chain ran one stage per job: stage 2 reused stage 1's set and ran only its own steps
    log2 = (run / "logs" / "distill-ipc2.log").read_text()
    assert "--stage 2" in log2 and "# exit code 0" in log2
    stages = {r.get("stage") for r in read_jsonl(run / "metrics.jsonl")}
    assert stages == {0, 1}
    # status from a fresh process state; the summary row for the point
    r = cli("status", run, "--json")
    st = json.loads(r.out)
    assert r.code == 0 and st["state"] == "done" and len(st["jobs"]) == 9 and st["reports"] == [str(run / "report.md")]
    assert [(x["ipc"], x["point"]) for x in st["summary"]] == [(1, ""), (2, "")]
    # any job can be re-run by hand: its command line in its directory
    ev = next(j for j in sub.jobs if j.id == "eval-ipc1")
    again = subprocess.run(ev.argv, cwd=ev.cwd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


# -- following a submission: a cancelled --wait is not a success; long jobs show signs of life ---------------

@pytest.mark.slow
def test_wait_that_ends_cancelled_raises_and_the_cli_exits_3(tmp_path, cli):
    flag, folder = tmp_path / "flag", tmp_path / "sub"
    # first attempt fails; the retry cancels its own submission (as `distillctl cancel` from another shell would)
    code = (f"import os, sys\nif not os.path.exists({str(flag)!r}): sys.exit(4)\n"
            f"from distillctl.jobs.submit import cancel\ncancel({str(folder)!r})\ntime.sleep(60)")
    jobs = [pyjob(tmp_path, "job", code), pyjob(tmp_path, "after", "pass", deps=["job"])]
    with pytest.raises(errors.RunError) as exc:
        sm.submit_jobs(jobs, folder, wait=True, quiet=True)
    assert not isinstance(exc.value, errors.RunCancelled) and exc.value.exit_code == 1
    flag.write_text("go")
    r = cli("submit", "--retry-failed", folder, "--wait")
    assert r.code == 3, r
    assert "cancelled: 2 of 2 job(s) cancelled" in r.err and "--retry-failed" in r.err
    assert {h.state for h in sm.status(folder).handles.values()} == {"cancelled"}


def test_line_view_shows_running_jobs_latest_log_line_between_state_changes(tmp_path, capsys):
    from distillctl.jobs.follow import LineView
    from distillctl.scheduling import Scheduler

    log = tmp_path / "embed.log"
    log.write_text("# distillctl job embed: started\nloading data\n")
    jobs = [Job(id="embed", argv=["true"], cwd=str(tmp_path), log=str(log)),
            Job(id="distill", argv=["true"], cwd=str(tmp_path), log=str(tmp_path / "d.log"), depends_on=["embed"])]
    handles = {"embed": JobHandle(job_id="embed", scheduler="x", state="running", started=1000.0, log=str(log)),
               "distill": JobHandle(job_id="distill", scheduler="x", state="pending")}
    sub = submission.Submission(tmp_path, {}, jobs, handles, scheduler=Scheduler())
    now = [1000.0]
    view = LineView(heartbeat=30, clock=lambda: now[0])
    view.start(sub)
    capsys.readouterr()
    now[0] = 1010.0
    view.update(sub)
    assert capsys.readouterr().err == ""  # nothing changed, no heartbeat due yet
    now[0] = 1045.0
    log.write_text(log.read_text() + "embedding train\r 1200/4000\r 2400/4000\n")  # a bar's \r updates
    view.update(sub)
    assert capsys.readouterr().err.strip() == "[0/2] running   embed 45s: 2400/4000"
    now[0] = 1050.0
    view.update(sub)
    assert capsys.readouterr().err == ""  # the next one 30 s later
    now[0] = 1075.0
    view.update(sub)
    assert "embed 1m15s: 2400/4000" in capsys.readouterr().err


def test_live_table_shows_the_latest_output_of_running_jobs(tmp_path):
    from rich.console import Console

    from distillctl.jobs.cli_render import progress_table
    from distillctl.scheduling import Scheduler

    log = tmp_path / "embed.log"
    log.write_text("embedding test split 300/900\n")
    jobs = [Job(id="embed", argv=["true"], cwd=str(tmp_path), log=str(log))]
    handles = {"embed": JobHandle(job_id="embed", scheduler="x", state="running", started=time.time(), log=str(log))}
    sub = submission.Submission(tmp_path, {}, jobs, handles, scheduler=Scheduler())
    console = Console(width=200, record=True)
    console.print(progress_table(sub))
    assert "embedding test split 300/900" in console.export_text()


def test_progress_off_a_terminal_is_a_plain_line_at_most_every_interval(monkeypatch, capsys):
    """A job's log (stderr not a TTY) gets `embed: 2,000/4,000 sentences (50 %) ...` lines, so the
    `submit --wait` heartbeat shows how far a long job is; a short task writes nothing."""
    from distillctl import console

    now = [0.0]
    bar = console.LineBar("embed", 4000, "sentences", clock=lambda: now[0])
    bar.advance(1000)
    assert capsys.readouterr().err == ""  # not yet LINE_EVERY_S seconds
    now[0] = console.LINE_EVERY_S + 5  # 20 s
    bar.advance(1000, loss=0.5)
    assert capsys.readouterr().err == "embed: 2,000/4,000 sentences (50 %), 100.0 sentences/s, loss=0.5, 20 s\n"
    bar.advance(2000)  # too soon for another line
    assert capsys.readouterr().err == ""
    bar.close()  # a last line, since one was written
    assert capsys.readouterr().err.startswith("embed: 4,000/4,000 sentences (100 %)")
    now[0] += 2 * console.LINE_EVERY_S
    done_bar = console.LineBar("eval", 10, clock=lambda: now[0])
    now[0] += console.LINE_EVERY_S
    done_bar.advance(10)
    assert capsys.readouterr().err.startswith("eval: 10/10 it (100 %)")
    done_bar.close()  # its last line already said 10/10: not written again
    assert capsys.readouterr().err == ""
    quiet_bar = console.LineBar("eval", 10, clock=lambda: 0.0)
    quiet_bar.advance(10)
    quiet_bar.close()
    assert capsys.readouterr().err == ""
    # progress() picks it when stderr is not a terminal (pytest's capture is not one)
    monkeypatch.setattr(console, "is_quiet", lambda: False)
    with console.progress("embed", 10) as b:
        assert isinstance(b, console.LineBar)

"""Issue 22, items 4, 6 (busy runs) and 9: `report` prints a short summary with every evaluated student and
where the files are (`--full` for the whole text); a reference at 0 % (a 1-row test split) does not crash the
report; a sweep's comparison lists failed / cancelled / missing points and exits 4; eval / report / export of
a run a distill is writing name that process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from fakes import evaluation as eval_fakes
from test_compare import _point
from test_report import hand_run, rec  # noqa: F401  (hand_run: fixture)


def test_report_prints_a_short_summary_with_every_student(monkeypatch, tmp_path, cli):
    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.evaluate import evaluate

    recipe, run, _ = eval_fakes.run_in(monkeypatch, tmp_path)
    evaluate(run.path, seeds=2, quiet=True, students="mlp,linear")
    baseline(recipe, "full", seeds=2, quiet=True, run_dir=run.path)
    r = cli("report", run.path)
    assert r.code == 0, r
    lines = r.out.strip().splitlines()
    assert len(lines) <= 20, r.out
    rows = [line for line in lines if line.startswith("| mlp |") or line.startswith("| linear |")]
    assert len(rows) == 2 and all(row.count("% of full") == 2 for row in rows), r.out  # ipc 1 and 2
    assert f"report: {run.path / 'report.md'}" in r.out and f"report --full {run.path}" in r.out
    assert "Strongest full-data reference: full" in r.out, r.out
    assert "## What the synthetic vectors stand for" not in r.out and "| IPC |" not in r.out
    full = cli("report", run.path, "--full")
    assert full.code == 0 and "| IPC |" in full.out and "## Protocol" in full.out and len(full.out) > 2 * len(r.out)
    md = (run.path / "report.md").read_text()
    assert "## Headline: distilled sets on every evaluating student" in md
    assert "| linear | hard |" in md and "| mlp | hard |" in md


def test_a_reference_at_zero_does_not_crash_the_report(hand_run, cli):
    """A 1-row test split: every score is 0 or 1; a full-data reference at 0 % has no share to divide by."""
    run, _, write = hand_run
    write([rec("distilled", 1.0, ipc=1, labels="hard", n_test=1)], [rec("full", 0.0, n_test=1)])
    r = cli("report", run.path)
    assert r.code == 0 and "ZeroDivisionError" not in r.err, r
    md = (run.path / "report.md").read_text()
    assert "the reference scores 0 %, so no share of it can be stated" in md


def _sweep(tmp_path, monkeypatch, states):
    registry, _ = eval_fakes.install(monkeypatch, eval_fakes.embeddings())
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "sub"
    points = [_point(folder, registry, "lr=0.1", {"lr": "0.1"}, [0.8, 0.84], step=5, steps_run=10, val=0.6)]
    # the second point's distill job was killed: a run folder without a set
    from distillctl.recipe import validate_recipe
    from distillctl.runs import create_run_dir

    other = create_run_dir(validate_recipe(eval_fakes.recipe_data(), registry=registry), stage="distill",
                           run_dir=folder / "lr=0.3")
    points.append({"name": "lr=0.3", "values": {"lr": "0.3"}, "run_dir": str(other.path)})
    handles = {f"{p['name']}/{job}": {"job_id": f"{p['name']}/{job}", "state": state}
               for p, jobs in zip(points, states) for job, state in jobs.items()}
    (folder / "submission.json").write_text(json.dumps({"points": points, "handles": handles}))
    return folder


def test_a_sweep_with_a_failed_point_is_reported_incomplete(tmp_path, monkeypatch, cli):
    folder = _sweep(tmp_path, monkeypatch, [{"distill-ipc1": "done", "eval": "done"},
                                             {"distill-ipc1": "failed", "eval": "cancelled"}])
    r = cli("report", folder)
    assert r.code == 4, r
    assert "INCOMPLETE: 1 sweep point without a result" in r.out and "lr=0.3: ipc 1, 2 failed (distill-ipc1)" in r.out
    assert "lr=0.1  ipc   1  test 82.00 ± 2.00" in r.out
    md = (folder / "comparison.md").read_text()
    assert "**Incomplete comparison: 1 sweep point without a result**" in md and "- lr=0.3: ipc 1, 2 failed" in md
    data = json.loads((folder / "comparison.json").read_text())
    assert data["complete"] is False and data["missing"][0]["state"] == "failed"
    assert [m["point"] for m in data["missing"]] == ["lr=0.3"]
    assert cli("report", folder, "--json").code == 4


def test_a_sweep_point_cancelled_or_without_jobs_is_named(tmp_path, monkeypatch, cli):
    folder = _sweep(tmp_path, monkeypatch, [{}, {"distill-ipc1": "cancelled"}])
    r = cli("report", folder)
    assert r.code == 4 and "lr=0.3: ipc 1, 2 cancelled (distill-ipc1)" in r.out, r
    (folder / "lr=0.1" / "eval" / "results.json").unlink()  # a point whose eval never ran, no job recorded
    r = cli("report", folder)
    assert r.code == 4 and "lr=0.1: ipc 1 no result" in r.out and "test not evaluated" in r.out, r


def test_a_complete_sweep_exits_0(tmp_path, monkeypatch, cli):
    registry, _ = eval_fakes.install(monkeypatch, eval_fakes.embeddings())
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "sub"
    points = [_point(folder, registry, name, {"x": name}, accs, step=1, steps_run=2, val=0.5)
              for name, accs in (("a", [0.8, 0.8]), ("b", [0.7, 0.7]))]
    (folder / "submission.json").write_text(json.dumps({"points": points}))
    r = cli("report", folder)
    assert r.code == 0 and "INCOMPLETE" not in r.out, r
    assert json.loads((folder / "comparison.json").read_text())["missing"] == []


HOLD = textwrap.dedent("""
    import sys
    from distillctl.runs import run_lock
    with run_lock(sys.argv[1], "distill", argv=["distillctl", "distill", "r.yaml", "--run-dir", sys.argv[1]]):
        print("held", flush=True)
        sys.stdin.readline()
""")


def test_eval_report_export_of_a_run_being_distilled_name_the_distill(monkeypatch, tmp_path, cli):
    from distillctl.recipe import validate_recipe
    from distillctl.runs import create_run_dir

    registry, _ = eval_fakes.install(monkeypatch, eval_fakes.embeddings())
    monkeypatch.chdir(tmp_path)
    run = create_run_dir(validate_recipe(eval_fakes.recipe_data(), registry=registry), stage="distill",
                         run_dir=tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (("eval", run.path), ("report", run.path), ("export", run.path, "--format", "csv")):
            r = cli(*args)
            assert r.code == 2, r
            assert f"a distill is writing this run directory: PID {holder.pid} on " in r.err, r
            assert " since 20" in r.err and f"`distillctl distill r.yaml --run-dir {run.path}`" in r.err
            assert "run `distillctl" not in r.err and len(r.err.strip().splitlines()) == 1
    finally:
        holder.communicate("\n", timeout=30)
    r = cli("eval", run.path)  # the distill ended: the usual advice again
    assert r.code == 2 and "run `distillctl distill` first" in r.err, r
    assert np  # numpy imported for the fixtures' module

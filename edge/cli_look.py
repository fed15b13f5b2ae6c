"""The one look of both command lines, `python -m edge` and `python -m trainer` (which imports
this): plain Click help (no rich: `--help` stays instant on a Pi), errors as one
`error: ...` line on stderr with an exit code, no Python tracebacks for user errors."""

from __future__ import annotations

import typer


def new_app(help: str, **options) -> typer.Typer:
    """A Typer app (or sub-app) formatted like every other command of the project."""
    return typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                       rich_markup_mode=None, help=help, **options)


def error(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (its first line) to stderr; return the Exit to raise."""
    typer.echo(f"error: {str(message).splitlines()[0] if message else message}", err=True)
    return typer.Exit(code)

"""The ``mbdlprune`` command line: a thin Typer app; each command calls a plain function."""

from __future__ import annotations

import typer

from . import bench, demo, finetune, prune

app = typer.Typer(
    name="mbdlprune",
    help="Prune, fine-tune and benchmark model-based deep learning (DEQ / unrolled) reconstruction networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# One module per command group, registered statically; each keeps torch out of its top level.
COMMAND_GROUPS = (prune, finetune, bench, demo)


def _register_commands() -> None:
    for group in COMMAND_GROUPS:
        group.register(app)


def _version(value: bool):
    if value:
        from .. import __version__

        typer.echo(f"mbdlprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")):
    """Prune, fine-tune and benchmark MBDL reconstruction networks."""


_register_commands()


def main() -> None:
    app()


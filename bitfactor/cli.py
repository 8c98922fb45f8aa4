"""The ``bitfactor`` command line.

Each area registers its own commands from a module of its own (``register(app)``), listed
in ``COMMAND_MODULES``; those modules import heavy libraries (torch) only inside the
command functions, so ``bitfactor --help`` stays fast and works without the engine extra.
"""

from __future__ import annotations

import importlib

import typer

from bitfactor import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "bitfactor.commands",
    "api.cli",
    "worker.cli",
    "bitfactor.client",
    "engine.cli",
)

app = typer.Typer(
    name="bitfactor",
    help="Turn a pretrained network into a fast, tiny binary network and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bitfactor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """bitfactor: factorized-binary networks, trained and served."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Entry point of the ``bitfactor`` console script."""
    app()

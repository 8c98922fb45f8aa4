"""Commands that belong to no single area: ``info`` and ``demo``."""

from __future__ import annotations

import json
import platform

import typer

from bitfactor import __version__
from bitfactor.settings import get_settings


def info(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the version, the runtime's ISA and the settings in force."""
    import runtime

    settings = get_settings()
    data = {
        "version": __version__,
        "python": platform.python_version(),
        "isa": runtime.isa(),
        "best_isa": runtime.best_isa(),
        "supported_isas": runtime.supported_isas(),
        "data_dir": str(settings.data_dir),
        "database_url": settings.resolved_database_url,
        "artifacts_dir": str(settings.resolved_artifacts_dir),
        "broker": settings.broker_url or "embedded",
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        typer.echo(f"{key.ljust(width)}  {value}")


def demo() -> None:
    """Run the main job end to end on the embedded defaults: serve, binarize, download, predict."""
    from bitfactor.demo import run_demo

    raise typer.Exit(run_demo())


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``bitfactor`` app."""
    app.command("info")(info)
    app.command("demo")(demo)

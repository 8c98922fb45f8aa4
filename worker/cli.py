"""The ``bitfactor worker`` command: a Celery worker for the scale-out setup."""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def worker(
    queues: str = typer.Option(
        None, "--queues", "-Q", help="Comma-separated queues (default: BITFACTOR_JOB_QUEUE, gpu)."
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Data directory (default: BITFACTOR_DATA_DIR)."
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", help="Celery log level."),
    name: str = typer.Option("bitfactor@%h", "--name", "-n", help="Worker node name."),
) -> None:
    """Run a worker: applies migrations, then takes jobs one at a time (a child per job)."""
    import os

    if data_dir is not None:
        os.environ["BITFACTOR_DATA_DIR"] = str(data_dir)
    from bitfactor.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    from db.session import upgrade

    upgrade(settings.resolved_database_url)
    from worker.app import get_celery

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(name)s %(message)s")
    app = get_celery()
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            "--max-tasks-per-child=1",
            f"--queues={queues or settings.job_queue}",
            f"--loglevel={loglevel}",
            f"--hostname={name}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def register(app: typer.Typer) -> None:
    """Add ``bitfactor worker`` to the CLI."""
    app.command("worker")(worker)

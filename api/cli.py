"""Service commands: ``bitfactor serve`` and ``bitfactor keys create``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from bitfactor.settings import Settings

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
LOCAL_TENANT = "local"


def _settings(data_dir: Path | None) -> Settings:
    if data_dir is not None:
        os.environ["BITFACTOR_DATA_DIR"] = str(data_dir)
    from bitfactor.settings import get_settings

    get_settings.cache_clear()
    return get_settings()


def _write_key_file(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")


def _recover_embedded_jobs(settings: Settings) -> list[str]:
    """Requeue jobs a previous embedded run left running (they resume from checkpoints)."""
    from sqlalchemy import select, update

    from db.models import Job
    from db.session import connect, session_factory
    from worker.app import enqueue_job, make_celery

    engine = connect(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            session.execute(update(Job).where(Job.status == "canceling").values(status="canceled"))
            stranded = list(session.scalars(select(Job.id).where(Job.status == "running")))
            session.commit()
    finally:
        engine.dispose()
    if stranded:
        app = make_celery(settings)
        for job_id in stranded:
            enqueue_job(app, job_id)
    return stranded


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Data directory (default: BITFACTOR_DATA_DIR or ./var)."
    ),
    worker: bool = typer.Option(
        True, "--worker/--no-worker", help="Start one worker process (the embedded default)."
    ),
    log_level: str = typer.Option("info", "--log-level", help="Log level of the server."),
    workers: int = typer.Option(
        None,
        "--workers",
        min=1,
        max=64,
        help="API processes sharing the port (default: BITFACTOR_API_WORKERS, else 1).",
    ),
) -> None:
    """Run the API (and one worker): migrations first, a local API key on first run."""
    import uvicorn

    settings = _settings(data_dir)
    workers = workers or settings.api_workers
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from db import repo
    from db.session import connect, session_factory, upgrade

    upgrade(settings.resolved_database_url)
    key_file = settings.data_dir / "api-key"
    if not key_file.exists():
        engine = connect(settings.resolved_database_url)
        with session_factory(engine)() as session:
            tenant = repo.get_or_create_tenant(session, name=LOCAL_TENANT)
            key = repo.create_api_key(session, tenant=tenant, secret=settings.secret_key)
            session.commit()
        engine.dispose()
        _write_key_file(key_file, key)
        typer.echo(f"Created an API key for tenant {LOCAL_TENANT!r}: {key}")
        typer.echo(f"(saved to {key_file}, mode 0600)")
    else:
        typer.echo(f"API key: {key_file}")

    worker_proc: subprocess.Popen[bytes] | None = None
    if worker:
        if settings.embedded_broker:
            stranded = _recover_embedded_jobs(settings)
            if stranded:
                typer.echo(f"Requeued {len(stranded)} interrupted job(s): {', '.join(stranded)}")
        env = {**os.environ, "BITFACTOR_DATA_DIR": str(settings.data_dir)}
        worker_proc = subprocess.Popen(
            [sys.executable, "-m", "bitfactor", "worker", "--loglevel", log_level.upper()],
            env=env,
            start_new_session=True,
        )
    from api.app import create_server_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    typer.echo(f"Serving on http://{host}:{port} (docs at /docs)")
    if workers > 1:
        try:
            _serve_processes(settings, host=host, port=port, log_level=log_level, workers=workers)
        finally:
            if worker_proc is not None:
                _stop(worker_proc)
        return
    server = uvicorn.Server(
        uvicorn.Config(create_server_app(), host=host, port=port, log_level=log_level)
    )

    def _interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler installed before it: this one, so the worker is stopped below.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if worker_proc is not None:
            _stop(worker_proc)


def _serve_processes(
    settings: Settings, *, host: str, port: int, log_level: str, workers: int
) -> None:
    """``workers`` uvicorn processes on one listening socket, each with its own app.

    Each process builds its app from the environment (``api.app:create_server_app``), so the data
    directory goes there. Metrics are summed across the processes through files in
    ``<data_dir>/metrics`` (Prometheus' multiprocess mode), emptied at every start.
    uvicorn's supervisor restarts a process that dies and stops them all on SIGINT/SIGTERM.
    """
    import shutil

    import uvicorn

    metrics_dir = settings.data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["BITFACTOR_DATA_DIR"] = str(settings.data_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run(
        "api.app:create_server_app",
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        workers=workers,
    )


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the worker's process group, then SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", help="Tenant name (created when new)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Data directory."),
) -> None:
    """Create an API key for a tenant and print it (it is shown only this once)."""
    settings = _settings(data_dir)
    from db import repo
    from db.session import connect, session_factory, upgrade

    name = tenant.strip()
    if not name or len(name) > 200:
        typer.echo("error: --tenant must be 1 to 200 characters", err=True)
        raise typer.Exit(2)
    upgrade(settings.resolved_database_url)
    engine = connect(settings.resolved_database_url)
    with session_factory(engine)() as session:
        row = repo.get_or_create_tenant(session, name=name)
        key = repo.create_api_key(session, tenant=row, secret=settings.secret_key)
        session.commit()
    engine.dispose()
    typer.echo(key)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``keys`` to the CLI."""
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")

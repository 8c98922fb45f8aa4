"""Engines, sessions and migrations.

``connect(url)`` builds an engine for SQLite (WAL, a busy timeout, foreign keys on) or any
other SQLAlchemy URL; ``upgrade(url)`` applies the Alembic migrations packaged in
``db/migrations`` (``bitfactor serve`` and ``bitfactor worker`` call it on start).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def connect(url: str, *, pool_size: int | None = None, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine for ``url``; SQLite gets settings that suit API + worker writers.

    ``pool_size`` connections are kept for reuse and as many more opened under load.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if pool_size is not None:  # an in-memory database has a single-connection pool
                kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if pool_size is not None:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    return create_engine(url, pool_pre_ping=True, **kwargs)


def is_transient(exc: BaseException) -> bool:
    """True for a database error that a retry can cure: the server is down or restarting,
    a connection was dropped, or the pool had no connection to give in time."""
    if isinstance(exc, OperationalError | InterfaceError | SATimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine`` that keep loaded attributes after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    """The Alembic configuration of the packaged migrations, pointed at ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (idempotent)."""
    engine = connect(url)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()

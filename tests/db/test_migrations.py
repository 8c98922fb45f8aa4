"""The Alembic migrations create exactly the tables the models declare (SQLite, PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.models import Base
from db.session import connect, upgrade


def _diff(url: str) -> list[object]:
    engine = connect(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    upgrade(url)  # idempotent: a second start changes nothing
    assert _diff(url) == []
    engine = connect(url)
    with engine.connect() as connection:
        tables = set(sa.inspect(connection).get_table_names())
    engine.dispose()
    assert {"tenants", "api_keys", "models", "datasets", "jobs", "alembic_version"} <= tables


def test_upgrading_from_the_first_revision(tmp_path: Path) -> None:
    """A database created by an older release reaches the current schema."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    upgrade(url, "0001")
    assert _diff(url) != []  # the jobs.val_dataset_id column is missing at 0001
    upgrade(url)
    assert _diff(url) == []


def test_an_empty_database_differs_from_the_models(tmp_path: Path) -> None:
    """The comparison above can fail: against no tables it reports every table missing."""
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    sa.create_engine(url).dispose()
    assert len(_diff(url)) >= 5


@pytest.mark.integration
def test_postgres_migrations_match_models(postgres_schema_url: str) -> None:
    upgrade(postgres_schema_url)
    assert _diff(postgres_schema_url) == []

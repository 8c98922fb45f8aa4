"""The real PostgreSQL and Redis that integration tests rely on answer as expected."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_postgres_round_trip(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 40 + 2")).scalar_one() == 42
        version = conn.execute(sa.text("show server_version")).scalar_one()
    engine.dispose()
    assert int(str(version).split(".")[0]) >= 12


def test_redis_round_trip(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.set("bitfactor:test:ping", b"pong", ex=10)
    assert client.get("bitfactor:test:ping") == b"pong"
    client.delete("bitfactor:test:ping")
    client.close()

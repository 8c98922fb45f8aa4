"""More concurrent requests than pooled connections and threadpool slots: no deadlock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio.to_thread
import httpx
from sqlalchemy.orm import sessionmaker

from db.session import connect

from .conftest import Api, finish_with_artifact, submit


def test_predict_does_not_hold_a_connection_while_it_waits_for_a_thread(
    api: Api, model_id: str, dataset_id: str, tmp_path: Path
) -> None:
    """One pooled connection, two worker threads, eight concurrent predicts: a request
    that kept its connection while waiting for a thread (and threads waiting for that
    connection) would deadlock until the pool timeout and answer 503."""
    job_id = submit(api, model_id, dataset_id)
    finish_with_artifact(api, job_id, tmp_path)
    app = api.client.app
    state = api.app_state()
    engine = connect(
        api.settings.resolved_database_url, pool_size=1, max_overflow=0, pool_timeout=5
    )
    state.sessions = sessionmaker(engine, expire_on_commit=False)

    async def burst() -> list[int]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=api.headers(), timeout=60
        ) as client:
            calls = [
                client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[0.5, 1, 2, 3]]})
                for _ in range(8)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    try:
        assert asyncio.run(burst()) == [200] * 8
    finally:
        engine.dispose()

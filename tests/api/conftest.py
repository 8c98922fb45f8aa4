"""An in-process API on a temporary SQLite database and artifact directory.

The app is the real one (real database, real artifact store, real filesystem broker); no
worker consumes the queue here, so jobs stay ``queued`` unless a test moves them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from bitfactor.settings import Settings
from db import repo
from db.session import connect, session_factory, upgrade


@dataclass
class Api:
    """The app under test, its settings and one API key per tenant."""

    client: TestClient
    settings: Settings
    keys: dict[str, str]

    def headers(self, tenant: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path, environment="test", max_upload_bytes=200_000, model_cache_size=2
    )
    upgrade(settings.resolved_database_url)
    engine = connect(settings.resolved_database_url)
    keys = {}
    with session_factory(engine)() as session:
        for name in ("alice", "bob"):
            tenant = repo.get_or_create_tenant(session, name=name)
            keys[name] = repo.create_api_key(session, tenant=tenant, secret=settings.secret_key)
        session.commit()
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, settings, keys)


@pytest.fixture
def dataset_id(api: Api) -> str:
    rng = np.random.default_rng(0)
    data = npz_bytes(x=rng.normal(size=(20, 4)).astype(np.float32), y=np.arange(20) % 3)
    response = api.client.post(
        "/v1/datasets", headers=api.headers(), files={"file": ("d.npz", data)}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])

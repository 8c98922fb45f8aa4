"""An in-process API (real app, SQLite, artifact directory) with room for hostile files.

The upload cap is 4 MB (tests/api uses 200 kB), so a zip with thousands of entries or a
compressed bomb reaches the checks that should refuse it instead of the size cap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from bitfactor.settings import Settings
from db import repo
from db.session import connect, session_factory, upgrade

UPLOAD_CAP = 4_000_000


@dataclass
class Service:
    """The app under test, its settings and the API key of tenant ``alice``."""

    client: TestClient
    settings: Settings
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def stored_files(self) -> list[Path]:
        """Every file in the artifact store (uploads land under ``tmp/`` first)."""
        root = self.settings.resolved_artifacts_dir
        return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = Settings(data_dir=tmp_path / "data", environment="test", max_upload_bytes=UPLOAD_CAP)
    settings.data_dir.mkdir()
    upgrade(settings.resolved_database_url)
    engine = connect(settings.resolved_database_url)
    with session_factory(engine)() as session:
        tenant = repo.get_or_create_tenant(session, name="alice")
        key = repo.create_api_key(session, tenant=tenant, secret=settings.secret_key)
        session.commit()
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Service(client, settings, key)

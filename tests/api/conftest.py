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
from api.state import AppState
from bitfactor.settings import Settings
from db import repo
from db.models import ModelFile, new_id
from db.session import connect, session_factory, upgrade
from db.storage import LocalArtifactStore


@dataclass
class Api:
    """The app under test, its settings and one API key per tenant."""

    client: TestClient
    settings: Settings
    keys: dict[str, str]

    def app_state(self) -> AppState:
        return self.client.app.state.bitfactor  # type: ignore[attr-defined,no-any-return]

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


WEIGHT_SEED = 1


def finish_with_artifact(api: Api, job_id: str, tmp_path: Path, seed: int = 1) -> tuple[str, bytes]:
    from runtime import write_bfm

    rng = np.random.default_rng(seed)
    path = tmp_path / "out.bfm"
    write_bfm(
        path,
        graph={
            "inputs": [{"name": "input", "shape": [None, 4], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [None, 3], "dtype": "float32"}],
            "nodes": [
                {
                    "op": "linear",
                    "name": "fc",
                    "inputs": ["input"],
                    "outputs": ["logits"],
                    "params": {"weight": "fc.weight", "bias": "fc.bias"},
                }
            ],
        },
        tensors={
            "fc.weight": rng.normal(size=(3, 4)).astype(np.float32),
            "fc.bias": rng.normal(size=3).astype(np.float32),
        },
        provenance={},
    )
    data = path.read_bytes()
    store = LocalArtifactStore(api.settings.resolved_artifacts_dir)
    key = f"jobs/{job_id}/model.bfm"
    sha, size = store.put_file(key, path)
    with session_factory(connect(api.settings.resolved_database_url))() as session:
        repo.claim_job(session, job_id=job_id, worker_id="w", max_attempts=3)
        repo.finish_job(
            session,
            job_id=job_id,
            status="succeeded",
            result={"binary_accuracy": 0.5},
            artifact=(key, sha, size),
        )
    return sha, data


@pytest.fixture
def model_id(api: Api, tmp_path: Path) -> str:
    """A stored model row (upload validation itself is tested in test_models.py)."""
    store = LocalArtifactStore(api.settings.resolved_artifacts_dir)
    source = tmp_path / "m.onnx"
    source.write_bytes(b"model bytes")
    row_id = new_id()
    key = f"models/{row_id}/model.onnx"
    sha, size = store.put_file(key, source)
    with session_factory(connect(api.settings.resolved_database_url))() as session:
        tenant = repo.get_or_create_tenant(session, name="alice")
        session.add(
            ModelFile(
                id=row_id,
                tenant_id=tenant.id,
                name="m",
                format="onnx",
                sha256=sha,
                size_bytes=size,
                input_shape=[4],
                storage_key=key,
            )
        )
        session.commit()
    return row_id


def submit(api: Api, model_id: str, dataset_id: str) -> str:
    """A queued job's id."""
    response = api.client.post(
        "/v1/jobs", headers=api.headers(), json={"model_id": model_id, "dataset_id": dataset_id}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])

"""Shared fixtures: real services for integration tests, with a clear reason when absent.

Integration tests use the real PostgreSQL and Redis on loopback. Locally a missing server
skips them with the reason; under CI (``CI=true``) it fails them, since ``.ci/run`` starts
both servers and a skip there would hide a broken set-up.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_URL = os.environ.get(
    "BITFACTOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BITFACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _require_service(name: str, host: str, port: int) -> None:
    if _port_open(host, port):
        return
    message = f"{name} is not answering on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must start it: see .ci/run)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the real PostgreSQL test database."""
    _require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a real Redis database reserved for tests."""
    _require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def worker_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A migrated data directory that the in-process worker (``worker.jobs``) uses."""
    from bitfactor.settings import get_settings
    from db.session import upgrade
    from worker import jobs

    monkeypatch.setenv("BITFACTOR_DATA_DIR", str(tmp_path))
    for cached in (get_settings, jobs._sessions, jobs._store):
        cached.cache_clear()
    upgrade(get_settings().resolved_database_url)
    yield tmp_path
    for cached in (get_settings, jobs._sessions, jobs._store):
        cached.cache_clear()


QueueJob = Callable[..., str]


@pytest.fixture
def queue_job(worker_data_dir: Path) -> QueueJob:
    """``queue_job(model_path, format, **model_fields)``: the model file and 64 labelled rows
    (8 features, 3 classes) stored and recorded as the API would, and a queued 1-epoch job
    on them; returns the job's id."""

    def queue(model_path: Path, model_format: str, **model_fields: Any) -> str:
        import numpy as np

        from bitfactor.settings import get_settings
        from db import repo
        from db.models import Dataset, Job, ModelFile
        from db.storage import LocalArtifactStore
        from worker import jobs

        data_path = worker_data_dir / "d.npz"
        rng = np.random.default_rng(0)
        np.savez(data_path, x=rng.normal(size=(64, 8)).astype(np.float32), y=rng.integers(0, 3, 64))
        store = LocalArtifactStore(get_settings().resolved_artifacts_dir)
        model_key = f"models/m/model.{model_format}"
        model_sha, model_size = store.put_file(model_key, model_path)
        data_sha, data_size = store.put_file("datasets/d/data.npz", data_path)
        with jobs._sessions()() as session:
            tenant = repo.get_or_create_tenant(session, name="t")
            model = ModelFile(
                tenant_id=tenant.id,
                name="m",
                format=model_format,
                sha256=model_sha,
                size_bytes=model_size,
                input_shape=[8],
                storage_key=model_key,
                **model_fields,
            )
            dataset = Dataset(
                tenant_id=tenant.id,
                name="d",
                sha256=data_sha,
                size_bytes=data_size,
                n=64,
                x_shape=[64, 8],
                has_labels=True,
                storage_key="datasets/d/data.npz",
            )
            session.add_all([model, dataset])
            session.flush()
            job = Job(
                tenant_id=tenant.id,
                model_id=model.id,
                dataset_id=dataset.id,
                config={"epochs": 1, "batch_size": 16, "min_layer_size": 16},
            )
            session.add(job)
            session.commit()
            return job.id

    return queue

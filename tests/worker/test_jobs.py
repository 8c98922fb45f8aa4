"""The worker's job runner and sweeper, in-process on SQLite with the real engine."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from bitfactor.demo import export_onnx
from bitfactor.settings import Settings, get_settings
from db import repo
from db.models import Job, utcnow
from db.session import upgrade
from db.storage import LocalArtifactStore
from worker import jobs
from worker.reaper import MARKER_PREFIX, Reaper

from ..conftest import QueueJob


@pytest.fixture
def data_dir(worker_data_dir: Path) -> Path:
    return worker_data_dir


@pytest.fixture
def queued_job(queue_job: QueueJob, data_dir: Path) -> Callable[[], str]:
    """A queued job on a small ONNX MLP and 64 labelled rows, stored as the API would."""

    def queued() -> str:
        torch = pytest.importorskip("torch")
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(8, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 32),
            torch.nn.Linear(32, 3),
        ).eval()
        return queue_job(export_onnx(net, data_dir / "m.onnx", features=8), "onnx")

    return queued


@pytest.mark.slow
def test_cancel_after_the_last_step_wins(
    data_dir: Path, queued_job: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel committed while the packed model is being stored (training is over) ends
    the job ``canceled``, with no artifact recorded or left on disk."""
    job_id = queued_job()
    real_put = LocalArtifactStore.put_file

    def cancel_then_put(self: LocalArtifactStore, key: str, source: Path) -> tuple[str, int]:
        # What POST /v1/jobs/{id}/cancel commits, arriving at this moment.
        with jobs._sessions()() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(status="canceling")
            )
            session.commit()
        return real_put(self, key, source)

    monkeypatch.setattr(LocalArtifactStore, "put_file", cancel_then_put)
    assert jobs.run_job(job_id, worker_id="test:1") == "canceled"
    with jobs._sessions()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.artifact_key, job.result) == ("canceled", None, None)
    artifacts = get_settings().resolved_artifacts_dir
    assert list((artifacts / "jobs" / job_id).glob("*.bfm")) == []
    assert list((artifacts / "tmp").iterdir()) == []

    # Without the cancel, the same runner stores one artifact and succeeds.
    monkeypatch.setattr(LocalArtifactStore, "put_file", real_put)
    second = queued_job()
    assert jobs.run_job(second, worker_id="test:1") == "succeeded"
    assert len(list((artifacts / "jobs" / second).glob("*.bfm"))) == 1


@pytest.mark.slow
def test_an_internal_error_shows_no_server_paths_or_traceback(
    data_dir: Path, queued_job: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tenant reads the job's error and log: the store's path becomes ``<store>``, and
    the traceback stays in the server's log."""
    job_id = queued_job()
    artifacts = get_settings().resolved_artifacts_dir

    def broken(self: LocalArtifactStore, key: str, source: Path) -> tuple[str, int]:
        raise RuntimeError(f"cannot place {source} under {artifacts / key}")

    monkeypatch.setattr(LocalArtifactStore, "put_file", broken)
    assert jobs.run_job(job_id, worker_id="test:1") == "failed"
    with jobs._sessions()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        error = job.error or ""
    log = (artifacts / "jobs" / job_id / "log.txt").read_text()
    assert error.startswith("internal error: RuntimeError: cannot place <store>/tmp/")
    for text in (error, log):
        assert str(data_dir) not in text
        assert "Traceback" not in text
    assert f"failed: {error}" in log


def test_storage_failure_is_recognised_through_wrappers(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "tmp").mkdir(parents=True)

    def save() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0") from exc

    with pytest.raises(RuntimeError) as wrapped:
        save()
    assert jobs.storage_failure(wrapped.value, root) == "No space left on device"
    assert jobs.storage_failure(RuntimeError("Read-only file system (os error 30)"), root)
    assert jobs.storage_failure(ValueError("labels go up to 7"), root) is None


def test_owner_gone() -> None:
    import os
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host = socket.gethostname()
    assert jobs.owner_gone(f"{host}:{child.pid}")
    assert not jobs.owner_gone(f"{host}:{os.getppid()}")  # alive
    assert not jobs.owner_gone(f"elsewhere:{child.pid}")  # another host: cannot know
    assert not jobs.owner_gone(None)


def _job(sessions: object, **values: object) -> str:
    with sessions() as session:  # type: ignore[operator]
        tenant = repo.get_or_create_tenant(session, name="t")
        job = Job(tenant_id=tenant.id, model_id="m", dataset_id="d", config={}, **values)
        session.add(job)
        session.commit()
        return str(job.id)


def test_sweeper_requeues_jobs_of_lost_workers(tmp_path: Path) -> None:
    # a queue no other test declared: kombu caches declarations per process
    settings = Settings(data_dir=tmp_path, job_lease_seconds=5, job_queue=f"q-{uuid.uuid4().hex}")
    upgrade(settings.resolved_database_url)
    reaper = Reaper(settings)
    old = utcnow() - timedelta(seconds=60)
    lost = _job(reaper.sessions, status="running", worker_id="w", heartbeat_at=old)
    stopping = _job(reaper.sessions, status="canceling", worker_id="w", heartbeat_at=old)
    alive = _job(reaper.sessions, status="running", worker_id="w", heartbeat_at=utcnow())
    assert reaper.sweep() == {"requeued": [lost], "canceled": [stopping]}
    assert reaper.sweep() == {"requeued": [], "canceled": []}
    with reaper.sessions() as session:
        statuses = {j.id: j.status for j in session.query(Job)}
    assert statuses == {lost: "queued", stopping: "canceled", alive: "running"}
    assert len(list((tmp_path / "broker" / "queue").iterdir())) == 1  # sent once


def test_sweeper_resends_queued_jobs_when_redis_lost_its_data(
    tmp_path: Path, redis_url: str
) -> None:
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/12"
    queue = f"q-{uuid.uuid4().hex}"
    settings = Settings(data_dir=tmp_path, broker_url=url, job_queue=queue)
    upgrade(settings.resolved_database_url)
    reaper = Reaper(settings)
    waiting = _job(reaper.sessions, created_at=utcnow() - timedelta(seconds=30))
    _job(reaper.sessions)  # just created: may still be between its INSERT and its send
    client = redis.Redis.from_url(url)
    try:
        assert reaper.sweep()["requeued"] == [waiting]  # no marker yet: resend
        assert reaper.sweep()["requeued"] == []  # marker there: the broker kept its data
        client.delete(MARKER_PREFIX + queue)  # what a restart without persistence does
        assert reaper.sweep()["requeued"] == [waiting]
        assert client.llen(queue) == 2
    finally:
        client.delete(MARKER_PREFIX + queue, queue, f"_kombu.binding.{queue}")
        client.close()

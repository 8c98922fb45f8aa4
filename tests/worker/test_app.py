"""The Celery app's settings: the ones that make jobs safe, in both broker modes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bitfactor.jobconfig import Progress
from bitfactor.settings import Settings
from db import repo
from db.models import Job
from db.session import connect, session_factory, upgrade
from worker.app import TASK_BINARIZE, broker_options, enqueue_job, make_celery


def test_job_safety_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, job_soft_time_limit=100, job_hard_time_limit=160)
    conf = make_celery(settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_max_tasks_per_child == 1
    assert conf.task_soft_time_limit == 100
    assert conf.task_time_limit == 160
    assert conf.task_default_queue == "gpu"
    assert conf.task_routes[TASK_BINARIZE] == {"queue": "gpu"}
    assert conf.accept_content == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_embedded_broker_needs_no_server(tmp_path: Path) -> None:
    url, options = broker_options(Settings(data_dir=tmp_path))
    assert url == "filesystem://"
    assert Path(str(options["data_folder_in"])).is_dir()
    assert str(options["data_folder_in"]).startswith(str(tmp_path.resolve()))
    url, options = broker_options(
        Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/3", job_queue="q1")
    )
    assert url == "redis://127.0.0.1:6379/3"
    assert make_celery(Settings(data_dir=tmp_path, job_queue="q1")).conf.task_default_queue == "q1"


def test_embedded_broker_keeps_every_file_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, data = tmp_path / "cwd", tmp_path / "data"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # a queue no other test declared: kombu caches declarations per process
    app = make_celery(Settings(data_dir=data, job_queue=f"q-{uuid.uuid4().hex}"))
    enqueue_job(app, "0123")
    assert list(cwd.iterdir()) == [], "the embedded broker wrote into the working directory"
    assert len(list((data / "broker" / "queue").iterdir())) == 1
    assert any((data / "broker" / "control").iterdir())


def test_job_queue_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="job_queue"):
        Settings(data_dir=tmp_path, job_queue="bad queue name")


def test_importing_the_worker_loads_no_torch() -> None:
    code = (
        "import sys, worker.app, worker.tasks, worker.cli, api.app;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_reporter_writes_progress_and_reads_the_cancel_flag(tmp_path: Path) -> None:
    from worker.jobs import _JobReporter

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    sessions = session_factory(connect(url))
    with sessions() as session:
        tenant = repo.get_or_create_tenant(session, name="t")
        job = Job(tenant_id=tenant.id, model_id="m", dataset_id="d", config={})
        session.add(job)
        session.commit()
        job_id = job.id
    reporter = _JobReporter(sessions, job_id, tmp_path / "log.txt")
    reporter.progress(Progress(epoch=1, epochs=2, step=5, total_steps=10, loss=0.5))
    reporter.progress(Progress(epoch=1, epochs=2, step=6, total_steps=10))  # throttled
    reporter.progress(Progress(epoch=2, epochs=2, step=10, total_steps=10, loss=0.1))  # last
    reporter.line("hello")
    with sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None
        assert row.progress is not None
        assert row.progress["step"] == 10
        assert row.progress["loss"] == 0.1
        assert row.heartbeat_at is not None
    assert (tmp_path / "log.txt").read_text().endswith(" hello\n")
    assert reporter.should_cancel() is False
    with sessions() as session:
        session.query(Job).filter_by(id=job_id).update({"status": "canceling"})
        session.commit()
    reporter._last_check = 0.0
    assert reporter.should_cancel() is True

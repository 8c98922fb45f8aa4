"""What a worker does with one job: claim, run the engine, record the outcome.

Called inside the Celery child process that runs the task; torch (through ``engine``) is
imported here only, inside :func:`run_job`. The job row is the single source of truth:
progress, heartbeat, error, result and the artifact's checksum all go there.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import traceback
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from bitfactor.jobconfig import BinarizeConfig, Progress
from bitfactor.settings import get_settings
from db import repo
from db.models import Dataset, Job, ModelFile, utcnow
from db.session import connect, session_factory
from db.storage import LocalArtifactStore, StorageError

log = logging.getLogger("bitfactor.worker")
WRITE_INTERVAL = 0.5  # seconds between progress writes and cancel-flag reads


@lru_cache(maxsize=1)
def _sessions() -> sessionmaker[Session]:
    return session_factory(connect(get_settings().resolved_database_url))


@lru_cache(maxsize=1)
def _store() -> LocalArtifactStore:
    return LocalArtifactStore(get_settings().resolved_artifacts_dir)


def job_prefix(job_id: str) -> str:
    """The artifact-store prefix under which a job's files live."""
    return f"jobs/{job_id}"


class _JobReporter:
    """Progress, heartbeat, cancel flag and log lines of one running job."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, log_path: Path) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.log_path = log_path
        self._last_write = 0.0
        self._last_check = 0.0
        self._canceling = False

    def line(self, message: str) -> None:
        stamp = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message.rstrip()}\n")

    def progress(self, report: Progress) -> None:
        now = time.monotonic()
        last_step = report.step >= report.total_steps
        if now - self._last_write < WRITE_INTERVAL and not last_step:
            return
        self._last_write = now
        with self.sessions() as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(progress=report.model_dump(mode="json"), heartbeat_at=utcnow())
            )
            session.commit()

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if self._canceling or now - self._last_check < WRITE_INTERVAL:
            return self._canceling
        self._last_check = now
        with self.sessions() as session:
            status = session.get(Job, self.job_id, populate_existing=True)
            self._canceling = status is not None and status.status == "canceling"
        return self._canceling


def _result_dict(result: Any) -> dict[str, Any]:
    if hasattr(result, "model_dump"):
        return dict(result.model_dump(mode="json"))
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(vars(result))


def run_job(job_id: str, *, worker_id: str) -> str:
    """Run job ``job_id`` to its end; returns the job's final status."""
    settings = get_settings()
    sessions = _sessions()
    store = _store()
    with sessions() as session:
        action = repo.claim_job(
            session, job_id=job_id, worker_id=worker_id, max_attempts=settings.job_max_attempts
        )
    if action != "run":
        log.info("job %s: %s", job_id, action)
        return action

    prefix = job_prefix(job_id)
    job_dir = store.local_path(prefix)
    (job_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    reporter = _JobReporter(sessions, job_id, job_dir / "log.txt")

    def finish(**kwargs: Any) -> None:
        with sessions() as session:
            repo.finish_job(session, job_id=job_id, **kwargs)

    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        model = session.get(ModelFile, job.model_id)
        dataset = session.get(Dataset, job.dataset_id)
        val = session.get(Dataset, job.val_dataset_id) if job.val_dataset_id else None
        attempt = job.attempts
        config_data = dict(job.config)
        gone = [
            name
            for name, row in (
                ("model", model),
                ("dataset", dataset),
                ("validation dataset", val if job.val_dataset_id else True),
            )
            if row is None
        ]
        if gone or model is None or dataset is None:
            finish(status="failed", error=f"the job's {gone[0]} was deleted before it ran")
            return "failed"
        model_key, model_sha = model.storage_key, model.sha256
        data_key, data_sha = dataset.storage_key, dataset.sha256
        val_ref = (val.storage_key, val.sha256) if val is not None else None
        arch, arch_kwargs = model.arch, model.arch_kwargs

    reporter.line(f"attempt {attempt} on worker {worker_id}")
    tmp_out = store.temp_path(".bfm")
    try:
        model_path = store.verified_path(model_key, model_sha)
        data_path = store.verified_path(data_key, data_sha)
        val_path = store.verified_path(*val_ref) if val_ref is not None else None
        config = BinarizeConfig.model_validate(config_data)

        from engine.errors import JobCancelled, UserInputError
        from engine.pipeline import binarize

        try:
            result = binarize(
                model_path,
                data_path,
                tmp_out,
                config,
                arch=arch,
                arch_kwargs=arch_kwargs,
                val_path=val_path,
                progress=reporter.progress,
                should_cancel=reporter.should_cancel,
                checkpoint_dir=job_dir / "checkpoints",
                log=reporter.line,
            )
        except JobCancelled:
            reporter.line("canceled")
            finish(status="canceled")
            shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)
            return "canceled"
        except UserInputError as exc:
            reporter.line(f"failed: {exc}")
            finish(status="failed", error=str(exc))
            return "failed"
        key = f"{prefix}/model.bfm"
        sha, size = store.put_file(key, tmp_out)
        summary = _result_dict(result)
        summary.pop("out_path", None)  # a temp path of the worker, meaningless to clients
        summary["sha256"] = sha
        summary["packed_bytes"] = size
        reporter.line(f"succeeded: {size} bytes, sha256 {sha}")
        finish(status="succeeded", result=summary, artifact=(key, sha, size))
        shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)
        return "succeeded"
    except SoftTimeLimitExceeded:
        reporter.line("failed: time limit")
        finish(
            status="failed",
            error=f"the job ran past its time limit of {settings.job_soft_time_limit} s",
        )
        return "failed"
    except StorageError as exc:
        reporter.line(f"failed: {exc}")
        finish(status="failed", error=f"an input file is unusable: {exc}")
        return "failed"
    except Exception as exc:
        reporter.line("failed:\n" + traceback.format_exc())
        log.exception("job %s failed", job_id)
        finish(status="failed", error=f"internal error: {type(exc).__name__}: {exc}")
        return "failed"
    finally:
        tmp_out.unlink(missing_ok=True)

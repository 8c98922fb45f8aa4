"""What a worker does with one job: claim, run the engine, record the outcome.

Called inside the Celery child process that runs the task; torch (through ``engine``) is
imported here only, inside :func:`run_job`. The job row is the single source of truth:
progress, heartbeat, error, result and the artifact's checksum all go there.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from bitfactor.jobconfig import BinarizeConfig, Progress
from bitfactor.settings import get_settings
from db import repo
from db.models import Dataset, Job, ModelFile, utcnow
from db.session import connect, is_transient, session_factory
from db.storage import LocalArtifactStore, StorageError

log = logging.getLogger("bitfactor.worker")
WRITE_INTERVAL = 0.5  # seconds between progress writes and cancel-flag reads
T = TypeVar("T")


def with_db_retry(action: Callable[[], T], *, seconds: float, what: str) -> T:
    """Run ``action``; on a transient database error retry with backoff for ``seconds``."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


@lru_cache(maxsize=1)
def _sessions() -> sessionmaker[Session]:
    return session_factory(connect(get_settings().resolved_database_url))


@lru_cache(maxsize=1)
def _store() -> LocalArtifactStore:
    return LocalArtifactStore(get_settings().resolved_artifacts_dir)


def job_prefix(job_id: str) -> str:
    """The artifact-store prefix under which a job's files live."""
    return f"jobs/{job_id}"


class LeaseLost(Exception):
    """Another worker took this job over (this one was presumed lost): stop, write nothing."""


class _JobReporter:
    """Progress, heartbeat (the job's lease), cancel flag and log lines of one running job.

    Database writes here are best effort: a failing one is logged and skipped (the next
    one carries the newer state), so a database outage does not fail the training. A
    write that finds the job owned by another worker raises :class:`LeaseLost`.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        log_path: Path,
        *,
        worker_id: str = "",
        heartbeat_interval: float = 10.0,
        private_root: Path | None = None,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.log_path = log_path
        self.private_root = private_root
        self.worker_id = worker_id
        self.heartbeat_interval = heartbeat_interval
        self.lost = False
        self._last_write = 0.0
        self._last_check = 0.0
        self._canceling = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def public(self, text: str) -> str:
        """``text`` without the server's own paths (the tenant reads the log and errors)."""
        if self.private_root is not None:
            for root in {str(self.private_root.resolve()), str(self.private_root)}:
                text = text.replace(root, "<store>")
        return text

    def line(self, message: str) -> None:
        message = self.public(message)
        stamp = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(f"{stamp} {message.rstrip()}\n")
        except OSError as exc:  # a full or read-only store must not hide the job's outcome
            log.warning("job %s: log line lost (%s): %s", self.job_id, exc, message[:200])

    def _write(self, **values: Any) -> None:
        """Renew the lease (with ``values``); marks the job lost when another worker owns it."""
        try:
            with self.sessions() as session:
                if self.worker_id:
                    held = repo.heartbeat(
                        session, job_id=self.job_id, worker_id=self.worker_id, **values
                    )
                else:
                    session.execute(
                        update(Job)
                        .where(Job.id == self.job_id)
                        .values(heartbeat_at=utcnow(), **values)
                    )
                    session.commit()
                    held = True
            if not held:
                self._check_ownership()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("job %s: heartbeat skipped, database unavailable: %s", self.job_id, exc)

    def _check_ownership(self) -> None:
        with self.sessions() as session:
            row = session.get(Job, self.job_id, populate_existing=True)
            if row is None or row.worker_id != self.worker_id:
                self.lost = True
            elif row.status == "canceling":
                self._canceling = True

    def _raise_if_lost(self) -> None:
        if self.lost:
            raise LeaseLost(f"job {self.job_id} was taken over by another worker")

    def progress(self, report: Progress) -> None:
        self._raise_if_lost()
        now = time.monotonic()
        last_step = report.step >= report.total_steps
        if now - self._last_write < WRITE_INTERVAL and not last_step:
            return
        self._last_write = now
        self._write(progress=report.model_dump(mode="json"))
        self._raise_if_lost()

    def should_cancel(self) -> bool:
        self._raise_if_lost()
        now = time.monotonic()
        if self._canceling or now - self._last_check < WRITE_INTERVAL:
            return self._canceling
        self._last_check = now
        try:
            with self.sessions() as session:
                row = session.get(Job, self.job_id, populate_existing=True)
        except Exception as exc:
            if not is_transient(exc):
                raise
            return self._canceling
        if row is not None and self.worker_id and row.worker_id != self.worker_id:
            self.lost = True
            self._raise_if_lost()
        self._canceling = row is not None and row.status == "canceling"
        return self._canceling

    def start_heartbeat(self) -> None:
        """Renew the lease every ``heartbeat_interval`` s from a thread, also while the
        engine reports nothing (loading, evaluation, export)."""

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_interval):
                try:
                    self._write()
                except Exception:
                    log.exception("job %s: heartbeat failed", self.job_id)
                if self.lost:
                    return

        self._thread = threading.Thread(target=beat, name=f"heartbeat-{self.job_id}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def owner_gone(worker_id: str | None) -> bool:
    """True when ``worker_id`` (``host:pid``) names a process of this host that has exited."""
    if not worker_id:
        return False
    host, _, pid_text = worker_id.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie (not yet reaped by its parent) is dead too
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _result_dict(result: Any) -> dict[str, Any]:
    if hasattr(result, "model_dump"):
        return dict(result.model_dump(mode="json"))
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(vars(result))


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_STORAGE_TEXTS = ("No space left on device", "Read-only file system", "Disk quota exceeded")
LOW_SPACE = 1 << 20


def storage_failure(exc: BaseException, root: Path) -> str | None:
    """Why a failed write was the artifact store's fault (full, read-only, not writable),
    or None when it was not. Looks at the exception chain (torch and safetensors wrap the
    OS error in their own exceptions) and at the file system itself."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
            return f"{seen.strerror or seen}"
        text = str(seen)
        for known in _STORAGE_TEXTS:
            if known in text:
                return known
        seen = seen.__cause__ or seen.__context__
    try:
        fs = os.statvfs(root)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return "Read-only file system"
    free = fs.f_bavail * fs.f_frsize
    if free < LOW_SPACE:
        return f"{free} bytes free"
    if not os.access(root / "tmp", os.W_OK):
        return "Permission denied"
    return None


def _temp_outputs(store: LocalArtifactStore, job_id: str) -> list[Path]:
    """A job's outputs being written in the store's temp folder (and the writer's .tmp)."""
    return list((store.root / "tmp").glob(f"*.{job_id}.bfm*"))


def _claim(job_id: str, worker_id: str) -> str:
    settings = get_settings()
    sessions = _sessions()
    with sessions() as session:
        row = session.get(Job, job_id)
        previous = row.worker_id if row is not None and row.status == "running" else None
        return repo.claim_job(
            session,
            job_id=job_id,
            worker_id=worker_id,
            max_attempts=settings.job_max_attempts,
            lease_seconds=settings.job_lease_seconds,
            dead_owner=previous if owner_gone(previous) else None,
        )


def run_job(job_id: str, *, worker_id: str) -> str:
    """Run job ``job_id`` to its end; returns the job's final status.

    The final write is fenced: it happens only while this worker still owns the row (a
    worker presumed lost and taken over writes nothing), and ``succeeded`` only from
    ``running``, so a cancel committed before it wins (the job ends ``canceled`` and its
    packed model is removed). Transient database errors are retried for
    ``BITFACTOR_DB_RETRY_SECONDS``.
    """
    settings = get_settings()
    sessions = _sessions()
    store = _store()
    retry_for = settings.db_retry_seconds
    action = _claim(job_id, worker_id)  # a database error here: Celery retries the task
    if action != "run":
        log.info("job %s: %s", job_id, action)
        return action

    prefix = job_prefix(job_id)
    job_dir = store.local_path(prefix)
    job_dir.mkdir(parents=True, exist_ok=True)
    reporter = _JobReporter(
        sessions,
        job_id,
        job_dir / "log.txt",
        worker_id=worker_id,
        heartbeat_interval=max(settings.job_lease_seconds / 4, 0.5),
        private_root=store.root,
    )
    # A temp output of an earlier attempt of this job (its worker died) is garbage now.
    for stale in _temp_outputs(store, job_id):
        stale.unlink(missing_ok=True)

    def finish(status: str, **kwargs: Any) -> bool:
        def write() -> bool:
            with sessions() as session:
                return repo.finish_job(
                    session, job_id=job_id, status=status, owner=worker_id, **kwargs
                )

        done = with_db_retry(write, seconds=retry_for, what=f"job {job_id}: finish")
        if not done:
            log.warning("job %s: not ours any more; %s not recorded", job_id, status)
        return done

    def read_inputs() -> tuple[Any, ...]:
        with sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            model = session.get(ModelFile, job.model_id)
            dataset = session.get(Dataset, job.dataset_id)
            val = session.get(Dataset, job.val_dataset_id) if job.val_dataset_id else None
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
                return (gone[0],)
            val_ref = (val.storage_key, val.sha256) if val is not None else None
            return (
                job.attempts,
                dict(job.config),
                (model.storage_key, model.sha256),
                (dataset.storage_key, dataset.sha256),
                val_ref,
                model.arch,
                model.arch_kwargs,
            )

    inputs = with_db_retry(read_inputs, seconds=retry_for, what=f"job {job_id}: read")
    if len(inputs) == 1:
        finish("failed", error=f"the job's {inputs[0]} was deleted before it ran")
        return "failed"
    attempt, config_data, model_ref, data_ref, val_ref, arch, arch_kwargs = inputs

    reporter.line(f"attempt {attempt} on worker {worker_id}")
    reporter.start_heartbeat()
    try:
        (job_dir / "checkpoints").mkdir(exist_ok=True)
        tmp_out = store.temp_path(f".{job_id}.bfm")
        model_path = store.verified_path(*model_ref)
        data_path = store.verified_path(*data_ref)
        val_path = store.verified_path(*val_ref) if val_ref is not None else None
        config = BinarizeConfig.model_validate(config_data)
        # shown while the engine (torch) loads, a few seconds before its first report
        reporter.progress(
            Progress(epoch=0, epochs=config.epochs, step=0, total_steps=0, stage="starting")
        )

        import engine.importers
        from bitfactor.sandbox import Limits
        from engine.errors import JobCancelled, UserInputError
        from engine.pipeline import binarize

        # A .pt is unpickled only in a child, under the limits of the API's upload check.
        engine.importers.PT_LIMITS = Limits(
            max_memory_bytes=settings.inspect_max_memory_mb * 2**20,
            max_cpu_seconds=settings.inspect_max_cpu_seconds,
            timeout=settings.inspect_timeout,
        )

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
            if finish("canceled"):
                shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)
            return "canceled"
        except UserInputError as exc:
            reporter.line(f"failed: {exc}")
            finish("failed", error=str(exc))
            return "failed"
        # One key per attempt: a worker presumed lost can never overwrite the file that
        # the attempt which took over recorded.
        key = f"{prefix}/model.{attempt}.bfm"
        sha, size = store.put_file(key, tmp_out)
        summary = _result_dict(result)
        summary.pop("out_path", None)  # a temp path of the worker, meaningless to clients
        summary["sha256"] = sha
        summary["packed_bytes"] = size
        if finish("succeeded", result=summary, artifact=(key, sha, size), only_from=("running",)):
            reporter.line(f"succeeded: {size} bytes, sha256 {sha}")
            shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)
            return "succeeded"
        # Canceled (or taken over) after training ended: the cancel wins, nothing is served.
        store.delete(key)
        if finish("canceled"):
            reporter.line("canceled (after training ended)")
            shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)
            return "canceled"
        return "lost"
    except LeaseLost:
        log.warning("job %s: taken over by another worker; this attempt stops", job_id)
        return "lost"
    except SoftTimeLimitExceeded:
        reporter.line("failed: time limit")
        finish(
            "failed",
            error=f"the job ran past its time limit of {settings.job_soft_time_limit} s",
        )
        return "failed"
    except StorageError as exc:
        reporter.line(f"failed: {exc}")
        finish("failed", error=reporter.public(f"an input file is unusable: {exc}"))
        return "failed"
    except Exception as exc:
        # the traceback goes to the server's log only: it names the server's files and code
        log.exception("job %s failed", job_id)
        storage = storage_failure(exc, store.root)
        if storage is not None:
            error = f"the artifact store is full or not writable: {storage}"
        else:
            error = f"internal error: {type(exc).__name__}: {exc}"
        reporter.line(f"failed: {error}")
        finish("failed", error=reporter.public(error))
        return "failed"
    finally:
        reporter.stop_heartbeat()
        for leftover in _temp_outputs(store, job_id):
            leftover.unlink(missing_ok=True)

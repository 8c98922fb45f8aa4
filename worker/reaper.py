"""The sweeper: finds jobs whose worker or broker message was lost, and queues them again.

It runs as a thread in every ``bitfactor worker`` main process (started when the worker
is ready), once every ``BITFACTOR_JOB_LEASE_SECONDS / 2``. Two things can lose a job:

- its worker dies without the broker redelivering the message (the node is gone, or the
  broker lost its unacknowledged messages): the job's heartbeat stops. A ``running`` job
  whose heartbeat is older than the lease goes back to ``queued`` and is sent again (it
  resumes from its last checkpoint; the claim counts the attempt); a ``canceling`` one
  ends ``canceled``;
- the broker loses its queue (a Redis without persistence restarted): queued messages are
  gone. The sweeper keeps a marker key in the broker's Redis; when the marker is missing,
  the broker lost its data, and every ``queued`` job is sent again. A job sent twice runs
  once: the claim is atomic and a duplicate message is skipped.

Several workers can sweep at once: every take-back is one conditional UPDATE (one sweeper
wins), and the marker is re-created with ``SET NX`` (one sweeper re-sends).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from bitfactor.settings import Settings
from db import repo
from db.models import Job, utcnow
from db.session import connect, is_transient, session_factory
from worker.app import enqueue_job, make_celery

log = logging.getLogger("bitfactor.reaper")
MARKER_PREFIX = "bitfactor:broker-marker:"
# A queued job younger than this may still be between its INSERT and its send.
QUEUED_GRACE = timedelta(seconds=5)


@dataclass
class Reaper:
    """One sweeper: its own database engine (no pooled sockets survive a fork) and broker."""

    settings: Settings
    sessions: sessionmaker[Session] = field(init=False)
    _celery: Any = field(init=False, default=None)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        engine = connect(self.settings.resolved_database_url, poolclass=NullPool)
        self.sessions = session_factory(engine)

    @property
    def celery(self) -> Any:
        if self._celery is None:
            self._celery = make_celery(self.settings)
        return self._celery

    def broker_lost_its_data(self) -> bool:
        """True once after the broker's Redis came back empty (and the first time ever).

        The embedded broker keeps its messages in files: it never loses them this way.
        """
        url = self.settings.broker_url
        if not url or not url.startswith(("redis://", "rediss://", "unix://")):
            return False
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return bool(client.set(MARKER_PREFIX + self.settings.job_queue, "1", nx=True))
        finally:
            client.close()

    def sweep(self) -> dict[str, list[str]]:
        """One pass; returns the ids it re-sent (``requeued``) and ended (``canceled``)."""
        lease = self.settings.job_lease_seconds
        requeued: list[str] = []
        canceled: list[str] = []
        with self.sessions() as session:
            for job_id in repo.expired_jobs(session, lease_seconds=lease):
                new = repo.release_expired(session, job_id=job_id, lease_seconds=lease)
                if new == "queued":
                    requeued.append(job_id)
                elif new == "canceled":
                    canceled.append(job_id)
            if self.broker_lost_its_data():
                before = utcnow() - QUEUED_GRACE
                lost = repo.queued_jobs(session, created_before=before)
                requeued += [job_id for job_id in lost if job_id not in requeued]
        for job_id in requeued:
            try:
                enqueue_job(self.celery, job_id)
            except Exception:
                # Leave it expired, so the next pass takes it back and sends it again.
                log.exception("sweep: re-sending job %s failed", job_id)
                with self.sessions() as session:
                    session.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.status == "queued")
                        .values(status="running", heartbeat_at=None)
                    )
                    session.commit()
        if requeued or canceled:
            log.warning("sweep: requeued %s; canceled %s", requeued, canceled)
        return {"requeued": requeued, "canceled": canceled}

    def run_forever(self) -> None:
        """Sweep every half lease until :meth:`stop`; errors are logged, never fatal.

        After the database was unreachable, leases are not judged for one lease: every
        worker's heartbeats failed during the outage too, and they need that long to renew.
        """
        lease = self.settings.job_lease_seconds
        interval = max(lease / 2, 1.0)
        judge_after = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= judge_after:
                    self.sweep()
                else:
                    with self.sessions() as session:
                        session.execute(select(1))
            except Exception as exc:
                if is_transient(exc):
                    judge_after = time.monotonic() + lease + interval
                    log.warning("sweep: database unavailable (%s)", exc)
                else:
                    log.exception("sweep failed (retrying in %.0f s)", interval)
            self._stop.wait(interval)

    def start(self) -> threading.Thread:
        """Sweep in a daemon thread."""
        thread = threading.Thread(target=self.run_forever, name="bitfactor-reaper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Ask the thread to end after its current pass."""
        self._stop.set()

"""The Celery task: one binarization job per task, by job id."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.exc import OperationalError

from worker.app import TASK_BINARIZE, get_celery
from worker.jobs import run_job

celery_app = get_celery()
_reaper: list[Any] = []


@worker_ready.connect
def _start_reaper(**_kwargs: Any) -> None:
    """The worker's main process sweeps for lost jobs (see :mod:`worker.reaper`)."""
    from bitfactor.settings import get_settings
    from worker.reaper import Reaper

    reaper = Reaper(get_settings())
    reaper.start()
    _reaper.append(reaper)


@worker_shutdown.connect
def _stop_reaper(**_kwargs: Any) -> None:
    for reaper in _reaper:
        reaper.stop()


# Database hiccups are the one transient error: retry with backoff (the claim counts the
# attempt; training resumes from its checkpoint). Everything else ends the job row.
@celery_app.task(
    name=TASK_BINARIZE,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=120,
    max_retries=5,
)
def binarize(job_id: str) -> str:
    """Run job ``job_id``; its row records every outcome. Returns the final status."""
    return run_job(job_id, worker_id=f"{socket.gethostname()}:{os.getpid()}")

"""The Celery task: one binarization job per task, by job id."""

from __future__ import annotations

import os
import socket

from sqlalchemy.exc import OperationalError

from worker.app import TASK_BINARIZE, get_celery
from worker.jobs import run_job

celery_app = get_celery()


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

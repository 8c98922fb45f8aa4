"""The Celery application: broker choice and the settings that make jobs safe.

Redis when ``BITFACTOR_BROKER_URL`` is set; otherwise kombu's filesystem transport under
``<data_dir>/broker``, which needs no server (the same task code runs on both). Importing
this module never imports torch: the API imports it to enqueue by task name.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from bitfactor.settings import Settings, get_settings

TASK_BINARIZE = "bitfactor.binarize"


def broker_options(settings: Settings) -> tuple[str, dict[str, object]]:
    """The broker URL and transport options in force for ``settings``."""
    # Above the hard limit, so Redis never hands a running job to a second worker.
    visibility = settings.job_hard_time_limit + 600
    if settings.broker_url:
        return settings.broker_url, {"visibility_timeout": visibility}
    folder = (settings.data_dir / "broker").resolve()
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        # kombu's default is ./control in the working directory of whoever sends a task
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "visibility_timeout": visibility,
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``."""
    url, transport_options = broker_options(settings)
    app = Celery("bitfactor", broker=url, include=["worker.tasks"])
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # A broker restart must not end the worker: reconnect for as long as it takes.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        task_default_queue=settings.job_queue,
        task_routes={TASK_BINARIZE: {"queue": settings.job_queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A fresh child process per task: GPU and host memory go back after every job.
        worker_max_tasks_per_child=1,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_hard_time_limit,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    """The process-wide Celery app."""
    return make_celery(get_settings())


def enqueue_job(app: Celery, job_id: str) -> None:
    """Send the binarization task for ``job_id`` (only the id travels) to the job queue."""
    app.send_task(TASK_BINARIZE, args=[job_id], queue=app.conf.task_default_queue)

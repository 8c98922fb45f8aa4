"""Prometheus metrics: request latencies, predict latency, jobs by status, queue depth.

Jobs by status and queue depth are read from the job table at scrape time (the job row is
the source of truth; ``queued`` rows are the jobs waiting in the broker).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db import repo
from db.models import JOB_STATUSES

log = logging.getLogger("bitfactor.api")

REGISTRY = CollectorRegistry(auto_describe=True)

REQUEST_LATENCY = Histogram(
    "bitfactor_http_request_duration_seconds",
    "HTTP request latency by method, route and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
PREDICT_LATENCY = Histogram(
    "bitfactor_predict_duration_seconds",
    "Time spent running packed models (runtime only, no HTTP).",
    ["protocol"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)


class JobCollector(Collector):
    """Jobs by status and the queue depth, counted in the database at scrape time.

    While the database is unreachable a scrape still answers: ``bitfactor_database_up`` is
    0 and the job gauges are left out (a gap in a graph, not a failed scrape).
    """

    def __init__(self) -> None:
        self.sessions: sessionmaker[Session] | None = None

    def collect(self) -> Iterator[Any]:
        if self.sessions is None:
            return
        try:
            with self.sessions() as session:
                counts = repo.job_counts(session)
        except DBAPIError as exc:
            log.warning("metrics: the database is unreachable (%s)", type(exc).__name__)
            yield GaugeMetricFamily(
                "bitfactor_database_up", "1 when the last scrape could read the database.", 0
            )
            return
        yield GaugeMetricFamily(
            "bitfactor_database_up", "1 when the last scrape could read the database.", 1
        )
        jobs = GaugeMetricFamily("bitfactor_jobs", "Jobs by status.", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "bitfactor_queue_depth", "Jobs queued and not yet started.", counts.get("queued", 0)
        )

    def describe(self) -> Iterator[Any]:
        return iter(())


JOBS = JobCollector()
REGISTRY.register(JOBS)

"""Operations: ``/metrics`` (Prometheus) and ``/healthz``."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from api.metrics import JOBS, REGISTRY

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def prometheus_metrics() -> Response:
    """Request and predict latencies, jobs by status, queue depth."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several API processes ('bitfactor serve --workers N'): the latencies of all of
        # them, from the files each writes; the job gauges are read from the database.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(JOBS)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", summary="Liveness of the API process")
def healthz() -> dict[str, str]:
    """Always ``ok`` while the process serves requests."""
    return {"status": "ok"}

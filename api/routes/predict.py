"""``POST /v1/jobs/{id}/predict``: run a job's packed model in this process (``runtime``)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.deps import OwnedJob, StateDep
from api.errors import Problem
from api.predictor import LoadedModel
from api.schemas import PredictRequest, PredictResponse
from api.state import AppState
from db.models import Job
from db.storage import StorageError

router = APIRouter(prefix="/v1/jobs", tags=["predict"])


def load_job_model(state: AppState, job: Job) -> LoadedModel:
    """The job's packed model from the cache, loaded (checksum verified) on first use."""
    if job.status != "succeeded" or not job.artifact_key or not job.artifact_sha256:
        raise Problem("job-not-finished", f"the job is {job.status}; nothing to run yet")
    try:
        path = state.store.verified_path(job.artifact_key, job.artifact_sha256)
        return state.models.get(job.artifact_sha256, path)
    except StorageError as exc:
        raise Problem("artifact-corrupted", str(exc)) from exc
    except ValueError as exc:  # runtime.FormatError
        raise Problem("artifact-corrupted", f"the packed model does not load: {exc}") from exc


def to_array(inputs: Any, *, max_elements: int) -> np.ndarray:
    """Nested lists to a float array; ValueError for ragged or non-numeric input."""
    try:
        array = np.asarray(inputs, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            "inputs must be a rectangular nested list of numbers (batch first)"
        ) from exc
    if array.size > max_elements:
        raise ValueError(f"{array.size} values is more than the limit of {max_elements}")
    return array


def top_k(scores: np.ndarray, k: int) -> list[dict[str, list[Any]]]:
    """The ``k`` best classes of each row of a (batch, classes) array."""
    if k == 0 or scores.ndim != 2:
        return []
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        {"indices": [int(i) for i in row], "scores": [float(scores[b, i]) for i in row]}
        for b, row in enumerate(order)
    ]


@router.post(
    "/{job_id}/predict",
    response_model=PredictResponse,
    summary="Run the job's binary model on a batch",
    responses={409: {"description": "The job has not succeeded"}},
)
async def predict(body: PredictRequest, job: OwnedJob, state: StateDep) -> dict[str, Any]:
    """Outputs of the packed model (first output), and its top classes per row."""
    model = await run_in_threadpool(load_job_model, state, job)
    try:
        x = model.check(
            to_array(body.inputs, max_elements=state.settings.predict_max_elements),
            max_elements=state.settings.predict_max_elements,
            max_batch=state.settings.predict_max_batch,
        )
    except ValueError as exc:
        raise Problem("invalid-input", str(exc)) from exc
    start = time.perf_counter()
    outputs = await run_in_threadpool(model.run, x)
    metrics.PREDICT_LATENCY.labels(protocol="v1").observe(time.perf_counter() - start)
    name = model.outputs[0].name
    first = outputs[name]
    return {
        "outputs": first.astype(np.float64).tolist(),
        "top_k": top_k(first, body.top_k),
        "output_name": name,
    }
